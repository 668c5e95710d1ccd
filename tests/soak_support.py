"""A real `vms serve` watched from outside for a long time: the API polled as a console would, every vms
process measured, the footage checked from the index and from the files on disk.

Used by tests/test_soak.py (the compressed soak of the test suite) and scripts/soak.py (the real-time
soak benchmark). Nothing here reaches into the server: it sees what an operator or a monitoring system
sees (API, /metrics, log file, database, footage folder, /proc).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
VMS = REPO / ".venv" / "bin" / "vms"
ADMIN, PASSWORD = "soak-admin", "soak password 1"
HOLE_MS = 2000  # a hole in the footage longer than this is a loss
CAMERA_STATES = {"connecting", "streaming", "backoff", "stalled", "hung", "failed", "stopped", "offline",
                 "disabled", "unknown"}
HEALTH_STATES = {"ok", "degraded", "failing"}


def now_ms() -> int:
    return int(time.time() * 1000)


def run_vms(env: dict, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VMS), *args], env=env, input=stdin, text=True, check=check, capture_output=True,
                          timeout=timeout)


def write_catalogue(path: Path, count: int) -> list[str]:
    """The first `count` stations of config/stations.yaml, every one enabled and without a camera URL
    (so that `vms serve` simulates their cameras)."""
    doc = yaml.safe_load((REPO / "config" / "stations.yaml").read_text(encoding="utf-8"))
    if count > len(doc["stations"]):
        raise ValueError(f"the catalogue has {len(doc['stations'])} stations, {count} asked for")
    doc["stations"] = doc["stations"][:count]
    for st in doc["stations"]:
        st["enabled"] = True
        st["camera"] = {"main_url": None}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return [st["id"] for st in doc["stations"]]


# --- the server --------------------------------------------------------------------------------------
@dataclass
class ServeRun:
    root: Path
    env: dict
    settings: dict
    stations: list[str]
    proc: subprocess.Popen
    base: str
    log_path: Path
    ready_ms: int = 0  # every camera streaming, as the API said
    exit_code: int | None = None
    stop_seconds: float | None = None

    @property
    def db_url(self) -> str:
        return f"sqlite:///{Path(self.settings['data_dir']) / 'vms.db'}"

    @property
    def footage_root(self) -> Path:
        return Path(self.settings["storage"]["volumes"][0]["path"])

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to `vms serve` alone, as systemd or docker stop would; note its exit code and time."""
        if self.proc.poll() is not None:
            self.exit_code = self.proc.returncode
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.exit_code = None
        self.stop_seconds = time.monotonic() - t0

    def kill(self) -> None:
        """Kill the whole tree (only ever the processes this run started)."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in [*procs]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_serve(root: Path, settings: dict, cameras: int, ready_timeout: float = 180,
                extra_env: dict | None = None) -> ServeRun:
    """Write the catalogue and settings under `root`, migrate, import, create an admin, start `vms serve`
    and wait until the API says every camera streams. The caller must stop() (or kill()) the run."""
    root.mkdir(parents=True, exist_ok=True)
    stations = write_catalogue(root / "stations.yaml", cameras)
    settings = {**settings, "stations_file": str(root / "stations.yaml")}
    config = root / "vms.yaml"
    config.write_text(json.dumps(settings, indent=1))
    env = {**os.environ, **(extra_env or {}), "VMS_CONFIG": str(config)}
    run_vms(env, "db", "upgrade")
    run_vms(env, "stations", "import", str(root / "stations.yaml"))
    run_vms(env, "users", "create", ADMIN, "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(VMS), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    run = ServeRun(root, env, settings, stations, proc, f"http://127.0.0.1:{settings['api']['port']}", log_path)
    try:
        client = ApiClient(run.base)
        deadline = time.monotonic() + ready_timeout
        streaming: set[str] = set()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vms serve exited with {proc.returncode}:\n{run.log_text()[-4000:]}")
            try:
                body = client.get("/api/stations").json()
                streaming = {s["id"] for s in body["stations"] if s["camera"]["state"] == "streaming"}
                if streaming >= set(stations):
                    run.ready_ms = now_ms()
                    client.close()
                    return run
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"only {len(streaming)} of {cameras} cameras streaming after {ready_timeout:g} s:\n"
                           + run.log_text()[-4000:])
    except BaseException:
        run.kill()
        raise


class ApiClient:
    """The admin's calls, logging in again when the session expires (the soak shortens sessions)."""

    def __init__(self, base: str, timeout: float = 30, keepalive: bool = True) -> None:
        """keepalive=False for calls seconds apart: a connection reused just as uvicorn closes it after its
        5 s keep-alive is reset (the client's race, not the server's), and a POST is not retried."""
        self.base = base
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(base_url=base, timeout=timeout, limits=limits)
        self.token: str | None = None
        self.logins = 0
        self.expired = 0  # 401 "session expired" answers, each followed by a new login
        self._lock = threading.Lock()

    def login(self) -> None:
        r = self.http.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
        r.raise_for_status()
        self.token = r.json()["token"]
        self.logins += 1

    def request(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
        with self._lock:
            if self.token is None:
                self.login()
            token = self.token
        r = self.http.request(method, path, headers={**(headers or {}), "Authorization": f"Bearer {token}"}, **kw)
        if r.status_code == 401 and "expired" in r.text:
            with self._lock:
                if self.token == token:
                    self.expired += 1
                    self.login()
                token = self.token
            r = self.http.request(method, path, headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                                  **kw)
        return r

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)

    def close(self) -> None:
        self.http.close()


