// Recorded footage in the browser: one pane per station (a window of footage fetched as an MP4 from the
// API, mapped back to wall time), and one clock that keeps up to 4 panes on the same moment.
//
// The API (vms/api/routers/footage.py): POST /api/stations/{id}/playback {start, end, reason} remuxes at
// most playback_max_minutes of footage into an MP4 starting at the keyframe at or before `start`
// (first_ms), with `spans` mapping video offsets back to wall time (gaps longer than 1.5 s are collapsed,
// so the video's own clock is not the wall clock); GET its url plays it with Range requests.
import { api, ApiError } from "./api.js";

// A browser without an H.265 decoder (Chromium on Linux) asks for H.264: an H.265 camera's footage is then
// transcoded on the server, at most api.playback_transcode_max_seconds per request (the answer's last_ms
// ends the window sooner; the pane asks for the next one when it gets there). H.264 footage is unaffected.
export const canPlayHevc = () => !!(window.MediaSource && MediaSource.isTypeSupported('video/mp4; codecs="hvc1.1.6.L93.B0"'))
  || document.createElement("video").canPlayType('video/mp4; codecs="hvc1.1.6.L93.B0"') === "probably";
export const WINDOW_MS = 10 * 60_000;  // one MP4: short enough to be remuxed in about a second
export const FOLLOW_TOLERANCE_S = 0.35;  // followers are re-seeked past this (the brief: within 0.5 s)
const PAUSED_TOLERANCE_S = 0.12;  // paused, a seek costs nothing: keep the frames closer
const RETRY_AFTER_NO_FOOTAGE_MS = 5000;
export const SPEEDS = [0.5, 1, 2, 4, 8];
export const DEFAULT_FRAME_S = 1 / 25;

// GB/T 28181 and RTSP gap reasons in Chinese: the labels of vms/audit/findings.py GAP_REASONS_ZH (the
// timeline API gives the codes only).
export const GAP_REASON_TEXT = {
  unreachable: "无法连接摄像机", refused: "连接被拒绝", auth_failed: "认证失败", stalled: "码流中断",
  stream_ended: "码流结束", unsupported_codec: "编码格式不支持", no_video: "无视频流", bad_stream: "码流异常",
  resolution_changed: "分辨率变更", clock_jump: "摄像机时钟跳变", disk_error: "磁盘错误",
  ingest_stopped: "录像服务停止", ingest_hung: "录像进程卡死（已自动重启）", unregistered: "设备未注册",
  keepalive_lost: "设备心跳丢失", invite_timeout: "设备未应答点播", invite_refused: "设备拒绝点播",
  no_media: "设备无媒体流", no_media_port: "媒体端口已用尽", device_bye: "设备结束推流",
  gb28181_unavailable: "国标信令服务不可用",
};
export const gapReasonText = (reason) => GAP_REASON_TEXT[reason] || reason || "原因不明";

// Asia/Shanghai has no daylight saving: local = UTC + 8 h, whatever the PC's own zone is.
const OFFSET_MS = 8 * 3600 * 1000;
export const DAY_MS = 86_400_000;
export const localDay = (ms) => new Date(ms + OFFSET_MS).toISOString().slice(0, 10);
export const dayStartMs = (day) => Date.parse(`${day}T00:00:00Z`) - OFFSET_MS;
const pad = (n, w = 2) => String(n).padStart(w, "0");
// "2026-12-06 19:47:56.120": the frame's time with milliseconds (frame steps differ by 40-70 ms).
export function localTextMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return "—";
  const d = new Date(Math.round(ms) + OFFSET_MS);
  return `${d.toISOString().slice(0, 10)} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}` +
    `.${pad(d.getUTCMilliseconds(), 3)}`;
}

