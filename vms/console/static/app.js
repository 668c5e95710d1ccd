// The web console: hash routes, one render function per page, plain DOM.
import { api, ApiError, esc, localIso, localText, todayLocal, dayStartMs } from "./api.js";
import { startWebRTC, startMSE, webrtcFailureText } from "./live.js";
import { renderGbPage } from "./gb28181.js";

const main = document.getElementById("main");
const STATE_TEXT = { recording: "录像中", offline: "离线", closed: "已关门", fault: "故障", disabled: "停用",
                     stuck: "录像卡死" };
const GAP_TEXT = { stalled: "断流", unreachable: "无法连接", stream_ended: "流结束", bad_stream: "流异常",
                   ingest_stopped: "录像服务停止", ingest_hung: "录像进程卡死", auth_failed: "认证失败",
                   no_video: "无视频", refused: "连接被拒绝", unsupported_codec: "编码格式不支持",
                   resolution_changed: "分辨率变更", clock_jump: "摄像机时钟跳变", disk_error: "磁盘错误" };
// The camera's own state (vms.ingest.health: CameraState and ReportedState) and why, as operators read them.
const CAMERA_TEXT = { connecting: "正在连接", streaming: "录像中", backoff: "连接失败，等待重试", stalled: "视频流停滞",
                      hung: "录像线程卡死", failed: "故障", stopped: "已停止", offline: "离线（录像节点无上报）",
                      disabled: "停用", unknown: "尚未上报状态" };
const CAMERA_REASON_TEXT = { ...GAP_TEXT, no_status: "录像节点无状态上报", internal_error: "录像程序内部错误",
                             timeout: "连接超时", "station disabled": "站点已停用", "no status reported": "从未上报状态" };
// Picture faults (vms.analysis.detector.FAULT_KINDS, and the ingest's auth_failed) and their severities.
const FAULT_TEXT = { signal_lost: "无视频信号", frozen: "画面冻结", black: "黑屏", overexposed: "画面过曝",
                     blurred: "画面模糊", covered: "画面被遮挡", color_cast: "画面偏色", scene_changed: "摄像机被移动（画面变化）",
                     auth_failed: "摄像机登录认证失败", undecodable: "画面无法解码" };
const SEVERITY_TEXT = { info: "提示", minor: "一般", major: "重要", critical: "紧急" };
// A label of `key`, or `otherwise` (never a raw key, nor an inherited property such as "constructor").
const label = (map, key, otherwise) => (Object.hasOwn(map, String(key)) ? map[key] : otherwise);
const cameraText = (cam) => label(CAMERA_TEXT, cam.state, "状态未知");
const faultText = (f) => `${label(FAULT_TEXT, f.kind, "画面异常")}（${label(SEVERITY_TEXT, f.severity, "未分级")}，${localText(f.since_ms)} 起）`;
let me = null;
let cleanup = [];  // what the current page must stop when left (timers, live views)

const can = (perm) => me && me.permissions.includes(perm);

export function stationState(st) {
  if (!st.enabled) return "disabled";
  if (st.camera.state === "hung") return "stuck";
  if (!st.camera.online) return "offline";
  if (st.faults && st.faults.length) return "fault";
  if (st.open_state === "closed") return "closed";
  return "recording";
}

function leavePage() { for (const f of cleanup.splice(0)) { try { f(); } catch { /* already gone */ } } }

let routedHash = null;  // the address the page shows now (paging rewrites it without a new render)
// Bumped by every route(). A page's render awaits the API before it draws, and a page left meanwhile
// must not draw over the next one, nor put its late failure (its elements already gone) on it: Back
// from a station whose timeline answered after the wall was drawn replaced the wall with "出错了".
let routeGen = 0;
const leftSince = (gen) => gen !== routeGen;

// Back and Forward between entries whose addresses were rewritten (replaceState) fire popstate, and
// hashchange too when the fragments differ: route once per new address.
function navigated() { if (location.hash !== routedHash) route(); }

async function route() {
  const gen = ++routeGen;
  routedHash = location.hash;
  leavePage();
  const [path, query] = (location.hash || "#/wall").split("?");
  const [, page, arg] = path.split("/");
  const params = new URLSearchParams(query || "");
  if (!me) {
    // The session check answers 200 with user null before login (a 401 here was a console error on
    // every first visit).
    try { me = (await api.get("/api/auth/session")).user; } catch { me = null; }
    if (leftSince(gen)) return;
  }
  if (!me && page !== "login") { location.hash = "#/login"; return; }
  document.getElementById("nav").hidden = !me;
  document.getElementById("logout").hidden = !me;
  document.getElementById("who").textContent = me ? `${me.username}（${roleText(me.role)}）` : "";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  // Menu entries for a permission the role lacks are hidden (the API refuses those calls anyway).
  document.querySelectorAll("#nav a[data-perm]").forEach((a) => { a.hidden = !can(a.dataset.perm); });
  try {
    if (page === "login") return renderLogin();
    const needs = PAGE_PERMISSION[page === "station" ? "wall" : page] || PAGE_PERMISSION.wall;
    if (!can(needs)) return renderNoAccess(page);
    if (page === "station" && arg) return await renderStation(decodeURIComponent(arg));
    if (page === "alarms") return await renderAlarms();
    if (page === "audits") return await renderAudits(params.get("month"));
    if (page === "admin") return await renderAdmin();
    if (page === "gb28181") return await renderGb();
    return await renderWall(arg ? decodeURIComponent(arg) : null, params);
  } catch (e) {
    if (leftSince(gen)) return;
    if (e instanceof ApiError && e.status === 401) { me = null; location.hash = "#/login"; return; }
    main.innerHTML = `<p class="error">出错了：${esc(e.message)}</p>`;
  }
}

// What each page needs (vms/api/permissions.py); the menu shows a page only to roles that have it.
const PAGE_PERMISSION = { wall: "status:read", alarms: "alerts:read", audits: "audits:read", admin: "users:admin",
                          gb28181: "stations:write" };
const PAGE_TITLE = { wall: "视频墙", alarms: "告警", audits: "审计", admin: "用户管理", gb28181: "设备接入（国标）" };

const PAGE_WHO = { admin: "仅管理员可管理用户", gb28181: "仅管理员可管理国标设备接入",
                   audits: "审计员、值班员和管理员可查看审计" };

