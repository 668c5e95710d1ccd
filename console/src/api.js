// Calls to the vms API on the same origin. The login sets an HttpOnly, SameSite=Strict session cookie
// that authenticates every request (and the live WebSocket); the page never sees the token.
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// What the operator reads when the server's answer has no Chinese message of its own.
const STATUS_TEXT = {
  400: "请求有误", 401: "未登录或登录已过期，请重新登录", 403: "当前角色无此权限", 404: "没有找到",
  413: "请求内容过大", 422: "请求参数有误", 429: "请求过于频繁，请稍后再试", 500: "服务器内部错误",
  502: "服务器暂时不可用", 503: "服务暂时不可用", 504: "服务器响应超时",
};
const hasChinese = (s) => /[\u4e00-\u9fff]/.test(s);

export function messageOf(status, detail) {
  // The API's coded refusals (ApiError) carry a Chinese message; others (validation, HTTPException)
  // are English for developers: show the Chinese meaning of the status, and the detail after it.
  const text = typeof detail === "string" ? detail : "";
  if (text && hasChinese(text)) return text;
  const base = STATUS_TEXT[status] || `请求失败（${status}）`;
  return text ? `${base}（${text.slice(0, 200)}）` : base;
}

async function call(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opts);
  } catch {
    throw new ApiError(0, "无法连接服务器，请检查网络");
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : "";
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    const code = data && typeof data.code === "string" ? data.code : null;
    if (r.status === 401 && !String(path).startsWith("/api/auth/login")) onUnauthorized();
    throw new ApiError(r.status, messageOf(r.status, String(detail || "")), code);
  }
  return data;
}

let onUnauthorized = () => {};
export function whenLoggedOut(fn) { onUnauthorized = fn; }

export const api = {
  get: (p) => call("GET", p),
  post: (p, b) => call("POST", p, b ?? {}),
  put: (p, b) => call("PUT", p, b ?? {}),
  patch: (p, b) => call("PATCH", p, b ?? {}),
  delete: (p) => call("DELETE", p),
};
