"""Helpers for the API tests (no tests here): real fMP4 segment files made with PyAV/libx264, index rows,
users and an in-process client."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import select

from vms.api.accounts import create_user
from vms.api.app import create_app
from vms.db.engine import Database
from vms.db.models import Segment, Station
from vms.recording.layout import segment_rel_path
from vms.recording.volumes import VolumeSet

CLIP_FPS = 10
CLIP_SECONDS = 10
CLIP_GOP = 10  # one keyframe a second
PASSWORD = "correct horse battery"


def make_clip(path: Path, seconds: int = CLIP_SECONDS, fps: int = CLIP_FPS, width: int = 160,
              height: int = 120, with_audio: bool = True, codec: str = "h264") -> Path:
    """A fragmented MP4 like the recorder writes: H.264 (or H.265, `codec="hevc"`, with the `hvc1` sample
    entry; no B-frames, fixed GOP) and AAC audio."""
    out = av.open(str(path), "w", format="mp4",
                  options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
    if codec == "hevc":
        v = out.add_stream("libx265", rate=fps)
        v.codec_context.codec_tag = "hvc1"
        v.options = {"x265-params": f"keyint={CLIP_GOP}:min-keyint={CLIP_GOP}:scenecut=0:bframes=0:log-level=error",
                     "preset": "ultrafast"}
    else:
        v = out.add_stream("libx264", rate=fps)
        v.options = {"x264-params": f"keyint={CLIP_GOP}:min-keyint={CLIP_GOP}:scenecut=0:sliced-threads=0",
                     "bf": "0", "preset": "ultrafast"}
    v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    v.thread_type = "FRAME"
    v.codec_context.time_base = Fraction(1, fps)
    a = None
    if with_audio:
        a = out.add_stream("aac", rate=8000)
        a.layout = "mono"
    for i in range(seconds * fps):
        img = np.full((height, width, 3), (i * 7) % 256, dtype=np.uint8)
        img[: height // 2, : width // 2] = (255 - (i * 7) % 256)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for p in v.encode(frame):
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    if a is not None:
        samples = 8000 * seconds
        for k in range(0, samples, 1024):
            n = min(1024, samples - k)
            t = (np.arange(k, k + n) / 8000.0).astype(np.float32)
            af = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t)).reshape(1, -1), format="fltp",
                                            layout="mono")
            af.sample_rate = 8000
            af.pts = k
            af.time_base = Fraction(1, 8000)
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    out.close()
    return path


def add_segments(database: Database, volumes: VolumeSet, clip: Path, station_id: str, start_ms: int,
                 count: int, tz, gap_after: dict[int, int] | None = None, state_last: str = "complete",
                 seconds: int = CLIP_SECONDS, codec: str = "h264") -> list[int]:
    """`count` consecutive segments (copies of clip) from start_ms; gap_after[i] ms of nothing after i."""
    ids = []
    t = start_ms
    with database.session() as s:
        for i in range(count):
            rel = segment_rel_path(station_id, t, tz)
            dest = volumes.file_path("main", rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, dest)
            seg = Segment(station_id=station_id, stream="main", node="test", volume="main", path=rel, start_ms=t,
                          end_ms=t + seconds * 1000, duration_ms=seconds * 1000, bytes=dest.stat().st_size,
                          codec=codec, width=160, height=120, has_audio=True, frames=seconds * CLIP_FPS,
                          keyframes=seconds, state=state_last if i == count - 1 else "complete")
            s.add(seg)
            s.flush()
            ids.append(seg.id)
            t += seconds * 1000 + (gap_after or {}).get(i, 0)
    return ids


@functools.cache
def _password_hash() -> str:
    # argon2id as in production, at a lower cost (1 pass over 8 MiB instead of 3 over 64 MiB): the cost is
    # read from the hash when a password is checked, so each test login takes milliseconds instead of
    # ~0.25 s. Tests of the cost itself make their users with create_user (the production hasher).
    return PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)


def add_user(database: Database, username: str, role: str, now_ms: int, towns: list[str] | None = None) -> None:
    """A user with PASSWORD (a cheap argon2id hash, made once per test session)."""
    with database.session() as s:
        create_user(s, username, PASSWORD, role, now_ms, towns=towns, password_hash=_password_hash())


def login(client, username: str, password: str = PASSWORD) -> dict:
    r = client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


# Fixtures shared by the API test modules (import them by name).

@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture
def api(settings, db, clock) -> Iterator[TestClient]:
    """The app in process over the SQLite catalogue database, with an admin, an operator, an auditor,
    a viewer and a town-limited operator."""
    now = clock.now_ms()
    add_user(db, "admin", "admin", now)
    add_user(db, "op", "operator", now)
    add_user(db, "aud", "auditor", now)
    add_user(db, "view", "viewer", now)
    add_user(db, "op_ph", "operator", now, towns=["平海镇"])
    app = create_app(settings, db, clock)
    with TestClient(app) as client:
        yield client


def station_ids(database: Database, town: str | None = None) -> list[str]:
    with database.session() as s:
        q = select(Station.id).order_by(Station.id)
        if town:
            q = q.where(Station.town == town)
        return list(s.scalars(q))

STATIONS_YAML_PATH = Path(__file__).resolve().parents[1] / "config" / "stations.yaml"
