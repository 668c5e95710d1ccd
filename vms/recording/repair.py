"""Crash repair: make the index and the disk agree again.

`recover_growing` runs when ingest starts: every segment this node left 'growing' (it was killed
mid-segment) is trimmed to its last complete fragment, measured, and indexed as complete; an empty
one is removed. `check` is `vms recordings check [--repair]`: files without rows, rows without
files, and files shorter than their rows say (or with a torn tail), reported and repaired on request.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select

from vms.core.clock import Clock
from vms.db.engine import Database
from vms.db.models import Segment, Station
from vms.recording.fmp4 import SegmentProbe, playable_length, probe_segment
from vms.recording.liveness import recorder_running
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{8}T\d{6})\.(\d{3})(?:-(\w+))?\.mp4$")


def trim_and_probe(path: Path) -> SegmentProbe | None:
    """Cut a torn tail off a segment file and measure it; None if it holds no frame (at most a header
    and an unfinished fragment). OSError if it cannot be read or measured: never a reason to remove it."""
    size = path.stat().st_size
    good = playable_length(path)
    if good == 0:
        return None
    if good < size:
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        log.warning("trimmed %s from %d to %d bytes (torn last fragment)", path, size, good)
    try:
        probe = probe_segment(path)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - the demuxer's own errors (PyAV's are not all OSError)
        # Raised, not None: callers remove a file that holds no frame, and one whose whole fragments
        # do not read back (a failing disk, a demuxer error) must be kept for inspection instead.
        raise OSError(f"cannot read {path.name}: {exc}") from exc
    return probe if probe.frames > 0 else None


@dataclass
class RepairAction:
    # completed | removed_empty | row_without_file | file_without_row | truncated | left_growing | unreadable
    kind: str
    volume: str
    path: str
    detail: str = ""
    repaired: bool = False


def recover_growing(db: Database, volumes: VolumeSet, node: str, station_ids: list[str] | None = None
                    ) -> list[RepairAction]:
    """Finish the segments a killed run of this node left growing."""
    actions: list[RepairAction] = []
    with db.session() as s:
        q = select(Segment).where(Segment.state == "growing", Segment.node == node)
        if station_ids is not None:
            q = q.where(Segment.station_id.in_(station_ids))
        rows = list(s.scalars(q))
        for row in rows:
            if row.volume in volumes.volumes and not volumes.is_available(row.volume):
                # An unmounted disk looks like missing files: never drop its rows for that.
                actions.append(RepairAction("unreadable", row.volume, row.path, "volume not available (unmounted?)"))
                continue
            try:
                path = volumes.file_path(row.volume, row.path)
            except KeyError as exc:
                actions.append(RepairAction("unreadable", row.volume, row.path, str(exc)))
                continue
            if not path.exists():
                s.delete(row)
                actions.append(RepairAction("row_without_file", row.volume, row.path, "growing row, no file", True))
                continue
            try:
                probe = trim_and_probe(path)
                if probe is None:
                    path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only volume, a read error: left growing, for a later run
                actions.append(RepairAction("unreadable", row.volume, row.path, f"cannot finish it now: {exc}"))
                continue
            if probe is None:
                s.delete(row)
                actions.append(RepairAction("removed_empty", row.volume, row.path, "no complete fragment", True))
                continue
            _apply_probe(row, probe, path.stat().st_size)
            actions.append(RepairAction("completed", row.volume, row.path,
                                        f"{probe.duration_ms / 1000:.1f} s kept", True))
    for a in actions:
        log.info("recovery: %s %s/%s %s", a.kind, a.volume, a.path, a.detail)
    return actions


def recover_orphans(db: Database, volumes: VolumeSet, tz: ZoneInfo, node: str, station_ids: list[str],
                    now_ms: int, hours: int = 3) -> list[RepairAction]:
    """Index segment files of the last few hours that have no row: a kill -9 between creating a
    file and committing its row (up to the index writer's commit interval plus its flush interval,
    longer while the database was down). One killed before its first fragment ended holds no footage
    and is removed. Only for stations whose recorder on this node is not running."""
    actions: list[RepairAction] = []
    hour_dirs = {datetime.fromtimestamp(now_ms / 1000 - h * 3600, tz).strftime("%Y-%m-%d/%H") for h in range(hours + 1)}
    for vol in volumes.volumes:
        if not volumes.is_available(vol):
            continue
        root = volumes.root(vol)
        for sid in station_ids:
            files = [p for d in hour_dirs for p in (root / sid / d).glob("*.mp4")]
            if not files:
                continue
            rels = [p.relative_to(root).as_posix() for p in files]
            with db.session() as s:
                known = set(s.scalars(select(Segment.path).where(Segment.volume == vol, Segment.path.in_(rels))))
                for rel, path in zip(rels, files, strict=True):
                    parsed = start_ms_from_name(rel, tz)
                    if rel in known or parsed is None:
                        continue
                    try:
                        probe = trim_and_probe(path)
                        if probe is None:
                            # Created, then killed before its first fragment ended: a header and no
                            # footage, as recover_growing removes when the row had made it.
                            path.unlink(missing_ok=True)
                            actions.append(RepairAction("removed_empty", vol, rel,
                                                        "left by a killed run, no complete fragment", True))
                            continue
                    except OSError as exc:  # a read-only volume, a read error: for a later run or `check`
                        actions.append(RepairAction("unreadable", vol, rel, f"cannot finish it now: {exc}"))
                        continue
                    _insert_orphan(s, vol, rel, path, parsed, node, probe)
                    actions.append(RepairAction("file_without_row", vol, rel, "left by a killed run", True))
    for a in actions:
        log.info("recovery: %s %s/%s %s", a.kind, a.volume, a.path, a.detail)
    return actions


def _apply_probe(row: Segment, probe: SegmentProbe, size: int) -> None:
    row.end_ms = row.start_ms + probe.duration_ms
    row.duration_ms = probe.duration_ms
    row.bytes = size
    row.frames = probe.frames
    row.keyframes = probe.keyframes
    row.codec = probe.codec
    row.width = probe.width
    row.height = probe.height
    row.has_audio = probe.has_audio
    row.state = "complete"


def start_ms_from_name(rel_path: str, tz: ZoneInfo) -> tuple[str, int, str] | None:
    """(station_id, start_ms, stream) from `<station>/<day>/<hour>/<stamp>.mp4`, or None."""
    parts = rel_path.split("/")
    if len(parts) != 4:
        return None
    m = _NAME.match(parts[3])
    if not m:
        return None
    local = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=tz)
    return parts[0], int(local.timestamp()) * 1000 + int(m.group(2)), m.group(3) or "main"


@dataclass
class CheckReport:
    files: int = 0
    rows: int = 0
    actions: list[RepairAction] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.actions)


def check(db: Database, volumes: VolumeSet, tz: ZoneInfo, clock: Clock, node: str, repair: bool = False,
          stale_growing_ms: int = 10 * 60_000, data_dir: Path | None = None,
          new_file_grace_s: float = 30.0) -> CheckReport:
    """Reconcile every volume's files with the index. A `growing` row of this node is being written only
    if a recorder of this node runs (its lock under `data_dir`, see vms.recording.liveness); without
    `data_dir`, and for other nodes, only if it moved within `stale_growing_ms`. A file without a row
    that was written within `new_file_grace_s` is being written, unless no recorder of this node runs."""
    report = CheckReport()
    now = clock.now_ms()
    own_recorder_alive = recorder_running(data_dir, node) if data_dir is not None else None
    with db.session() as s:
        stations = set(s.scalars(select(Station.id)))
    for vol in volumes.volumes:
        if not volumes.is_available(vol):
            report.actions.append(RepairAction("unreadable", vol, "", "volume not available (no .vms-volume marker: "
                                                                      "unmounted?); skipped"))
            continue
        root = volumes.root(vol)
        on_disk: dict[str, Path] = {}
        if root.exists():
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    if name.endswith(".mp4"):
                        p = Path(dirpath) / name
                        on_disk[p.relative_to(root).as_posix()] = p
        report.files += len(on_disk)
        with db.session() as s:
            rows = s.execute(select(Segment.id, Segment.path, Segment.bytes, Segment.state, Segment.end_ms,
                                    Segment.node).where(Segment.volume == vol)).all()
            report.rows += len(rows)
            for rid, rel, nbytes, state, end_ms, row_node in rows:
                if state == "deleting":
                    on_disk.pop(rel, None)  # retention finishes these
                    continue
                path = on_disk.pop(rel, None)
                if state == "growing":
                    if row_node == node and own_recorder_alive is not None:
                        if own_recorder_alive:
                            continue  # being written right now
                        why = f"left growing by a recorder of node {row_node} that is no longer running"
                    elif now - end_ms < stale_growing_ms:
                        continue  # being written right now, as far as its age tells
                    else:
                        why = f"growing row of node {row_node} not updated for {(now - end_ms) // 60_000} min"
                    if path is None:
                        _act(report, RepairAction("row_without_file", vol, rel, why), repair,
                             lambda rid=rid: s.execute(delete(Segment).where(Segment.id == rid)))
                        continue
                    _act(report, RepairAction("left_growing", vol, rel, why),
                         repair, lambda rid=rid, path=path: _reprobe(s, rid, path))
                    continue
                if path is None:
                    _act(report, RepairAction("row_without_file", vol, rel, f"{nbytes} bytes indexed"), repair,
                         lambda rid=rid: s.execute(delete(Segment).where(Segment.id == rid)))
                    continue
                size = path.stat().st_size
                if size != nbytes or playable_length(path) != size:
                    _act(report, RepairAction("truncated", vol, rel, f"file {size} bytes, index {nbytes}"),
                         repair, lambda rid=rid, path=path: _reprobe(s, rid, path))
            for rel, path in sorted(on_disk.items()):
                if own_recorder_alive is not False and _written_lately(path, new_file_grace_s):
                    # A recorder made it moments ago: its row commits with the index writer's next
                    # batch (up to ~1.5 s later; later still while the database is away).
                    continue
                parsed = start_ms_from_name(rel, tz)
                if parsed is None or parsed[0] not in stations:
                    report.actions.append(RepairAction("unreadable", vol, rel, "not a segment name vms writes"))
                    continue
                _act(report, RepairAction("file_without_row", vol, rel), repair,
                     lambda rel=rel, path=path, parsed=parsed, vol=vol: _index_orphan(s, vol, rel, path, parsed, node))
    return report


def _written_lately(path: Path, seconds: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime  # the file system's clock, as its mtime
    except FileNotFoundError:
        return True  # gone since the walk: retention or a recorder's rename, not a problem
    # A time ahead of now (the clock stepped back) is not "lately": it would hide the file for as long
    # as the step. Two seconds of skew allowed (a network file system's clock).
    return -2.0 <= age < seconds


def _act(report: CheckReport, action: RepairAction, repair: bool, fix) -> None:
    if repair:
        try:
            fix()
            action.repaired = True
        except Exception as exc:  # noqa: BLE001 - report and go on with the other files
            action.detail = f"{action.detail}; repair failed: {exc}".lstrip("; ")
    report.actions.append(action)


def _reprobe(s, rid: int, path: Path) -> None:
    probe = trim_and_probe(path)
    if probe is None:
        raise ValueError("nothing playable in the file; left in place for inspection")
    row = s.get(Segment, rid)
    _apply_probe(row, probe, path.stat().st_size)


def _index_orphan(s, vol: str, rel: str, path: Path, parsed: tuple[str, int, str], node: str) -> None:
    probe = trim_and_probe(path)
    if probe is None:
        raise ValueError("nothing playable in the file; left in place for inspection")
    _insert_orphan(s, vol, rel, path, parsed, node, probe)


def _insert_orphan(s, vol: str, rel: str, path: Path, parsed: tuple[str, int, str], node: str,
                   probe: SegmentProbe) -> None:
    station_id, start_ms, stream = parsed
    s.execute(insert(Segment).values(
        station_id=station_id, stream=stream, node=node, volume=vol, path=rel, start_ms=start_ms,
        end_ms=start_ms + probe.duration_ms, duration_ms=probe.duration_ms, bytes=path.stat().st_size,
        codec=probe.codec, width=probe.width, height=probe.height, has_audio=probe.has_audio,
        frames=probe.frames, keyframes=probe.keyframes, state="complete"))
