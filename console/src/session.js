// Who is logged in: loaded from /api/auth/session (the session cookie survives a reload), set by the login.
// Not /api/auth/me: its 401 before login is an error in the browser's console on every first visit.
import { reactive } from "vue";
import { api, whenLoggedOut } from "./api.js";

export const session = reactive({ me: null, loaded: false });

export const ROLE_TEXT = { admin: "管理员", operator: "值班员", auditor: "审计员", viewer: "观看员" };
export const roleText = (role) => ROLE_TEXT[role] || role;
export const can = (perm) => !!session.me && session.me.permissions.includes(perm);

export async function loadMe() {
  if (session.loaded) return session.me;
  session.me = (await api.get("/api/auth/session")).user;
  session.loaded = true;
  return session.me;
}

export async function login(username, password) {
  const r = await api.post("/api/auth/login", { username, password });
  session.me = r.user;
  session.loaded = true;
  return r.user;
}

export async function logout() {
  try { await api.post("/api/auth/logout"); } catch { /* already logged out */ }
  session.me = null;
  session.loaded = true;
}

// Any API call answered 401 (the session expired or was revoked): forget who was logged in; the router
// sends the page to the login.
let onExpired = () => {};
export function whenSessionExpired(fn) { onExpired = fn; }
whenLoggedOut(() => {
  if (!session.me) return;
  session.me = null;
  onExpired();
});
