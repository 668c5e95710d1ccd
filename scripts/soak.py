#!/usr/bin/env python
"""Real-time soak benchmark: `vms serve` on its defaults (analysis, live tap, API, scheduled jobs) recording
N simulated cameras for M minutes, watched from outside as a monitoring system would.

    .venv/bin/python scripts/soak.py --cameras 139 --minutes 60 [--out DIR] [--poll-seconds 2]

Reports, every --report-minutes (10) and at the end, so that a long run stopped early still gives figures:
- coverage per camera: recorded ms / wall ms since every camera first streamed (goal >= 99.9 %), from
  the index;
- silent stalls: answers of GET /api/stations where a camera is `streaming` without a packet within
  ingest.stall_seconds (goal 0);
- RSS, open fds and threads of every process (supervisor, each worker, the simulator apart) at 10 min
  against the end (goal: RSS growth < 10 %, fds and threads flat);
- the API's answers (every poll, latency), and at the end: SIGTERM to a clean exit, `vms recordings check`
  (index == disk).
Writes report.json and report.md (a table for docs/benchmarks.md, with machine, date and commit) in the
run's folder (default artifacts/soak-bench/<date>-<N>cam/, which also holds serve.log, the database and
the footage: about 75 MB per camera-hour at the simulator's defaults). Ctrl-C or SIGTERM ends the run
early and still writes the final report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serve_support import free_port  # noqa: E402
from tests.soak_support import (  # noqa: E402
    Poll,
    Poller,
    SegmentLedger,
    covered_ms,
    machine,
    now_ms,
    run_vms,
    sample_processes,
    start_serve,
)

GOAL_COVERAGE = 99.9
GOAL_RSS_GROWTH = 10.0


class Watch:
    """Everything learned from the polls, without keeping them (139 cameras x a poll every 2 s)."""

    def __init__(self, stall_ms: int) -> None:
        self.stall_ms = stall_ms
        self.lock = threading.Lock()
        self.polls = self.answered = self.camera_answers = 0
        self.latencies: list[float] = []
        self.health_latencies: list[float] = []
        self.silent: list[str] = []  # examples
        self.silent_count = 0
        self.states: dict[str, int] = {}
        self.health: dict[str, int] = {}
        self.errors: list[str] = []

    def __call__(self, p: Poll) -> None:
        with self.lock:
            self.polls += 1
            if p.health_latency_s is not None:
                self.health_latencies.append(p.health_latency_s)
                status = (p.health or {}).get("status", "?")
                self.health[status] = self.health.get(status, 0) + 1
            if p.status != 200 or p.latency_s is None:
                if len(self.errors) < 20:
                    self.errors.append(f"{p.sent_ms}: {p.status} {p.error}")
                return
            self.answered += 1
            self.latencies.append(p.latency_s)
            for sid, cam in p.cameras.items():
                self.camera_answers += 1
                self.states[cam["state"]] = self.states.get(cam["state"], 0) + 1
                if cam["state"] != "streaming":
                    continue
                last = cam.get("last_packet_ms")
                if last is None or p.generated_ms - last > self.stall_ms:
                    self.silent_count += 1
                    if len(self.silent) < 20:
                        age = "never" if last is None else f"{(p.generated_ms - last) / 1000:.1f} s before"
                        self.silent.append(f"{sid} at {p.generated_ms}: last packet {age}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def coverage(ledger: SegmentLedger, stations: list[str], start_ms: int, end_ms: int) -> dict[str, float]:
    wall = max(1, end_ms - start_ms)
    return {s: 100.0 * covered_ms(ledger.intervals(s), start_ms, end_ms) / wall for s in stations}


def process_table(samples: list[dict], baseline_min: float) -> tuple[list[dict], float | None]:
    """Per role: the sample nearest baseline_min minutes (or a third of the run, if shorter) vs the last."""
    if not samples:
        return [], None
    end = samples[-1]
    target = min(baseline_min, end["minutes"] / 3)
    base = min(samples, key=lambda s: abs(s["minutes"] - target))
    rows = []
    for role in sorted(set(base["processes"]) | set(end["processes"]), key=_role_order):
        b, e = base["processes"].get(role), end["processes"].get(role)
        row = {"process": role, "pid": (e or b)["pid"]}
        for key in ("rss", "fds", "threads"):
            row[f"{key}_base"] = b[key] if b else None
            row[f"{key}_end"] = e[key] if e else None
        row["rss_growth_pct"] = (100.0 * (e["rss"] - b["rss"]) / b["rss"]) if b and e and b["rss"] else None
        row["same_pid"] = bool(b and e and b["pid"] == e["pid"])
        seconds = (end["minutes"] - base["minutes"]) * 60
        row["cores"] = ((e["cpu_s"] - b["cpu_s"]) / seconds if row["same_pid"] and seconds > 0 else None)
        rows.append(row)
    return rows, base["minutes"]


def _role_order(role: str) -> tuple:
    order = {"supervisor": 0, "simulator": 9}
    return (order.get(role, 1 if role.startswith("worker-") else 5), role)


def build_report(args, info: dict, run, watch: Watch, ledger: SegmentLedger, samples: list[dict],
                 end_ms: int, final: dict | None) -> dict:
    # While the run goes on, a growing segment's end in the index lags by up to a status interval.
    cov = coverage(ledger, run.stations, run.ready_ms, end_ms if final else end_ms - 2 * args.status_interval_ms)
    values = sorted(cov.values())
    procs, base_min = process_table(samples, args.baseline_minutes)
    with watch.lock:
        api = {"polls": watch.polls, "answered": watch.answered,
               "p50_s": pct(watch.latencies, 0.5), "p95_s": pct(watch.latencies, 0.95),
               "max_s": max(watch.latencies, default=None),
               "health_p95_s": pct(watch.health_latencies, 0.95), "health_max_s": max(watch.health_latencies,
                                                                                          default=None),
               "health_answers": dict(watch.health), "camera_states": dict(watch.states), "errors": watch.errors}
        silent = {"count": watch.silent_count, "camera_answers": watch.camera_answers, "examples": watch.silent}
    return {
        "command": "scripts/soak.py " + " ".join(sys.argv[1:]),
        **info,
        "cameras": args.cameras, "minutes_asked": args.minutes,
        "minutes_run": round((end_ms - run.ready_ms) / 60000, 2),
        "workers": sorted(r for r in (samples[-1]["processes"] if samples else {}) if r.startswith("worker-")),
        "coverage": {"goal_pct": GOAL_COVERAGE, "min_pct": values[0] if values else None,
                     "median_pct": statistics.median(values) if values else None,
                     "mean_pct": statistics.fmean(values) if values else None,
                     "below_goal": sorted(s for s, v in cov.items() if v < GOAL_COVERAGE),
                     "worst": sorted(cov.items(), key=lambda kv: kv[1])[:5], "per_camera": cov},
        "silent_stalls": silent,
        "api": api,
        "processes": {"baseline_minutes": base_min, "table": procs, "samples": samples},
        "final": final,
    }


def vms_rss_growth(r: dict) -> float | None:
    """The largest RSS growth of vms's own processes: the simulator stands in for the cameras."""
    growth = [p["rss_growth_pct"] for p in r["processes"]["table"]
              if p["rss_growth_pct"] is not None and p["process"] != "simulator"]
    return max(growth, default=None)


