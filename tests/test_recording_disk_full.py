"""A full disk: footage already written stays intact and indexed, the hole is one disk_error gap (no
overlapping rows), and recording resumes by itself once space is free again. Uses a real, small tmpfs."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.ingest_support import FPS, assert_contiguous, decode_all, make_clip, record_clip, record_connection, segments
from tests.ingest_support import gaps as all_gaps
from vms.core.settings import Settings
from vms.recording.volumes import VolumeSet

pytestmark = pytest.mark.slow  # mounts a tmpfs (as root): not in scripts/test.sh --fast


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        # CI runs as root, where this test must run; elsewhere (no mount rights) it is skipped.
        message = f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path) -> None:
    """Write to `path` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_full_disk_keeps_stored_footage_and_resumes(tmp_path, small_disk, db, clock):
    settings = Settings.model_validate({"data_dir": str(tmp_path / "data"),
                                        "storage": {"volumes": [{"name": "main", "path": str(small_disk)}]}})
    filler = small_disk / "filler.bin"
    clip = make_clip(tmp_path / "clip.ts", seconds=60)

    def rewrite(i, pkt):
        if i == 20 * FPS:  # the disk fills up
            fill(filler)
        if i == 40 * FPS:
            filler.unlink(missing_ok=True)  # an operator frees space

    try:
        segs, gaps = record_clip(clip, db, settings, clock, rewrite, segment_seconds=5.0)
    except OSError:
        pytest.fail("a full disk must not raise out of the recorder")
    assert_contiguous(segs)
    full = [g for g in gaps if g.reason == "disk_error"]
    assert full, [(g.reason, g.detail) for g in gaps]
    # Gap rows never overlap each other or footage.
    spans = sorted([(s.start_ms, s.end_ms) for s in segs] + [(g.start_ms, g.end_ms) for g in gaps if g.end_ms])
    for (a0, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
        assert b0 >= a1, f"overlap: {(a0, a1)} and {(b0, b1)}"
    before = [s for s in segs if s.end_ms <= full[0].start_ms]
    after = [s for s in segs if s.start_ms >= full[0].end_ms]
    assert before and after, "footage before the full disk, and again after space came back"
    vols = VolumeSet.from_settings(settings)
    for s in segs:
        path = vols.file_path(s.volume, s.path)
        assert path.stat().st_size == s.bytes
        assert decode_all(path)[0] == s.frames


def test_full_disk_while_the_native_copier_writes(tmp_path, small_disk, db):
    """The disk fills while packets are copied in C (past the first 10 s of the connection): the copier
    reports the failed write, the recorder keeps what reached the disk, opens a disk_error gap and
    records again once space is free."""
    settings = Settings.model_validate({"data_dir": str(tmp_path / "data"),
                                        "storage": {"volumes": [{"name": "main", "path": str(small_disk)}]}})
    filler = small_disk / "filler.bin"
    clip = make_clip(tmp_path / "clip.ts", seconds=60)
    seen = {"s": 0.0}

    def hook(elapsed: float) -> None:
        if seen["s"] < 22 <= elapsed:  # the disk fills up while the copier writes
            fill(filler)
        if seen["s"] < 40 <= elapsed:
            filler.unlink(missing_ok=True)  # an operator frees space
        seen["s"] = elapsed

    try:
        _, copied = record_connection(clip, db, settings, "pingshan-town", native=True, hook=hook)
    except OSError:
        pytest.fail("a full disk must not raise out of the recorder")
    segs, gaps = segments(db, "pingshan-town"), all_gaps(db, "pingshan-town")
    assert copied > 20 * (FPS - 1)  # 10-22 s and 50-60 s of the clip
    assert_contiguous(segs)
    full = [g for g in gaps if g.reason == "disk_error"]
    assert full and full[0].end_ms, [(g.reason, g.detail) for g in gaps]
    spans = sorted([(s.start_ms, s.end_ms) for s in segs] + [(g.start_ms, g.end_ms) for g in gaps if g.end_ms])
    for (a0, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
        assert b0 >= a1, f"overlap: {(a0, a1)} and {(b0, b1)}"
    assert [s for s in segs if s.end_ms <= full[0].start_ms] and [s for s in segs if s.start_ms >= full[0].end_ms]
    vols = VolumeSet.from_settings(settings)
    for s in segs:
        path = vols.file_path(s.volume, s.path)
        assert path.stat().st_size == s.bytes
        assert decode_all(path)[0] == s.frames