function renderNoAccess(page) {
  main.innerHTML = `<h2>${esc(PAGE_TITLE[page] || "页面")}</h2>
    <p class="muted no-access">当前角色（${esc(roleText(me.role))}）无权使用此页面${PAGE_WHO[page] ? `：${PAGE_WHO[page]}` : ""}</p>`;
}

const roleText = (r) => ({ admin: "管理员", operator: "值班员", auditor: "审计员", viewer: "观看员" }[r] || r);

function renderLogin() {
  main.innerHTML = `<form class="login" id="login-form">
    <h2>登录</h2>
    <label for="username">用户名</label><input id="username" name="username" autocomplete="username" required>
    <label for="password">密码</label><input id="password" name="password" type="password" autocomplete="current-password" required>
    <button class="primary" type="submit">登录</button>
    <p class="error" id="login-error"></p></form>`;
  document.getElementById("login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const r = await api.post("/api/auth/login", { username: ev.target.username.value, password: ev.target.password.value });
      me = r.user;
      location.hash = "#/wall";
    } catch (e) {
      document.getElementById("login-error").textContent =
        e.status === 401 ? "用户名或密码错误" : e.status === 429 ? `失败次数过多，请稍后再试（${e.message}）` : e.message;
    }
  };
}

// ---- station tree and video wall ---------------------------------------------------------------
function treeHtml(stations, currentTown) {
  const towns = new Map();
  for (const st of stations) {
    if (!towns.has(st.town)) towns.set(st.town, []);
    towns.get(st.town).push(st);
  }
  let html = `<div class="tree" id="tree"><div class="legend">${Object.entries(STATE_TEXT).map(([k, v]) =>
    `<span><i class="dot s-${k}"></i>${v}</span>`).join("")}</div>
    <p><a href="#/wall">全部站点（${stations.length}）</a></p>`;
  for (const [town, list] of towns) {
    const counts = { recording: 0, offline: 0, closed: 0, fault: 0, disabled: 0, stuck: 0 };
    list.forEach((st) => counts[stationState(st)]++);
    html += `<details ${currentTown === town ? "open" : ""} data-town="${esc(town)}"><summary>${esc(town)}
      <span class="counts">${list.length}站 · 录${counts.recording} 离${counts.offline} 关${counts.closed} 障${counts.fault + counts.stuck}${counts.disabled ? ` 停${counts.disabled}` : ""}</span></summary>
      <p><a href="#/wall/${encodeURIComponent(town)}">在视频墙显示本镇</a></p><ul>` +
      list.map((st) => `<li><a class="station-link" data-state="${stationState(st)}" data-town="${esc(st.town)}" href="#/station/${esc(st.id)}">
        <i class="dot s-${stationState(st)}" title="${STATE_TEXT[stationState(st)]}"></i>${esc(st.name)}</a></li>`).join("") +
      "</ul></details>";
  }
  return html + "</div>";
}

const WALL_SIZES = [4, 9, 16];

async function renderWall(town, params) {
  const gen = routeGen;
  const data = await api.get("/api/stations");
  if (leftSince(gen)) return;
  const all = data.stations;
  const shown = town ? all.filter((s) => s.town === town) : all;
  // Layout and page live in the address (#/wall[/town]?size=9&page=2): Back from a station, a reload or
  // a shared link shows the same page. The last layout chosen is the default for a bare #/wall.
  let size = Number(params.get("size") || sessionStorage.getItem("wall-size") || 9);
  if (!WALL_SIZES.includes(size)) size = 9;
  let page = Math.max(0, (parseInt(params.get("page") || "1", 10) || 1) - 1);
  const remember = () => {
    const base = town ? `#/wall/${encodeURIComponent(town)}` : "#/wall";
    // replaceState: paging does not fire hashchange (no re-render) nor add a Back step per page.
    history.replaceState(history.state, "", `${base}?size=${size}&page=${page + 1}`);
    routedHash = location.hash;
  };
  main.innerHTML = `<div class="layout">${treeHtml(all, town)}<section>
    <div class="toolbar"><b>${town ? esc(town) : "全部站点"}</b>
      <span class="muted" id="wall-count">共${shown.length}个站点</span>
      <label>画面数 <select id="wall-size">${WALL_SIZES.map((n) => `<option ${n === size ? "selected" : ""}>${n}</option>`).join("")}</select></label>
      <button id="prev">上一页</button><span id="pager"></span><button id="next">下一页</button>
      <span class="muted">快照每5秒刷新，点击画面看实时视频</span></div>
    <div class="wall" id="wall"></div></section></div>`;
  const wall = document.getElementById("wall");
  const draw = () => {
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    document.getElementById("pager").textContent = `第${page + 1}/${pages}页`;
    remember();
    wall.className = `wall g${size}`;
    const items = shown.slice(page * size, page * size + size);
    wall.innerHTML = items.map((st) => {
      const state = stationState(st);
      const pic = can("snapshot") && st.camera.online
        ? `<img alt="${esc(st.name)}" data-src="/api/stations/${esc(st.id)}/snapshot.jpg">`
        : `<div class="none">${STATE_TEXT[state]}</div>`;
      return `<div class="tile" data-id="${esc(st.id)}">${pic}<div class="cap"><i class="dot s-${state}"></i>${esc(st.name)} · ${STATE_TEXT[state]}</div></div>`;
    }).join("");
    wall.querySelectorAll(".tile").forEach((t) => { t.onclick = () => { location.hash = `#/station/${t.dataset.id}`; }; });
    refresh();
  };
  const refresh = () => {
    wall.querySelectorAll("img[data-src]").forEach((img) => {
      img.onerror = () => { img.replaceWith(Object.assign(document.createElement("div"), { className: "none", textContent: "暂无画面" })); };
      img.src = `${img.dataset.src}?t=${Date.now()}`;
    });
  };
  document.getElementById("wall-size").onchange = (ev) => { size = Number(ev.target.value); sessionStorage.setItem("wall-size", size); draw(); };
  document.getElementById("prev").onclick = () => { page = Math.max(0, page - 1); draw(); };
  document.getElementById("next").onclick = () => { page += 1; draw(); };
  draw();
  const timer = setInterval(refresh, 5000);
  cleanup.push(() => clearInterval(timer));
}

