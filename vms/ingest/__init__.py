"""Ingest: one RTSP session per camera (connect, read, backoff, stall detection), the supervisor
that spreads cameras over worker processes, and per-camera health. Other concerns (analysis,
snapshots, live view) see the stream only through StreamObserver, never by a second connection."""
