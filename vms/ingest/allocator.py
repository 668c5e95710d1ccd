"""The ingest workers' memory allocator: jemalloc when it is installed, else glibc's malloc.

The recorder's packet path allocates and frees a few buffers per frame (RTP reassembly, the packet,
the muxer's fragment), from ~70 camera threads per worker. glibc serves those sizes (1-200 KB) from
arenas shared by the threads (two, WORKER_MALLOC in worker.py, for memory), under their locks, and
merges free chunks as it goes: malloc, free and malloc_consolidate were ~13 % of a worker's CPU at
139 cameras (perf, 2026-12-07). jemalloc keeps per-thread caches for these sizes: the same workers used
18-21 % less CPU (docs/benchmarks.md, "Ingest").

A process cannot change its allocator once it runs, so jemalloc goes into LD_PRELOAD of the command's
environment before any thread starts (`use_for_workers`, called first thing by `vms serve` and
`vms ingest`); the workers are spawned processes and inherit it. So does every other child of the
command (the camera simulator, export's ffmpeg): jemalloc is a drop-in malloc for them too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

# Debian's libjemalloc2, per architecture (multiarch directories), then a plain /usr/lib.
JEMALLOC_CANDIDATES = tuple(Path(p) for p in (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
))
# Two arenas per process, as glibc's are limited (MALLOC_ARENA_MAX in worker.py): the per-thread
# caches take the contention away, and more arenas only hold more memory.
JEMALLOC_CONF = "narenas:2"

Allocator = Literal["auto", "jemalloc", "glibc"]


class AllocatorUnavailable(RuntimeError):
    pass


def find_jemalloc() -> Path | None:
    return next((p for p in JEMALLOC_CANDIDATES if p.is_file()), None)


def loaded_allocator() -> str:
    """What this process allocates with: 'jemalloc' if the library is mapped, else 'glibc'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return "jemalloc" if "libjemalloc" in maps else "glibc"


def use_for_workers(choice: Allocator, env: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """Make the worker processes spawned from now on use `choice` ('auto': jemalloc if installed).
    Returns the allocator they will use. Call before any thread starts: it changes the environment.
    Raises AllocatorUnavailable when jemalloc is asked for by name and is not installed."""
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if choice == "glibc":
        kept = [p for p in preload if "libjemalloc" not in p]
        if kept != preload:
            if kept:
                env["LD_PRELOAD"] = " ".join(kept)
            else:
                env.pop("LD_PRELOAD", None)
        return "glibc"
    if any("libjemalloc" in p for p in preload):
        return "jemalloc"  # set by whoever started us (a systemd unit, a benchmark)
    path = find_jemalloc()
    if path is None:
        if choice == "jemalloc":
            raise AllocatorUnavailable(
                "ingest.allocator is jemalloc, but libjemalloc.so.2 is not installed (Debian: apt install "
                f"libjemalloc2; looked in {', '.join(str(p.parent) for p in JEMALLOC_CANDIDATES)})")
        return "glibc"
    env["LD_PRELOAD"] = " ".join([*preload, str(path)])
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return "jemalloc"
