// What the station status pages say about a camera, its faults and its open state, in Chinese (the
// words of the first console, vms/console/static/app.js), and the per-town counts of the overview.
import { localText } from "./time.js";
import { stationState } from "./stations.js";

// A label of `key`, or `otherwise` (never a raw key, nor an inherited property such as "constructor").
export const label = (map, key, otherwise) => (Object.hasOwn(map, String(key)) ? map[key] : otherwise);

// The camera's own state (vms.ingest.health: CameraState and ReportedState) and why.
export const CAMERA_TEXT = {
  connecting: "正在连接", streaming: "录像中", backoff: "连接失败，等待重试", stalled: "视频流停滞",
  hung: "录像线程卡死", failed: "故障", stopped: "已停止", offline: "离线（录像节点无上报）",
  disabled: "停用", unknown: "尚未上报状态",
};
export const GAP_TEXT = {
  stalled: "断流", unreachable: "无法连接", stream_ended: "流结束", bad_stream: "流异常",
  ingest_stopped: "录像服务停止", ingest_hung: "录像进程卡死", auth_failed: "认证失败",
  no_video: "无视频", refused: "连接被拒绝", unsupported_codec: "编码格式不支持",
  resolution_changed: "分辨率变更", clock_jump: "摄像机时钟跳变", disk_error: "磁盘错误",
};
export const CAMERA_REASON_TEXT = {
  ...GAP_TEXT, no_status: "录像节点无状态上报", internal_error: "录像程序内部错误", timeout: "连接超时",
  "station disabled": "站点已停用", "no status reported": "从未上报状态",
};
// Picture faults (vms.analysis.detector.FAULT_KINDS, and the ingest's auth_failed) and their severities.
export const FAULT_TEXT = {
  signal_lost: "无视频信号", frozen: "画面冻结", black: "黑屏", overexposed: "画面过曝",
  blurred: "画面模糊", covered: "画面被遮挡", color_cast: "画面偏色", scene_changed: "摄像机被移动（画面变化）",
  auth_failed: "摄像机登录认证失败", undecodable: "画面无法解码",
};
export const SEVERITY_TEXT = { info: "提示", minor: "一般", major: "重要", critical: "紧急" };
export const OPEN_TEXT = { open: "营业中", closed: "已关门", unknown: "未知" };
export const HOLD_STATE_TEXT = { active: "保全中", released: "已解除", expired: "已到期" };
export const LEVEL_TEXT = { town: "镇级", village: "村级" };

export const cameraText = (cam) => {
  const state = label(CAMERA_TEXT, cam.state, "状态未知");
  const why = cam.state !== "streaming" ? label(CAMERA_REASON_TEXT, cam.reason, null) : null;
  return why ? `${state}：${why}` : state;
};
export const faultKindText = (kind) => label(FAULT_TEXT, kind, "画面异常");
export const faultText = (f) =>
  `${faultKindText(f.kind)}（${label(SEVERITY_TEXT, f.severity, "未分级")}，${localText(f.since_ms)} 起）`;
export const openText = (state) => label(OPEN_TEXT, state, "未知");
export const gapText = (reason) => label(GAP_TEXT, reason, "原因不明");
// Bits per second as an operator reads them: "1.2 Mbps", "850 kbps".
export const bitrateText = (bps) =>
  (bps == null ? "—" : bps >= 1e6 ? `${(bps / 1e6).toFixed(1)} Mbps` : `${Math.round(bps / 1000)} kbps`);

// The overview's columns: a hung recorder counts as 故障 (as in the tree's filter).
export const COUNT_STATES = [
  ["recording", "录像中"], ["offline", "离线"], ["disabled", "停用"], ["fault", "故障"], ["closed", "已关门"],
];

// One row per town in the catalogue's order (towns the list does not name after them), then the county.
export function countsByTown(towns, stations, county) {
  const empty = () => ({ total: 0, recording: 0, offline: 0, disabled: 0, fault: 0, closed: 0 });
  const rows = new Map(towns.map((t) => [t, { town: t, ...empty() }]));
  const all = { town: county, county: true, ...empty() };
  for (const st of stations) {
    if (!rows.has(st.town)) rows.set(st.town, { town: st.town, ...empty() });
    const state = stationState(st) === "stuck" ? "fault" : stationState(st);
    for (const row of [rows.get(st.town), all]) {
      row.total++;
      row[state]++;
    }
  }
  return [...[...rows.values()].filter((r) => r.total), all];
}
