// Live view of one station: WebRTC (the camera's H.264 passed through by the server) first, fMP4 over a
// WebSocket into Media Source Extensions when WebRTC fails or shows nothing within 5 s. The protocol is
// the first console's (vms/console/static/live.js) and docs/design/live.md.
import { api, ApiError } from "./api.js";

const NO_PICTURE_FALLBACK_MS = 5000;
const RETRY_MS = 30_000;  // each attempt is one access-log entry on the server

function waitIceGathering(pc, timeoutMs) {
  // The server (aiortc) has no trickle ICE: the offer carries every candidate.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

function watchFrames(video, stats) {
  if (!video.requestVideoFrameCallback) return;
  const onFrame = (now) => {
    if (stats.closed) return;
    stats.frames += 1;
    if (stats.firstFrameMs == null) stats.firstFrameMs = Math.round(now - stats.t0);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

async function startWebRTC(video, stationId, stream) {
  const stats = { mode: "webrtc", t0: performance.now(), frames: 0, firstFrameMs: null, closed: false,
                  stream: "main", streamNote: null };
  const pc = new RTCPeerConnection({ iceServers: [] });
  const tr = pc.addTransceiver("video", { direction: "recvonly" });
  const caps = RTCRtpReceiver.getCapabilities ? RTCRtpReceiver.getCapabilities("video") : null;
  if (caps && tr.setCodecPreferences) {
    const h264 = caps.codecs.filter((c) => c.mimeType === "video/H264");  // else aiortc picks VP8
    if (h264.length) tr.setCodecPreferences(h264);
  }
  pc.ontrack = (ev) => {
    video.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
    video.play().catch(() => {});
  };
  let answer;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, 3000);
    if (stats.closed) throw new Error("closed");
    answer = await api.post(`/api/stations/${encodeURIComponent(stationId)}/live/webrtc`,
      { sdp: pc.localDescription.sdp, type: "offer", stream });
    stats.stream = answer.stream || "main";
    stats.streamNote = answer.stream_note || null;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  } catch (e) {
    pc.close();
    throw e;
  }
  watchFrames(video, stats);
  const closeUrl = `/api/live/sessions/${encodeURIComponent(answer.session_id)}/close`;
  const onPageHide = () => navigator.sendBeacon(closeUrl);
  window.addEventListener("pagehide", onPageHide);
  return {
    stats, pc,
    close() {
      if (stats.closed) return;
      stats.closed = true;
      window.removeEventListener("pagehide", onPageHide);
      pc.close();
      video.srcObject = null;
      api.post(closeUrl).catch(() => {});
    },
  };
}

function startMSE(video, stationId, stream, onEnded) {
  const stats = { mode: "mse", t0: performance.now(), frames: 0, firstFrameMs: null, closed: false,
                  stream: "main", streamNote: null };
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const query = stream === "sub" ? "?stream=sub" : "";
  const ws = new WebSocket(`${proto}//${location.host}/api/stations/${encodeURIComponent(stationId)}/live/mse${query}`);
  ws.binaryType = "arraybuffer";
  let sb = null;
  let queue = [];
  let url = null;
  const pump = () => {
    if (!sb || sb.updating || !queue.length) return;
    try { sb.appendBuffer(queue.shift()); } catch { /* a full or removed buffer: the next update retries */ }
  };
  const keepLive = () => {
    const b = video.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    if (end - video.currentTime > 1.0 || video.currentTime < b.start(b.length - 1)) {
      video.currentTime = Math.max(b.start(b.length - 1), end - 0.2);
    }
    if (!sb.updating && video.currentTime - b.start(0) > 30) {
      try { sb.remove(0, video.currentTime - 10); } catch { /* busy */ }
    }
  };
  const setup = (mime) => {
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) { onEnded(`浏览器不支持 ${mime}`); return; }
    const ms = new MediaSource();
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(ms);
    video.srcObject = null;
    video.src = url;
    sb = null;
    queue = [];
    ms.addEventListener("sourceopen", () => {
      sb = ms.addSourceBuffer(mime);
      sb.addEventListener("updateend", () => { keepLive(); pump(); });
      pump();
      video.play().catch(() => {});
    }, { once: true });
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      let m = {};
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.mime) {
        stats.stream = m.stream || "main";
        stats.streamNote = m.stream_note || null;
        setup(m.mime);
      }
      else if (m.ended) onEnded(m.ended);
      return;
    }
    if (queue.length > 200) queue.shift();  // a stalled decoder must not grow the queue without end
    queue.push(ev.data);
    pump();
  };
  ws.onclose = (ev) => {
    if (stats.closed) return;
    const why = { 4401: "未登录", 4403: "无权限", 4404: "没有该站点", 4503: "无实时画面" }[ev.code];
    onEnded(why ? `${why}${ev.reason ? "：" + ev.reason : ""}` : `连接关闭（${ev.code}）`);
  };
  watchFrames(video, stats);
  return {
    stats,
    close() {
      if (stats.closed) return;
      stats.closed = true;
      ws.close();
      if (url) URL.revokeObjectURL(url);
      video.removeAttribute("src");
      video.load();
    },
  };
}

