"""Storage volumes (footage roots, one per disk) and the placement of each station on one of them.

This module is the one place that turns a segment row (volume, relative path) into a file path.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vms.core.settings import Settings, VolumeSettings

MARKER = ".vms-volume"


@dataclass(frozen=True)
class VolumeUsage:
    name: str
    total_bytes: int
    free_bytes: int
    used_by_footage: int | None = None


class VolumeSet:
    def __init__(self, volumes: list[VolumeSettings], assignments: dict[str, str] | None = None) -> None:
        self.volumes = {v.name: v for v in volumes}
        self.assignments = dict(assignments or {})
        self._placed: dict[str, str] = {}
        self._marked: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> VolumeSet:
        return cls(settings.storage.volumes, settings.storage.assignments)

    def root(self, volume: str) -> Path:
        try:
            return Path(self.volumes[volume].path)
        except KeyError:
            raise KeyError(f"unknown volume {volume!r} (configured: {sorted(self.volumes)})") from None

    def file_path(self, volume: str, rel_path: str) -> Path:
        """The absolute path of a segment; refuses paths that would leave the volume root."""
        root = self.root(volume).resolve()
        p = (root / rel_path).resolve()
        if root != p and root not in p.parents:
            raise ValueError(f"segment path {rel_path!r} escapes volume {volume!r}")
        return p

    def mark(self, volume: str) -> None:
        """Create the volume's root and its marker file (done when recording starts writing there).
        Once marked, a volume whose marker is gone is refused: its disk was unmounted, and footage
        written to the bare mount point would vanish under the disk when it is mounted again."""
        if volume in self._marked:
            if not (self.root(volume) / MARKER).exists():
                raise OSError(errno.ENODEV, f"volume {volume!r} is not available (its {MARKER} marker is gone: "
                                            "unmounted?)", str(self.root(volume)))
            return
        root = self.root(volume)
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).touch(exist_ok=True)
        self._marked.add(volume)

    def is_available(self, volume: str) -> bool:
        """Whether the volume's disk is there: its marker file exists. An unmounted disk leaves an
        empty mount point, which must not be mistaken for footage that was deleted."""
        return (self.root(volume) / MARKER).exists()

    def usage(self, volume: str) -> VolumeUsage:
        root = self.root(volume)
        root.mkdir(parents=True, exist_ok=True)
        du = shutil.disk_usage(root)
        return VolumeUsage(volume, du.total, du.free)

    def place(self, station_id: str, previous: str | None = None) -> str:
        """The volume a station records to: its assignment, else where it recorded before, else the
        volume with the most free space (decided once per process and kept)."""
        if station_id in self.assignments:
            return self.assignments[station_id]
        if station_id in self._placed:
            return self._placed[station_id]
        if previous in self.volumes:
            chosen = previous
        elif len(self.volumes) == 1:
            chosen = next(iter(self.volumes))
        else:
            chosen = max(self.volumes, key=lambda n: self.usage(n).free_bytes)
        self._placed[station_id] = chosen
        return chosen


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