// ---- station page: live, timeline, playback, export, holds -------------------------------------
async function renderStation(id) {
  const gen = routeGen;
  const st = await api.get(`/api/stations/${encodeURIComponent(id)}`);
  if (leftSince(gen)) return;
  const state = stationState(st);
  const day = sessionStorage.getItem("timeline-day") || todayLocal();
  main.innerHTML = `<p><a href="#/wall/${encodeURIComponent(st.town)}">← ${esc(st.town)}</a></p>
  <div class="station"><section>
    <div class="panel"><h3>${esc(st.name)} <span class="muted">${esc(st.id)}</span>
      <span id="mode" class="muted"></span></h3>
      <video id="video" muted autoplay playsinline controls></video>
      <div class="row">${can("live") ? `<button id="go-live" class="primary">实时</button>
        <button id="go-mse">兼容模式（MSE）</button>` : ""}<span id="live-msg" class="muted"></span></div></div>
    <div class="panel"><h3>录像时间轴</h3>
      <div class="row"><label>日期 <input type="date" id="day" value="${day}"></label>
        ${can("playback") ? `<label>调用事由 <input id="play-reason" size="24" placeholder="回放必须填写"></label>` : ""}
        <span class="muted">点击时间轴从该时刻回放</span></div>
      <div class="timeline" id="timeline"></div><div class="hours">${[0, 3, 6, 9, 12, 15, 18, 21, 24].map((h) => `<span>${h}时</span>`).join("")}</div>
      <p class="muted" id="timeline-info"></p></div>
  </section><aside>
    <div class="panel"><h3>状态</h3><table class="kv">
      <tr><td>状态</td><td><i class="dot s-${state}"></i>${STATE_TEXT[state]}</td></tr>
      <tr><td>镇街</td><td>${esc(st.town)}（${st.level === "town" ? "镇级" : "村级"}）</td></tr>
      <tr><td>营业时间</td><td>${esc(st.business_hours)}</td></tr>
      <tr><td>摄像机</td><td>${esc(cameraText(st.camera))}${label(CAMERA_REASON_TEXT, st.camera.reason, null) && st.camera.state !== "streaming" ? "：" + esc(label(CAMERA_REASON_TEXT, st.camera.reason)) : ""}
        ${st.camera.width ? `<br>${esc(st.camera.codec)} ${esc(st.camera.width)}×${esc(st.camera.height)} ${st.camera.fps ? st.camera.fps.toFixed(1) + "fps" : ""}` : ""}</td></tr>
      <tr><td>录像至</td><td>${localText(st.recorded_until_ms)}</td></tr>
      <tr><td>故障</td><td id="faults">${st.faults.length ? st.faults.map((f) => esc(faultText(f))).join("<br>") : "无"}</td></tr>
    </table></div>
    ${can("export") ? `<div class="panel"><h3>导出录像</h3><button id="export-open" class="primary">导出…</button><div id="exports"></div></div>` : ""}
    ${can("holds:read") ? `<div class="panel"><h3>保全（锁定录像）</h3><div id="holds"></div></div>` : ""}
  </aside></div>
  <dialog id="export-dialog"><form method="dialog" id="export-form"><h3>导出录像</h3>
    <label>开始 <input type="datetime-local" step="1" id="export-start" required></label>
    <label>结束 <input type="datetime-local" step="1" id="export-end" required></label>
    <label>调用事由（必填） <textarea id="export-reason" rows="2" required minlength="2"></textarea></label>
    <p class="error" id="export-error"></p>
    <div class="row"><button type="button" id="export-submit" class="primary">开始导出</button><button value="cancel" formnovalidate>取消</button></div>
  </form></dialog>`;

  const video = document.getElementById("video");
  const msg = document.getElementById("live-msg");
  let live = null;
  let liveGen = 0;  // bumped by every stop: a WebRTC start still negotiating when the viewer moved on is dropped
  let playCall = 0;  // two quick clicks on the timeline (or one, then 实时): only the newest answer plays
  const stopLive = () => { liveGen += 1; if (live) { live.close(); live = null; window.__live = null; } };
  cleanup.push(stopLive);
  const goMse = (why) => {
    stopLive();
    document.getElementById("mode").textContent = "实时（兼容模式）";
    msg.textContent = why ? `WebRTC 不可用（${why}），已切换到兼容模式` : "";
    live = startMSE(video, id, (reason) => { msg.textContent = `实时视频已停止：${reason}`; });
    window.__live = live.stats;
  };
  const goLive = async () => {
    playCall += 1;  // a playback answer still out must not replace the live view asked for after it
    stopLive();
    if (!can("live")) { msg.textContent = "当前角色无实时观看权限"; return; }
    msg.textContent = "正在连接…";
    document.getElementById("mode").textContent = "实时";
    const mine = liveGen;
    try {
      const started = await startWebRTC(video, id, () => mine === liveGen);
      if (mine !== liveGen) { started.close(); return; }  // the page switched to the fallback (or left) meanwhile
      live = started;
      window.__live = live.stats;
      msg.textContent = "";
      const current = live;
      live.pc.addEventListener("connectionstatechange", () => {
        if (current === live && live.pc.connectionState === "failed") goMse("连接失败");
      });
      setTimeout(() => { if (current === live && live.stats.frames === 0) goMse("5秒内无画面"); }, 5000);
    } catch (e) {
      if (mine !== liveGen) return;
      if (e.code === "live_webrtc_h264_only") { goMse(null); msg.textContent = "摄像机为 H.265 编码，已使用兼容模式"; return; }
      if (e.status === 503) { msg.textContent = `无实时画面：${e.message}`; return; }
      console.warn("WebRTC live view not started:", e);
      goMse(webrtcFailureText(e));
    }
  };
  if (can("live")) {
    document.getElementById("go-live").onclick = goLive;
    document.getElementById("go-mse").onclick = () => goMse(null);
  }
  if (!can("live")) msg.textContent = "当前角色无实时观看权限";
  else if (state === "disabled") msg.textContent = "站点已停用";
  else if (state !== "offline") goLive(); else msg.textContent = "摄像机离线";

  const dayInput = document.getElementById("day");
  let timelineCall = 0;  // the day changed twice quickly: only the newest answer draws (its clicks use its day)
  const drawTimeline = async () => {
    const call = ++timelineCall;
    sessionStorage.setItem("timeline-day", dayInput.value);
    const start = dayStartMs(dayInput.value), end = start + 86400000;
    // Until the new day's answer: no bars and no clicks on the old day's.
    const old = document.getElementById("timeline");
    old.innerHTML = "";
    old.onclick = null;
    const tl = await api.get(`/api/stations/${encodeURIComponent(id)}/timeline?start=${dayInput.value}T00:00:00&end=${localIso(end)}`);
    // Left meanwhile (for another station's page, whose elements have the same ids): draw nothing.
    if (leftSince(gen) || call !== timelineCall) return;
    const pct = (ms) => `${(Math.min(Math.max(ms, start), end) - start) / 864000}%`;
    const span = (cls, a, b, title) => `<div class="${cls}" title="${esc(title)}" style="left:${pct(a)};width:calc(${pct(b ?? Date.now())} - ${pct(a)})"></div>`;
    const bar = document.getElementById("timeline");
    bar.innerHTML = tl.recorded.map(([a, b]) => span("rec", a, b, `录像 ${localText(a)}–${localText(b)}`)).join("") +
      tl.gaps.map((g) => span("gap", g.start_ms, g.end_ms, `中断：${GAP_TEXT[g.reason] || g.reason}`)).join("") +
      tl.states.filter((s) => s.state === "closed").map((s) => span("closed", s.start_ms, s.end_ms, "已关门")).join("") +
      tl.faults.map((f) => span("fault", f.start_ms, f.end_ms, `故障：${f.kind}`)).join("");
    document.getElementById("timeline-info").textContent =
      `录像 ${(tl.recorded_ms / 3600000).toFixed(1)} 小时，中断 ${tl.gaps.length} 次，故障 ${tl.faults.length} 次`;
    bar.onclick = async (ev) => {
      const r = bar.getBoundingClientRect();
      const at = start + Math.round(((ev.clientX - r.left) / r.width) * 86400000);
      if (!can("playback")) { msg.textContent = "当前角色无回放权限"; return; }
      const reason = (document.getElementById("play-reason").value || "").trim();
      if (reason.length < 2) { msg.textContent = "请先填写调用事由（至少2个字）再回放"; document.getElementById("play-reason").focus(); return; }
      bar.querySelectorAll(".cursor").forEach((c) => c.remove());
      bar.insertAdjacentHTML("beforeend", `<div class="cursor" style="left:${pct(at)}"></div>`);
      msg.textContent = `正在准备 ${localText(at)} 的回放…`;
      const play = ++playCall;
      try {
        const pb = await api.post(`/api/stations/${encodeURIComponent(id)}/playback`,
          // A browser without an H.265 decoder (Chromium on Linux) gets H.265 footage transcoded to H.264,
          // a limited piece of it per request (the server's last_ms says where it ends).
          { start: localIso(at), end: localIso(at + 15 * 60000), reason,
            h264: !(window.MediaSource && MediaSource.isTypeSupported('video/mp4; codecs="hvc1.1.6.L93.B0"')) });
        if (leftSince(gen) || play !== playCall) return;
        stopLive();
        document.getElementById("mode").textContent = `回放 ${localText(pb.first_ms)} 起`;
        video.srcObject = null;
        video.src = pb.url;
        video.play().catch(() => {});
        msg.textContent = pb.truncated ? `回放：${pb.truncated}`
          : pb.range_limited ? `H.265 录像已转码为 H.264 播放，本段至 ${localText(pb.last_ms)}，之后请再点击时间轴` : "";
      } catch (e) { if (!leftSince(gen) && play === playCall) msg.textContent = `无法回放：${e.message}`; }
    };
  };
  dayInput.onchange = () => drawTimeline().catch((e) => {
    if (!leftSince(gen)) document.getElementById("timeline-info").textContent = `时间轴加载失败：${e.message}`;
  });
  await drawTimeline();
  if (leftSince(gen)) return;  // the export and hold forms below would be bound to this station on the next page

  if (can("export")) setupExport(id, gen);
  if (can("holds:read")) drawHolds(id, gen);
}

