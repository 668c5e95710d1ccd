"""A footage volume fills up, then goes read-only (ext4's errors=remount-ro, as after a disk error)
while a real camera records to it: what was stored before stays intact and readable, each hole is a
disk_error gap, nothing half-written is indexed as complete, and recording resumes by itself once the
volume is writable again (space freed; the file system checked and mounted again). A real ext4 on a
loop device, because tmpfs cannot be made read-only while a file is open for writing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.ingest_support import RunningWorker, decode_all, gaps, ingest_settings, segments, wait_until
from vms.core.clock import SystemClock
from vms.core.settings import Settings
from vms.recording.repair import check
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real processes (simulator, vms serve, PostgreSQL): not for --fast

STATION = "tieyong-town"


class LoopVolume:
    """An ext4 file system in a file, mounted with errors=remount-ro."""

    def __init__(self, image: Path, mount: Path) -> None:
        self.image, self.mount = image, mount

    def attach(self) -> None:
        done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())

    def device(self) -> str:
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mount)], capture_output=True,
                                text=True).stdout.strip()
        return os.path.basename(os.path.realpath(source))

    def fail(self) -> None:
        """An ext4 error: the kernel makes the file system read-only at once, open files included."""
        Path(f"/sys/fs/ext4/{self.device()}/trigger_fs_error").write_text("test: simulated disk error")

    def detach(self) -> None:
        for _ in range(50):
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)  # a writer still closing its file
        subprocess.run(["umount", "-l", str(self.mount)], check=True)

    def fsck(self) -> None:
        done = subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True, text=True)
        assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: errors corrected


@pytest.fixture
def loop_volume(tmp_path):
    image, mount = tmp_path / "volume.img", tmp_path / "volume"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(24 * 1024 * 1024)
    vol = LoopVolume(image, mount)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        vol.attach()
        if not Path(f"/sys/fs/ext4/{vol.device()}/trigger_fs_error").exists():
            vol.detach()
            raise OSError("this kernel's ext4 has no trigger_fs_error")
    except (OSError, subprocess.CalledProcessError, FileNotFoundError) as exc:
        # CI runs as root, where this test must run; elsewhere (no mount rights) it is skipped.
        message = f"cannot mount an ext4 loop device here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def disk_errors(db) -> list:
    return [g for g in gaps(db, STATION) if g.reason == "disk_error"]


def test_volume_full_then_read_only_keeps_footage_and_resumes(tmp_path, loop_volume, db):
    settings = ingest_settings(tmp_path, segment_seconds=3)
    settings = settings.model_copy(update={"storage": Settings.model_validate(
        {"storage": {"volumes": [{"name": "main", "path": str(loop_volume.mount / "footage")}]}}).storage})
    volumes = VolumeSet.from_settings(settings)
    with Simulator(cameras=1, names=[STATION], width=320, height=240, fps=15, bitrate_kbps=600, gop=15) as sim, \
            RunningWorker(settings, db, sim.urls):
        wait_until(lambda: len(segments(db, STATION)) >= 3, 30, "recording")

        # 1. The volume fills up mid-segment; an operator frees space.
        filler = loop_volume.mount / "filler.bin"
        fill(filler)
        wait_until(lambda: len(disk_errors(db)) == 1, 20, "a disk_error gap")
        time.sleep(2)
        filler.unlink()
        wait_until(lambda: disk_errors(db)[0].end_ms is not None, 20, "recording to resume after the full disk")
        wait_until(lambda: segments(db, STATION)[-1].start_ms >= disk_errors(db)[0].end_ms
                   and len([s for s in segments(db, STATION) if s.start_ms >= disk_errors(db)[0].end_ms]) >= 2,
                   20, "segments after the full disk")

        # 2. The file system goes read-only mid-segment (a disk error).
        time.sleep(1.5)
        loop_volume.fail()
        wait_until(lambda: len(disk_errors(db)) == 2, 20, "a second disk_error gap")
        for seg in segments(db, STATION):  # what was stored before can still be read
            if seg.state == "complete":
                assert decode_all(volumes.file_path(seg.volume, seg.path))[0] == seg.frames
        # The operator unmounts it, checks it and mounts it again (the mount point stays empty meanwhile:
        # the recorder's retries must not write footage under it).
        loop_volume.detach()
        time.sleep(6)
        loop_volume.fsck()
        loop_volume.attach()
        wait_until(lambda: disk_errors(db)[1].end_ms is not None, 30, "recording to resume after the remount")
        wait_until(lambda: len([s for s in segments(db, STATION) if s.start_ms >= disk_errors(db)[1].end_ms]) >= 2,
                   20, "segments after the remount")

    report = check(db, volumes, settings.tz, SystemClock(), "test-node")
    assert report.problems == 0, [(a.kind, a.path, a.detail) for a in report.actions]
    segs, holes = segments(db, STATION), disk_errors(db)
    assert report.files == report.rows == len(segs)
    assert len(holes) >= 2 and all(g.end_ms is not None for g in holes)
    for seg in segs:
        assert seg.state == "complete"
        path = volumes.file_path(seg.volume, seg.path)
        assert path.stat().st_size == seg.bytes
        assert decode_all(path)[0] == seg.frames
    # Footage and gaps tile the time exactly: each hole is a gap that starts where stored footage ends
    # and ends where footage starts again; nothing overlaps.
    spans = sorted([(s.start_ms, s.end_ms, s.path) for s in segs] + [(g.start_ms, g.end_ms, g.reason)
                                                                     for g in gaps(db, STATION) if g.end_ms])
    for a, b in zip(spans, spans[1:], strict=False):
        assert b[0] == a[1], f"{a} then {b}"
    assert {g.reason for g in gaps(db, STATION)} == {"disk_error", "ingest_stopped"}


def test_a_volume_that_disappears_is_a_disk_error_not_a_stall(tmp_path, settings, db, clock):
    """A marked volume whose marker is gone (its disk unmounted) takes no new segment: footage written
    to the bare mount point would vanish under the disk when it is mounted again. The stall the
    watchdog then sees (no frame recorded) does not replace the disk as the reason."""
    import av

    from tests.ingest_support import FPS, TICKS, make_clip
    from vms.recording.index import IndexWriter
    from vms.recording.recorder import StreamRecorder
    from vms.recording.volumes import MARKER

    volumes = VolumeSet.from_settings(settings)
    marker = volumes.root("main") / MARKER
    index = IndexWriter(db, "t").start()
    rec = StreamRecorder(STATION, volumes, settings.tz, index, clock, segment_seconds=4.0)
    with av.open(str(make_clip(tmp_path / "clip.ts", seconds=24))) as c:
        vs = c.streams.video[0]
        rec.begin(vs, None)
        for i, pkt in enumerate(p for p in c.demux(vs) if p.size):
            clock.advance(1 / FPS)
            pkt.dts = pkt.pts = i * TICKS
            if i == 2 * FPS:
                marker.unlink()  # unmounted: the next segment cannot start
            if i == 9 * FPS:
                rec.note_failure("stalled", "no packet for 10 s")  # the watchdog's view meanwhile
            if i == 14 * FPS:
                marker.touch()  # mounted again
            rec.video_packet(pkt)
        rec.end("stream_ended")
    index.stop()
    segs, holes = segments(db, STATION), gaps(db, STATION)
    assert [g.reason for g in holes] == ["disk_error", "stream_ended"], [(g.reason, g.detail) for g in holes]
    assert "not available" in holes[0].detail
    assert [s.end_ms for s in segs if s.end_ms <= holes[0].start_ms][-1] == holes[0].start_ms
    assert [s.start_ms for s in segs if s.start_ms >= holes[0].end_ms][0] == holes[0].end_ms
    assert all(volumes.file_path(s.volume, s.path).exists() for s in segs)
