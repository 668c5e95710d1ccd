"""Simulated RTSP cameras for tests, benchmarks and the demo server (see docs/simulator.md)."""

from vms.simulate.simulator import AUDIO_KINDS, EXTRA_MOUNTS, Simulator, SimulatorError

__all__ = ["AUDIO_KINDS", "EXTRA_MOUNTS", "Simulator", "SimulatorError"]
