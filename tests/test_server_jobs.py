"""The scheduler of `vms serve`: a job still running never holds up the process's exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

CHILD = textwrap.dedent("""
    import sys, threading, time
    from datetime import datetime, timezone
    from vms.core.clock import SystemClock
    from vms.core.settings import Settings
    from vms.db.engine import Database
    from vms.db.migrate import upgrade
    from vms.server.jobs import start_scheduler

    settings = Settings.model_validate({"data_dir": sys.argv[1],
                                        "storage": {"volumes": [{"name": "main", "path": sys.argv[2]}]}})
    upgrade(settings.db_url)
    scheduler = start_scheduler(settings, Database(settings.db_url), SystemClock())
    running = threading.Event()

    def long_job():  # e.g. a monthly audit or a sweep of a backlog: minutes
        running.set()
        time.sleep(120)

    scheduler.add_job(long_job, next_run_time=datetime.now(timezone.utc))
    assert running.wait(30), "the job did not start"
    scheduler.shutdown(wait=False)  # as vms serve does when it stops
    print("returning", flush=True)
""")


@pytest.mark.slow  # a child process
def test_a_running_job_does_not_hold_up_the_exit(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "data"), str(tmp_path / "rec")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        assert line.strip() == "returning", proc.stderr.read()
        returned = time.monotonic()
        proc.wait(max(1.0, deadline - returned))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the process waited for the running scheduled job before exiting") from None
    assert proc.returncode == 0, proc.stderr.read()
    assert time.monotonic() - returned < 15  # the job had ~2 minutes to go
