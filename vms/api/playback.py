"""Playback: a range remuxed (no transcoding) into a cached MP4 that the console streams with HTTP
Range requests. One POST per viewing (logged with its reason), then any number of ranged GETs."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vms.api.context import ApiContext
from vms.api.remux import RemuxResult


@dataclass
class PlaybackItem:
    id: str
    user_id: int
    station_id: str
    path: Path
    result: RemuxResult
    created: float  # time.monotonic(); real time because files live on a real disk


class PlaybackStore:
    def __init__(self, ctx: ApiContext) -> None:
        self.dir = ctx.cache_dir / "playback"
        self._items: dict[str, PlaybackItem] = {}
        self._lock = threading.Lock()

    def new_path(self) -> tuple[str, Path]:
        pid = secrets.token_urlsafe(12)
        return pid, self.dir / f"{pid}.mp4"

    def add(self, item: PlaybackItem) -> None:
        with self._lock:
            self._items[item.id] = item

    def get(self, pid: str) -> PlaybackItem | None:
        with self._lock:
            return self._items.get(pid)

    def clean(self, keep_s: float) -> int:
        now = time.monotonic()
        with self._lock:  # request threads add items meanwhile
            old = [k for k, v in self._items.items() if now - v.created > keep_s]
            items = [self._items.pop(k) for k in old]
            known = {it.path for it in self._items.values()}
        for it in items:
            it.path.unlink(missing_ok=True)
        # Files left by an earlier process are unknown to this one.
        if self.dir.exists():
            for p in self.dir.iterdir():
                if p in known:
                    continue
                try:
                    age = time.time() - p.stat().st_mtime
                except FileNotFoundError:  # a remux's temporary file, renamed meanwhile
                    continue
                if age > keep_s:
                    p.unlink(missing_ok=True)
        return len(items)


def playback_store(ctx: ApiContext) -> PlaybackStore:
    return ctx.singleton("playback", lambda: PlaybackStore(ctx))


def clean_playback_cache(ctx: ApiContext) -> int:
    """Remove playback files older than api.playback_keep_minutes; returns how many this process knew."""
    return playback_store(ctx).clean(ctx.settings.api.playback_keep_minutes * 60)
