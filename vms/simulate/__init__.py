"""Simulated RTSP cameras for tests, benchmarks and the demo server (see docs/simulator.md)."""

from vms.simulate.simulator import EXTRA_MOUNTS, Simulator, SimulatorError

__all__ = ["EXTRA_MOUNTS", "Simulator", "SimulatorError"]
