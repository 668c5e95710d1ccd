// The left menu: each entry with the permission it needs (vms/api/permissions.py). Every page is ported;
// an entry with `href` instead of `route` would open a first console's page (/console/#...), which
// shares the login cookie (LayoutView keeps that path, marked 旧版).
export const MENU = [
  { key: "wall", title: "视频墙", icon: "Monitor", route: "/wall", perm: "live" },
  { key: "status", title: "站点状态", icon: "Grid", route: "/status", perm: "status:read" },
  { key: "playback", title: "录像回放", icon: "VideoCamera", route: "/playback", perm: "playback" },
  { key: "downloads", title: "下载中心", icon: "Document", route: "/downloads", perm: "export" },
  { key: "alarms", title: "告警中心", icon: "Bell", route: "/alarms", perm: "alerts:read" },
  { key: "audits", title: "审计报表", icon: "Document", route: "/audits", perm: "audits:read" },
  { key: "access-log", title: "调用登记", icon: "Document", route: "/access-log", perm: "access_log:read" },
  { key: "gb28181", title: "国标接入", icon: "Connection", route: "/gb28181", perm: "stations:write" },
  { key: "users", title: "用户管理", icon: "User", route: "/users", perm: "users:admin" },
];

export const menuFor = (permissions) => MENU.filter((m) => permissions.includes(m.perm));
