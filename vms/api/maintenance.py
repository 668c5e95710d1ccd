"""Periodic API housekeeping: expired exports and stale playback files."""

from __future__ import annotations

from vms.api import exports, playback
from vms.api.context import ApiContext


def startup(ctx: ApiContext) -> None:
    exports.recover_interrupted(ctx)


def run(ctx: ApiContext) -> None:
    exports.expire_exports(ctx)
    playback.clean_playback_cache(ctx)