def _f(v, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def markdown(r: dict) -> str:
    cov, silent, api = r["coverage"], r["silent_stalls"], r["api"]
    procs = r["processes"]
    final = r["final"] or {}
    mb = 1024 * 1024
    max_growth = vms_rss_growth(r)
    lines = [
        f"### Real-time soak: {r['cameras']} cameras, {r['minutes_run']:g} min"
        + ("" if final else " (in progress)"),
        "",
        f"`{r['command']}` — commit {r['commit']}, {r['date']}; {r['cpu']}, {r['cores']} cores, "
        f"{r['memory_bytes'] / 1024**3:.0f} GB; `vms serve` on its defaults (analysis, live tap, API, scheduled "
        f"jobs), {len(r['workers'])} workers, simulated cameras (`simulate:` defaults); load average at the start "
        + " / ".join(f"{x:.1f}" for x in r["load_average_at_start"])
        + (" (other work on the machine)" if r["load_average_at_start"][0] > 0.5 else " (quiet)") + ".",
        "",
        "| figure | goal | result |",
        "|---|---|---|",
        f"| coverage per camera, min / median (recorded / wall since all streamed) | >= {cov['goal_pct']} % | "
        f"{_f(cov['min_pct'], '{:.3f}')} % / {_f(cov['median_pct'], '{:.3f}')} % |",
        f"| cameras below {cov['goal_pct']} % | 0 | {len(cov['below_goal'])} |",
        f"| silent stalls (`streaming` without a packet within stall_seconds) | 0 | {silent['count']} of "
        f"{silent['camera_answers']:,} camera answers |",
        f"| RSS growth, {_f(procs['baseline_minutes'], '{:g}')} min -> end (largest of the vms processes; the "
        f"simulator, the test's cameras, is listed apart below) | < "
        f"{GOAL_RSS_GROWTH:g} % | {_f(max_growth, '{:+.1f}')} % |",
        f"| GET /api/stations answered; p95 / max latency | all | {api['answered']} of {api['polls']}; "
        f"{_f(api['p95_s'], '{:.3f}')} / {_f(api['max_s'], '{:.3f}')} s |",
        f"| GET /api/health answers | | {api['health_answers']} |",
    ]
    if final:
        lines += [
            f"| index == disk (`vms recordings check`) | exit 0 | exit {final['check_exit']}, "
            f"{final['check_problems']} problems, {final['check_files']} files |",
            f"| SIGTERM | exit 0 within 15 s, no growing rows | exit {final['exit_code']} in "
            f"{_f(final['stop_seconds'], '{:.1f}')} s, {final['growing_after_stop']} growing |",
        ]
    lines += ["", f"| process | RSS at {_f(procs['baseline_minutes'], '{:g}')} min | RSS at end | growth | "
                  "fds | threads | CPU cores (mean since) |", "|---|---|---|---|---|---|---|"]
    for p in procs["table"]:
        name = p["process"] + ("" if p["same_pid"] else " (restarted)")
        lines.append(
            f"| {name} | {_f(p['rss_base'] and p['rss_base'] / mb, '{:.0f} MB')} | "
            f"{_f(p['rss_end'] and p['rss_end'] / mb, '{:.0f} MB')} | {_f(p['rss_growth_pct'], '{:+.1f} %')} | "
            f"{p['fds_base']} -> {p['fds_end']} | {p['threads_base']} -> {p['threads_end']} | "
            f"{_f(p['cores'], '{:.3f}')} |")
    if cov["below_goal"]:
        lines += ["", "Below the coverage goal: " + ", ".join(f"{s} {v:.3f} %" for s, v in cov["worst"]
                                                                  if v < cov["goal_pct"])]
    if silent["examples"]:
        lines += ["", "Silent stalls, first: " + "; ".join(silent["examples"][:5])]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=139)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--report-minutes", type=float, default=10, help="write the report this often")
    ap.add_argument("--baseline-minutes", type=float, default=10, help="RSS, fds, threads compared from here")
    ap.add_argument("--sample-seconds", type=float, default=60, help="process figures this often")
    ap.add_argument("--poll-seconds", type=float, default=2, help="GET /api/stations and /api/health this often")
    ap.add_argument("--out", type=Path, help="the run's folder (default artifacts/soak-bench/<date>-<N>cam)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "data" / "cache" / "simulate",
                    help="simulator clips, kept between runs")
    ap.add_argument("--keep-footage", action="store_true", help="keep the recordings (default: deleted at the end)")
    args = ap.parse_args()
    out = args.out or REPO / "artifacts" / "soak-bench" / f"{time.strftime('%Y%m%d-%H%M')}-{args.cameras}cam"
    if out.exists() and any(out.iterdir()):
        ap.error(f"{out} exists and is not empty: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    need = args.cameras * args.minutes / 60 * 75e6
    free = shutil.disk_usage(out).free
    if free < 2 * need:
        print(f"warning: {free / 1e9:.0f} GB free in {out}, the footage may take ~{need / 1e9:.0f} GB", file=sys.stderr)

    # The product's defaults; only where files go, the ports and how many cameras are simulated are set.
    settings = {
        "data_dir": str(out / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(out / "recordings")}]},
        "api": {"port": free_port()},
        "simulate": {"port": free_port(), "control_port": free_port(), "max_cameras": args.cameras},
    }
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    (out / "data" / "cache").mkdir(parents=True, exist_ok=True)
    (out / "data" / "cache" / "simulate").symlink_to(args.cache_dir.resolve(), target_is_directory=True)

    from vms.core.settings import Settings

    defaults = Settings()  # as vms serve runs here
    stall_ms = int(defaults.ingest.stall_seconds * 1000)
    args.status_interval_ms = int(defaults.ingest.status_interval_seconds * 1000)
    info = machine()
    info["load_average_at_start"] = os.getloadavg()
    print(f"starting vms serve with {args.cameras} simulated cameras in {out}", flush=True)
    run = start_serve(out, settings, args.cameras, ready_timeout=900)  # Ctrl-C here kills the run
    # From now on Ctrl-C or SIGTERM end the soak early, with a final report.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"all {args.cameras} cameras streaming; soaking {args.minutes:g} min", flush=True)
    watch = Watch(stall_ms)
    poller = Poller(run.base, interval=args.poll_seconds, on_poll=watch, keep=False)
    ledger = SegmentLedger(run.db_url)
    samples: list[dict] = []
    final = None
    try:
        poller.start()
        end_at = run.ready_ms + args.minutes * 60_000
        next_sample = next_report = time.monotonic()
        next_report += args.report_minutes * 60
        while now_ms() < end_at and not stopping.is_set():
            if run.proc.poll() is not None:
                print(f"vms serve exited with {run.proc.returncode}", file=sys.stderr)
                break
            if time.monotonic() >= next_sample:
                samples.append({"minutes": round((now_ms() - run.ready_ms) / 60000, 2),
                                "processes": sample_processes(run.proc.pid, run.log_text())})
                next_sample += args.sample_seconds
            if time.monotonic() >= next_report:
                ledger.refresh()
                write(out, build_report(args, info, run, watch, ledger, samples, now_ms(), None), echo=True)
                next_report += args.report_minutes * 60
            stopping.wait(1.0)
        samples.append({"minutes": round((now_ms() - run.ready_ms) / 60000, 2),
                        "processes": sample_processes(run.proc.pid, run.log_text())})
        poller.stop()
        end_ms = now_ms()
        run.stop(timeout=120)
        ledger.refresh()
        check = run_vms(run.env, "recordings", "check", "--format", "json", check=False, timeout=3600)
        try:
            checked = json.loads(check.stdout)
        except ValueError:
            checked = {"files": None, "problems": [check.stdout[-500:] + check.stderr[-500:]]}
        final = {"load_average_at_end": os.getloadavg(), "exit_code": run.exit_code, "stop_seconds": run.stop_seconds,
                 "growing_after_stop": sum(1 for r in ledger.rows.values() if r[3] == "growing"),
                 "check_exit": check.returncode, "check_files": checked.get("files"),
                 "check_problems": len(checked.get("problems") or []),
                 "check_examples": (checked.get("problems") or [])[:10]}
        report = build_report(args, info, run, watch, ledger, samples, end_ms, final)
        write(out, report, echo=True)
    finally:
        poller.stop()
        run.kill()
        ledger.close()
        if final is not None and not args.keep_footage:
            shutil.rmtree(out / "recordings", ignore_errors=True)
    ok = (final is not None and report["coverage"]["min_pct"] is not None
          and report["coverage"]["min_pct"] >= GOAL_COVERAGE and report["silent_stalls"]["count"] == 0
          and final["check_exit"] == 0 and final["exit_code"] == 0
          and (vms_rss_growth(report) or 0.0) < GOAL_RSS_GROWTH)
    print(f"report: {out / 'report.md'} ({'goals met' if ok else 'goals NOT met'})")
    return 0 if ok else 1


def write(out: Path, report: dict, echo: bool = False) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "report.md").write_text(md)
    if echo:
        print(md, flush=True)


if __name__ == "__main__":
    sys.exit(main())
