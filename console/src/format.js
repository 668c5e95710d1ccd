// What the report and log pages show instead of raw numbers: percents, spans, local days and the
// date-time strings the pickers exchange with the API (local Asia/Shanghai wall-clock time, no zone:
// the server reads a time without a zone as the county's local time).
import { localIso, localText } from "./time.js";

export { localText };
export const pct = (v) => (v == null ? "—" : `${Number(v).toFixed(1)}%`);
export const todayLocal = () => localIso(Date.now()).slice(0, 10);
export const thisMonthLocal = () => todayLocal().slice(0, 7);

// "2026-03-05" shifted by n days (calendar arithmetic on the date alone, no time zone involved).
export function shiftDay(day, n) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export function shiftMonth(month, n) {
  const [y, m] = month.split("-").map(Number);
  const d = new Date(Date.UTC(y, m - 1 + n, 1));
  return d.toISOString().slice(0, 7);
}

// A local date-time for a picker: "2026-03-05T08:30:00".
export const pickerValue = (ms) => localIso(ms);

// "12:30" today, "03-02 12:30" on another day: for busy tables.
export function shortTime(ms) {
  if (ms == null) return "—";
  const t = localText(ms);
  return t.slice(0, 10) === todayLocal() ? t.slice(11, 16) : t.slice(5, 16);
}

// A duration in Chinese: "45分钟", "3小时20分", "2天5小时".
export function spanText(ms) {
  const min = Math.max(0, Math.round(ms / 60000));
  if (min < 60) return `${min}分钟`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h}小时${min % 60 ? `${min % 60}分` : ""}`;
  return `${Math.floor(h / 24)}天${h % 24 ? `${h % 24}小时` : ""}`;
}

export const hoursText = (ms) => (ms == null ? "—" : `${(ms / 3_600_000).toFixed(1)} 小时`);
