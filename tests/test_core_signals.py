"""A stop signal that arrives at any moment stops `vms ingest` / `vms simulate` (vms.core.signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow  # child processes and signals at every moment: not in scripts/test.sh --fast

# The signal is raised while the main thread holds the lock of the Event it waits on (inside
# Condition.wait, where Python runs pending signal handlers at the next function call): the
# interleaving that deadlocked a handler calling Event.set(). A timer sends it anyway after 1 s when
# the main thread never gets there (no Event in the wait).
CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    from vms.cli.ingest import wait_for_signal

    fired = []

    def send():
        if not fired:
            fired.append("timer")
            os.kill(os.getpid(), signal.SIGTERM)

    def trace(frame, event, arg):
        if event == "call" and not fired and frame.f_code.co_name == "_is_owned" \\
                and frame.f_code.co_filename.endswith("threading.py"):
            fired.append("inside Event.wait")
            os.kill(os.getpid(), signal.SIGTERM)
        return None

    threading.Timer(1.0, send).start()
    sys.settrace(trace)
    wait_for_signal()
    sys.settrace(None)
    print("stopped", fired[0], flush=True)
""")


def test_a_stop_signal_at_any_moment_ends_the_wait():
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the signal handler deadlocked the main thread: SIGTERM did not stop the wait") from None
    assert proc.returncode == 0, err
    assert out.startswith("stopped"), (out, err)
    assert time.monotonic() - started < 15


def test_wait_times_out_without_a_signal():
    from vms.core.signals import StopSignals

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopSignals()
        t0 = time.monotonic()
        assert stop.wait(0.3) is False
        assert 0.25 <= time.monotonic() - t0 < 2
        signal.raise_signal(signal.SIGTERM)
        assert stop.wait(5) is True and stop.received == signal.SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
