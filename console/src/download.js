// Files the API makes (CSV, XLSX, PDF) fetched with the session cookie and handed to the browser as a
// download. Not a plain link: a refusal (a month not yet audited, a PDF already printing, an expired
// login) must show its Chinese message on the page instead of replacing the page with JSON.
import { ApiError, messageOf } from "./api.js";

function fileNameOf(disposition) {
  if (!disposition) return null;
  const star = /filename\*=UTF-8''([^;]+)/i.exec(disposition);
  if (star) {
    try { return decodeURIComponent(star[1].trim()); } catch { /* fall back to filename= */ }
  }
  const plain = /filename="?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : null;
}

export async function downloadFile(url, fallbackName) {
  let r;
  try {
    r = await fetch(url, { credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "无法连接服务器，请检查网络");
  }
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch { data = null; }
    const detail = data && typeof data.detail === "string" ? data.detail : "";
    throw new ApiError(r.status, messageOf(r.status, detail), data && typeof data.code === "string" ? data.code : null);
  }
  const blob = await r.blob();
  const name = fileNameOf(r.headers.get("Content-Disposition")) || fallbackName;
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  a.style.display = "none";
  document.body.appendChild(a);
  a.click();
  a.remove();
  // The browser has taken the file once the click is handled; the object URL is freed a little later.
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
  return name;
}

// A query string from the filled-in fields only.
export function queryOf(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}
