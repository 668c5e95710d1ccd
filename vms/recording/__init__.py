"""Recording: where footage is written. Volumes and file layout, the fragmented-MP4 segment writer,
the segment and gap index, and crash repair (`vms recordings check`)."""
