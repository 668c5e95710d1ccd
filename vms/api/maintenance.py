"""Periodic API housekeeping: expired exports and stale playback files."""

from __future__ import annotations

from vms.api.context import ApiContext


def run(ctx: ApiContext) -> None:
    try:
        from vms.api import exports, playback
    except ImportError:  # not written yet
        return
    exports.expire_exports(ctx)
    playback.clean_playback_cache(ctx)
