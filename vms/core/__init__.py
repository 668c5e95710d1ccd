"""Core: settings, clock, errors and logging shared by every other folder (imports nothing above it)."""
