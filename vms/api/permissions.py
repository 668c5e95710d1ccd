"""Roles, permissions and API-key scopes: the one table that says who may do what."""

from __future__ import annotations

ROLES = ("admin", "operator", "auditor", "viewer")

# Permissions checked by the routers. Footage means recorded video (playback, export); a snapshot is
# the current picture, which anyone with live view may see anyway, so viewers get it and auditors
# (status and audits, no pictures) do not.
STATUS = "status:read"
LIVE = "live"
SNAPSHOT = "snapshot"
PLAYBACK = "playback"
EXPORT = "export"
HOLDS_READ = "holds:read"
HOLDS_WRITE = "holds:write"
AUDITS = "audits:read"
STATIONS_WRITE = "stations:write"
ACCESS_LOG = "access_log:read"
USERS = "users:admin"
METRICS = "metrics"
# Alerts (issue 20): whoever sees station status sees their towns' alerts; operators handle them
# (acknowledge, mute, maintenance windows, see where alerts go); sending a test message through a
# channel (a message to a real group of people) is for admins.
ALERTS_READ = "alerts:read"
ALERTS_WRITE = "alerts:write"
ALERTS_ADMIN = "alerts:admin"

ALL_PERMISSIONS = frozenset({STATUS, LIVE, SNAPSHOT, PLAYBACK, EXPORT, HOLDS_READ, HOLDS_WRITE, AUDITS,
                             STATIONS_WRITE, ACCESS_LOG, USERS, METRICS, ALERTS_READ, ALERTS_WRITE,
                             ALERTS_ADMIN})

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": ALL_PERMISSIONS,
    "operator": frozenset({STATUS, LIVE, SNAPSHOT, PLAYBACK, EXPORT, HOLDS_READ, HOLDS_WRITE, AUDITS, ALERTS_READ,
                           ALERTS_WRITE}),
    "auditor": frozenset({STATUS, AUDITS, HOLDS_READ, ALERTS_READ}),
    "viewer": frozenset({STATUS, LIVE, SNAPSHOT, ALERTS_READ}),
}

# Who and what, as operators read them (refusals name the role and the permission).
ROLE_TEXT = {"admin": "管理员", "operator": "值班员", "auditor": "审计员", "viewer": "观看员"}
PERMISSION_TEXT = {
    STATUS: "查看站点状态", LIVE: "观看实时视频", SNAPSHOT: "查看快照", PLAYBACK: "回放录像", EXPORT: "导出录像",
    HOLDS_READ: "查看保全", HOLDS_WRITE: "保全录像", AUDITS: "查看审计", STATIONS_WRITE: "修改站点设置",
    ACCESS_LOG: "查看调用登记", USERS: "管理用户", METRICS: "查看运行指标", ALERTS_READ: "查看告警",
    ALERTS_WRITE: "处理告警", ALERTS_ADMIN: "测试告警通道",
}

# What an API key may be limited to (for audit jobs and metric scrapers). A key never has more
# than its owner's role allows.
API_KEY_SCOPES = frozenset({STATUS, AUDITS, METRICS, HOLDS_READ, ALERTS_READ})  # (alerts: a ticketing script)


def permissions_of(role: str, scopes: list[str] | None) -> frozenset[str]:
    """Effective permissions: the role's, narrowed to the scopes for an API key."""
    granted = ROLE_PERMISSIONS.get(role, frozenset())
    if scopes is None:
        return granted
    return granted & frozenset(scopes)
