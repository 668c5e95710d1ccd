"""ORM models: the whole index. Times are UTC epoch milliseconds (BigInteger), see docs/design/schema.md."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# The values of the state columns below, as enums: a misspelt state is an error where it is written, not a
# query that silently matches nothing. StrEnum members are their strings, so the stored values (and the
# API's JSON) are the same as before; rows read back give plain strings, which compare equal to them.
class OpenState(StrEnum):
    """A station's open/closed verdict: station_states.state, and the analysis' votes."""

    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


class ExportState(StrEnum):
    """exports.state."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


def table_of(model: type[Base]) -> Table:
    """A model's table, for Core statements (its __table__ is typed FromClause: a class may map a join)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to one table")
    return table


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(16))  # town | village
    town: Mapped[str] = mapped_column(String(32), index=True)
    poverty_village: Mapped[bool] = mapped_column(Boolean, default=False)
    placeholder_name: Mapped[bool] = mapped_column(Boolean, default=False)
    business_hours: Mapped[str] = mapped_column(String(64), default="08:00-18:00")  # "HH:MM-HH:MM[,..]"
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    main_url: Mapped[str | None] = mapped_column(Text, nullable=True)  # may hold credentials: never print
    sub_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    transport: Mapped[str] = mapped_column(String(8), default="tcp")
    calibration: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # Local date the station went into service ('YYYY-MM-DD'); audits ignore earlier days. Null = always.
    active_since: Mapped[str | None] = mapped_column(String(10), nullable=True)


class Segment(Base):
    """One fragmented-MP4 file of one camera stream. state: growing | complete | deleting."""

    __tablename__ = "segments"
    __table_args__ = (
        Index("ix_segments_station_start", "station_id", "start_ms"),
        Index("ix_segments_state_end", "state", "end_ms"),
        Index("ix_segments_volume_start", "volume", "start_ms"),
        UniqueConstraint("volume", "path", name="uq_segments_volume_path"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    stream: Mapped[str] = mapped_column(String(8), default="main")
    node: Mapped[str] = mapped_column(String(64))
    volume: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(400))  # relative to the volume root
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)  # from stream timestamps
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    codec: Mapped[str | None] = mapped_column(String(16), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    has_audio: Mapped[bool] = mapped_column(Boolean, default=False)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    keyframes: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(10), default="growing")


class Gap(Base):
    """An interval of one camera stream without footage, with why. end_ms is null while it lasts."""

    __tablename__ = "gaps"
    __table_args__ = (Index("ix_gaps_station_start", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    stream: Mapped[str] = mapped_column(String(8), default="main")
    node: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Filled afterwards from the camera's own recording (GB/T 28181 backfill, docs/design/gb28181.md):
    # backfill is null (not tried), running, filled, partial, none (the card has nothing), failed.
    backfill: Mapped[str | None] = mapped_column(String(10), nullable=True)
    filled_by: Mapped[str | None] = mapped_column(String(16), nullable=True)  # camera_card
    filled_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # footage written inside the gap
    backfill_detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class OnlineInterval(Base):
    """An interval in which the camera delivered packets. end_ms is null while it lasts."""

    __tablename__ = "online_intervals"
    __table_args__ = (Index("ix_online_station_start", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    node: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CameraStatus(Base):
    """The latest health of each camera, written by the node recording it every few seconds."""

    __tablename__ = "camera_status"

    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"), primary_key=True)
    node: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # connecting | streaming | backoff | failed | stopped
    reason: Mapped[str | None] = mapped_column(String(24), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    fps: Mapped[float | None] = mapped_column(Float, nullable=True)
    bitrate_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    codec: Mapped[str | None] = mapped_column(String(16), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What becomes of the camera's audio: "aac" (copied as sent), "pcm_alaw->aac" (transcoded),
    # "dropped: <codec>" (not recorded), or null (the stream has no audio).
    audio: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_packet_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reconnects: Mapped[int] = mapped_column(Integer, default=0)
    segments_written: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_written: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Hold(Base):
    """An evidence lock: footage of a station in [start_ms, end_ms) is never deleted while active."""

    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_station", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    released_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class PurgeLog(Base):
    """One row per station per retention run (or manual purge) that deleted footage."""

    __tablename__ = "purge_log"
    __table_args__ = (Index("ix_purge_log_at", "at_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    station_id: Mapped[str] = mapped_column(String(64))
    volume: Mapped[str] = mapped_column(String(32))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    segments: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16))  # expired | pressure | critical | manual
    run_id: Mapped[str] = mapped_column(String(40))


class JobLock(Base):
    """A named lease so that two processes (or nodes) never run the same job at once."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)


