"""The playback cache's clean-up (API maintenance, every 5 minutes) while playbacks are being made."""

from __future__ import annotations

import os
import sys
import threading
import time

from vms.api.context import ApiContext
from vms.api.playback import PlaybackItem, PlaybackStore
from vms.core.clock import SimulatedClock


def test_clean_up_while_playbacks_are_added(settings, db):
    """The clean-up listed the known files from the store's dict outside its lock, while request threads
    add to it: "dictionary changed size during iteration" ended that maintenance round."""
    store = PlaybackStore(ApiContext.make(settings, db, SimulatedClock()))
    store.dir.mkdir(parents=True)
    stray = store.dir / "left-by-an-earlier-process.mp4"
    stray.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stray, (two_hours_ago, two_hours_ago))
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            pid, path = store.new_path()
            store.add(PlaybackItem(pid, 1, "pingshan-town", path, None, time.monotonic()))  # type: ignore[arg-type]

    adder = threading.Thread(target=requests, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: every interleaving gets its turn
    adder.start()
    try:
        for _ in range(300):
            store.clean(keep_s=3600)
    finally:
        stop.set()
        adder.join(5)
        sys.setswitchinterval(interval)
    assert not stray.exists()  # the clean-up still does its job
