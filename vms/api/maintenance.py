"""Periodic API housekeeping: expired exports and stale playback files."""

from __future__ import annotations

import logging

from vms.api import exports, playback
from vms.api.context import ApiContext

log = logging.getLogger(__name__)


def startup(ctx: ApiContext) -> None:
    exports.recover_interrupted(ctx)


def run(ctx: ApiContext) -> None:
    expired = exports.expire_exports(ctx)
    removed = playback.clean_playback_cache(ctx)
    log.debug("API maintenance: %d exports expired, %d playback files removed", expired, removed)
