"""The composition root: wires the simulator, the ingest supervisor, the API and the scheduled jobs
together for `vms ingest` and `vms serve`. Nothing below imports it."""
