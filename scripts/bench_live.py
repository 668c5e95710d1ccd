#!/usr/bin/env python
"""Benchmark the console's live view as an operator meets it: a real `vms serve` recording simulated
cameras (GStreamer RTSP on loopback), Debian's headless Chromium (Playwright), no camera permission in
the browser (so its WebRTC offer carries mDNS candidates, as an operator's console does).

    .venv/bin/python scripts/bench_live.py [--tries 12] [--cameras 1] [--camera-permission] [--json FILE]

Figures, median and p90 of --tries each:
- console first load: a fresh browser context (empty cache) opening /console/ until the login form is
  shown, and login -> the wall's station tree drawn;
- click -> first frame over WebRTC: a click on the camera's tile on the wall until the first video frame
  is painted (requestVideoFrameCallback), measured inside the page (the click's and the frame's
  performance.now());
- click -> first frame over the fallback (fMP4 over WebSocket into MSE): the same click in a page without
  RTCPeerConnection, so the console goes straight to the fallback.
- with --wall16: CPU of the whole `vms serve` process tree (the API process and its ingest worker; the
  simulator is a separate process, not counted) with 16 simulated cameras at the product's camera
  settings (default 1920x1080, 15 fps, 2 Mbit/s, a keyframe every 2 s, as scripts/bench_ingest.py), over
  --cpu-seconds each: nobody watching, then the new console's wall (/console/next/wall) with its 16
  windows filled and playing over WebRTC, then the same over the MSE fallback (a page without
  RTCPeerConnection); every tile is checked to play (currentTime advances, videoWidth > 0) and its
  decoded frames counted.
- with --hevc WxH: CPU of the API process (`vms serve`'s main process; the recorder is in its worker
  processes) per H.265 -> H.264 transcoding viewer: one simulated H.265 camera of that size, 0, 1 and 2
  Chromium pages watching it over the fallback (Chromium on Linux asks for H.264), --cpu-seconds each.
Each try waits out the relay's linger (live.relay_linger_seconds, 3 s) first, so every try starts cold:
the relay connects to the ingest's tap as it does when an operator opens a camera nobody watches.
The simulated cameras of the first-frame figures are 320x240, 15 fps, a keyframe every 2 s
(tests/serve_support.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serve_support import PASSWORD, running_serve  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",  # the server is on loopback here; a LAN needs nothing
]
RELAY_LINGER_S = 3.0
# The click's time, kept by the page itself (capture phase: before the console's own handlers).
CLICK_CLOCK = "document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true);"
FIRST_FRAME = """(mode) => window.__live && window.__live.mode === mode && window.__live.firstFrameMs != null"""


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def summary(xs: list[float]) -> dict:
    return {"median_ms": round(statistics.median(xs)), "p90_ms": round(percentile(xs, 0.9)),
            "min_ms": round(min(xs)), "max_ms": round(max(xs)), "tries": len(xs)}


def machine() -> str:
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cores = len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("processor")])
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{model}, {cores} cores; {chromium}"


def new_page(browser, base: str, permission: bool, init_scripts: list[str]):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=base,
                              permissions=["camera", "microphone"] if permission else [])
    for script in init_scripts:
        ctx.add_init_script(script)
    return ctx, ctx.new_page()


def login(page) -> None:
    page.fill("#username", "wang-admin")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#tree")


def console_first_load(browser, base: str, tries: int) -> tuple[list[float], list[float]]:
    loads, logins = [], []
    for _ in range(tries):
        ctx, page = new_page(browser, base, False, [])
        t0 = time.monotonic()
        page.goto("/console/")
        page.wait_for_selector("#login-form")
        loads.append((time.monotonic() - t0) * 1000)
        t0 = time.monotonic()
        login(page)
        logins.append((time.monotonic() - t0) * 1000)
        ctx.close()
    return loads, logins


def click_to_first_frame(browser, base: str, station: str, mode: str, tries: int, permission: bool) -> list[float]:
    """Milliseconds from the click on the station's wall tile to its first painted frame in `mode`."""
    scripts = [CLICK_CLOCK] + (["delete window.RTCPeerConnection;"] if mode == "mse" else [])
    ctx, page = new_page(browser, base, permission, scripts)
    page.goto("/console/")
    login(page)
    town = page.locator(f"#tree a[href='#/station/{station}']").get_attribute("data-town")
    out = []
    for _ in range(tries):
        page.goto(f"/console/#/wall/{town}")  # leaving the station page closes its live view
        page.wait_for_selector(f"#wall .tile[data-id='{station}']")
        time.sleep(RELAY_LINGER_S + 1.0)  # the relay lets go: a cold start, as for a camera nobody watches
        page.click(f"#wall .tile[data-id='{station}']")
        page.wait_for_function(FIRST_FRAME, arg=mode, timeout=20_000)
        out.append(page.evaluate("window.__live.t0 + window.__live.firstFrameMs - window.__clickAt"))
    ctx.close()
    return out


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def hevc_serve(root: Path, width: int, height: int, viewers: int):
    """`vms serve` recording one simulated H.265 camera of width x height, 15 fps, `viewers` transcode slots."""
    import yaml

    from vms.simulate import Simulator

    catalogue = yaml.safe_load((REPO / "config" / "stations.yaml").read_text())
    station = next(s for s in catalogue["stations"] if s["id"] == "andun-town")
    stack = ExitStack()
    sim = stack.enter_context(Simulator(cameras=0, width=width, height=height, fps=15,
                                        bitrate_kbps=max(300, width * height // 1000), gop=30,
                                        extra_mounts=("h265",), cache_dir=root / "clips"))
    station["camera"] = {"main_url": sim.urls["h265"], "transport": "tcp"}
    catalogue["stations"] = [station]
    (root / "stations.yaml").write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    srv = stack.enter_context(running_serve(root / "serve", cameras=1, footage_seconds=2,
                                            stations_file=root / "stations.yaml",
                                            settings={"simulate": {"enabled": "never"},
                                                      "live": {"max_transcodes": viewers}}))
    return stack, srv


def transcode_cpu(browser, root: Path, size: str, seconds: float, max_viewers: int = 2) -> dict:
    """CPU of the API process (% of one core) with 0..max_viewers pages watching an H.265 camera transcoded."""
    width, height = (int(x) for x in size.lower().split("x"))
    (root / "serve").mkdir(parents=True)
    stack, srv = hevc_serve(root, width, height, max_viewers)
    with stack:
        pid = srv["proc"].pid
        pages, out, fps = [], {}, {}
        for viewers in range(max_viewers + 1):
            if viewers:
                ctx, page = new_page(browser, srv["base"], False, [])
                page.goto("/console/")
                login(page)
                page.goto("/console/#/station/andun-town")
                page.wait_for_function("() => window.__live && window.__live.transcoded && window.__live.frames > 5",
                                       timeout=30_000)
                pages.append(ctx)
            time.sleep(3)  # settle
            shown0 = [shown_frames(ctx.pages[0]) for ctx in pages]
            c0, t0 = process_cpu_s(pid), time.monotonic()
            time.sleep(seconds)
            out[viewers] = round(100 * (process_cpu_s(pid) - c0) / (time.monotonic() - t0), 1)
            wall = time.monotonic() - t0
            fps[viewers] = [round((shown_frames(ctx.pages[0]) - f0) / wall, 1)
                            for ctx, f0 in zip(pages, shown0, strict=True)]
        for ctx in pages:
            ctx.close()
        camera = httpx.get(f"{srv['base']}/api/stations/andun-town",
                           headers={"Authorization": f"Bearer {srv['token']}"}).json()["camera"]
    per_viewer = [round(out[k] - out[k - 1], 1) for k in range(1, max_viewers + 1)]
    return {"size": size, "api_process_cpu_percent_by_viewers": out, "added_per_viewer_percent": per_viewer,
            "frames_shown_per_second_by_viewers": fps, "camera_fps_as_recorded": camera.get("fps"),
            # per transcoded frame: what a viewer costs at any frame rate the camera really sends
            "cpu_ms_per_frame": (round(10 * statistics.mean(per_viewer) / camera["fps"], 1)
                                 if camera.get("fps") else None)}


# -- a 16-window wall ---------------------------------------------------------------------------------
WALL_TILES = 16
NEXT_CONSOLE = "/console/next/"
# Every tile of the wall: its station, how it plays (data-mode), its video's clock, size and frame counts.
WALL_TILES_STATE = """() => [...document.querySelectorAll('#wall .tile')].map((t) => {
  const v = t.querySelector('video');
  const q = v ? v.getVideoPlaybackQuality() : null;
  if (v && v.__painted === undefined) {  // frames painted, counted by the page (requestVideoFrameCallback)
    v.__painted = 0;
    const onFrame = () => { v.__painted += 1; v.requestVideoFrameCallback(onFrame); };
    v.requestVideoFrameCallback(onFrame);
  }
  return { station: t.dataset.station, mode: t.dataset.mode, stream: t.dataset.stream, time: v ? v.currentTime : 0,
           width: v ? v.videoWidth : 0, height: v ? v.videoHeight : 0, painted: v ? v.__painted : 0,
           total: q ? q.totalVideoFrames : 0, dropped: q ? q.droppedVideoFrames : 0 };
})"""
ALL_TILES_PLAYING = """([n, mode]) => { const tiles = [...document.querySelectorAll('#wall .tile')];
  return tiles.length === n && tiles.every((t) => { const v = t.querySelector('video');
    return t.dataset.mode === mode && v && v.videoWidth > 0 && v.currentTime > 1; }); }"""


def serve_tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of `vms serve` and every process under it, by pid, with a label."""
    import psutil

    root = psutil.Process(pid)
    out: dict[int, tuple[str, float]] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        label = "api (vms serve)" if proc.pid == pid else (
            "ingest worker" if "multiprocessing" in cmd or "spawn" in cmd else proc.name())
        out[proc.pid] = (label, times.user + times.system)
    return out


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wall_serve(root: Path, width: int, height: int, fps: int, bitrate_kbps: int, sub: str | None = None):
    """`vms serve` recording WALL_TILES simulated cameras (a Simulator of its own, outside the serve tree);
    with `sub` (WxH) each station also gets a sub-stream of that size (15 fps, 512 kbit/s: a camera's usual
    sub-stream) from a second simulator, which the 16-window wall then plays."""
    import yaml

    from vms.simulate import Simulator

    catalogue = yaml.safe_load((REPO / "config" / "stations.yaml").read_text())
    stations = catalogue["stations"][:WALL_TILES]
    stack = ExitStack()
    sim = stack.enter_context(Simulator(cameras=WALL_TILES, names=[s["id"] for s in stations], width=width,
                                        height=height, fps=fps, bitrate_kbps=bitrate_kbps, gop=2 * fps,
                                        content="pattern", cache_dir=REPO / "data" / "cache" / "simulate",
                                        ready_timeout=300))
    for station in stations:
        station["camera"] = {"main_url": sim.urls[station["id"]], "transport": "tcp"}
    if sub:
        sub_width, sub_height = (int(x) for x in sub.lower().split("x"))
        subs = stack.enter_context(Simulator(cameras=WALL_TILES, names=[f"{s['id']}-sub" for s in stations],
                                             width=sub_width, height=sub_height, fps=fps, bitrate_kbps=512,
                                             gop=2 * fps, content="pattern",
                                             cache_dir=REPO / "data" / "cache" / "simulate", ready_timeout=300))
        for station in stations:
            station["camera"]["sub_url"] = subs.urls[f"{station['id']}-sub"]
    catalogue["stations"] = stations
    (root / "stations.yaml").write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    srv = stack.enter_context(running_serve(root / "serve", cameras=WALL_TILES, footage_seconds=2,
                                            stations_file=root / "stations.yaml",
                                            settings={"simulate": {"enabled": "never"}}))
    return stack, srv


def open_wall(browser, base: str, stations: list[str], mode: str):
    """A logged-in page of the new console showing the 16-window wall with every window filled, once
    every tile plays in `mode` (webrtc, or mse in a page without RTCPeerConnection)."""
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, base_url=base, locale="zh-CN")
    if mode == "mse":
        ctx.add_init_script("delete window.RTCPeerConnection;")
    page = ctx.new_page()
    page.goto(NEXT_CONSOLE + "login")
    page.fill("#username", "wang-admin")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("#device-tree .tree-town")
    t0 = time.monotonic()
    page.goto(f"{NEXT_CONSOLE}wall?layout={WALL_TILES}&w={','.join(stations)}")
    page.wait_for_function(ALL_TILES_PLAYING, arg=[WALL_TILES, mode], timeout=120_000)
    return ctx, page, time.monotonic() - t0


def live_packets(srv: dict) -> tuple[int, int]:
    """Packets the API process got from the ingest's taps (all relays) and sent over WebRTC (all sessions)."""
    # A long timeout: a saturated API process answers late, and the window's figures are still wanted.
    stats = httpx.get(f"{srv['base']}/api/live/stats", headers={"Authorization": f"Bearer {srv['token']}"},
                      timeout=60).json()
    return (sum(r["packets"] for r in stats["relays"].values()),
            sum(s["packets_sent"] for s in stats["webrtc_sessions"]))


def cpu_window(srv: dict, seconds: float, page=None) -> dict:
    """The serve tree's CPU over `seconds` (and, with a wall page, what each of its tiles played)."""
    pid = srv["proc"].pid
    tiles0 = page.evaluate(WALL_TILES_STATE) if page is not None else None
    packets0 = live_packets(srv)
    cpu0, t0 = serve_tree_cpu(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, wall = serve_tree_cpu(pid), time.monotonic() - t0
    packets1 = live_packets(srv)
    tiles1 = page.evaluate(WALL_TILES_STATE) if page is not None else None
    by_process: dict[str, float] = {}
    for p, (label, seconds1) in cpu1.items():
        by_process[label] = by_process.get(label, 0.0) + seconds1 - cpu0.get(p, (label, 0.0))[1]
    total = sum(by_process.values())
    out: dict = {"seconds": round(wall, 1), "cores": round(total / wall, 3),
                 "cores_by_process": {k: round(v / wall, 3) for k, v in by_process.items()},
                 "processes": len(cpu1), "load_average": load_average()}
    if tiles0 is not None and tiles1 is not None:
        tiles = []
        for a, b in zip(tiles0, tiles1, strict=True):
            tiles.append({"station": b["station"], "mode": b["mode"], "stream": b["stream"],
                          "width": b["width"], "height": b["height"],
                          "media_s": round(b["time"] - a["time"], 2),
                          # getVideoPlaybackQuality: frames decoded (total) and of those dropped, per second
                          "decoded_per_s": round((b["total"] - a["total"]) / wall, 1),
                          "dropped_per_s": round((b["dropped"] - a["dropped"]) / wall, 1),
                          "painted_per_s": round((b["painted"] - a["painted"]) / wall, 1)})
        out["tiles"] = tiles
        out["all_tiles_play"] = all(t["width"] > 0 and t["media_s"] >= 0.8 * wall for t in tiles)
        out["ms_per_tile_second"] = round(1000 * total / wall / len(tiles), 2)
        for key in ("decoded_per_s", "dropped_per_s", "painted_per_s"):
            values = [t[key] for t in tiles]
            out[f"tile_{key}"] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        out["relay_packets_per_tile_second"] = round((packets1[0] - packets0[0]) / wall / len(tiles), 1)
        out["webrtc_packets_sent_per_tile_second"] = round((packets1[1] - packets0[1]) / wall / len(tiles), 1)
    return out


def wall16_cpu(browser, root: Path, size: str, fps: int, bitrate_kbps: int, seconds: float,
               sub: str | None = None) -> dict:
    width, height = (int(x) for x in size.lower().split("x"))
    (root / "serve").mkdir(parents=True)
    stack, srv = wall_serve(root, width, height, fps, bitrate_kbps, sub)
    with stack:
        stations = srv["stations"]
        time.sleep(5)  # the recorders settle (first segments, analysis start)
        out: dict = {"cameras": f"{WALL_TILES} x {size} {fps} fps {bitrate_kbps} kbit/s, keyframe every 2 s"
                     + (f"; sub-streams {sub} {fps} fps 512 kbit/s" if sub else "; no sub-streams"),
                     "no_viewer": cpu_window(srv, seconds)}
        for mode in ("webrtc", "mse"):
            ctx, page, to_playing = open_wall(browser, srv["base"], stations, mode)
            page.evaluate(WALL_TILES_STATE)  # starts the painted-frame counters
            page.wait_for_timeout(3000)  # settle
            window = cpu_window(srv, seconds, page)
            window["open_to_all_playing_s"] = round(to_playing, 1)
            window["added_ms_per_tile_second"] = round(
                1000 * (window["cores"] - out["no_viewer"]["cores"]) / WALL_TILES, 2)
            out[mode] = window
            ctx.close()
            time.sleep(RELAY_LINGER_S + 3)  # every view closed and the relays gone before the next
        headers = {"Authorization": f"Bearer {srv['token']}"}
        cams = httpx.get(f"{srv['base']}/api/stations", headers=headers).json()["stations"]
        out["camera_fps_as_recorded"] = sorted({c["camera"].get("fps") for c in cams if c["id"] in stations},
                                               key=lambda x: x or 0)
    return out


def wall16_summary(f: dict) -> str:
    lines = [f"16-window wall, {f['cameras']}; recorded fps {min(f['camera_fps_as_recorded'] or [0]):.1f}-"
             f"{max(f['camera_fps_as_recorded'] or [0]):.1f}"]
    for mode in ("no_viewer", "webrtc", "mse"):
        w = f[mode]
        line = (f"  {mode:9s} serve tree {w['cores']:.3f} cores {w['cores_by_process']} over {w['seconds']} s, "
                f"load {w['load_average']}")
        if "tiles" in w:
            streams = sorted({str(t["stream"]) for t in w["tiles"]})
            line += (f"\n            streams {streams}; {w['ms_per_tile_second']} ms/tile-s"
                     f" ({w['added_ms_per_tile_second']} over no viewer);"
                     f" all tiles play: {w['all_tiles_play']}; per tile decoded/s {w['tile_decoded_per_s']},"
                     f" dropped/s {w['tile_dropped_per_s']}, painted/s {w['tile_painted_per_s']};"
                     f" relay packets/tile-s {w['relay_packets_per_tile_second']},"
                     f" WebRTC sent/tile-s {w['webrtc_packets_sent_per_tile_second']}")
        lines.append(line)
    return "\n".join(lines)


def shown_frames(page) -> int:
    """Frames the page's video decoded and did not drop (the camera sends 15 a second)."""
    return page.evaluate("""() => { const q = document.getElementById('video').getVideoPlaybackQuality();
        return q.totalVideoFrames - q.droppedVideoFrames; }""")


def commit() -> str:
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "vms", "scripts"],
                           capture_output=True, text=True).stdout.strip()
    return sha + ("+changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=12, help="tries per figure (>= 10 for a p90)")
    ap.add_argument("--cameras", type=int, default=1, help="simulated cameras recorded by the server")
    ap.add_argument("--camera-permission", action="store_true",
                    help="grant camera permission (Chromium then offers plain host candidates, as the tests do)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--hevc", metavar="WxH", help="also: API CPU per transcoded H.265 viewer at this size")
    ap.add_argument("--cpu-seconds", type=float, default=20, help="each CPU window of --hevc and --wall16")
    ap.add_argument("--skip-first-frame", action="store_true", help="only the --hevc / --wall16 figures")
    ap.add_argument("--wall16", action="store_true", help="also: serve CPU of a 16-window wall (WebRTC, MSE)")
    ap.add_argument("--wall-size", default="1920x1080", help="the wall's cameras' size (--wall16)")
    ap.add_argument("--wall-fps", type=int, default=15)
    ap.add_argument("--wall-bitrate-kbps", type=int, default=2000)
    ap.add_argument("--wall-sub", metavar="WxH", help="give each wall station a sub-stream of this size (the "
                    "16-window wall plays sub-streams; without, it plays main streams)")
    args = ap.parse_args()

    import playwright.sync_api as pw

    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_at_start = load_average()
    figures: dict = {}
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        if not args.skip_first_frame:
            with running_serve(Path(tmp) / "h264", cameras=args.cameras, footage_seconds=2) as srv:
                station = srv["stations"][0]
                raw["console_first_load"], raw["login_to_wall"] = console_first_load(browser, srv["base"], args.tries)
                raw["webrtc"] = click_to_first_frame(browser, srv["base"], station, "webrtc", args.tries,
                                                     args.camera_permission)
                raw["mse"] = click_to_first_frame(browser, srv["base"], station, "mse", args.tries,
                                                  args.camera_permission)
            figures = {
                "console_first_load": summary(raw["console_first_load"]),
                "login_to_wall": summary(raw["login_to_wall"]),
                "click_to_first_frame_webrtc": summary(raw["webrtc"]),
                "click_to_first_frame_mse": summary(raw["mse"]),
            }
        if args.wall16:
            figures["wall16_cpu"] = wall16_cpu(browser, Path(tmp) / "wall16", args.wall_size, args.wall_fps,
                                               args.wall_bitrate_kbps, args.cpu_seconds, args.wall_sub)
        if args.hevc:
            figures["transcode_cpu"] = transcode_cpu(browser, Path(tmp) / "hevc", args.hevc, args.cpu_seconds)
        browser.close()
    report = {"date": started, "load_average_at_start": load_at_start, "commit": commit(), "machine": machine(),
              "command": "scripts/bench_live.py " + " ".join(sys.argv[1:]), "figures": figures, "raw_ms": raw}
    for name, f in figures.items():
        if name == "wall16_cpu":
            print(wall16_summary(f))
            continue
        if "median_ms" not in f:
            print(f"{name:32s} {f}")
            continue
        print(f"{name:32s} median {f['median_ms']:5d} ms  p90 {f['p90_ms']:5d} ms  "
              f"(min {f['min_ms']}, max {f['max_ms']}, {f['tries']} tries)")
    print(f"{report['machine']}; commit {report['commit']}; {started}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
