// The station list and the county's towns for filters and names, loaded once per page load (the
// catalogue changes rarely; a town-limited user gets only their towns' stations from the API).
import { api } from "./api.js";
import { searchKeys } from "./stations.js";

let stationsPromise = null;
let configPromise = null;

export function loadStations() {
  if (!stationsPromise) {
    stationsPromise = api.get("/api/stations").then((r) =>
      r.stations.map((s) => ({ id: s.id, name: s.name, town: s.town, keys: searchKeys(s.name) })));
    stationsPromise.catch(() => { stationsPromise = null; });  // try again next time
  }
  return stationsPromise;
}

export function loadConfig() {
  if (!configPromise) {
    configPromise = api.get("/console/next/config.json").catch(() => ({ county: "惠东县", towns: [] }));
  }
  return configPromise;
}
