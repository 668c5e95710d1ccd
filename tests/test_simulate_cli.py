"""`vms simulate` as an operator runs it: URLs on stdout, faults by command, clean exit on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import av
import psutil
import pytest

pytestmark = pytest.mark.rtsp
VMS = [sys.executable, "-m", "vms.cli"] if not (Path(sys.executable).parent / "vms").exists() else [
    str(Path(sys.executable).parent / "vms")]


def run_vms(*args: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*VMS, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "VMS_DATA_DIR": str(tmp_path / "data"), "VMS_CONFIG": str(tmp_path / "none.yaml")}


@pytest.fixture(autouse=True)
def empty_config(tmp_path):
    (tmp_path / "none.yaml").write_text("{}\n")


def test_serve_prints_urls_takes_faults_and_exits_0_on_sigterm(env, tmp_path):
    proc = subprocess.Popen(
        [*VMS, "simulate", "--cameras", "2", "--port", "0", "--content", "pattern", "--width", "320",
         "--height", "240", "--extra", "auth", "--audio", "pcma", "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/cam01", lines[0]), lines
        assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/cam02", lines[1]), lines
        assert re.fullmatch(r"rtsp://\*\*\*@127\.0\.0\.1:\d+/auth", lines[2]), "credentials must be masked"
        serving = proc.stderr.readline()
        control_port = int(re.search(r"fault control on 127\.0\.0\.1:(\d+)", serving).group(1))
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the RTSP server runs as a child process"
        with av.open(lines[0], options={"rtsp_transport": "tcp", "timeout": "5000000"}) as c:
            assert [(st.type, st.codec_context.name) for st in c.streams] == [("video", "h264"), ("audio", "pcm_alaw")]

        out = run_vms("simulate", "fault", "stop", "cam02", "--control-port", str(control_port), env=env)
        assert out.returncode == 0 and "stopped cam02" in out.stdout, out.stderr
        with pytest.raises(av.error.HTTPNotFoundError):
            av.open(lines[1], options={"rtsp_transport": "tcp", "timeout": "5000000"})
        out = run_vms("simulate", "status", "--control-port", str(control_port), env=env)
        assert "cam02=stopped,clients:0" in out.stdout.split()
        out = run_vms("simulate", "fault", "stall", "cam09", "--control-port", str(control_port), env=env)
        assert out.returncode == 2 and "unknown camera 'cam09'" in out.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, "the RTSP server must stop with the command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_bad_options_are_named(env, tmp_path):
    out = run_vms("simulate", "--width", "63", "--port", "0", "--cache-dir", str(tmp_path), env=env)
    assert out.returncode == 2 and "width must be an even number" in out.stderr
    out = run_vms("simulate", "--extra", "vp9", "--port", "0", "--cache-dir", str(tmp_path), env=env)
    assert out.returncode == 2 and "unknown extra mount" in out.stderr and "vp9" in out.stderr
    out = run_vms("simulate", "--audio", "g726", "--port", "0", "--cache-dir", str(tmp_path), env=env)
    assert out.returncode == 2 and "g726" in out.stderr and "pcma" in out.stderr
    out = run_vms("simulate", "--source", str(tmp_path / "missing.mp4"), "--port", "0", env=env)
    assert out.returncode == 2 and "missing.mp4" in out.stderr and "does not exist" in out.stderr
    out = run_vms("simulate", "fault", "stop", "cam01", "--control-port", "1", env=env)
    assert out.returncode == 2 and "no simulator control service" in out.stderr
