// 设备接入（国标）: GB/T 28181 devices that register to this server over SIP, their channels, and the
// admin's actions on them (accept, ask the catalog, bind a channel to a station). Admins only: the API
// (/api/gb28181/*) refuses everyone else.
import { api, ApiError, esc, localText } from "./api.js";

const STATE_TEXT = { online: "在线", offline: "离线", refused: "已拒绝" };
const BOUND_BY_TEXT = { catalogue: "目录文件", api: "控制台" };
const REFRESH_MS = 5000;
const NOTE_MS = 20000;  // how long a success message stays under its device
const HAS_CJK = /[\u3400-\u9fff\uf900-\ufaff]/;

// An API refusal as the admin reads it: the API's Chinese `detail`, never a code or an English message.
export function gbErrorText(e) {
  if (!(e instanceof ApiError)) return "无法连接服务器，请检查网络后重试";
  if (e.status === 401) return "登录已过期，请重新登录";
  if (e.status === 403) return "没有权限：仅管理员可管理国标设备接入";
  if (HAS_CJK.test(e.message)) return e.message;
  if (e.status === 400 || e.status === 422) return "输入不符合要求，请检查后重试";
  if (e.status === 404) return "找不到该设备或通道，请刷新后重试";
  if (e.status >= 500) return `服务器出错（HTTP ${e.status}），请稍后重试`;
  return `操作失败（HTTP ${e.status}）`;
}

// The server writes why a device is refused or offline in English (vms/gb28181/server.py); the console
// says it in Chinese, and keeps anything it does not know as it is.
const PROBLEMS = [
  [/^registration refused: wrong password/, () => "注册被拒绝：密码错误（设备上的密码与本平台为它设置的不一致）"],
  [/^registration refused: (.*)$/, (m) => `注册被拒绝：认证信息有误（${m[1]}）`],
  [/^unknown device/, () => "未登记的设备：密码正确，等待管理员点击「接入」（或在站点目录文件中绑定它的通道）"],
  [/^no password/, () => "没有可用的密码：请在接入时为设备设置密码，或在配置中设置 gb28181.password"],
  [/^its registration expired/, () => "注册已过期，设备未重新注册"],
  [/^no keepalive for (\d+) s \((\d+) missed\)/, (m) => `心跳超时：${m[1]} 秒未收到心跳（连续 ${m[2]} 次）`],
  [/^unregistered$/, () => "设备已注销"],
];

export function gbProblemText(d) {
  if (d.state === "online") return "";
  if (d.problem) {
    for (const [re, text] of PROBLEMS) {
      const m = d.problem.match(re);
      if (m) return text(m);
    }
    return d.problem;
  }
  if (d.state === "offline" && d.registered_ms == null) return "已接入，等待设备注册";
  if (d.state === "offline") return "长时间未收到心跳或注册已过期";
  return "";
}

const addressText = (d) => d.host ? `${d.host}:${d.port ?? "?"}${d.transport ? "/" + d.transport : ""}` : "—";

