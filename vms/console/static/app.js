// The web console: hash routes, one render function per page, plain DOM.
import { api, ApiError, esc, localIso, localText, todayLocal, dayStartMs } from "./api.js";
import { startWebRTC, startMSE } from "./live.js";

const main = document.getElementById("main");
const STATE_TEXT = { recording: "录像中", offline: "离线", closed: "已关门", fault: "故障", disabled: "停用",
                     stuck: "录像卡死" };
const GAP_TEXT = { stalled: "断流", unreachable: "无法连接", stream_ended: "流结束", bad_stream: "流异常",
                   ingest_stopped: "录像服务停止", ingest_hung: "录像进程卡死", auth_failed: "认证失败",
                   no_video: "无视频" };
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

async function route() {
  leavePage();
  const hash = location.hash || "#/wall";
  const [, page, arg] = hash.split("/");
  if (!me) {
    try { me = await api.get("/api/auth/me"); } catch { me = null; }
  }
  if (!me && page !== "login") { location.hash = "#/login"; return; }
  document.getElementById("nav").hidden = !me;
  document.getElementById("logout").hidden = !me;
  document.getElementById("who").textContent = me ? `${me.username}（${roleText(me.role)}）` : "";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  try {
    if (page === "login") return renderLogin();
    if (page === "station" && arg) return await renderStation(decodeURIComponent(arg));
    if (page === "alarms") return await renderAlarms();
    if (page === "audits") return await renderAudits();
    if (page === "admin") return await renderAdmin();
    return await renderWall(arg ? decodeURIComponent(arg) : null);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { me = null; location.hash = "#/login"; return; }
    main.innerHTML = `<p class="error">出错了：${esc(e.message)}</p>`;
  }
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

async function renderWall(town) {
  const data = await api.get("/api/stations");
  const all = data.stations;
  const shown = town ? all.filter((s) => s.town === town) : all;
  let size = Number(sessionStorage.getItem("wall-size") || 9);
  let page = 0;
  main.innerHTML = `<div class="layout">${treeHtml(all, town)}<section>
    <div class="toolbar"><b>${town ? esc(town) : "全部站点"}</b>
      <span class="muted" id="wall-count">共${shown.length}个站点</span>
      <label>画面数 <select id="wall-size">${[4, 9, 16].map((n) => `<option ${n === size ? "selected" : ""}>${n}</option>`).join("")}</select></label>
      <button id="prev">上一页</button><span id="pager"></span><button id="next">下一页</button>
      <span class="muted">快照每5秒刷新，点击画面看实时视频</span></div>
    <div class="wall" id="wall"></div></section></div>`;
  const wall = document.getElementById("wall");
  const draw = () => {
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    document.getElementById("pager").textContent = `第${page + 1}/${pages}页`;
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
  const st = await api.get(`/api/stations/${encodeURIComponent(id)}`);
  const state = stationState(st);
  const day = sessionStorage.getItem("timeline-day") || todayLocal();
  main.innerHTML = `<p><a href="#/wall/${encodeURIComponent(st.town)}">← ${esc(st.town)}</a></p>
  <div class="station"><section>
    <div class="panel"><h3>${esc(st.name)} <span class="muted">${esc(st.id)}</span>
      <span id="mode" class="muted"></span></h3>
      <video id="video" muted autoplay playsinline controls></video>
      <div class="row"><button id="go-live" class="primary">实时</button>
        <button id="go-mse">兼容模式（MSE）</button><span id="live-msg" class="muted"></span></div></div>
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
      <tr><td>摄像机</td><td>${esc(st.camera.state)}${st.camera.reason ? "：" + esc(st.camera.reason) : ""}
        ${st.camera.width ? `<br>${st.camera.codec} ${st.camera.width}×${st.camera.height} ${st.camera.fps ? st.camera.fps.toFixed(1) + "fps" : ""}` : ""}</td></tr>
      <tr><td>录像至</td><td>${localText(st.recorded_until_ms)}</td></tr>
      <tr><td>故障</td><td>${st.faults.length ? st.faults.map((f) => `${esc(f.kind)}（${localText(f.since_ms)}起）`).join("<br>") : "无"}</td></tr>
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
  const stopLive = () => { if (live) { live.close(); live = null; window.__live = null; } };
  cleanup.push(stopLive);
  const goMse = (why) => {
    stopLive();
    document.getElementById("mode").textContent = "实时（兼容模式）";
    msg.textContent = why ? `WebRTC 不可用（${why}），已切换到兼容模式` : "";
    live = startMSE(video, id, (reason) => { msg.textContent = `实时视频已停止：${reason}`; });
    window.__live = live.stats;
  };
  const goLive = async () => {
    stopLive();
    if (!can("live")) { msg.textContent = "当前角色无实时观看权限"; return; }
    msg.textContent = "正在连接…";
    document.getElementById("mode").textContent = "实时";
    try {
      live = await startWebRTC(video, id);
      window.__live = live.stats;
      msg.textContent = "";
      const current = live;
      live.pc.addEventListener("connectionstatechange", () => {
        if (current === live && live.pc.connectionState === "failed") goMse("连接失败");
      });
      setTimeout(() => { if (current === live && live.stats.frames === 0) goMse("5秒内无画面"); }, 5000);
    } catch (e) {
      if (e.status === 503) { msg.textContent = `无实时画面：${e.message}`; return; }
      goMse(e.message);
    }
  };
  document.getElementById("go-live").onclick = goLive;
  document.getElementById("go-mse").onclick = () => goMse(null);
  if (state === "disabled") msg.textContent = "站点已停用";
  else if (state !== "offline") goLive(); else msg.textContent = "摄像机离线";

  const dayInput = document.getElementById("day");
  const drawTimeline = async () => {
    sessionStorage.setItem("timeline-day", dayInput.value);
    const start = dayStartMs(dayInput.value), end = start + 86400000;
    const tl = await api.get(`/api/stations/${encodeURIComponent(id)}/timeline?start=${dayInput.value}T00:00:00&end=${localIso(end)}`);
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
      try {
        const pb = await api.post(`/api/stations/${encodeURIComponent(id)}/playback`,
          { start: localIso(at), end: localIso(at + 15 * 60000), reason });
        stopLive();
        document.getElementById("mode").textContent = `回放 ${localText(pb.first_ms)} 起`;
        video.srcObject = null;
        video.src = pb.url;
        video.play().catch(() => {});
        msg.textContent = pb.truncated ? `回放：${pb.truncated}` : "";
      } catch (e) { msg.textContent = `无法回放：${e.message}`; }
    };
  };
  dayInput.onchange = drawTimeline;
  await drawTimeline();

  if (can("export")) setupExport(id);
  if (can("holds:read")) drawHolds(id);
}

function setupExport(id) {
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
      dlg.close();
      followExport(job);
    } catch (e) { err.textContent = e.message; }
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

async function drawHolds(id) {
  const box = document.getElementById("holds");
  const holds = await api.get(`/api/holds?station_id=${encodeURIComponent(id)}`);
  box.innerHTML = (holds.length ? `<table><tr><th>时段</th><th>事由</th><th>创建人</th></tr>${holds.map((h) =>
    `<tr><td>${esc(h.start.slice(0, 16).replace("T", " "))} – ${esc(h.end.slice(0, 16).replace("T", " "))}</td><td>${esc(h.reason)}</td><td>${esc(h.created_by)}</td></tr>`).join("")}</table>`
    : `<p class="muted">无保全</p>`) + (can("holds:write") ? `<details><summary>新建保全</summary>
      <label>开始 <input type="datetime-local" id="hold-start"></label><label>结束 <input type="datetime-local" id="hold-end"></label>
      <label>事由 <input id="hold-reason" placeholder="案件或投诉编号"></label><button id="hold-add">保全</button>
      <p class="error" id="hold-error"></p></details>` : "");
  const add = document.getElementById("hold-add");
  if (add) add.onclick = async () => {
    try {
      await api.post("/api/holds", { station_id: id, start: document.getElementById("hold-start").value,
        end: document.getElementById("hold-end").value, reason: document.getElementById("hold-reason").value });
      drawHolds(id);
    } catch (e) { document.getElementById("hold-error").textContent = e.message; }
  };
}

// ---- alarms, audits, users -----------------------------------------------------------------------
async function renderAlarms() {
  const data = await api.get("/api/stations");
  const rows = [];
  for (const st of data.stations) {
    if (!st.enabled) continue;
    for (const f of st.faults) rows.push({ st, at: f.since_ms, kind: "故障", what: `${f.kind}（${f.severity}）${f.detail ? "：" + f.detail : ""}` });
    if (!st.camera.online) rows.push({ st, at: st.camera.last_packet_ms ?? st.camera.updated_ms, kind: "离线",
      what: `${st.camera.state}${st.camera.reason ? "：" + st.camera.reason : ""}${st.camera.detail ? "（" + st.camera.detail + "）" : ""}` });
  }
  rows.sort((a, b) => (b.at ?? 0) - (a.at ?? 0));
  main.innerHTML = `<h2>告警 <span class="muted">${rows.length} 条，最新在前</span></h2>
    <table id="alarms"><tr><th>时间</th><th>类型</th><th>站点</th><th>镇街</th><th>详情</th></tr>${rows.map((r) =>
      `<tr><td>${localText(r.at)}</td><td><i class="dot s-${r.kind === "故障" ? "fault" : "offline"}"></i>${r.kind}</td>
       <td><a href="#/station/${esc(r.st.id)}">${esc(r.st.name)}</a></td><td>${esc(r.st.town)}</td><td>${esc(r.what)}</td></tr>`).join("")}</table>`;
}

function tableOf(rows) {
  if (!rows.length) return `<p class="muted">无数据</p>`;
  const cols = Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object" || rows[0][k] === null);
  return `<table><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>${rows.map((r) =>
    `<tr>${cols.map((c) => `<td>${esc(typeof r[c] === "number" && !Number.isInteger(r[c]) ? r[c].toFixed(1) : r[c])}</td>`).join("")}</tr>`).join("")}</table>`;
}

async function renderAudits() {
  const month = sessionStorage.getItem("audit-month") || todayLocal().slice(0, 7);
  main.innerHTML = `<h2>审计 · 月度合规</h2><div class="row"><label>月份 <input type="month" id="month" value="${month}"></label></div><div id="audit"></div>`;
  const load = async () => {
    const box = document.getElementById("audit");
    sessionStorage.setItem("audit-month", document.getElementById("month").value);
    if (!can("audits:read")) { box.innerHTML = `<p class="muted">当前角色无审计权限</p>`; return; }
    try {
      const rep = await api.get(`/api/audits/monthly?month=${document.getElementById("month").value}`);
      const list = Object.values(rep).find((v) => Array.isArray(v) && v.length && typeof v[0] === "object") || [];
      const summary = Object.entries(rep).filter(([, v]) => typeof v !== "object" || v === null);
      box.innerHTML = `<p>${summary.map(([k, v]) => `${esc(k)}：${esc(v)}`).join("；")}</p>${tableOf(list)}`;
    } catch (e) {
      box.innerHTML = `<p class="muted">${e.status === 404 ? "审计接口尚未提供" : esc(e.message)}</p>`;
    }
  };
  document.getElementById("month").onchange = load;
  await load();
}

async function renderAdmin() {
  main.innerHTML = `<h2>用户与角色</h2><div id="users"></div>`;
  const box = document.getElementById("users");
  if (!can("users:admin")) { box.innerHTML = `<p class="muted">仅管理员可查看用户（只读页面）</p>`; return; }
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
window.addEventListener("hashchange", route);
route();