# --- what the API said, poll by poll -------------------------------------------------------------------
@dataclass
class Poll:
    sent_ms: int
    latency_s: float | None  # GET /api/stations; None: no answer
    status: int | None
    generated_ms: int | None = None
    cameras: dict[str, dict] = field(default_factory=dict)  # station -> camera + recording fields
    health_latency_s: float | None = None
    health_status: int | None = None
    health: dict | None = None
    error: str | None = None


class Poller(threading.Thread):
    """GET /api/stations and GET /api/health (no login) every `interval` seconds, everything kept."""

    def __init__(self, base: str, interval: float = 1.0, timeout: float = 30,
                 on_poll: Callable[[Poll], None] | None = None, keep: bool = True) -> None:
        """on_poll sees every poll as it comes; keep=False keeps no poll (a long run with many cameras)."""
        super().__init__(name="soak-poller", daemon=True)
        self.client = ApiClient(base, timeout=timeout)
        self.interval = interval
        self.on_poll = on_poll
        self.keep = keep
        self.polls: list[Poll] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            poll = self.poll_once()
            if self.on_poll is not None:
                self.on_poll(poll)
            if self.keep:
                self.polls.append(poll)
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def poll_once(self) -> Poll:
        sent = now_ms()
        t0 = time.monotonic()
        try:
            r = self.client.get("/api/stations")
            poll = Poll(sent, time.monotonic() - t0, r.status_code)
            if r.status_code != 200:
                poll.error = f"stations: {r.status_code} {r.text[:200]}"
            else:
                body = r.json()
                poll.generated_ms = body["generated_ms"]
                poll.cameras = {s["id"]: {**s["camera"], "recording": s["recording"],
                                          "recorded_until_ms": s["recorded_until_ms"]} for s in body["stations"]}
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            poll = Poll(sent, None, None, error=f"stations: {type(exc).__name__}: {exc}")
        t1 = time.monotonic()
        try:
            h = self.client.http.get("/api/health")
            poll.health_latency_s, poll.health_status = time.monotonic() - t1, h.status_code
            poll.health = h.json()
        except (httpx.HTTPError, ValueError) as exc:
            poll.error = (poll.error or "") + f" health: {type(exc).__name__}: {exc}"
        return poll

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(60)
        self.client.close()


def silent_stalls(polls: Iterable[Poll], stall_ms: int) -> list[str]:
    """Answers where a camera was `streaming` without a packet within ingest.stall_seconds of the moment
    the answer describes (generated_ms, at most api.status_cache_seconds before the poll)."""
    out = []
    for p in polls:
        for sid, cam in p.cameras.items():
            if cam["state"] != "streaming":
                continue
            last = cam.get("last_packet_ms")
            if last is None or p.generated_ms - last > stall_ms:
                age = "never" if last is None else f"{(p.generated_ms - last) / 1000:.1f} s before"
                out.append(f"{sid} streaming at {p.generated_ms} with its last packet {age}")
    return out


def distinct_values(polls: Iterable[Poll], station: str, key: str) -> int:
    return len({p.cameras[station].get(key) for p in polls if station in p.cameras} - {None})


