"""vms: station video-monitoring ingest server for Huidong County's e-commerce service stations."""

__version__ = "0.1.0"
