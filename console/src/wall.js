// The video wall's state: the layout (1/4/9/16 windows) and the station in each window, kept in the URL
// (?layout=4&w=id1,,id3: Back and a shared link bring it back) and in localStorage (the bare address
// after a reload or a new login).
export const LAYOUTS = [1, 4, 9, 16];
export const MAX_WINDOWS = 16;
// Per user: an operator taking over the PC does not get the previous one's wall.
const storageKey = (username) => `vms-next:wall:${username}`;
const STATION_ID = /^[A-Za-z0-9_-]{1,64}$/;  // the API's station-id pattern; anything else is dropped

export function emptyWall() {
  return { layout: 4, windows: Array(MAX_WINDOWS).fill(null) };
}

export function normalize(layout, windows) {
  const n = Number(layout);
  const out = emptyWall();
  out.layout = LAYOUTS.includes(n) ? n : 4;
  (Array.isArray(windows) ? windows : []).slice(0, MAX_WINDOWS).forEach((id, i) => {
    out.windows[i] = typeof id === "string" && STATION_ID.test(id) ? id : null;
  });
  return out;
}

export function fromQuery(query) {
  if (query.layout === undefined && query.w === undefined) return null;
  const w = typeof query.w === "string" ? query.w.slice(0, MAX_WINDOWS * 70).split(",") : [];
  return normalize(query.layout, w);
}

export function toQuery(wall) {
  let last = wall.windows.length;
  while (last > 0 && !wall.windows[last - 1]) last--;
  const query = { layout: String(wall.layout) };
  if (last) query.w = wall.windows.slice(0, last).map((id) => id || "").join(",");
  return query;
}

export function loadStored(username) {
  try {
    const v = JSON.parse(localStorage.getItem(storageKey(username)) || "null");
    return v ? normalize(v.layout, v.windows) : null;
  } catch {
    return null;
  }
}

export function store(username, wall) {
  localStorage.setItem(storageKey(username), JSON.stringify({ layout: wall.layout, windows: wall.windows }));
}