function setupExport(id, gen) {
  const dlg = document.getElementById("export-dialog");
  document.getElementById("export-open").onclick = () => {
    const now = Date.now();
    document.getElementById("export-start").value = localIso(now - 10 * 60000);
    document.getElementById("export-end").value = localIso(now - 60000);
    document.getElementById("export-error").textContent = "";
    dlg.showModal();
  };
  document.getElementById("export-submit").onclick = async () => {
    const reason = document.getElementById("export-reason").value.trim();
    const err = document.getElementById("export-error");
    if (reason.length < 2) { err.textContent = "必须填写调用事由（至少2个字）"; return; }
    try {
      const job = await api.post("/api/exports", { station_id: id, start: document.getElementById("export-start").value,
        end: document.getElementById("export-end").value, reason });
      if (leftSince(gen)) return;  // the job is listed on its own station's page, not on the next one
      dlg.close();
      followExport(job);
    } catch (e) { if (!leftSince(gen)) err.textContent = e.message; }
  };
}

function followExport(job) {
  const box = document.getElementById("exports");
  const el = document.createElement("p");
  el.className = "export-job";
  box.prepend(el);
  const show = (j) => {
    if (j.state === "done") el.innerHTML = `${esc(j.start_at.slice(0, 19).replace("T", " "))} 起：<a class="export-download" href="${esc(j.download_url)}" download>下载 MP4</a>（${(j.bytes / 1048576).toFixed(1)} MB）`;
    else if (j.state === "failed") el.innerHTML = `<span class="error">导出失败：${esc(j.error)}</span>`;
    else el.textContent = `导出中… ${Math.round(j.progress * 100)}%`;
  };
  show(job);
  const timer = setInterval(async () => {
    try {
      const j = await api.get(`/api/exports/${job.id}`);
      show(j);
      if (j.state !== "queued" && j.state !== "running") clearInterval(timer);
    } catch (e) { el.textContent = e.message; clearInterval(timer); }
  }, 1000);
  cleanup.push(() => clearInterval(timer));
}