# --- the processes -------------------------------------------------------------------------------------
def process_roles(serve_pid: int, log_text: str) -> dict[str, psutil.Process]:
    """role -> process: `supervisor` (vms serve itself), `worker-N` (named by the supervisor's log line),
    `simulator` (the GStreamer RTSP server), others by their name."""
    workers = {int(pid): f"worker-{i}" for i, pid in re.findall(r"ingest worker (\d+) started \(pid (\d+)\)", log_text)}
    root = psutil.Process(serve_pid)
    roles = {"supervisor": root}
    for child in root.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if child.pid in workers:
            roles[workers[child.pid]] = child
        elif "rtsp_server.py" in cmd:
            roles["simulator"] = child
        elif "resource_tracker" in cmd:
            roles["mp-resource-tracker"] = child
        else:
            roles[f"{child.name()}-{child.pid}"] = child
    return roles


def sample_processes(serve_pid: int, log_text: str) -> dict[str, dict]:
    """RSS (bytes), open fds, threads and CPU seconds used so far of every process of the run, by role."""
    out = {}
    for role, p in process_roles(serve_pid, log_text).items():
        try:
            with p.oneshot():
                cpu = p.cpu_times()
                out[role] = {"pid": p.pid, "rss": p.memory_info().rss, "fds": p.num_fds(), "threads": p.num_threads(),
                             "cpu_s": round(cpu.user + cpu.system, 2)}
        except psutil.Error:
            continue
    return out


# --- footage ---------------------------------------------------------------------------------------------
class SegmentLedger:
    """Every segment row ever seen (polled), so that footage the retention sweep deletes during the run still
    counts when continuity is checked at the end."""

    def __init__(self, db_url: str) -> None:
        from vms.db.engine import Database

        self.db = Database(db_url)
        self.rows: dict[int, tuple] = {}  # id -> (station, start_ms, end_ms, state, volume, path)

    def refresh(self) -> None:
        from sqlalchemy import select

        from vms.db.models import Segment

        with self.db.session() as s:
            for r in s.execute(select(Segment.id, Segment.station_id, Segment.start_ms, Segment.end_ms,
                                      Segment.state, Segment.volume, Segment.path).where(Segment.stream == "main")):
                self.rows[r[0]] = tuple(r[1:])

    def intervals(self, station: str) -> list[tuple[int, int]]:
        return sorted((r[1], r[2]) for r in self.rows.values() if r[0] == station)

    def completed(self, station: str) -> int:
        return sum(1 for r in self.rows.values() if r[0] == station and r[3] != "growing")

    def close(self) -> None:
        self.db.dispose()


def holes(intervals: list[tuple[int, int]], start_ms: int, end_ms: int, min_hole_ms: int = HOLE_MS
          ) -> list[tuple[int, int]]:
    """Stretches of [start_ms, end_ms) longer than min_hole_ms that no interval covers."""
    out = []
    covered_to = start_ms
    for a, b in sorted(intervals):
        if b <= covered_to:
            continue
        if a > covered_to and min(a, end_ms) - covered_to > min_hole_ms:
            out.append((covered_to, min(a, end_ms)))
        covered_to = max(covered_to, b)
        if covered_to >= end_ms:
            break
    if end_ms - covered_to > min_hole_ms:
        out.append((covered_to, end_ms))
    return out


def covered_ms(intervals: list[tuple[int, int]], start_ms: int, end_ms: int) -> int:
    total, covered_to = 0, start_ms
    for a, b in sorted(intervals):
        a, b = max(a, covered_to), min(b, end_ms)
        if b > a:
            total += b - a
            covered_to = b
    return total


def disk_intervals(footage_root: Path, station: str, tz) -> list[tuple[int, int, str]]:
    """(start, end, file) of every segment file of the station, measured from the file itself: the start
    from its name, the length from its own timestamps (no index involved)."""
    from vms.recording.fmp4 import probe_segment
    from vms.recording.repair import start_ms_from_name

    out = []
    for path in sorted((footage_root / station).rglob("*.mp4")):
        rel = path.relative_to(footage_root).as_posix()
        parsed = start_ms_from_name(rel, tz)
        if parsed is None:
            continue
        probe = probe_segment(path)
        out.append((parsed[1], parsed[1] + probe.duration_ms, rel))
    return out


def read_keyframe_time(data_dir: Path, station: str) -> int | None:
    """wall_ms of the latest keyframe the recorder kept for snapshots (vms/ingest/keyframes.py)."""
    try:
        with open(Path(data_dir) / "run" / "keyframes" / f"{station}.kf", "rb") as f:
            return json.loads(f.readline())["wall_ms"]
    except (OSError, ValueError, KeyError):
        return None


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "commit": commit + ("-dirty" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
