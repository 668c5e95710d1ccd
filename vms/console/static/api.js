// Calls to the vms API (same origin; the login cookie authenticates every request).
export class ApiError extends Error {
  constructor(status, detail, code = null) { super(detail); this.status = status; this.code = code; }
}

async function call(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) detail = detail.map(d => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    throw new ApiError(r.status, String(detail || r.statusText), data && typeof data.code === "string" ? data.code : null);
  }
  return data;
}

export const api = {
  get: (p) => call("GET", p),
  post: (p, b) => call("POST", p, b ?? {}),
  patch: (p, b) => call("PATCH", p, b),
  put: (p, b) => call("PUT", p, b),
  delete: (p) => call("DELETE", p),
};

// Asia/Shanghai has no daylight saving: local time = UTC + 8 h.
const OFFSET_MS = 8 * 3600 * 1000;
export const localIso = (ms) => new Date(ms + OFFSET_MS).toISOString().slice(0, 19);
export const localText = (ms) => ms == null ? "—" : localIso(ms).replace("T", " ");
export const todayLocal = () => localIso(Date.now()).slice(0, 10);
export const dayStartMs = (day) => Date.parse(day + "T00:00:00Z") - OFFSET_MS;
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
