"""The analysis of a real `vms serve` on its default simulated cameras (the station day): no healthy camera
is called frozen, and a camera whose picture really froze still is (issue 19: 7 of 8 simulated cameras were
flagged `frozen` within 3 minutes, because the simulator's sensor noise repeated every 4 frames)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serve_support import REPO, free_port, running_serve
from vms.simulate import Simulator

pytestmark = [pytest.mark.slow, pytest.mark.rtsp]

HEALTHY = 8  # the report's count of simulated cameras
FROZEN_STATION = "daling-town"
DAY_S = 60  # simulate.day_seconds: one whole station day (its 13 s still, lit stretch included) per minute
WATCH_S = DAY_S + 15  # every camera through one whole day, plus the sink's flush


def _catalogue(root: Path, frozen_url: str) -> tuple[Path, list[str]]:
    """The first HEALTHY stations of the shipped catalogue without camera URLs (simulated by `vms serve`),
    and FROZEN_STATION with its camera at `frozen_url`."""
    doc = yaml.safe_load((REPO / "config" / "stations.yaml").read_text("utf-8"))
    healthy = [st for st in doc["stations"] if st["id"] != FROZEN_STATION][:HEALTHY]
    frozen = next(st for st in doc["stations"] if st["id"] == FROZEN_STATION)
    frozen["camera"] = {"main_url": frozen_url}
    doc["stations"] = [*healthy, frozen]
    path = root / "stations.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    return path, [st["id"] for st in healthy]


def test_healthy_simulated_cameras_are_not_frozen_and_a_frozen_one_is(tmp_path, simulator_cache):
    settings = {
        # The embedded defaults' simulated cameras (content station-day, GOP 2 s), their day shortened.
        "simulate": {"enabled": "auto", "max_cameras": HEALTHY, "port": free_port(), "width": 320, "height": 240,
                     "fps": 15, "bitrate_kbps": 300, "content": "station-day", "day_seconds": DAY_S},
        # A sample every 4 s (the keyframe after 3.9 s), frozen after 8 s of identical samples: the report's
        # 20/60 s samples and 60 s, scaled down. Samples a multiple of 4 frames apart, as 20 and 60 s are.
        "analysis": {"sample_interval_seconds": 3.9, "sample_interval_changing_seconds": 3.9,
                     "frozen_seconds": 8, "fault_min_seconds": 4, "fault_clear_seconds": 4,
                     "hysteresis_seconds": 10, "hidden_unknown_seconds": 20, "sink_flush_seconds": 1},
    }
    with Simulator(cameras=0, extra_mounts=("frozen",), width=320, height=240, fps=15, bitrate_kbps=300,
                   cache_dir=simulator_cache) as frozen_camera:
        catalogue, healthy = _catalogue(tmp_path, frozen_camera.urls["frozen"])
        with running_serve(tmp_path, cameras=HEALTHY + 1, footage_seconds=0, settings=settings,
                           stations_file=catalogue) as srv:
            start_ms = int(time.time() * 1000) - 60_000
            time.sleep(WATCH_S)
            client = httpx.Client(base_url=srv["base"], headers={"Authorization": f"Bearer {srv['token']}"},
                                  timeout=30)
            begin = datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(timespec="seconds")
            end = datetime.fromtimestamp(time.time() + 60, UTC).isoformat(timespec="seconds")
            frozen_faults: dict[str, list[dict]] = {}
            sampled: dict[str, int] = {}
            for sid in [*healthy, FROZEN_STATION]:
                r = client.get(f"/api/stations/{sid}/timeline", params={"start": begin, "end": end})
                assert r.status_code == 200, r.text
                frozen_faults[sid] = [f for f in r.json()["faults"] if f["kind"] == "frozen"]
                sampled[sid] = len(r.json()["states"])
            log = (tmp_path / "serve.log").read_text()

    flagged = [sid for sid in healthy if frozen_faults[sid]]
    assert not flagged, f"healthy simulated cameras flagged frozen: {flagged} ({frozen_faults})\n{log[-2000:]}"
    assert frozen_faults[FROZEN_STATION], f"the frozen camera was not flagged: {frozen_faults}\n{log[-2000:]}"
    # The healthy cameras were analysed all along (their open/closed states were decided): a detector that
    # never sampled would pass the first assertion too.
    assert all(sampled[sid] for sid in healthy), sampled