async function drawHolds(id, gen) {
  const holds = await api.get(`/api/holds?station_id=${encodeURIComponent(id)}`);
  if (leftSince(gen)) return;  // a hold made on the next station's page must not be for this one
  const box = document.getElementById("holds");
  box.innerHTML = (holds.length ? `<table><tr><th>时段</th><th>事由</th><th>创建人</th></tr>${holds.map((h) =>
    `<tr><td>${esc(h.start.slice(0, 16).replace("T", " "))} – ${esc(h.end.slice(0, 16).replace("T", " "))}</td><td>${esc(h.reason)}</td><td>${esc(h.created_by)}</td></tr>`).join("")}</table>`
    : `<p class="muted">无保全</p>`) + (can("holds:write") ? `<details><summary>新建保全</summary>
      <label>开始 <input type="datetime-local" id="hold-start"></label><label>结束 <input type="datetime-local" id="hold-end"></label>
      <label>事由 <input id="hold-reason" placeholder="案件或投诉编号"></label><button id="hold-add">保全</button>
      <p class="error" id="hold-error"></p></details>` : "");
  const add = document.getElementById("hold-add");
  if (add) add.onclick = async () => {
    const holdError = document.getElementById("hold-error");  // this page's, looked up before the wait
    try {
      await api.post("/api/holds", { station_id: id, start: document.getElementById("hold-start").value,
        end: document.getElementById("hold-end").value, reason: document.getElementById("hold-reason").value });
      drawHolds(id, gen);
    } catch (e) { holdError.textContent = e.message; }
  };
}

// ---- alarm center (issue 20): alerts, acknowledge, mute, maintenance windows ---------------------
const ALARM_TABS = { firing: "进行中", resolved: "已恢复", all: "全部" };
const DELIVERY_KIND = { firing: "告警", reminder: "提醒", resolved: "恢复", digest: "汇总", test: "测试" };
const DELIVERY_STATE = { queued: "待发送", sent: "已发送", batched: "已并入汇总", failed: "发送失败", dropped: "已取消" };
const MUTE_CHOICES = [[30, "30 分钟"], [120, "2 小时"], [480, "8 小时"], [1440, "24 小时"]];
const MAINT_STATE = { active: "进行中", future: "未开始", past: "已结束" };
const ALARM_PAGE = 50;
const ALARM_REFRESH_MS = 15000;
const ALARM_COLS = 9;

// "12:30" today, "03-02 12:30" another day.
const shortTime = (ms) => {
  const t = localText(ms);
  return t.slice(0, 10) === todayLocal() ? t.slice(11, 16) : t.slice(5, 16);
};