function playing(mode, text, stats) {
  const sub = stats.stream === "sub";
  return { mode, text: sub ? `${text} · 子码流` : text, stream: stats.stream, streamNote: stats.streamNote };
}

// One tile's live view, kept going: WebRTC, then MSE, and a retry every 30 s while nothing plays (a
// camera that is offline now may be back later). onStatus({mode, text, stream, streamNote}) tells the tile
// what to show. stream "sub": the station's sub-stream (a wall of many small windows); the server sends the
// main stream when the station has none and says why (streamNote).
export function keepLive(video, stationId, onStatus, stream = "main") {
  let current = null;
  let stopped = false;
  let retryTimer = null;
  let noPictureTimer = null;

  const stopCurrent = () => {
    clearTimeout(noPictureTimer);
    if (current) { current.close(); current = null; }
  };
  const retryLater = (text) => {
    stopCurrent();
    onStatus({ mode: "waiting", text });
    clearTimeout(retryTimer);
    if (!stopped) retryTimer = setTimeout(start, RETRY_MS);
  };
  const goMse = (why) => {
    stopCurrent();
    if (stopped) return;
    onStatus({ mode: "connecting", text: why ? `WebRTC 不可用（${why}），改用兼容模式` : "兼容模式连接中…" });
    const mine = startMSE(video, stationId, stream,
      (reason) => { if (current === mine) retryLater(`实时视频中断：${reason}`); });
    current = mine;
    noPictureTimer = setTimeout(() => {
      if (current === mine && mine.stats.frames === 0) retryLater("兼容模式下也没有画面");
    }, 15_000);
    const shown = () => { if (current === mine) onStatus(playing("mse", "实时（兼容模式）", mine.stats)); };
    video.addEventListener("playing", shown, { once: true });
  };
  async function start() {
    stopCurrent();
    if (stopped) return;
    onStatus({ mode: "connecting", text: "正在连接…" });
    let mine;
    try {
      mine = await startWebRTC(video, stationId, stream);
    } catch (e) {
      if (stopped) return;
      if (e instanceof ApiError && e.status === 503) { retryLater("暂无实时画面，稍后自动重试"); return; }
      if (e instanceof ApiError && [401, 403, 404].includes(e.status)) { stopCurrent(); onStatus({ mode: "refused", text: e.message }); return; }
      goMse(e.message);
      return;
    }
    if (stopped) { mine.close(); return; }
    current = mine;
    mine.pc.addEventListener("connectionstatechange", () => {
      if (current === mine && mine.pc.connectionState === "failed") goMse("连接失败");
    });
    noPictureTimer = setTimeout(() => { if (current === mine && mine.stats.frames === 0) goMse("5秒内无画面"); },
      NO_PICTURE_FALLBACK_MS);
    video.addEventListener("playing", () => { if (current === mine) onStatus(playing("webrtc", "实时", mine.stats)); },
      { once: true });
  }
  start();
  return {
    get stats() { return current ? current.stats : null; },
    close() {
      stopped = true;
      clearTimeout(retryTimer);
      stopCurrent();
    },
  };
}
