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

ALL_PERMISSIONS = frozenset({STATUS, LIVE, SNAPSHOT, PLAYBACK, EXPORT, HOLDS_READ, HOLDS_WRITE, AUDITS,
                             STATIONS_WRITE, ACCESS_LOG, USERS, METRICS})

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": ALL_PERMISSIONS,
    "operator": frozenset({STATUS, LIVE, SNAPSHOT, PLAYBACK, EXPORT, HOLDS_READ, HOLDS_WRITE, AUDITS}),
    "auditor": frozenset({STATUS, AUDITS, HOLDS_READ}),
    "viewer": frozenset({STATUS, LIVE, SNAPSHOT}),
}

# What an API key may be limited to (for audit jobs and metric scrapers). A key never has more
# than its owner's role allows.
API_KEY_SCOPES = frozenset({STATUS, AUDITS, METRICS, HOLDS_READ})


def permissions_of(role: str, scopes: list[str] | None) -> frozenset[str]:
    """Effective permissions: the role's, narrowed to the scopes for an API key."""
    granted = ROLE_PERMISSIONS.get(role, frozenset())
    if scopes is None:
        return granted
    return granted & frozenset(scopes)