export async function renderGbPage(main, { onLeave, loggedOut }) {
  let alive = true;
  let devices = [];
  let gen = 0;  // a newer load makes older answers stale
  let server = null;  // /api/gb28181/server: what the devices' platform page needs
  const stations = new Map();  // id -> {name, town}
  const acceptForms = new Map();  // device -> the password being typed (kept across refreshes)
  const bindForms = new Map();  // "device/channel" -> the chosen station id
  const bindHints = new Map();  // "device/channel" -> {station, text, blocked}
  const notes = new Map();  // device -> {text, error, until}
  const busy = new Set();  // actions under way, by key

  main.innerHTML = `<h2>设备接入（国标 GB/T 28181） <span class="muted" id="gb-count"></span></h2>
    <p class="muted gb-server" id="gb-server"></p>
    <p class="error" id="gb-error"></p>
    <div id="gb-list"><p class="muted">加载中…</p></div>`;
  const list = document.getElementById("gb-list");
  const errorBox = document.getElementById("gb-error");

  const sipHost = () => {
    if (!server) return location.hostname;
    return ["0.0.0.0", "::", ""].includes(server.sip_host) ? location.hostname : server.sip_host;
  };
  const serverLine = () => server
    ? `SIP 服务器编号 <b class="mono">${esc(server.server_id)}</b>，SIP 域 <b class="mono">${esc(server.domain)}</b>，` +
      `地址 <b>${esc(sipHost())}</b>，端口 <b>${esc(server.sip_port)}</b>（UDP/TCP）`
    : `本服务器的 SIP 服务器编号、域、地址和端口（见配置 gb28181）`;
  const drawServer = () => {
    const box = document.getElementById("gb-server");
    if (server && !server.enabled) {
      box.className = "error gb-server";
      box.textContent = "国标接入服务未启用（配置 gb28181.enabled: false）：设备无法注册。";
      return;
    }
    box.className = "muted gb-server";
    box.innerHTML = `本平台：${serverLine()}` +
      (server && !server.password_set ? "；未设置全局设备密码，接入设备时须填写它的密码" : "");
  };

  const stationText = (id) => {
    const st = stations.get(id);
    return st ? `${esc(st.name)} <span class="muted mono">${esc(id)}</span>` : `<span class="mono">${esc(id)}</span>`;
  };
  // Which stations a GB channel already has: by the stations file (a camera URL) or by the console.
  const boundStations = () => {
    const out = new Map();
    for (const d of devices) for (const c of d.channels) {
      if (c.station_id) out.set(c.station_id, { key: `${d.device_id}/${c.channel_id}`, by: c.bound_by });
    }
    return out;
  };

  function stationOptions(key, chosen) {
    const bound = boundStations();
    const towns = new Map();
    for (const [id, st] of stations) {
      if (!towns.has(st.town)) towns.set(st.town, []);
      towns.get(st.town).push([id, st]);
    }
    let html = `<option value="">请选择站点…</option>`;
    for (const [town, items] of towns) {
      html += `<optgroup label="${esc(town)}">` + items.map(([id, st]) => {
        const b = bound.get(id);
        const self = b && b.key === key;
        const byFile = b && b.by === "catalogue";
        const suffix = self ? "（当前绑定）" : byFile ? "（已在目录文件中配置国标摄像机）"
          : b ? `（现绑定通道 ${b.key.split("/")[1]}，将改绑到本通道）` : "";
        return `<option value="${esc(id)}" ${id === chosen ? "selected" : ""} ${byFile || self ? "disabled" : ""}>${
          esc(st.name)}（${esc(id)}）${esc(suffix)}</option>`;
      }).join("") + "</optgroup>";
    }
    return html;
  }

  function channelRows(d) {
    if (!d.channels.length) {
      return `<tr><td colspan="6" class="muted">尚无通道：设备注册后会自动查询目录，也可点「刷新目录」</td></tr>`;
    }
    return d.channels.map((c) => {
      const key = `${d.device_id}/${c.channel_id}`;
      const by = c.bound_by ? BOUND_BY_TEXT[c.bound_by] || c.bound_by : "";
      let actions;
      if (c.bound_by === "catalogue") {
        actions = `<span class="muted">在站点目录文件中修改</span>`;
      } else {
        actions = `<button type="button" class="gb-bind-open">${c.station_id ? "改绑站点" : "绑定站点"}</button>` +
          (c.station_id ? ` <button type="button" class="gb-unbind" ${busy.has(`unbind:${key}`) ? "disabled" : ""}>解除绑定</button>` : "");
      }
      let row = `<tr class="gb-channel" data-device="${esc(d.device_id)}" data-channel="${esc(c.channel_id)}">
        <td class="mono">${esc(c.channel_id)}</td>
        <td class="gb-ch-name">${esc(c.name || "—")}${c.manufacturer || c.model
          ? `<div class="muted small">${esc([c.manufacturer, c.model].filter(Boolean).join(" / "))}</div>` : ""}</td>
        <td><span class="tag ${String(c.status).toUpperCase() === "ON" ? "t-on" : "t-off"}" title="设备上报的通道状态">${esc(c.status || "—")}</span></td>
        <td class="gb-station">${c.station_id ? `<a href="#/station/${esc(c.station_id)}">${stationText(c.station_id)}</a>`
          : `<span class="muted">未绑定</span>`}</td>
        <td class="gb-bound-by">${esc(by) || "—"}</td>
        <td class="actions">${actions}</td></tr>`;
      if (bindForms.has(key) && c.bound_by !== "catalogue") {
        const chosen = bindForms.get(key);
        const hint = bindHints.get(key);
        const hintHere = hint && hint.station === chosen ? hint : null;
        row += `<tr class="gb-bind-row" data-for="${esc(key)}"><td colspan="6">
          <form class="gb-bind-form row">绑定到站点：
            <select name="station" aria-label="站点">${stationOptions(key, chosen)}</select>
            <button type="submit" class="primary" ${busy.has(`bind:${key}`) || !chosen || hintHere?.blocked ? "disabled" : ""}>确定</button>
            <button type="button" class="gb-bind-cancel">取消</button>
            <span class="${hintHere?.blocked ? "error" : "muted"} gb-bind-hint">${esc(hintHere ? hintHere.text
              : "只能选择目录文件中未配置摄像机地址的站点；已配置的站点请在目录文件中改为本通道的 gb28181:// 地址")}</span>
          </form></td></tr>`;
      }
      return row;
    }).join("");
  }

  function deviceBody(d) {
    const id = d.device_id;
    const problem = gbProblemText(d);
    const note = notes.get(id);
    const actions = [];
    if (!d.accepted) actions.push(`<button type="button" class="primary gb-accept-open">接入</button>`);
    else if (d.state !== "online") actions.push(`<button type="button" class="gb-accept-open" title="设备的注册密码">设置密码</button>`);
    actions.push(`<button type="button" class="gb-catalog" ${busy.has(`catalog:${id}`) ? "disabled" : ""}>${
      busy.has(`catalog:${id}`) ? "查询中…" : "刷新目录"}</button>`);
    let html = `<tbody class="gb-device" data-device="${esc(id)}" data-state="${esc(d.state)}">
      <tr class="gb-device-row">
        <td><span class="mono">${esc(id)}</span>${d.name ? `<div class="muted small gb-devname" title="${esc(d.name)}">${esc(d.name)}</div>` : ""}</td>
        <td class="gb-state"><span class="tag t-${esc(d.state)}">${esc(STATE_TEXT[d.state] || d.state)}</span></td>
        <td class="gb-accepted">${d.accepted ? "已接入" : `<span class="tag t-pending">待接入</span>`}</td>
        <td class="mono">${esc(addressText(d))}</td>
        <td>${esc([d.manufacturer, d.model].filter(Boolean).join(" / ") || "—")}${d.firmware
          ? `<div class="muted small">固件 ${esc(d.firmware)}</div>` : ""}</td>
        <td class="gb-keepalive">${esc(localText(d.last_keepalive_ms))}</td>
        <td class="gb-problem">${problem ? `<span class="${d.state === "refused" ? "error" : "warn"}"${
          d.problem ? ` title="${esc(d.problem)}"` : ""}>${esc(problem)}</span>` : ""}</td>
        <td class="actions">${actions.join(" ")}</td></tr>`;
    if (acceptForms.has(id)) {
      const setting = d.accepted;
      html += `<tr class="gb-accept-row"><td colspan="8"><form class="gb-accept-form row">
        ${setting ? "设置设备密码：" : "接入设备："}
        <input name="password" type="password" autocomplete="new-password" maxlength="64" size="22"
          placeholder="${setting ? "设备的注册密码" : "设备自己的密码（可选）"}" value="${esc(acceptForms.get(id))}">
        <button type="submit" class="primary" ${busy.has(`accept:${id}`) ? "disabled" : ""}>${setting ? "保存" : "确认接入"}</button>
        <button type="button" class="gb-accept-cancel">取消</button>
        <span class="muted">${setting ? "与设备「平台接入」页面上的密码一致" : "不填则使用全局设备密码（gb28181.password）"}</span>
      </form></td></tr>`;
    }
    if (note) {
      html += `<tr class="gb-note-row"><td colspan="8"><span class="${note.error ? "error" : "ok"} gb-note">${esc(note.text)}</span></td></tr>`;
    }
    html += `<tr class="gb-channels-row"><td colspan="8"><table class="gb-channels">
      <colgroup><col class="c-id"><col><col class="c-onoff"><col><col class="c-by"><col class="c-actions"></colgroup>
      <thead><tr><th>通道编号</th><th>名称</th><th>状态</th><th>绑定站点</th><th>绑定方式</th><th>操作</th></tr></thead>
      <tbody>${channelRows(d)}</tbody></table></td></tr></tbody>`;
    return html;
  }

  const draw = () => {
    const now = Date.now();
    for (const [id, n] of notes) {
      const online = n.untilOnline && devices.some((d) => d.device_id === id && d.state === "online");
      if ((n.until && n.until < now) || online) notes.delete(id);
    }
    const online = devices.filter((d) => d.state === "online").length;
    document.getElementById("gb-count").textContent = devices.length
      ? `共 ${devices.length} 台设备，在线 ${online} 台 · 每5秒自动刷新` : "每5秒自动刷新";
    if (!devices.length) {
      list.innerHTML = `<div class="panel gb-empty" id="gb-empty"><p><b>还没有设备注册。</b></p>
        <p class="muted">在摄像机的「平台接入」（GB28181）页面填写 ${serverLine()}，再填写设备编号和密码并启用。</p></div>`;
      return;
    }
    list.innerHTML = `<table class="gb-devices" id="gb-devices">
      <colgroup><col class="c-id"><col class="c-state"><col class="c-accepted"><col class="c-addr"><col class="c-model">
        <col class="c-time"><col><col class="c-actions"></colgroup>
      <thead><tr><th>设备编号</th><th>状态</th><th>接入</th><th>地址</th><th>厂商 / 型号</th><th>最后心跳</th><th>说明</th><th>操作</th></tr></thead>
      ${devices.map(deviceBody).join("")}</table>`;
  };

  const load = async () => {
    const mine = ++gen;
    const r = await api.get("/api/gb28181/devices");
    if (!alive || mine !== gen) return;
    devices = r;
    errorBox.textContent = "";
    draw();
  };
  const reload = () => load().catch((e) => {
    if (e instanceof ApiError && e.status === 401) { loggedOut(); return; }
    errorBox.textContent = `刷新失败：${gbErrorText(e)}`;
  });
  // A success note goes after NOTE_MS (untilOnline: as soon as the device is online); an error stays until
  // the next action on the device.
  const setNote = (id, text, error, untilOnline = false) =>
    notes.set(id, { text, error, untilOnline, until: error ? null : Date.now() + (untilOnline ? 3 : 1) * NOTE_MS });
  const run = async (key, fn) => {  // one action at a time per key; the list is redrawn after it
    if (busy.has(key)) return;
    busy.add(key);
    draw();
    try { await fn(); } finally { busy.delete(key); }
    if (alive) await reload();
  };

  const deviceOf = (el) => el.closest("tbody.gb-device").dataset.device;
  list.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || !list.contains(b)) return;
    const ch = b.closest("tr.gb-channel");
    if (b.classList.contains("gb-accept-open")) {
      const id = deviceOf(b);
      if (!acceptForms.has(id)) acceptForms.set(id, "");
      draw();
      list.querySelector(`tbody.gb-device[data-device="${CSS.escape(id)}"] .gb-accept-form input`)?.focus();
    } else if (b.classList.contains("gb-accept-cancel")) {
      acceptForms.delete(deviceOf(b));
      draw();
    } else if (b.classList.contains("gb-catalog")) {
      const id = deviceOf(b);
      notes.delete(id);
      run(`catalog:${id}`, async () => {
        try {
          await api.post(`/api/gb28181/devices/${encodeURIComponent(id)}/catalog`);
          setNote(id, "已向设备查询目录，通道列表将在设备回复后更新", false);
        } catch (e) { setNote(id, `刷新目录失败：${gbErrorText(e)}`, true); }
      });
    } else if (b.classList.contains("gb-bind-open") && ch) {
      const key = `${ch.dataset.device}/${ch.dataset.channel}`;
      if (!bindForms.has(key)) bindForms.set(key, "");
      draw();
      list.querySelector(`tr.gb-bind-row[data-for="${CSS.escape(key)}"] select`)?.focus();
    } else if (b.classList.contains("gb-bind-cancel")) {
      const key = b.closest("tr.gb-bind-row").dataset.for;
      bindForms.delete(key);
      bindHints.delete(key);
      draw();
    } else if (b.classList.contains("gb-unbind") && ch) {
      const { device, channel } = ch.dataset;
      const key = `${device}/${channel}`;
      notes.delete(device);
      run(`unbind:${key}`, async () => {
        try {
          await api.put(`/api/gb28181/channels/${encodeURIComponent(device)}/${encodeURIComponent(channel)}/station`,
            { station_id: null });
          setNote(device, `通道 ${channel} 已解除绑定`, false);
        } catch (e) { setNote(device, `解除绑定失败：${gbErrorText(e)}`, true); }
      });
    }
  });
  list.addEventListener("input", (ev) => {
    const form = ev.target.closest("form.gb-accept-form");
    if (form) acceptForms.set(deviceOf(form), ev.target.value);
  });
  list.addEventListener("change", async (ev) => {
    const row = ev.target.closest("tr.gb-bind-row");
    if (!row || ev.target.name !== "station") return;
    const key = row.dataset.for;
    const station = ev.target.value;
    bindForms.set(key, station);
    bindHints.delete(key);
    row.querySelector("button[type=submit]").disabled = !station;
    const hint = row.querySelector(".gb-bind-hint");
    if (!station) return;
    hint.className = "muted gb-bind-hint";
    hint.textContent = "正在检查站点…";
    // The station list does not say which stations have a camera URL; the station's own page does (admins).
    let text = "该站点未配置摄像机地址，可以绑定", blocked = false;
    try {
      const st = await api.get(`/api/stations/${encodeURIComponent(station)}`);
      if (st.camera_urls && st.camera_urls.main_url) {
        blocked = true;
        text = `该站点在站点目录文件中已配置摄像机地址，不能在此绑定；请在目录文件中改为 gb28181://${key}`;
      }
    } catch { text = ""; }  // the binding's own answer will say
    if (bindForms.get(key) !== station) return;
    bindHints.set(key, { station, text, blocked });
    const now = list.querySelector(`tr.gb-bind-row[data-for="${CSS.escape(key)}"]`);  // redrawn meanwhile?
    if (now) {
      const h = now.querySelector(".gb-bind-hint");
      h.className = `${blocked ? "error" : "muted"} gb-bind-hint`;
      h.textContent = text;
      now.querySelector("button[type=submit]").disabled = blocked || busy.has(`bind:${key}`);
    }
  });
  list.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.target;
    if (form.matches(".gb-accept-form")) {
      const id = deviceOf(form);
      const password = form.password.value;
      const accepted = devices.find((d) => d.device_id === id)?.accepted;
      if (password.length > 64) { setNote(id, "设备密码长度须为 1-64 个字符", true); draw(); return; }
      if (!password && (accepted || (server && !server.password_set))) {
        setNote(id, accepted ? "请填写设备的注册密码" : "未设置全局设备密码（gb28181.password），请填写该设备的密码", true);
        draw();
        return;
      }
      notes.delete(id);
      run(`accept:${id}`, async () => {
        try {
          await api.post(`/api/gb28181/devices/${encodeURIComponent(id)}/accept`, password ? { password } : {});
          acceptForms.delete(id);
          setNote(id, accepted ? "密码已保存，设备下次注册时生效"
            : "已接入：设备下次尝试注册时（通常1分钟内）即可上线", false, true);
        } catch (e) { setNote(id, `${accepted ? "设置密码" : "接入"}失败：${gbErrorText(e)}`, true); }
      });
    } else if (form.matches(".gb-bind-form")) {
      const key = form.closest("tr.gb-bind-row").dataset.for;
      const [device, channel] = key.split("/");
      const station = form.station.value;
      if (!station) return;
      notes.delete(device);
      run(`bind:${key}`, async () => {
        try {
          await api.put(`/api/gb28181/channels/${encodeURIComponent(device)}/${encodeURIComponent(channel)}/station`,
            { station_id: station });
          bindForms.delete(key);
          bindHints.delete(key);
          setNote(device, `通道 ${channel} 已绑定到 ${stations.get(station)?.name || station}`, false);
        } catch (e) { setNote(device, `绑定失败：${gbErrorText(e)}`, true); }
      });
    }
  });

  const tick = async () => {
    // Not while the admin is typing or choosing in the list: a redraw would take the control away.
    const focus = document.activeElement;
    if (focus && list.contains(focus) && focus.matches("input, select")) return;
    if (busy.size) return;
    await reload();
  };
  const timer = setInterval(tick, REFRESH_MS);
  onLeave(() => { alive = false; clearInterval(timer); });

  const [srv, st] = await Promise.allSettled([api.get("/api/gb28181/server"), api.get("/api/stations")]);
  if (srv.status === "fulfilled") server = srv.value;
  if (st.status === "fulfilled") st.value.stations.forEach((x) => stations.set(x.id, { name: x.name, town: x.town }));
  drawServer();
  try {
    await load();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;  // the router sends the user to the login page
    list.innerHTML = `<p class="error">${esc(gbErrorText(e))}</p>`;
  }
}
