"""Score the station detector on real clips and on the simulator's station day.

    .venv/bin/python scripts/eval_analysis.py /work/shared/footage [--markdown docs/analysis-evaluation.md]

Real clips are 9-34 s long, so they are scored with short settings (CLIP_OVERRIDES, printed): every
frame decoded, one sample per 0.4 s, hysteresis 2 s, faults after 0.8 s. The simulator's day (a
600 s compressed day with ground truth) is scored the way the ingest runs: keyframes only.
Truth for the real clips is the README's description; light switch times are refined to the frame
where the per-frame luma (the clips' *_mean_luma.csv) crosses half-way between before and after.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from vms.analysis.calibration import Polygon, StationCalibration
from vms.analysis.detector import ActivityFound, FaultOpened, Sampled, StateChanged, labelled_look
from vms.analysis.offline import analyse_file
from vms.core.settings import AnalysisSettings

FPS = 25
CLIP_OVERRIDES = {"sample_interval_seconds": 0.4, "hysteresis_seconds": 2, "fault_min_seconds": 0.8,
                  "fault_clear_seconds": 0.8, "frozen_seconds": 2, "scene_changed_seconds": 5,
                  "cast_min_seconds": 3, "hidden_unknown_seconds": 5}

# README of the footage folder, in frames at 25 fps: light switches, people, a covered lens.
CLIPS = {
    "beweging/dark-light.h264": {"lights": [(117, "open")], "people": [], "covered": []},
    "beweging/light-dark.h264": {"lights": [(92, "closed")], "people": [], "covered": []},
    "beweging/lightout-after-movement.h264": {"lights": [(292, "open"), (556, "closed")],
                                              "people": [(270, 500)], "covered": []},
    "beweging/alternating-light.h264": {
        "lights": [(82, "open"), (178, "closed"), (283, "open"), (389, "closed"), (510, "open"), (595, "closed"),
                   (702, "open")], "people": [], "covered": []},
    "beweging/total-darkness-to-light.h264": {"lights": [(126, "open")], "people": [], "covered": []},
    "beweging/dark-stand.h264": {"lights": [], "people": [(0, 856)], "covered": []},
    "beweging/walking-to.h264": {"lights": [], "people": [(150, 350)], "covered": [(205, 260)]},
    "caviar/EnterExitCrossingPaths1front.mpg": {"lights": [], "people": "gt_people", "covered": []},
}


def refine(csv_path: Path, frame: int) -> float:
    """The frame where luma crosses half-way between its level before and after the switch."""
    if not csv_path.exists():
        return frame / FPS
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    lum = np.array([float(r[1]) for r in rows[1:] if len(r) > 1])
    a, b = max(0, frame - 45), min(len(lum) - 1, frame + 45)
    before, after = lum[a:a + 8].mean(), lum[b - 8:b + 1].mean()
    mid = (before + after) / 2
    for i in range(a, b):
        if (lum[i] - mid) * (before - mid) <= 0:
            return i / FPS
    return frame / FPS


def people_intervals(truth, clip: Path) -> list[tuple[float, float]]:
    if truth != "gt_people":
        return [(a / FPS, b / FPS) for a, b in truth]
    gt = clip.with_name(clip.stem + "_gt_people.csv")
    out: list[list[float]] = []
    with gt.open() as f:
        for row in csv.DictReader(f):
            t, n = float(row["video_time_s"]), int(row["people_in_frame"])
            if n > 0:
                if out and t - out[-1][1] <= 1.01:
                    out[-1][1] = t + 1
                else:
                    out.append([t, t + 1])
    return [(a, b) for a, b in out]


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def run(path: Path, cfg: AnalysisSettings, cal: StationCalibration, decode: str,
        fps: float = FPS) -> tuple[list, float]:
    t0 = time.process_time()
    events = list(analyse_file(path, cfg, cal, fps, decode))
    return events, time.process_time() - t0


def score_clip(name: str, truth: dict, root: Path, cfg: AnalysisSettings) -> dict:
    path = root / name
    cal = StationCalibration(overrides=CLIP_OVERRIDES)
    events, cpu = run(path, cfg, cal, "all")
    period = CLIP_OVERRIDES["sample_interval_seconds"]
    states = [(e.t_ms / 1000, e.state) for e in events if isinstance(e, StateChanged)]
    changes = states[1:]  # the first is the initial state, not a change
    luma_csv = path.with_name(path.stem + "_mean_luma.csv")
    errors, missed = [], 0
    for frame, state in truth["lights"]:
        t = refine(luma_csv, frame)
        near = [ts for ts, s in changes if s == state and abs(ts - t) <= 2.5]
        if near:
            errors.append(min(near, key=lambda x: abs(x - t)) - t)
        else:
            missed += 1
    durations = [b[0] - a[0] for a, b in zip(states, states[1:], strict=False)]
    episodes = [(e.start_ms / 1000, e.end_ms / 1000) for e in events if isinstance(e, ActivityFound)]
    present = people_intervals(truth["people"], path)
    found = sum(any(overlaps(p, e) for e in episodes) for p in present)
    false_eps = [e for e in episodes if not any(overlaps(p, e) for p in present)]
    faults = [(e.kind, e.severity, e.start_ms / 1000) for e in events if isinstance(e, FaultOpened)]
    covered_ok = all(any(k == "covered" and a / FPS - 1 <= t <= b / FPS + 1 for k, _, t in faults)
                     for a, b in truth["covered"])
    return {
        "clip": name, "samples": sum(isinstance(e, Sampled) for e in events), "cpu_s": cpu,
        "states": states, "light_changes": len(truth["lights"]), "missed": missed, "errors": errors,
        "within_period": all(abs(x) <= period + 1e-6 for x in errors) and not missed,
        "extra_changes": len(changes) - (len(truth["lights"]) - missed),
        "shortest_state_s": min(durations) if durations else None, "hysteresis_s": CLIP_OVERRIDES["hysteresis_seconds"],
        "people": len(present), "people_found": found, "episodes": episodes, "false_episodes": false_eps,
        "faults": faults, "covered_ok": covered_ok,
    }


def score_simulated_day(cache: Path, cfg: AnalysisSettings) -> list[dict]:
    try:
        from vms.simulate.content import StationScene, VideoFormat, station_day_clip
    except ImportError:
        return []
    fmt = VideoFormat(640, 360, 15, 512, 30)
    cache.mkdir(parents=True, exist_ok=True)
    path, truth = station_day_clip(cache, fmt, 600.0)
    over = {"sample_interval_seconds": 6, "sample_interval_changing_seconds": 2, "hysteresis_seconds": 20}
    # Operator calibration: a zone on the door, one snapshot marked closed (lights on, shutter down)
    # and one marked open, as an operator would do once per station.
    scene = StationScene(fmt.width, fmt.height, truth)
    door = Polygon(points=[(0.56, 0.14), (0.82, 0.14), (0.82, 0.80), (0.56, 0.80)], name="door")
    zoned = StationCalibration(zones=[door], overrides=over)
    ev = {e["event"]: e["t"] for e in truth["events"] if e["event"] not in ("person_enter", "person_leave")}

    def y_at(t: float) -> np.ndarray:
        i420 = scene.render(t, 0)
        return i420[: fmt.height]

    closed_t = (ev["lights_on"] + ev["shutter_up"]) / 2
    open_t = truth["person_episodes"][0]["enter"] - 5
    looks = [labelled_look(cfg, zoned, "closed", 0, y_at(closed_t)), labelled_look(cfg, zoned, "open", 0, y_at(open_t))]
    calibrated = zoned.model_copy(update={"looks": looks})
    out = []
    runs = (("uncalibrated", StationCalibration(overrides=over)), ("door zone + 2 marked looks", calibrated))
    for label, cal in runs:
        events, cpu = run(path, cfg, cal, "keyframes", truth["fps"])
        states = [(e.t_ms / 1000, e.state) for e in events if isinstance(e, StateChanged)]
        true_changes = [(truth["open_intervals"][0][0], "open"), (truth["open_intervals"][0][1], "closed")]
        errors = []
        for t, s in true_changes:
            near = [ts for ts, st in states[1:] if st == s]
            errors.append(min((x - t for x in near), key=abs) if near else None)
        episodes = [(e.start_ms / 1000, e.end_ms / 1000) for e in events if isinstance(e, ActivityFound)]
        present = [tuple(p) for p in truth["person_present_intervals"]]
        out.append({
            "clip": f"simulated station day 600 s ({label})", "cpu_s": cpu, "states": states, "errors": errors,
            "people": len(present), "people_found": sum(any(overlaps(p, e) for e in episodes) for p in present),
            "episodes": episodes,
            "false_episodes": [e for e in episodes if not any(overlaps(p, e) for p in present)],
            "faults": [(e.kind, e.severity, e.start_ms / 1000) for e in events if isinstance(e, FaultOpened)],
            "settings": over,
        })
    return out


def fmt_report(rows: list[dict], sim: list[dict]) -> str:
    lines = [f"# Analysis evaluation ({datetime.now(UTC).strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{platform.processor() or 'cpu'}, Python {platform.python_version()})", "",
             "Produced by `scripts/eval_analysis.py FOOTAGE_DIR`. Real clips: every frame decoded, settings "
             f"overridden for short clips: `{CLIP_OVERRIDES}`. Times in seconds.", "",
             "| clip | light changes (error s) | within one sample (0.4 s) | extra changes | shortest state "
             "| people found | false activity | faults |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errs = ", ".join(f"{e:+.2f}" for e in r["errors"]) or "-"
        miss = f" ({r['missed']} missed)" if r["missed"] else ""
        short = f"{r['shortest_state_s']:.1f}" if r["shortest_state_s"] is not None else "-"
        faults = ", ".join(f"{k}/{s}@{t:.1f}" for k, s, t in r["faults"]) or "none"
        lines.append(f"| {r['clip']} | {r['light_changes']}: {errs}{miss} | {'yes' if r['within_period'] else 'NO'} "
                     f"| {r['extra_changes']} | {short} | {r['people_found']}/{r['people']} "
                     f"| {len(r['false_episodes'])} | {faults} |")
    if sim:
        lines += ["", "Simulator (`vms.simulate.content.station_day_clip`, 640x360 15 fps, keyframes only as live, "
                  f"settings `{sim[0]['settings']}`):", "",
                  "| run | open error s | close error s | people found | false activity | faults |",
                  "|---|---|---|---|---|---|"]
        for r in sim:
            e = ["-" if x is None else f"{x:+.1f}" for x in r["errors"]]
            faults = ", ".join(f"{k}@{t:.0f}" for k, _, t in r["faults"]) or "none"
            lines.append(f"| {r['clip']} | {e[0]} | {e[1]} | {r['people_found']}/{r['people']} "
                         f"| {len(r['false_episodes'])} | {faults} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("footage", type=Path, help="folder with beweging/ and caviar/ (see its README)")
    ap.add_argument("--sim-cache", type=Path, default=Path("/tmp/vms-eval-cache"))
    ap.add_argument("--no-sim", action="store_true", help="skip the simulator's station day")
    ap.add_argument("--markdown", type=Path, help="also write the report here")
    ap.add_argument("--verbose", action="store_true", help="print every state change and episode")
    args = ap.parse_args()
    if not args.footage.is_dir():
        print(f"error: {args.footage} is not a folder", file=sys.stderr)
        return 2
    cfg = AnalysisSettings()
    rows = []
    for name, truth in CLIPS.items():
        if not (args.footage / name).exists():
            print(f"skip {name}: not in {args.footage}", file=sys.stderr)
            continue
        r = score_clip(name, truth, args.footage, cfg)
        rows.append(r)
        if args.verbose:
            print(r["clip"], r["states"], r["episodes"], r["faults"])
    sim = [] if args.no_sim else score_simulated_day(args.sim_cache, cfg)
    if args.verbose:
        for r in sim:
            print(r["clip"], r["states"], r["episodes"], r["faults"])
    report = fmt_report(rows, sim)
    print(report)
    checks = {
        "lights found within one sample": all(r["within_period"] for r in rows if r["light_changes"]),
        "no flapping shorter than the hysteresis": all(
            r["shortest_state_s"] is None or r["shortest_state_s"] >= r["hysteresis_s"] for r in rows),
        "dark-stand counts as activity": any(r["people_found"] for r in rows if "dark-stand" in r["clip"]),
        "walking-to: covered fault, no state change": all(
            r["covered_ok"] and r["extra_changes"] == 0 for r in rows if "walking-to" in r["clip"]),
    }
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report + "\n" + "\n".join(
            f"- {'PASS' if ok else 'FAIL'}: {k}" for k, ok in checks.items()) + "\n", encoding="utf-8")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