function spanText(ms) {
  const min = Math.max(0, Math.round(ms / 60000));
  if (min < 60) return `${min}分钟`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h}小时${min % 60 ? `${min % 60}分` : ""}`;
  return `${Math.floor(h / 24)}天${h % 24 ? `${h % 24}小时` : ""}`;
}

function alarmStatus(a, now) {
  if (a.state !== "firing") return `<span class="tag t-resolved">已恢复</span>`;
  const tags = [];
  if (a.suppressed === "maintenance") tags.push(`<span class="tag t-maint" title="维护窗口内产生，不通知">维护中</span>`);
  else if (a.suppressed) tags.push(`<span class="tag t-maint">不通知</span>`);
  if (a.muted_until_ms && a.muted_until_ms > now) {
    tags.push(`<span class="tag t-muted" title="${esc(a.muted_by ? `${a.muted_by} 设置` : "")}">静音至 ${esc(shortTime(a.muted_until_ms))}</span>`);
  }
  if (a.acked_by) tags.push(`<span class="tag t-acked" title="${esc(a.ack_note || "")}">已确认（${esc(a.acked_by)}）</span>`);
  return tags.length ? tags.join(" ") : `<span class="tag t-firing">告警中</span>`;
}

function alarmRow(a, now, writable, muteChoice) {
  const firing = a.state === "firing";
  const station = a.station_id
    ? `<a href="#/station/${esc(a.station_id)}">${esc(a.station_name || a.station_id)}</a>` : `<span class="muted">服务器</span>`;
  const duration = firing ? `已持续 ${spanText(now - a.since_ms)}`
    : `${esc(localText(a.resolved_ms))}<br><span class="muted">持续 ${spanText((a.resolved_ms ?? now) - a.since_ms)}</span>`;
  const muted = a.muted_until_ms && a.muted_until_ms > now;
  let actions = `<button type="button" class="link alarm-more">详情</button>`;
  if (writable && firing) {
    if (!a.acked_by) actions += ` <button type="button" class="ack-open">确认</button>`;
    actions += muted ? ` <button type="button" class="unmute">取消静音</button>`
      : ` <select class="mute-minutes" aria-label="静音时长">${MUTE_CHOICES.map(([m, t]) =>
        `<option value="${m}" ${String(m) === muteChoice ? "selected" : ""}>${t}</option>`).join("")}</select> <button type="button" class="mute">静音</button>`;
  }
  return `<tr class="alarm" data-id="${esc(a.id)}" data-state="${esc(a.state)}">
    <td><span class="sev sev-${esc(a.severity)}">${esc(SEVERITY_TEXT[a.severity] || a.severity)}</span></td>
    <td>${esc(a.rule_label)}<div class="alarm-title">${esc(a.title)}</div></td>
    <td>${station}</td><td>${esc(a.town || "全县")}</td><td>${esc(localText(a.since_ms))}</td><td>${duration}</td>
    <td class="alarm-status">${alarmStatus(a, now)}</td><td>${esc(a.reminders)}</td><td class="actions">${actions}</td></tr>`;
}

function alarmDetailHtml(d) {
  const facts = [
    d.detail ? `<p>${esc(d.detail)}</p>` : "",
    `<p class="muted">条件开始 ${esc(localText(d.since_ms))}，告警产生 ${esc(localText(d.fired_ms))}` +
      (d.acked_by ? `；${esc(d.acked_by)} 于 ${esc(localText(d.acked_ms))} 确认${d.ack_note ? `：${esc(d.ack_note)}` : ""}` : "") +
      (d.muted_by && d.muted_until_ms ? `；${esc(d.muted_by)} 静音至 ${esc(localText(d.muted_until_ms))}` : "") + "</p>",
  ].join("");
  // A message carried inside a digest: what became of the digest says whether it reached the channel.
  const stateText = (x) => (DELIVERY_STATE[x.state] || x.state) +
    (x.state === "batched" && x.digest_state ? `（汇总${DELIVERY_STATE[x.digest_state] || x.digest_state}）` : "");
  const rows = d.deliveries.map((x) => `<tr class="delivery" data-kind="${esc(x.kind)}" data-state="${esc(x.state)}">
    <td>${esc(x.channel)}</td><td>${esc(DELIVERY_KIND[x.kind] || x.kind)}</td><td>${esc(stateText(x))}</td>
    <td>${esc(x.attempts)}</td><td>${x.last_error ? `<span class="error">${esc(x.last_error)}</span>` : "—"}</td>
    <td>${esc(localText(x.created_ms))}</td><td>${esc(localText(x.sent_ms ?? x.digest_sent_ms))}</td></tr>`).join("");
  return facts + (d.deliveries.length
    ? `<table class="deliveries"><tr><th>通道</th><th>类型</th><th>状态</th><th>尝试次数</th><th>最近错误</th><th>生成时间</th><th>发送时间</th></tr>${rows}</table>`
    : `<p class="muted">没有发出的消息（未配置告警通道，或在维护窗口内）</p>`);
}

async function renderAlarms() {
  const writable = can("alerts:write");
  let tab = sessionStorage.getItem("alarm-tab") || "firing";
  if (!ALARM_TABS[tab]) tab = "firing";
  let alerts = [];
  let nextBefore = null;
  let gen = 0;  // a newer load or action makes older answers stale
  let alive = true;
  const openDetails = new Set();
  const ackNotes = new Map();  // alert id -> the note being typed (kept across refreshes)
  const muteChoices = new Map();  // alert id -> the chosen mute minutes (kept across refreshes)

  main.innerHTML = `<h2>告警中心 <span class="muted" id="alarm-count"></span></h2>
    <div class="tabs" id="alarm-tabs">${Object.entries(ALARM_TABS).map(([k, v]) =>
      `<button type="button" data-state="${k}" class="${k === tab ? "active" : ""}">${v}</button>`).join("")}
      <span class="muted">每15秒自动刷新；点击一行查看消息发送记录</span></div>
    <p class="error" id="alarm-error"></p>
    <table id="alarm-table"><thead><tr><th>级别</th><th>规则</th><th>站点</th><th>镇街</th><th>开始时间</th>
      <th>持续/恢复时间</th><th>状态</th><th>提醒次数</th><th>操作</th></tr></thead><tbody id="alarm-rows"></tbody></table>
    <div class="row"><button type="button" id="alarm-more-page" hidden>加载更多</button></div>
    ${writable ? `<section class="panel" id="maint-panel"><h3>维护窗口 <span class="muted">窗口内产生的告警不通知</span></h3>
      <div id="maint-list"></div>
      <form id="maint-form" class="row" novalidate>
        <label>站点编号 <input id="mw-station" list="mw-stations" size="18" placeholder="如 pingshan-town"></label>
        <datalist id="mw-stations"></datalist>
        <label>或镇街 <select id="mw-town"><option value="">（不限）</option></select></label>
        <label>开始 <input type="datetime-local" id="mw-start"></label>
        <label>结束 <input type="datetime-local" id="mw-end"></label>
        <label>原因 <input id="mw-reason" size="20" maxlength="500" placeholder="如：供电检修"></label>
        <button class="primary" type="submit" id="mw-add">添加维护窗口</button>
        <span class="muted">站点和镇街都不填：全县</span></form>
      <p class="error" id="maint-error"></p></section>` : ""}`;
  const body = document.getElementById("alarm-rows");
  const errorBox = document.getElementById("alarm-error");
  const moreBtn = document.getElementById("alarm-more-page");

  const draw = () => {
    const now = Date.now();
    // Keep what the user was typing into open acknowledge forms.
    body.querySelectorAll("tr.ack-row").forEach((r) => ackNotes.set(r.dataset.for, r.querySelector("input[name=note]").value));
    body.innerHTML = alerts.length ? alerts.map((a) => alarmRow(a, now, writable, muteChoices.get(String(a.id)))).join("")
      : `<tr><td colspan="${ALARM_COLS}" class="muted">${tab === "firing" ? "当前没有进行中的告警" : "没有告警"}</td></tr>`;
    document.getElementById("alarm-count").textContent = `${ALARM_TABS[tab]} · 显示 ${alerts.length} 条，最新在前`;
    moreBtn.hidden = nextBefore == null;
    for (const [id, note] of ackNotes) {
      const row = rowOf(id);
      if (row && row.dataset.state === "firing") openAck(row, note); else ackNotes.delete(id);
    }
    for (const id of openDetails) {
      const row = rowOf(id);
      if (row) showDetail(row); else openDetails.delete(id);
    }
  };
  const rowOf = (id) => body.querySelector(`tr.alarm[data-id="${CSS.escape(String(id))}"]`);
  const afterRow = (row) => {  // the last row belonging to this alert (its ack form or details)
    let r = row;
    while (r.nextElementSibling && r.nextElementSibling.dataset.for === row.dataset.id) r = r.nextElementSibling;
    return r;
  };

  const load = async () => {
    const mine = ++gen;
    const limit = Math.min(500, Math.max(ALARM_PAGE, alerts.length));
    const r = await api.get(`/api/alerts?state=${tab}&limit=${limit}`);
    if (!alive || mine !== gen) return;
    alerts = r.alerts;
    nextBefore = r.next_before_id;
    errorBox.textContent = "";
    draw();
  };
  const loadMore = async () => {
    if (nextBefore == null) return;
    const mine = ++gen;
    try {
      const r = await api.get(`/api/alerts?state=${tab}&limit=${ALARM_PAGE}&before_id=${nextBefore}`);
      if (!alive || mine !== gen) return;
      const seen = new Set(alerts.map((a) => a.id));
      alerts = alerts.concat(r.alerts.filter((a) => !seen.has(a.id)));
      nextBefore = r.next_before_id;
      draw();
    } catch (e) { errorBox.textContent = `加载失败：${e.message}`; }
  };
  const replace = (updated) => {  // an action's answer is the alert as it is now
    gen++;
    alerts = alerts.map((a) => (a.id === updated.id ? updated : a));
    draw();
  };

  function openAck(row, note = "") {
    const id = row.dataset.id;
    if (body.querySelector(`tr.ack-row[data-for="${CSS.escape(id)}"]`)) return;
    row.insertAdjacentHTML("afterend", `<tr class="ack-row" data-for="${esc(id)}"><td colspan="${ALARM_COLS}">
      <form class="ack-form row">确认告警：<input name="note" size="40" maxlength="500" placeholder="备注（可选），如：已通知站长处理" value="${esc(note)}">
        <button type="submit" class="primary">提交确认</button><button type="button" class="ack-cancel">取消</button>
        <span class="error ack-error"></span></form></td></tr>`);
    ackNotes.set(id, note);
  }
  function closeAck(id) {
    ackNotes.delete(id);
    body.querySelectorAll(`tr.ack-row[data-for="${CSS.escape(id)}"]`).forEach((r) => r.remove());
  }
  async function showDetail(row) {
    const id = row.dataset.id;
    openDetails.add(id);
    let det = body.querySelector(`tr.alarm-detail[data-for="${CSS.escape(id)}"]`);
    if (!det) {
      afterRow(row).insertAdjacentHTML("afterend", `<tr class="alarm-detail" data-for="${esc(id)}"><td colspan="${ALARM_COLS}">
        <span class="muted">加载中…</span></td></tr>`);
      det = body.querySelector(`tr.alarm-detail[data-for="${CSS.escape(id)}"]`);
    }
    try {
      const d = await api.get(`/api/alerts/${encodeURIComponent(id)}`);
      if (det.isConnected) det.firstElementChild.innerHTML = alarmDetailHtml(d);
    } catch (e) {
      if (det.isConnected) det.firstElementChild.innerHTML = `<span class="error">${esc(e.message)}</span>`;
    }
  }
  const toggleDetail = (row) => {
    const id = row.dataset.id;
    if (openDetails.has(id)) {
      openDetails.delete(id);
      body.querySelectorAll(`tr.alarm-detail[data-for="${CSS.escape(id)}"]`).forEach((r) => r.remove());
    } else showDetail(row);
  };
  const act = async (fn) => {
    errorBox.textContent = "";
    try { replace(await fn()); } catch (e) { errorBox.textContent = `操作失败：${e.message}`; }
  };

  body.addEventListener("click", (ev) => {
    const row = ev.target.closest("tr.alarm");
    if (!row) return;
    const id = row.dataset.id;
    const path = `/api/alerts/${encodeURIComponent(id)}`;
    if (ev.target.closest(".alarm-more")) toggleDetail(row);
    else if (ev.target.closest(".ack-open")) { openAck(row); body.querySelector(`tr.ack-row[data-for="${CSS.escape(id)}"] input`).focus(); }
    else if (ev.target.closest(".mute")) {
      const minutes = Number(row.querySelector(".mute-minutes").value);
      act(() => api.post(`${path}/mute`, { minutes }));
    } else if (ev.target.closest(".unmute")) act(() => api.delete(`${path}/mute`));
    else if (!ev.target.closest("a, button, select, input")) toggleDetail(row);
  });
  body.addEventListener("click", (ev) => {
    const cancel = ev.target.closest(".ack-cancel");
    if (cancel) closeAck(cancel.closest("tr.ack-row").dataset.for);
  });
  body.addEventListener("change", (ev) => {
    if (ev.target.matches(".mute-minutes")) muteChoices.set(ev.target.closest("tr.alarm").dataset.id, ev.target.value);
  });
  body.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target.closest("form.ack-form");
    if (!form) return;
    const id = form.closest("tr.ack-row").dataset.for;
    const note = form.note.value.trim();
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const updated = await api.post(`/api/alerts/${encodeURIComponent(id)}/ack`, note ? { note } : {});
      closeAck(id);
      replace(updated);
    } catch (e) {
      form.querySelector(".ack-error").textContent = e.message;
      form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  });
  document.getElementById("alarm-tabs").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-state]");
    if (!b || b.dataset.state === tab) return;
    tab = b.dataset.state;
    sessionStorage.setItem("alarm-tab", tab);
    document.querySelectorAll("#alarm-tabs button").forEach((x) => x.classList.toggle("active", x === b));
    alerts = [];
    nextBefore = null;
    openDetails.clear();
    ackNotes.clear();
    muteChoices.clear();
    load().catch((e) => { errorBox.textContent = `加载失败：${e.message}`; });
  });
  moreBtn.onclick = loadMore;

  const maint = writable ? setupMaintenance(() => alive) : null;
  const tick = async () => {
    // Not while the user is choosing or typing in the table: a redraw would take the control away.
    const focus = document.activeElement;
    if (focus && body.contains(focus) && focus.matches("input, select")) return;
    try {
      await load();
      if (maint) await maint.load();
    } catch (e) {
      if (e.status === 401) { me = null; location.hash = "#/login"; return; }
      errorBox.textContent = `刷新失败：${e.message}`;
    }
  };
  const timer = setInterval(tick, ALARM_REFRESH_MS);
  cleanup.push(() => { alive = false; clearInterval(timer); });
  await Promise.all([load(), maint ? maint.start() : null]);
}

function setupMaintenance(alive) {
  const list = document.getElementById("maint-list");
  const err = document.getElementById("maint-error");
  const form = document.getElementById("maint-form");
  const names = new Map();
  const load = async () => {
    const windows = await api.get("/api/alerts/maintenance");
    if (!alive()) return;
    const scope = (w) => w.station_id ? `站点 ${esc(names.get(w.station_id) || w.station_id)}` : w.town ? `镇街 ${esc(w.town)}` : "全县";
    list.innerHTML = windows.length ? `<table id="maint-table"><tr><th>范围</th><th>开始</th><th>结束</th><th>原因</th><th>设置人</th><th>状态</th><th></th></tr>${
      windows.map((w) => `<tr class="maint" data-id="${esc(w.id)}"><td>${scope(w)}</td><td>${esc(localText(w.start_ms))}</td>
        <td>${esc(localText(w.end_ms))}</td><td>${esc(w.reason)}</td><td>${esc(w.created_by)}</td>
        <td>${esc(MAINT_STATE[w.state] || w.state)}</td>
        <td><button type="button" class="mw-end" title="${w.state === "future" ? "删除未开始的窗口" : "现在结束"}">结束</button></td></tr>`).join("")}</table>`
      : `<p class="muted">没有进行中或将来的维护窗口</p>`;
  };
  list.addEventListener("click", async (ev) => {
    const b = ev.target.closest(".mw-end");
    if (!b) return;
    err.textContent = "";
    try {
      await api.delete(`/api/alerts/maintenance/${encodeURIComponent(b.closest("tr").dataset.id)}`);
    } catch (e) { err.textContent = e.message; }
    await load().catch((e) => { err.textContent = e.message; });
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const value = (id) => document.getElementById(id).value.trim();
    const start = value("mw-start"), end = value("mw-end");
    if (!start || !end) { err.textContent = "请填写开始和结束时间"; return; }
    const body = { start, end, reason: value("mw-reason") };
    if (value("mw-station")) body.station_id = value("mw-station");
    if (value("mw-town")) body.town = value("mw-town");
    try {
      await api.post("/api/alerts/maintenance", body);
      document.getElementById("mw-reason").value = "";
      await load();
    } catch (e) { err.textContent = e.message; }
  });
  const start = async () => {
    const now = Date.now();
    document.getElementById("mw-start").value = localIso(now).slice(0, 16);
    document.getElementById("mw-end").value = localIso(now + 2 * 3600000).slice(0, 16);
    try {  // the station ids and towns for the form; without them the fields are plain inputs
      const data = await api.get("/api/stations");
      const towns = [...new Set(data.stations.map((s) => s.town))];
      data.stations.forEach((s) => names.set(s.id, s.name));
      document.getElementById("mw-stations").innerHTML = data.stations.map((s) =>
        `<option value="${esc(s.id)}">${esc(s.name)}</option>`).join("");
      document.getElementById("mw-town").insertAdjacentHTML("beforeend",
        towns.map((t) => `<option value="${esc(t)}">${esc(t)}</option>`).join(""));
    } catch { /* no station list: type the id */ }
    await load();
  };
  return { load, start };
}

// ---- 设备接入（国标）: GB/T 28181 devices, admins only (gb28181.js) ----------------------------------
async function renderGb() {
  if (!can("stations:write")) {
    main.innerHTML = `<h2>设备接入（国标）</h2><p class="muted">仅管理员可管理国标设备接入</p>`;
    return;
  }
  await renderGbPage(main, { onLeave: (f) => cleanup.push(f), loggedOut: () => { me = null; location.hash = "#/login"; } });
}

// ---- audits, users -------------------------------------------------------------------------------
// The monthly report (vms.audit.reports.monthly_report) under Chinese headings.
const AUDIT_STATUS = { pass: "达标", fail: "不达标", exempt: "免考" };
const pctText = (v) => (v == null ? "—" : `${Number(v).toFixed(1)}%`);
const ROLLUP_COLUMNS = [["stations", "站点数"], ["assessed", "参加考核"], ["passed", "达标"], ["failed", "不达标"],
                        ["exempt", "免考"], ["pass_percent", "达标率", pctText], ["online_percent", "平均在线率", pctText],
                        ["coverage_percent", "平均录像覆盖率", pctText]];

function rollupCells(r) {
  return ROLLUP_COLUMNS.map(([k, , fmt]) => `<td>${esc(fmt ? fmt(r[k]) : (r[k] ?? "—"))}</td>`).join("");
}

function auditHtml(rep) {
  if (!rep.audited) return `<p class="muted">${esc(rep.month)} 尚无审计结果（审计任务在月末后计算）</p>`;
  const head = ROLLUP_COLUMNS.map(([, t]) => `<th>${t}</th>`).join("");
  const reasons = (st) => (st.reasons || []).map((r) => esc(r.message || "")).filter(Boolean).join("；") || "—";
  return `<p>月份：${esc(rep.month)}；计算于 ${esc(localText(rep.computed_ms))}</p>
    <table id="audit-summary"><tr><th>范围</th>${head}</tr>
      <tr><td>全县</td>${rollupCells(rep.county)}</tr>
      ${rep.poverty && rep.poverty.stations ? `<tr><td>贫困村站点</td>${rollupCells(rep.poverty)}</tr>` : ""}
      ${rep.towns.map((t) => `<tr><td>${esc(t.town)}</td>${rollupCells(t)}</tr>`).join("")}</table>
    <h3>不达标站点（${rep.failing.length}）</h3>
    ${rep.failing.length ? `<table id="audit-failing"><tr><th>站点</th><th>镇街</th><th>结果</th><th>在线率</th><th>录像覆盖率</th><th>原因</th></tr>${
      rep.failing.slice(0, 200).map((st) => `<tr><td>${esc(st.name || st.station_id)}</td><td>${esc(st.town)}</td>
        <td>${esc(AUDIT_STATUS[st.status] || "—")}</td><td>${esc(pctText(st.online_percent))}</td>
        <td>${esc(pctText(st.coverage_percent))}</td><td>${reasons(st)}</td></tr>`).join("")}</table>`
      : `<p class="muted">全部达标</p>`}`;
}

async function renderAudits(monthParam) {
  const month = /^\d{4}-\d{2}$/.test(monthParam || "") ? monthParam : sessionStorage.getItem("audit-month") || todayLocal().slice(0, 7);
  main.innerHTML = `<h2>审计 · 月度合规</h2><div class="row"><label>月份 <input type="month" id="month" value="${esc(month)}"></label></div><div id="audit"></div>`;
  const load = async () => {
    const box = document.getElementById("audit");
    const chosen = document.getElementById("month").value;
    sessionStorage.setItem("audit-month", chosen);
    history.replaceState(history.state, "", `#/audits?month=${encodeURIComponent(chosen)}`);
    routedHash = location.hash;
    try {
      box.innerHTML = auditHtml(await api.get(`/api/audits/monthly?month=${encodeURIComponent(chosen)}`));
    } catch (e) {
      box.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    }
  };
  document.getElementById("month").onchange = load;
  await load();
}

async function renderAdmin() {
  main.innerHTML = `<h2>用户与角色</h2><div id="users"></div>`;
  const box = document.getElementById("users");
  try {
    const users = await api.get("/api/users");
    box.innerHTML = `<table><tr><th>用户名</th><th>角色</th><th>镇街范围</th><th>状态</th></tr>${users.map((u) =>
      `<tr><td>${esc(u.username)}</td><td>${roleText(u.role)}</td><td>${u.towns ? esc(u.towns.join("、")) : "全部"}</td>
       <td>${u.disabled ? "已停用" : "正常"}</td></tr>`).join("")}</table>
      <p class="muted">新建用户与修改角色：<code>vms users create</code> 或 POST /api/users</p>`;
  } catch (e) {
    box.innerHTML = `<p class="muted">${e.status === 404 ? "API 暂无用户接口" : esc(e.message)}</p>`;
  }
}

document.getElementById("logout").onclick = async () => {
  leavePage();
  try { await api.post("/api/auth/logout"); } catch { /* already out */ }
  me = null;
  location.hash = "#/login";
};
window.addEventListener("hashchange", navigated);
window.addEventListener("popstate", navigated);
route();
