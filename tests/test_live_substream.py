"""The sub-stream of a station on the video wall, against a real `vms serve` and Chromium: a wall of 9 or 16
windows asks for sub-streams, the API process pulls a station's sub_url (one pull shared by its viewers,
stopped after the last one leaves, never recorded), a station without one plays its main stream and the
answer says why, a 4-window wall plays main streams, and the sub_url's credentials never leave the server."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest
import yaml

from tests.serve_support import PASSWORD, REPO, running_serve
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # a real vms serve, two simulators and Chromium


NEXT = "/console/next/"
MAIN_SIZE = (320, 240)
SUB_SIZE = (160, 96)  # another size than the main stream's: what the browser decodes tells which one it got
SUB_SECRET = "sub-Secret-42"  # the sub_url's password: never in a log line or a response
LINGER_S = 3.0  # live.relay_linger_seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory, simulator_cache):
    """Station WITH_SUB: main stream 320x240 and a sub_url (with credentials) to a 160x96 mount of another
    simulator; station MAIN_ONLY: a main stream only; station BROKEN_SUB: a sub_url to a mount that is not there."""
    root = tmp_path_factory.mktemp("live-substream")
    catalogue = yaml.safe_load((REPO / "config" / "stations.yaml").read_text())
    with_sub, main_only, broken_sub = catalogue["stations"][:3]
    with ExitStack() as stack:
        mains = stack.enter_context(Simulator(cameras=3, names=[with_sub["id"], main_only["id"], broken_sub["id"]],
                                              width=MAIN_SIZE[0],
                                              height=MAIN_SIZE[1], fps=15, bitrate_kbps=300, gop=30,
                                              cache_dir=simulator_cache))
        subs = stack.enter_context(Simulator(cameras=1, names=["sub"], width=SUB_SIZE[0], height=SUB_SIZE[1],
                                             fps=15, bitrate_kbps=100, gop=30, cache_dir=simulator_cache))
        sub_url = subs.urls["sub"].replace("rtsp://", f"rtsp://wall:{SUB_SECRET}@", 1)
        with_sub["camera"] = {"main_url": mains.urls[with_sub["id"]], "sub_url": sub_url, "transport": "tcp"}
        main_only["camera"] = {"main_url": mains.urls[main_only["id"]], "transport": "tcp"}
        broken_sub["camera"] = {"main_url": mains.urls[broken_sub["id"]], "transport": "tcp",
                                "sub_url": subs.urls["sub"].rsplit("/", 1)[0] + "/no-such-mount"}
        catalogue["stations"] = [with_sub, main_only, broken_sub]
        stations_file = root / "stations.yaml"
        stations_file.write_text(yaml.safe_dump(catalogue, allow_unicode=True))
        srv = stack.enter_context(running_serve(root, cameras=3, footage_seconds=1, stations_file=stations_file,
                                                settings={"simulate": {"enabled": "never"}, "log_level": "INFO"}))
        yield {**srv, "with_sub": with_sub["id"], "main_only": main_only["id"], "broken_sub": broken_sub["id"]}


@contextmanager
def _wall(browser, server, layout: int, stations: list[str], webrtc: bool = True):
    """A logged-in page of the new console showing a wall of `layout` windows holding `stations`."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=server["base"],
                              permissions=["camera", "microphone"], locale="zh-CN")
    try:
        if not webrtc:
            ctx.add_init_script("delete window.RTCPeerConnection;")
        page = ctx.new_page()
        page.goto(NEXT + "login")
        page.fill("#username", "li-operator")
        page.fill("#password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("#device-tree .tree-town")
        page.goto(f"{NEXT}wall?layout={layout}&w={','.join(stations)}")
        yield page
    finally:
        ctx.close()


def _tile(index: int) -> str:
    return f"#wall .tile[data-index='{index}']"


def _playing(page, index: int, mode: str) -> dict:
    """The tile's video once it plays in `mode` (its clock advancing): size, the stream the server sent."""
    page.wait_for_function(
        f"() => {{ const t = document.querySelector(\"{_tile(index)}\"); const v = t && t.querySelector('video');"
        f" return !!t && t.dataset.mode === '{mode}' && v && v.videoWidth > 0 && v.currentTime > 0.5; }}",
        timeout=30_000)
    t1 = page.eval_on_selector(f"{_tile(index)} video", "v => v.currentTime")
    page.wait_for_timeout(1200)
    return page.eval_on_selector(_tile(index), """(t) => { const v = t.querySelector('video');
        const osd = t.querySelector('.osd-mode');
        return { width: v.videoWidth, height: v.videoHeight, time: v.currentTime, stream: t.dataset.stream,
                 text: osd ? osd.textContent : '', note: osd ? osd.title : '' }; }""") | {"time0": t1}


def _stats(server) -> dict:
    return httpx.get(f"{server['base']}/api/live/stats", headers={"Authorization": f"Bearer {server['token']}"},
                     timeout=30).json()


def _wait_no_sub_pull(server, within_s: float) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stats = _stats(server)
        if not stats["sub_stream_pulls"] and not [k for k in stats["relays"] if k.endswith("/sub")]:
            return stats
        time.sleep(0.3)
    return _stats(server)


def test_a_wall_of_nine_plays_sub_streams_shared_and_stopped_after_the_last_viewer(server, browser):
    with_sub, main_only = server["with_sub"], server["main_only"]
    with _wall(browser, server, 9, [with_sub, main_only]) as page:
        sub = _playing(page, 0, "webrtc")
        assert (sub["width"], sub["height"]) == SUB_SIZE, sub
        assert sub["time"] > sub["time0"] + 0.5, sub
        assert sub["stream"] == "sub" and "子码流" in sub["text"], sub
        # A station without a sub_url: its main stream, and the tile says why.
        main = _playing(page, 1, "webrtc")
        assert (main["width"], main["height"]) == MAIN_SIZE, main
        assert main["stream"] == "main" and "没有配置子码流" in main["note"], main
        stats = _stats(server)
        assert stats["sub_stream_pulls"] == [f"{with_sub}/sub"], stats
        assert stats["relays"][f"{with_sub}/sub"]["viewers"] == 1, stats

        # A second wall (16 windows) watching the same station shares the one pull.
        with _wall(browser, server, 16, [with_sub]) as second:
            again = _playing(second, 0, "webrtc")
            assert (again["width"], again["height"]) == SUB_SIZE, again
            stats = _stats(server)
            assert stats["sub_stream_pulls"] == [f"{with_sub}/sub"], stats
            assert stats["relays"][f"{with_sub}/sub"]["viewers"] == 2, stats
        assert _stats(server)["sub_stream_pulls"] == [f"{with_sub}/sub"]  # the first wall still watches
    # Both walls gone: the pull stops after the relay's linger (its thread ended, the relay forgotten).
    stats = _wait_no_sub_pull(server, LINGER_S + 6)
    assert stats["sub_stream_pulls"] == [] and f"{with_sub}/sub" not in stats["relays"], stats


def test_the_fallback_mse_view_plays_the_sub_stream_too(server, browser):
    with _wall(browser, server, 16, [server["with_sub"], server["main_only"]], webrtc=False) as page:
        sub = _playing(page, 0, "mse")
        assert (sub["width"], sub["height"]) == SUB_SIZE and sub["stream"] == "sub", sub
        main = _playing(page, 1, "mse")
        assert (main["width"], main["height"]) == MAIN_SIZE and main["stream"] == "main", main
        assert "没有配置子码流" in main["note"], main
        # The protocol itself: the first message says which stream comes, and why not the sub-stream.
        first = page.evaluate(FIRST_MSE_MESSAGE, server["main_only"])
        assert first["stream"] == "main" and first["stream_note"].startswith("该站点没有配置子码流"), first


FIRST_MSE_MESSAGE = """async (station) => await new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/api/stations/${station}/live/mse?stream=sub`);
    ws.onmessage = (ev) => { if (typeof ev.data === 'string') {
        resolve(JSON.parse(ev.data)); ws.close(); } };
    ws.onclose = (ev) => resolve({ closed: ev.code }); })"""


def test_a_sub_stream_that_fails_falls_back_to_main_and_is_not_retried_at_once(server, browser):
    with _wall(browser, server, 4, []) as page:
        first = page.evaluate(FIRST_MSE_MESSAGE, server["broken_sub"])
        assert first["stream"] == "main" and first["width"] == MAIN_SIZE[0], first
        assert first["stream_note"].startswith("子码流不可用") and first["stream_note"].endswith("已改用主码流"), first
        assert "rtsp" not in first["stream_note"], first  # the operator's text, not FFmpeg's
        # Asked again at once (the next tile of the wall): main at once, not after another failed try.
        again = page.evaluate(FIRST_MSE_MESSAGE, server["broken_sub"])
        assert again["stream"] == "main" and again["stream_note"] == first["stream_note"], again
    tries = (server["root"] / "serve.log").read_text().count(f"{server['broken_sub']}: sub-stream pull ended")
    assert tries == 1, tries
    assert _wait_no_sub_pull(server, LINGER_S + 6)["sub_stream_pulls"] == []


def test_a_four_window_wall_plays_main_streams(server, browser):
    with _wall(browser, server, 4, [server["with_sub"]]) as page:
        main = _playing(page, 0, "webrtc")
        assert (main["width"], main["height"]) == MAIN_SIZE and main["stream"] == "main", main
        assert not [k for k in _stats(server)["relays"] if k.endswith("/sub")]


def test_the_sub_urls_credentials_never_leave_the_server(server, browser):
    with _wall(browser, server, 9, [server["with_sub"]]) as page:
        _playing(page, 0, "webrtc")
        station = httpx.get(f"{server['base']}/api/stations/{server['with_sub']}",
                            headers={"Authorization": f"Bearer {server['token']}"})
        assert station.status_code == 200 and SUB_SECRET not in station.text
        assert SUB_SECRET not in str(_stats(server))
    log = (server["root"] / "serve.log").read_text()
    assert "pulling the sub-stream rtsp://***@" in log  # the pull is logged, masked (log_level INFO)
    assert SUB_SECRET not in log