class StationState(Base):
    """An interval of open | closed | unknown decided by analysis. end_ms is null while it lasts."""

    __tablename__ = "station_states"
    __table_args__ = (Index("ix_station_states_station_start", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    state: Mapped[str] = mapped_column(String(8))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ActivityEpisode(Base):
    """A span in which people moved in the station (no identities)."""

    __tablename__ = "activity_episodes"
    __table_args__ = (Index("ix_activity_station_start", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    peak: Mapped[float] = mapped_column(Float, default=0.0)


class ActivityHourly(Base):
    __tablename__ = "activity_hourly"

    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"), primary_key=True)
    hour_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    episodes: Mapped[int] = mapped_column(Integer, default=0)
    active_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class Fault(Base):
    """A camera fault interval (signal_lost, frozen, black, overexposed, blurred, covered, color_cast,
    scene_changed: written by the analysis; auth_failed: by the ingest). end_ms is null while it lasts."""

    __tablename__ = "faults"
    __table_args__ = (Index("ix_faults_station_start", "station_id", "start_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(8))  # minor | major | critical
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | auditor | viewer
    towns: Mapped[list | None] = mapped_column(JSON, nullable=True)  # null = all towns
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class AuthToken(Base):
    """A login session or an API key (kind), stored as a hash of the secret."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # session | apikey
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scopes: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AccessLog(Base):
    """调用登记: every live view, playback, snapshot and export. Append-only."""

    __tablename__ = "access_log"
    __table_args__ = (
        Index("ix_access_log_at", "at_ms"),
        # One download row per export and user (the API logs the first request for the file, whatever
        # its Range); also the look-up of that row.
        Index("ux_access_log_download", "export_id", "username", unique=True,
              sqlite_where=text("action = 'download'"), postgresql_where=text("action = 'download'")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # live | playback | snapshot | export | download
    station_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    export_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # export and download rows


class ExportJob(Base):
    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))  # queued | running | done | failed | expired
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditDaily(Base):
    """One station's audit for one local day (Asia/Shanghai). Re-runs replace the row."""

    __tablename__ = "audit_daily"
    __table_args__ = (Index("ix_audit_daily_day", "day"),)

    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD local
    online_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    recorded_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    open_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    open_in_hours_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    first_open_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_close_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    activity_episodes: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict] = mapped_column(JSON)  # gaps by reason, faults by kind, percents
    findings: Mapped[list] = mapped_column(JSON)
    computed_ms: Mapped[int] = mapped_column(BigInteger)


class AuditMonthly(Base):
    __tablename__ = "audit_monthly"

    station_id: Mapped[str] = mapped_column(String(64), ForeignKey("stations.id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # null: exempt (disabled/inactive)
    metrics: Mapped[dict] = mapped_column(JSON)
    reasons: Mapped[list] = mapped_column(JSON)
    computed_ms: Mapped[int] = mapped_column(BigInteger)


class AlertState(StrEnum):
    """alerts.state."""

    FIRING = "firing"
    RESOLVED = "resolved"


class DeliveryState(StrEnum):
    """alert_deliveries.state."""

    QUEUED = "queued"  # waiting for its time (a retry, quiet hours, the robot's rate limit)
    SENT = "sent"  # the receiver confirmed it (HTTP 2xx and, for robots, errcode 0)
    BATCHED = "batched"  # carried inside the digest delivery named by digest_id
    FAILED = "failed"  # given up (retry_max_hours passed, or the receiver refused it for good)
    DROPPED = "dropped"  # no longer worth sending (e.g. a reminder of an alert resolved meanwhile)


class Alert(Base):
    """One alert: a rule's condition on one subject (a station, a volume, the server), from when it was
    raised to when it ended. `key` names the condition; at most one firing alert per key."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_state_fired", "state", "fired_ms"),
        Index("ix_alerts_station_fired", "station_id", "fired_ms"),
        Index("ux_alerts_firing_key", "key", unique=True,
              sqlite_where=text("state = 'firing'"), postgresql_where=text("state = 'firing'")),
        Index("ix_alerts_key", "key"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(160))
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(8))  # info | minor | major | critical
    station_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    town: Mapped[str | None] = mapped_column(String(32), nullable=True)
    title: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(10))
    since_ms: Mapped[int] = mapped_column(BigInteger)  # the condition began (from the evidence)
    fired_ms: Mapped[int] = mapped_column(BigInteger)  # the alert was raised (since + grace)
    resolved_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The condition cannot outlast this (a business day's or range's end): ended then without a recovery.
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    one_shot: Mapped[bool] = mapped_column(Boolean, default=False)  # an event: told once, no recovery
    notified: Mapped[bool] = mapped_column(Boolean, default=False)  # a firing message was queued
    suppressed: Mapped[str | None] = mapped_column(String(16), nullable=True)  # maintenance | muted
    acked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    acked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ack_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    muted_until_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    muted_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reminders: Mapped[int] = mapped_column(Integer, default=0)
    next_reminder_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class AlertDelivery(Base):
    """One message for one channel, and what became of it: the outbox the dispatcher works through."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        Index("ix_alert_deliveries_due", "state", "next_attempt_ms"),
        Index("ix_alert_deliveries_channel_attempt", "channel", "last_attempt_ms"),
        Index("ix_alert_deliveries_alert", "alert_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # null: a test or a digest
    channel: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(10))  # firing | reminder | resolved | digest | test
    severity: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The last send (by any process: the round, `vms alerts test`, the API): the robots' per-minute budget.
    last_attempt_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    digest_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the digest that carried it
    items: Mapped[int] = mapped_column(Integer, default=1)  # messages in it (a digest: more than one)


class AlertMaintenance(Base):
    """A maintenance window: no alerts for a station, a town or everything (both null) in [start, end)."""

    __tablename__ = "alert_maintenance"
    __table_args__ = (Index("ix_alert_maintenance_end", "end_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    town: Mapped[str | None] = mapped_column(String(32), nullable=True)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class SystemEvent(Base):
    """Something the server itself went through that people may need to hear of (an ingest worker
    restarted, a retention run failed): written where it happens, read by the alert rules."""

    __tablename__ = "system_events"
    __table_args__ = (Index("ix_system_events_at", "at_ms"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))  # worker_restarted | retention_failed
    subject: Mapped[str] = mapped_column(String(64))  # e.g. the node and worker, the retention run
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class GbDevice(Base):
    """A GB/T 28181 device (camera or NVR) that registered, or tried to (docs/design/gb28181.md).
    accepted: an admin let it in (or a station's camera URL names it); unknown devices are refused
    and listed here, never recorded silently."""

    __tablename__ = "gb_devices"

    device_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    accepted: Mapped[bool] = mapped_column(Boolean, default=False)
    password: Mapped[str | None] = mapped_column(String(64), nullable=True)  # per device; never printed
    state: Mapped[str] = mapped_column(String(12), default="unregistered")  # registered | unregistered | refused
    transport: Mapped[str | None] = mapped_column(String(4), nullable=True)  # UDP | TCP
    host: Mapped[str | None] = mapped_column(String(64), nullable=True)  # learned from the packets it sends
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gb_version: Mapped[str | None] = mapped_column(String(8), nullable=True)  # X-GB-Ver: 2.0 (2016), 3.0 (2022)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    firmware: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registered_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_keepalive_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_seen_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class GbChannel(Base):
    """A channel of a GB device, from its Catalog answer; bound to a station by the station's camera URL
    gb28181://<device_id>/<channel_id> in the catalogue file, or by station_id (the API)."""

    __tablename__ = "gb_channels"

    device_id: Mapped[str] = mapped_column(String(20), ForeignKey("gb_devices.device_id"), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # ON | OFF as the device says
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Bound through the API to a station whose catalogue entry has no camera URL (a URL in the catalogue
    # file wins: the file is the catalogue's source of truth, and an import would overwrite the row).
    station_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("stations.id"), nullable=True,
                                                   unique=True)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=0)
