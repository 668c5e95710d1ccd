// Live view: WebRTC (H.264 passed through by the server) with a fallback to fMP4 over WebSocket + MSE.
import { api } from "./api.js";

function waitIceGathering(pc, timeoutMs) {
  // The server (aiortc) has no trickle ICE: send the offer with every candidate in it.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

// Figures for the page (and the browser tests): time to first frame, frames shown, receive-to-display delay.
function watchFrames(video, stats) {
  if (!video.requestVideoFrameCallback) return;
  const onFrame = (now, meta) => {
    if (stats.closed) return;
    stats.frames += 1;
    if (stats.firstFrameMs == null) stats.firstFrameMs = now - stats.t0;
    if (meta.captureTime !== undefined) stats.captureToDisplayMs.push(meta.expectedDisplayTime - meta.captureTime);
    if (meta.receiveTime !== undefined) stats.receiveToDisplayMs.push(meta.expectedDisplayTime - meta.receiveTime);
    if (stats.captureToDisplayMs.length > 600) stats.captureToDisplayMs.shift();
    if (stats.receiveToDisplayMs.length > 600) stats.receiveToDisplayMs.shift();
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// A browser without WebRTC (disabled by policy, an old or stripped build): the console uses the
// fallback without showing the browser's own English error ("RTCPeerConnection is not a constructor").
export class WebRtcUnsupported extends Error {}

export const webrtcSupported = () => typeof window.RTCPeerConnection === "function";

// Why WebRTC did not start, as the operator reads it (Chinese); the details go to the browser's console.
export function webrtcFailureText(e) {
  if (e instanceof WebRtcUnsupported) return "浏览器不支持";
  if (e && e.status === 400) return "浏览器的连接参数无法使用";
  if (e && e.status) return `服务器拒绝（${e.status}）`;
  return "连接建立失败";
}

// isCurrent: false once the page has moved on (fallback chosen, page left) while this start negotiated;
// the video element then belongs to another player and is left alone.
export async function startWebRTC(video, stationId, isCurrent = () => true) {
  if (!webrtcSupported()) throw new WebRtcUnsupported("no RTCPeerConnection in this browser");
  const stats = { mode: "webrtc", t0: performance.now(), frames: 0, firstFrameMs: null,
                  captureToDisplayMs: [], receiveToDisplayMs: [], closed: false };
  const pc = new RTCPeerConnection({ iceServers: [] });
  const tr = pc.addTransceiver("video", { direction: "recvonly" });
  const caps = RTCRtpReceiver.getCapabilities ? RTCRtpReceiver.getCapabilities("video") : null;
  if (caps && tr.setCodecPreferences) {
    // H.264 first: the camera's stream is passed through, never transcoded.
    const h264 = caps.codecs.filter((c) => c.mimeType === "video/H264");
    if (h264.length) tr.setCodecPreferences(h264);
  }
  let attached = null;
  pc.ontrack = (ev) => {
    if (stats.closed || !isCurrent()) return;
    attached = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
    video.srcObject = attached;
    video.play().catch(() => {});
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceGathering(pc, 3000);
  let answer;
  try {
    answer = await api.post(`/api/stations/${stationId}/live/webrtc`, { sdp: pc.localDescription.sdp, type: "offer" });
  } catch (e) { pc.close(); throw e; }
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  watchFrames(video, stats);
  const closeUrl = `/api/live/sessions/${answer.session_id}/close`;
  const onUnload = () => navigator.sendBeacon(closeUrl);
  window.addEventListener("pagehide", onUnload);
  return {
    stats, pc, sessionId: answer.session_id, codec: answer.codec,
    close() {
      if (stats.closed) return;
      stats.closed = true;
      window.removeEventListener("pagehide", onUnload);
      if (attached && video.srcObject === attached) video.srcObject = null;
      // Tell the server first, then close the connection: the server ends the session at the viewer's
      // word (the browser's close also reaches it, as a DTLS close; it answers 204 either way).
      api.post(closeUrl).catch(() => {}).finally(() => pc.close());
    },
  };
}

export function startMSE(video, stationId, onEnded) {
  const stats = { mode: "mse", t0: performance.now(), frames: 0, firstFrameMs: null,
                  captureToDisplayMs: [], receiveToDisplayMs: [], closed: false };
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // A browser that cannot play H.265 (Chromium on Linux) asks for H.264: an H.265 camera is then
  // transcoded for this view (a limited number at once: the server closes with 4429 and says so).
  const hevc = window.MediaSource && MediaSource.isTypeSupported('video/mp4; codecs="hvc1.1.6.L120.90"');
  const ws = new WebSocket(`${proto}//${location.host}/api/stations/${stationId}/live/mse${hevc ? "" : "?h264=1"}`);
  ws.binaryType = "arraybuffer";
  let sb = null, queue = [], url = null;
  const pump = () => {
    if (!sb || sb.updating || !queue.length) return;
    try { sb.appendBuffer(queue.shift()); } catch (e) { console.warn("MSE append failed", e); return; }
  };
  const keepLive = () => {
    const b = video.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    if (end - video.currentTime > 1.0 || video.currentTime < b.start(b.length - 1)) video.currentTime = Math.max(b.start(b.length - 1), end - 0.2);
    if (!sb.updating && video.currentTime - b.start(0) > 30) { try { sb.remove(0, video.currentTime - 10); } catch { /* busy */ } }
  };
  const setup = (mime) => {
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) { onEnded && onEnded(`浏览器不支持 ${mime}`); return; }
    const ms = new MediaSource();
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(ms);
    video.srcObject = null;
    video.src = url;
    sb = null; queue = [];
    ms.addEventListener("sourceopen", () => {
      sb = ms.addSourceBuffer(mime);
      sb.addEventListener("updateend", () => { keepLive(); pump(); });
      pump();
      video.play().catch(() => {});
    }, { once: true });
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.mime) { stats.transcoded = !!m.transcoded; stats.codec = m.codec; setup(m.mime); }
      else if (m.ended && onEnded) onEnded(m.ended);
      return;
    }
    queue.push(ev.data);
    pump();
  };
  ws.onclose = (ev) => { if (!stats.closed && onEnded) onEnded(ev.reason || `连接关闭 (${ev.code})`); };
  watchFrames(video, stats);
  return {
    stats,
    close() { stats.closed = true; ws.close(); if (url) URL.revokeObjectURL(url); video.removeAttribute("src"); video.load(); },
  };
}