// What the operator types: "2026-12-06 19:47:56", "2026-12-06 19:47", or "19:47:56" / "19:47" on `day`.
export function parseLocal(text, day) {
  const t = String(text || "").trim().replace("T", " ").replace(/\//g, "-");
  let m = t.match(/^(\d{4})-(\d{1,2})-(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/);
  if (!m && day) {
    const onlyTime = t.match(/^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/);
    if (onlyTime) m = [t, ...day.split("-"), ...onlyTime.slice(1)];
  }
  if (!m) return null;
  const [y, mo, d, h, mi, s, frac] = m.slice(1).map((x) => (x === undefined ? 0 : Number(x)));
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) return null;
  const ms = frac ? Number(String(m[7]).padEnd(3, "0")) : 0;
  return Date.UTC(y, mo - 1, d, h, mi, s, ms) - OFFSET_MS;
}

// One pane: a station's footage around the clock's moment, in a <video>.
export class PlaybackPane {
  constructor(video, stationId, reasonOf) {
    this.video = video;
    this.stationId = stationId;
    this.reasonOf = reasonOf;
    this.state = "idle";  // idle | loading | ready | nofootage | error
    this.message = "";
    this.info = null;  // the API's answer: first_ms, last_ms, spans, url
    this.asked = null;  // [start, end) asked for: a moment inside it but before first_ms is a gap
    this.retryAt = 0;
    this.seq = 0;
    this.frameS = DEFAULT_FRAME_S;
    this.watchFrames();
  }

  // The stream's frame interval, from the decoder's own frame times (the simulator runs 15 fps, cameras 25).
  watchFrames() {
    if (!this.video.requestVideoFrameCallback) return;
    let last = null;
    const onFrame = (_now, meta) => {
      if (this.closed) return;
      if (last != null) {
        const d = meta.mediaTime - last;
        if (d > 0.005 && d < 0.5 && !this.video.paused && this.video.playbackRate === 1) {
          this.frameS = this.frameS * 0.8 + d * 0.2;
        }
      }
      last = meta.mediaTime;
      this.video.requestVideoFrameCallback(onFrame);
    };
    this.video.requestVideoFrameCallback(onFrame);
  }

  wallOf(videoS) {
    const info = this.info;
    if (!info) return null;
    const offset = videoS * 1000;
    const spans = info.spans && info.spans.length ? info.spans : [{ video_offset_ms: 0, wall_start_ms: info.first_ms }];
    let span = spans[0];
    for (const sp of spans) if (sp.video_offset_ms <= offset + 0.5) span = sp;
    return span.wall_start_ms + (offset - span.video_offset_ms);
  }

  // The video offset (s) of a wall moment, or null when the loaded footage does not hold it (a gap).
  videoTimeOf(wall) {
    const info = this.info;
    if (!info || wall < info.first_ms || wall >= info.last_ms) return null;
    const spans = info.spans && info.spans.length ? info.spans
      : [{ video_offset_ms: 0, wall_start_ms: info.first_ms, wall_end_ms: info.last_ms }];
    for (const sp of spans) {
      if (wall >= sp.wall_start_ms && wall < sp.wall_end_ms) return (sp.video_offset_ms + wall - sp.wall_start_ms) / 1000;
    }
    return null;
  }

  nextFootageAfter(wall) {
    const spans = this.info && this.info.spans && this.info.spans.length ? this.info.spans
      : this.info ? [{ wall_start_ms: this.info.first_ms }] : [];
    const next = spans.find((sp) => sp.wall_start_ms > wall);
    return next ? next.wall_start_ms : null;
  }

  // The wall time of the frame on screen (null without footage).
  frameWall() {
    if (this.state !== "ready" || this.video.readyState < 1) return null;
    return this.wallOf(this.video.currentTime);
  }

  inAskedWindow(wall) {
    return this.asked && wall >= this.asked[0] && wall < this.asked[1] && (!this.info || wall < this.info.last_ms);
  }

  async load(wall) {
    const seq = ++this.seq;
    this.state = "loading";
    this.message = "正在准备录像…";
    const reason = this.reasonOf();
    const asked = [wall, wall + WINDOW_MS];
    try {
      // Epoch milliseconds: the API takes them as they are (a local date-time string would drop the ms).
      const info = await api.post(`/api/stations/${encodeURIComponent(this.stationId)}/playback`,
        { start: String(Math.floor(asked[0])), end: String(Math.floor(asked[1])), reason, h264: !canPlayHevc() });
      if (seq !== this.seq || this.closed) return;
      this.info = info;
      this.asked = [asked[0], Math.min(asked[1], info.last_ms)];
      const ready = new Promise((resolve) => this.video.addEventListener("loadedmetadata", resolve, { once: true }));
      this.video.src = info.url;
      await ready;
      if (seq !== this.seq || this.closed) return;
      const t = this.videoTimeOf(wall);
      if (t != null) await this.seekVideo(t);
      this.state = "ready";
      this.message = info.truncated ? `录像在此处中止：${info.truncated}` : "";
    } catch (e) {
      if (seq !== this.seq || this.closed) return;
      this.info = null;
      this.asked = null;
      this.retryAt = performance.now() + RETRY_AFTER_NO_FOOTAGE_MS;
      if (e instanceof ApiError && e.status === 404) {
        this.state = "nofootage";
        this.message = "此时段无录像";
      } else {
        this.state = "error";
        this.message = e instanceof ApiError ? `无法回放：${e.message}` : `无法回放：${e}`;
      }
    }
  }

  seekVideo(t) {
    const v = this.video;
    if (Math.abs(v.currentTime - t) < 0.001 && !v.seeking) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(done, 3000);
      v.addEventListener("seeked", done, { once: true });
      v.currentTime = t;
    });
  }

  // Bring this pane to the clock's moment: load the footage around it, seek when off by more than the
  // tolerance, play or pause with the clock. Returns what the pane shows.
  follow(wall, rate, paused) {
    if (this.state === "loading" || this.closed) return;
    const v = this.video;
    if (!this.inAskedWindow(wall)) {
      if (performance.now() >= this.retryAt && wall <= Date.now()) this.load(wall);
      else if (this.state === "ready") { v.pause(); this.state = "nofootage"; this.message = "此时段无录像"; }
      return;
    }
    const t = this.videoTimeOf(wall);
    if (t == null) {  // inside the window asked for, but in a gap of it
      v.pause();
      this.message = "此时段无录像";
      return;
    }
    this.state = "ready";
    this.message = this.info.truncated ? `录像在此处中止：${this.info.truncated}` : "";
    if (v.playbackRate !== rate) v.playbackRate = rate;
    if (v.seeking) return;
    const off = v.currentTime - t;
    if (paused) {
      if (!v.paused) v.pause();
      if (Math.abs(off) > PAUSED_TOLERANCE_S) v.currentTime = t;
      return;
    }
    // A seek takes ~0.1-0.2 s during which the clock runs on: aim that far ahead at high speeds.
    if (Math.abs(off) > FOLLOW_TOLERANCE_S) v.currentTime = t + Math.min(rate * 0.12, 1);
    if (v.paused) v.play().catch(() => {});
  }

  close() {
    this.closed = true;
    this.seq++;
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load();
  }
}

