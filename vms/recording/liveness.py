"""Is a recorder of this node running? Evidence from the kernel, not from the database.

Every ingest worker holds a shared flock on `<data_dir>/run/recorder-<node>.lock` while it may write
footage. The kernel drops the lock the moment the process dies (kill -9 included), so whoever can take
it exclusively knows that no recorder of this node is alive: the segments the node left `growing` were
left by a dead process, however recent their last update. (A row's age alone cannot tell: right after
a crash the rows look as fresh as those being written.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


def recorder_lock_path(data_dir: Path, node: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node)
    return Path(data_dir) / "run" / f"recorder-{safe}.lock"


class RecorderLock:
    """Held (shared) by each ingest worker process for as long as it records."""

    def __init__(self, data_dir: Path, node: str) -> None:
        path = recorder_lock_path(data_dir, node)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def recorder_running(data_dir: Path, node: str) -> bool:
    """True if a live process of `node` holds the recorder lock under this data directory."""
    path = recorder_lock_path(data_dir, node)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the exclusive lock if it was taken
    return False


def _file_name(name: str) -> str:
    """The name itself when it is plain and short, else a digest of it (never two names on one file)."""
    if name and len(name) <= 100 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def station_lock_path(data_dir: Path, node: str, station_id: str) -> Path:
    return Path(data_dir) / "run" / "stations" / _file_name(node) / f"{_file_name(station_id)}.lock"


class StationWriterLock:
    """Held exclusively by the one camera session that records a station on this node, from before its
    crash repair until its thread has ended. A second writer of the same station (a worker of a killed
    supervisor still finishing its segments, a second `vms ingest` started by mistake) cannot take it:
    the worker then neither repairs that station's files (it would cut or remove the one being written)
    nor records it twice, and tries again at its next reconcile. The kernel drops it if the process dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_take(cls, data_dir: Path, node: str, station_id: str) -> StationWriterLock | None:
        path = station_lock_path(data_dir, node, station_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:  # e.g. no locks on this file system: raised, the descriptor not kept
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
