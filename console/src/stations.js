// Stations as the operator sees them: one state each (with its Chinese label), the county -> town ->
// station tree, and search by name or pinyin initials.
import { pinyin } from "pinyin-pro";

// Same precedence as the first console (vms/console/static/app.js): disabled, then a hung recorder,
// then offline, then a fault, then closed, else recording.
export function stationState(st) {
  if (!st.enabled) return "disabled";
  if (st.camera.state === "hung") return "stuck";
  if (!st.camera.online) return "offline";
  if (st.faults && st.faults.length) return "fault";
  if (st.open_state === "closed") return "closed";
  return "recording";
}

export const STATE_TEXT = { recording: "录像中", offline: "离线", disabled: "停用", fault: "故障", stuck: "故障",
                            closed: "已关门" };
// The filter's choices: a hung recorder counts as 故障 there.
export const FILTER_STATES = [
  { value: "recording", label: "录像中" }, { value: "offline", label: "离线" }, { value: "disabled", label: "停用" },
  { value: "fault", label: "故障" }, { value: "closed", label: "已关门" },
];
export const filterState = (state) => (state === "stuck" ? "fault" : state);

const compact = (s) => s.toLowerCase().replace(/\s+/g, "");

export function searchKeys(name) {
  // "多祝镇电商服务站" -> initials "dzzdsfwz" and full "duozhuzhendianshangfuwuzhan".
  const initials = pinyin(name, { pattern: "first", toneType: "none", type: "array", nonZh: "consecutive" }).join("");
  const full = pinyin(name, { toneType: "none", type: "array", nonZh: "consecutive" }).join("");
  return { name: compact(name), initials: compact(initials), full: compact(full) };
}

export function matches(keys, query) {
  const q = compact(query);
  if (!q) return true;
  return keys.name.includes(q) || keys.initials.includes(q) || keys.full.includes(q);
}

// County -> towns -> stations. Towns in the catalogue's order (`towns` from /console/next/config.json,
// which is config/stations.yaml's and vms.catalog.towns' order); towns the list does not name (a newer
// catalogue) after them, in the order the API gives their stations.
export function buildTree(county, towns, stations) {
  const byTown = new Map(towns.map((t) => [t, []]));
  for (const st of stations) {
    if (!byTown.has(st.town)) byTown.set(st.town, []);
    byTown.get(st.town).push(st);
  }
  const townNodes = [];
  for (const [town, list] of byTown) {
    if (!list.length) continue;  // a town-limited user sees only their towns
    townNodes.push({ key: `town:${town}`, kind: "town", label: town, stations: list });
  }
  return { key: "county", kind: "county", label: county, towns: townNodes };
}

export const isOnline = (st) => st.enabled && st.camera.online;

// What a station dragged from the tree onto a wall window carries.
export const STATION_DRAG_TYPE = "application/x-vms-station";

// The tree shows names without the county (and, under its town, without the town) so that the part that
// tells stations apart is visible in a narrow column; the full name is in the tooltip and the search.
export function shortName(st, county) {
  let name = st.name.startsWith(county) ? st.name.slice(county.length) : st.name;
  if (st.level !== "town" && name.startsWith(st.town) && name.length > st.town.length) name = name.slice(st.town.length);
  return name;
}
// What a wall window dragged onto another carries besides the station: its own index.
export const WINDOW_DRAG_TYPE = "application/x-vms-window";