// One clock for every pane: the master (the first pane with a station) drives it while it shows footage;
// when it has none at the clock's moment (a gap), the clock runs on by itself so the others go on.
export class SyncClock {
  constructor() {
    this.wall = null;
    this.perf = performance.now();
    this.rate = 1;
    this.paused = false;
  }

  now() {
    if (this.wall == null) return null;
    if (this.paused) return this.wall;
    return Math.min(this.wall + (performance.now() - this.perf) * this.rate, Date.now());
  }

  set(wall) {
    this.wall = wall;
    this.perf = performance.now();
  }

  hold() { this.set(this.now()); }

  setRate(rate) {
    this.set(this.now());
    this.rate = rate;
  }

  setPaused(paused) {
    this.set(this.now());
    this.paused = paused;
  }

  // One step of keeping panes together (called every 100 ms): panes[0..3], null where empty.
  tick(panes) {
    if (this.wall == null) return;
    const master = panes.find((p) => p);
    if (master) {
      if (master.state === "loading" || (master.state === "ready" && master.video.seeking)) {
        this.hold();  // the master is getting to the moment: wait for it
      } else if (master.state === "ready" && master.inAskedWindow(this.now()) && master.videoTimeOf(this.now()) == null
                 && !panes.some((p) => p && p !== master && p.videoTimeOf(this.now()) != null)) {
        // Nothing anywhere at this moment (a gap in the master's footage, or a click inside one): go on
        // at the master's next footage rather than running through the gap in real time.
        const next = master.nextFootageAfter(this.now());
        if (next != null) this.set(next);
      } else if (master.state === "ready" && master.videoTimeOf(this.now()) != null) {
        const frame = master.frameWall();
        // The master's own frame is the clock (a stall in its video holds everyone). Not when its video
        // ran to the end of its window: the clock then moves on and the master loads the next window.
        if (frame != null && !master.video.ended) this.set(frame);
      }
    }
    const now = this.now();
    for (const p of panes) if (p) p.follow(now, this.rate, this.paused);
  }
}
