// Times shown to operators are Asia/Shanghai local time, whatever the PC's own time zone is set to.
// Asia/Shanghai has no daylight saving: local time = UTC + 8 h.
const OFFSET_MS = 8 * 3600 * 1000;
export const localIso = (ms) => new Date(ms + OFFSET_MS).toISOString().slice(0, 19);
export const localText = (ms) => (ms == null ? "—" : localIso(ms).replace("T", " "));
