"""Settings: `config/vms.yaml` overlaid with `VMS_*` environment variables, validated at start-up.

Every key is optional (the embedded defaults run a complete server); unknown keys are errors.
Environment variables name a key path with double underscores: VMS_RETENTION__DAYS=30 sets
retention.days, VMS_DATABASE_URL sets database_url. Relative paths are taken from the working
directory. Errors name the file and line, or the environment variable, and what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from vms.core.errors import ConfigError
from vms.core.yamlfile import line_of, load_with_lines

DEFAULT_CONFIG = Path("config/vms.yaml")
# Variables the tooling reads that are not settings keys.
NON_SETTING_ENV = {"VMS_CONFIG", "VMS_PYTHON"}
NON_SETTING_ENV_PREFIXES = ("VMS_TEST_", "VMS_BENCH_", "VMS_MALLOC_")  # VMS_MALLOC_*: ingest workers
# Keys whose values are secrets (robot keys are in their URLs): an error names the key, never the value.
SECRET_KEYS = {"url", "secret", "smtp_password", "webhook_url", "webhook_secret"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class VolumeSettings(StrictModel):
    """One footage root, normally one disk."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    path: Path
    quota_bytes: int | None = Field(default=None, gt=0, description="most bytes of footage kept here")
    quota_percent: float | None = Field(default=None, gt=0, le=100, description="most % of the filesystem")
    min_free_bytes: int = Field(default=2 * 1024**3, ge=0, description="evict early below this free space")
    critical_free_bytes: int = Field(
        default=512 * 1024**2, ge=0, description="below this, evict even inside the floor of days"
    )


class StorageSettings(StrictModel):
    volumes: list[VolumeSettings] = Field(
        default_factory=lambda: [VolumeSettings(name="main", path=Path("recordings"))]
    )
    # Station id -> volume name; unassigned stations go to the volume with the most free space.
    assignments: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _volumes_distinct(self) -> StorageSettings:
        if not self.volumes:
            raise ValueError("at least one volume is needed")
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError(f"volume names repeat: {names}")
        for station, vol in self.assignments.items():
            if vol not in names:
                raise ValueError(f"assignment of {station!r} names unknown volume {vol!r} (known: {names})")
        return self


class RetentionSettings(StrictModel):
    days: float = Field(default=15, gt=0, description="days of footage kept")
    per_town: dict[str, float] = Field(default_factory=dict, description="town name -> days")
    per_station: dict[str, float] = Field(default_factory=dict, description="station id -> days")
    floor_days: float = Field(default=3, ge=0, description="pressure never evicts newer than this unless critical")
    sweep_minutes: float = Field(default=10, gt=0, description="delete expired footage this often (the first "
                                 "sweep runs 30 s after the start)")
    pressure_check_seconds: float = Field(default=60, gt=0, description="check each volume's free space and quota "
                                          "this often, evicting early under pressure")
    hold_max_days: float = Field(default=31, gt=0, description="longest range of footage one hold placed "
                                 "through the API keeps (the CLI is not limited)")

    @field_validator("per_town", "per_station")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for k, days in v.items():
            if days <= 0:
                raise ValueError(f"{k}: days must be positive, got {days}")
        return v


class IngestSettings(StrictModel):
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    segment_seconds: float = Field(default=60, ge=2, le=3600)
    workers: int | None = Field(default=None, ge=1, description="worker processes; default one per core")
    rtsp_timeout_seconds: float = Field(default=10, gt=0)
    stall_seconds: float = Field(default=10, gt=0)
    # Reconnecting (vms/ingest/backoff.py, docs/design/recording.md). The retry_* keys were called
    # backoff_initial_seconds / backoff_max_seconds before; those names are still read.
    retry_initial_seconds: float = Field(
        default=1, gt=0, validation_alias=AliasChoices("retry_initial_seconds", "backoff_initial_seconds"),
        description="first wait after a network failure (unreachable, refused, stalled, stream ended); doubles")
    retry_max_seconds: float = Field(
        default=5, gt=0, validation_alias=AliasChoices("retry_max_seconds", "backoff_max_seconds"),
        description="longest wait between attempts after network failures, so a camera that comes back is "
                    "recording again within about this long; each wait is jittered to 50-100 %")
    stable_seconds: float = Field(default=60, gt=0, description="streaming this long resets the network waits")
    auth_quick_tries: int = Field(
        default=3, ge=1, le=10, description="attempts with refused credentials (401/403) before the long waits; "
        "cameras lock the login after a few failures (Hikvision, Dahua: often 5)")
    auth_backoff_seconds: float = Field(
        default=600, gt=0, description="wait after the quick tries with refused credentials; doubles up to "
        "auth_backoff_max_seconds (a changed camera URL tries again at once)")
    auth_backoff_max_seconds: float = Field(
        default=3600, gt=0, description="longest wait between attempts with refused credentials")
    status_interval_seconds: float = Field(default=5, gt=0, description="each worker publishes its cameras' "
                                           "status (and the growing segments' ends) this often")
    hung_grace_seconds: float = Field(
        default=10, gt=0, le=300,
        description="a camera with no recorded frame this long after stall_seconds (the watchdog has acted), or a "
                    "connect or backoff this long past its deadline, is hung: its worker process is restarted")
    heartbeat_timeout_seconds: float = Field(
        default=15, ge=3, le=300,
        description="a worker process whose watchdog has not gone round for this long is killed and restarted")
    stop_seconds: float = Field(
        default=8, ge=1, le=60,
        description="a stop finishes every segment within this long; what is left then is repaired at the next start")
    reconcile_seconds: float = Field(default=15, gt=0, description="each worker re-reads which cameras it "
                                     "records this often (catalogue changes; a session that died is restarted)")
    snapshot_keyframe_seconds: float = Field(
        default=30, gt=0, le=3600, description="rewrite each camera's latest keyframe (snapshots without a "
        "camera connection) this often; every keyframe, at most every 2 s, for a minute after a snapshot request")
    native_copy: bool = Field(default=True, description="copy ordinary packets in C (scripts/build_native.py)")
    receive_pause_seconds: float = Field(
        default=0.5, ge=0, le=2,
        description="the native copier reads a TCP camera's packets in bursts, pausing up to this long between"
                    " them (never just before a keyframe, nor while a viewer watches); 0 reads each as it comes")
    audio: Literal["keep", "drop"] = Field(
        default="keep",
        description="keep: record the camera's audio (AAC, MP3, Opus as sent; G.711 transcoded to AAC, mono);"
                    " drop: record video only")

    @model_validator(mode="after")
    def _status_within_stall(self) -> IngestSettings:
        # `streaming` is published only with a frame recorded within stall_seconds; a status older than
        # that could not say so truthfully.
        if self.status_interval_seconds * 2 > self.stall_seconds:
            raise ValueError(f"status_interval_seconds ({self.status_interval_seconds:g}) must be at most half of "
                             f"stall_seconds ({self.stall_seconds:g})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for new, old in (("retry_initial_seconds", "backoff_initial_seconds"),
                             ("retry_max_seconds", "backoff_max_seconds")):
                if new in data and old in data:
                    raise ValueError(f"{old} is the old name of {new}: give only {new}")
        return data

    @model_validator(mode="after")
    def _auth_backoff_order(self) -> IngestSettings:
        if self.auth_backoff_max_seconds < self.auth_backoff_seconds:
            raise ValueError(f"auth_backoff_max_seconds ({self.auth_backoff_max_seconds:g}) is below "
                             f"auth_backoff_seconds ({self.auth_backoff_seconds:g})")
        return self


class ApiSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    session_hours: float = Field(default=12, gt=0)
    status_cache_seconds: float = Field(default=1.0, ge=0, description="reuse of station status")
    maintenance_interval_seconds: float = Field(
        default=300, gt=0, description="expire old exports and playback files this often")
    playback_keep_minutes: float = Field(default=60, gt=0, description="a playback file can be fetched this long")
    snapshot_max_age_seconds: float = Field(default=10, gt=0, description="older keyframes give 503")
    playback_max_minutes: float = Field(default=60, gt=0, description="longest range of one playback")
    playback_max_transcodes: int = Field(
        default=2, ge=0, le=16, description="playbacks of H.265 footage transcoded to H.264 at once (`\"h264\": "
        "true`, for browsers without an H.265 decoder: Chromium on Linux); each takes one core while it runs "
        "(docs/benchmarks.md); more get 429; 0 = never transcode. Pictures are scaled to live.transcode_max_height")
    playback_transcode_max_seconds: float = Field(
        default=30, ge=5, le=600, description="footage transcoded per H.264 playback request: a longer range is "
        "cut here (the console asks for the next piece when it gets there), so one request costs a bounded "
        "CPU time and its answer comes within seconds")
    export_max_hours: float = Field(default=24, gt=0, description="longest range of one export")
    export_keep_hours: float = Field(default=24, gt=0, description="exports can be downloaded this long")
    export_workers: int = Field(default=1, ge=1, le=8)
    export_max_active_per_user: int = Field(default=2, ge=1, description="exports queued or running per user")
    export_max_active: int = Field(default=8, ge=1, description="exports queued or running in all")
    export_max_bytes_per_user: int = Field(
        default=50 * 10**9, ge=10**6, description="bytes of a user's exports kept (done, until they expire) plus "
        "the estimated size of those queued or running; a new export must fit (24 h of a 2 Mbps camera: 21.6 GB)")
    export_max_bytes: int = Field(default=200 * 10**9, ge=10**6, description="the same for all users together")
    # Login limits (docs/design/api.md, Authentication). Failed logins are remembered login_window_minutes;
    # past the free failures of a client address or an account, each further attempt from that address or
    # on that account waits 1 s after the last failure, then 2, 4 ... up to login_max_delay_seconds.
    login_failures_per_address: int = Field(
        default=10, ge=1, validation_alias=AliasChoices("login_failures_per_address", "login_failures_per_minute"),
        description="failed logins from one client address (any account) before its attempts are delayed "
                    "(was login_failures_per_minute, per user and address)")
    login_failures_per_account: int = Field(
        default=30, ge=1, description="failed logins on one account (from any address) before attempts on it "
                                      "are delayed; above the per-address count, so one attacker's address "
                                      "does not delay the real user elsewhere")
    login_window_minutes: float = Field(default=15, gt=0, le=1440, description="failed logins count this long")
    login_max_delay_seconds: float = Field(default=30, ge=1, le=3600, description="longest delay between attempts")
    login_concurrent_checks: int = Field(
        default=2, ge=1, le=32, description="password checks (argon2id, 64 MiB each) running at once")
    login_queue: int = Field(default=64, ge=0, description="logins waiting for a password check; more get 503")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest request body (413 beyond); "
                                "nothing uploads files, the largest bodies are WebRTC offers of ~10 kB")
    allowed_origins: list[str] = Field(
        default_factory=list, description="pages of other origins (scheme://host[:port]) that may open the live "
        "WebSocket with the operator's cookie; the server's own origin always may")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For / X-Forwarded-Proto are believed; empty: none, the client is the peer of the connection")

    docs: Literal["login", "public", "off"] = Field(
        default="login", description="who may read /docs, /redoc and /openapi.json: logged-in users, anyone, "
        "or nobody (served from files installed with vms, never a CDN)")
    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            origin = entry.strip().rstrip("/").lower()
            scheme, sep, netloc = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not netloc or any(c in netloc for c in "/?#@ "):
                raise ValueError(f"{entry!r} is not an origin such as https://console.example.cn or "
                                 "http://10.0.0.5:8080 (scheme, host and port only)")
            out.append(origin)
        return out

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_or_network(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            try:
                net = ipaddress.ip_network(entry.strip(), strict=True)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network such as 10.0.0.5 or 10.0.0.0/24 "
                                 f"({exc})") from None
            out.append(str(net.network_address) if net.num_addresses == 1 else str(net))
        return out


class SimulateSettings(StrictModel):
    """Simulated cameras for stations with no camera URL (the embedded default deployment)."""

    enabled: Literal["auto", "always", "never"] = "auto"
    port: int = Field(default=8554, ge=1, le=65535)
    control_port: int = Field(default=0, ge=0, le=65535, description="fault-injection port of the simulated "
                              "cameras (`vms simulate fault ... --control-port`); 0 = any free port (logged)")
    width: int = Field(default=640, ge=64, le=3840)
    height: int = Field(default=360, ge=64, le=2160)
    fps: int = Field(default=15, ge=1, le=60)
    bitrate_kbps: int = Field(default=512, ge=32)
    max_cameras: int = Field(default=139, ge=1)
    content: Literal["station-day", "pattern"] = "station-day"
    day_seconds: float = Field(default=360, ge=30, description="length of the compressed station day loop")


class AuditSettings(StrictModel):
    """Compliance rules for the monthly station audit and when the audit jobs run (local time)."""

    min_online_percent: float = Field(default=95, ge=0, le=100, description="camera online, % of the month")
    min_coverage_percent: float = Field(default=95, ge=0, le=100, description="recorded, % of the month")
    min_open_hours: float = Field(default=6, ge=0, le=24, description="in business hours, for a day to count")
    min_open_days: int = Field(default=20, ge=0, le=31, description="days that count, for a full month")
    min_open_days_fraction: float | None = Field(
        default=None, gt=0, le=1, description="if set: required days = this share of the audited days instead"
    )
    daily_hour: int = Field(default=1, ge=0, le=23, description="audit the previous day at this hour")
    daily_minute: int = Field(default=0, ge=0, le=59)
    daily_every_minutes: float | None = Field(
        default=None, gt=0, description="if set, audit the previous day every this many minutes instead of "
        "once at daily_hour:daily_minute (soak tests run the daily audit path many times this way)")
    monthly_day: int = Field(default=1, ge=1, le=28, description="report the previous month on this day")
    monthly_hour: int = Field(default=2, ge=0, le=23)
    monthly_minute: int = Field(default=0, ge=0, le=59)


class AnalysisSettings(StrictModel):
    """Stream analysis (open/closed, activity, camera faults); see docs/design/analysis.md.
    Luma values are in the decoder's Y range (16 black .. 235 white); times in seconds."""

    enabled: bool = True
    # Sampling (vms/analysis/sampling.py): a settled picture every 60 s, sooner while it changes. A
    # 1080p keyframe costs ~20 ms to decode; a fixed 30 s put record + analyse of 139 cameras at
    # 0.64 cores, over the 0.6 target (docs/benchmarks.md).
    sample_interval_seconds: float = Field(default=60, gt=0, le=600, description="decode one keyframe this often")
    sample_interval_changing_seconds: float = Field(
        default=20, gt=0, le=600, description="this often while a change of state waits for confirmation or a "
        "keyframe's size jumped (no effect above sample_interval_seconds)")
    sample_size_jump_ratio: float = Field(
        default=1.5, gt=1, description="a keyframe this factor above or below the keyframe sizes of the "
        "sample_interval_seconds before the last sample is sampled early")
    analysis_width: int = Field(default=160, ge=32, le=640, description="long side of the analysed gray image")
    hysteresis_seconds: float = Field(default=120, ge=0, description="a state change must persist this long")
    open_luma: float = Field(default=70, gt=16, lt=235, description="lit/dark split until the station learns its own")
    learn_min_samples: int = Field(default=200, ge=10, description="samples before the learned split is used")
    learn_half_life_hours: float = Field(default=72, gt=0, description="how fast the learned look forgets")
    model_save_minutes: float = Field(default=10, gt=0, description="save what each station learned (its "
                                      "look) this often, at the next sample")
    calibration_reload_seconds: float = Field(
        default=60, gt=0, description="each worker picks up stations' calibration edits this often")
    fault_min_seconds: float = Field(default=30, ge=0, description="a fault must persist this long to be raised")
    fault_clear_seconds: float = Field(default=30, ge=0, description="and be absent this long to end")
    frozen_seconds: float = Field(default=60, ge=0, description="identical samples for this long: frozen")
    frozen_max_mean_diff: float = Field(default=0.05, ge=0, description="mean |diff| of samples counted as identical")
    black_max_luma: float = Field(default=24, ge=16, description="99th percentile of Y below this: black picture")
    uniform_max_std: float = Field(default=2.0, ge=0, description="a flat non-black picture: no-signal screen")
    overexposed_luma: float = Field(default=233, le=255)
    overexposed_fraction: float = Field(default=0.5, gt=0, le=1)
    blur_ratio: float = Field(default=0.35, gt=0, lt=1, description="Laplacian variance vs the station's reference")
    blur_max_laplacian: float = Field(default=60, gt=0, description="and below this absolute value (small image)")
    covered_edge_ratio: float = Field(default=0.7, gt=0, lt=1, description="edge density vs reference below this")
    covered_min_luma: float = Field(default=35, ge=16, description="darker pictures are a dark room, not a cover")
    covered_match_max: float = Field(default=0.45, ge=-1, le=1, description="edge-map match with reference below this")
    scene_match_max: float = Field(default=0.35, ge=-1, le=1, description="edge-map match below this: scene changed")
    scene_changed_seconds: float = Field(default=300, ge=0)
    cast_min_seconds: float = Field(default=300, ge=0, description="a colour cast must persist this long")
    hidden_unknown_seconds: float = Field(
        default=300, ge=0, description="covered/frozen/no-signal this long makes the state unknown")
    cast_min_offset: float = Field(default=12, gt=0, description="mean chroma offset from neutral (U/V levels)")
    cast_ratio: float = Field(default=1.5, gt=0, description="offset over chroma spread (cast factor K)")
    activity_ratio: float = Field(default=1.3, gt=1, description="P-frame bytes over the quiet level")
    activity_min_excess_per_mpixel: float = Field(default=600, ge=0, description="and at least this many bytes/MP")
    activity_baseline_seconds: float = Field(default=300, ge=10, description="window of the quiet level")
    activity_gap_seconds: float = Field(default=5, ge=0, description="quiet seconds that end an episode")
    activity_min_active_seconds: int = Field(default=2, ge=1)
    motion_pixel_delta: float = Field(default=25, gt=0, description="sample-to-sample change of one pixel")
    motion_min_fraction: float = Field(default=0.01, gt=0, lt=1, description="changed pixels that mean motion")
    relight_delta: float = Field(default=15, gt=0, description="luma jump between samples: lights switched")
    relight_settle_seconds: float = Field(default=3, ge=0, description="no activity counted while exposure settles")
    sink_flush_seconds: float = Field(default=3, gt=0, description="one database transaction per worker this often")


class LiveSettings(StrictModel):
    """Live view (vms/live): WebRTC passthrough and the fMP4 WebSocket fallback."""

    ice_servers: list[str] = Field(default_factory=list, description="STUN/TURN URLs; empty = host candidates "
                                   "only (LAN). Never aiortc's default public STUN server.")
    relay_linger_seconds: float = Field(default=3.0, ge=0, le=300, description="keep a tap connection after "
                                        "the last viewer leaves")
    wait_picture_seconds: float = Field(default=5.0, gt=0, le=60, description="give up on a camera that "
                                        "sends nothing this long")
    max_transcodes: int = Field(default=2, ge=0, le=32, description="H.265 live views transcoded to H.264 at "
                                "once, for browsers without an H.265 decoder (Chromium on Linux); each takes "
                                "a large share of a core (docs/benchmarks.md); 0 = never transcode")
    transcode_max_height: int = Field(default=720, ge=144, le=2160, description="transcoded live views are "
                                      "scaled down to this height")


ALERT_SEVERITIES = ("info", "minor", "major", "critical")
AlertSeverity = Literal["info", "minor", "major", "critical"]
# Rules by name (docs/design/alerts.md): what each watches is in vms/alerts/rules.py.
ALERT_RULES = ("camera_offline", "station_not_open", "station_closed_long", "camera_fault", "disk_low",
               "early_eviction", "retention_failed", "volume_missing", "audit_noncompliant", "worker_restarted",
               "database_unreachable")
# HH:MM-HH:MM; the end may be 24:00 (midnight at the end of the day), nothing else beyond 23:59.
_QUIET_HOURS = r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$"


class AlertRuleSettings(StrictModel):
    """The thresholds of the station rules; `alerts.per_town` and `alerts.per_station` override any of them."""

    offline_grace_seconds: float = Field(
        default=300, ge=0, le=86400, description="a camera offline or not recording this long raises an alert")
    not_open_grace_minutes: float = Field(
        default=30, ge=0, le=720, description="a station not open this long after its business hours start")
    closed_long_minutes: float = Field(
        default=60, ge=1, le=720, description="closed this long in business hours, after it had opened that day")
    fault_grace_seconds: float = Field(
        default=120, ge=0, le=86400, description="a video fault confirmed by the analysis, lasting this long")
    fault_kinds: list[str] = Field(
        default_factory=lambda: ["covered", "scene_changed", "black", "frozen", "blurred", "signal_lost",
                                 "auth_failed"],
        description="which analysis faults alert (covered, scene_changed = camera turned, black, frozen, blurred,"
                    " signal_lost, overexposed, color_cast, auth_failed)")
    disabled_rules: list[str] = Field(default_factory=list, description="rules that never fire here")

    @field_validator("disabled_rules")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in ALERT_RULES]
        if unknown:
            raise ValueError(f"unknown rules {unknown} (known: {', '.join(ALERT_RULES)})")
        return v


class AlertRuleOverrides(StrictModel):
    """Any rule threshold for one town or one station; unset keys keep the wider value."""

    offline_grace_seconds: float | None = Field(default=None, ge=0, le=86400)
    not_open_grace_minutes: float | None = Field(default=None, ge=0, le=720)
    closed_long_minutes: float | None = Field(default=None, ge=1, le=720)
    fault_grace_seconds: float | None = Field(default=None, ge=0, le=86400)
    fault_kinds: list[str] | None = None
    disabled_rules: list[str] | None = None

    @field_validator("disabled_rules")
    @classmethod
    def _known_rules(cls, v: list[str] | None) -> list[str] | None:
        unknown = [r for r in v or [] if r not in ALERT_RULES]
        if unknown:
            raise ValueError(f"unknown rules {unknown} (known: {', '.join(ALERT_RULES)})")
        return v


class AlertChannelSettings(StrictModel):
    """One place alerts go: a WeCom or DingTalk group robot, a generic webhook, or e-mail."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    type: Literal["wecom", "dingtalk", "webhook", "email"]
    # Robot or webhook address. Holds the robot's key: never printed or returned (see mask_secret_url).
    url: SecretStr | None = None
    # dingtalk: the robot's 加签 secret (SEC...); webhook: the HMAC-SHA256 key of the body signature.
    secret: SecretStr | None = None
    keyword: str | None = Field(default=None, max_length=32,
                                description="dingtalk keyword mode: a word every message must contain")
    mention_mobiles: list[str] = Field(default_factory=list, description="robots: @ these phones on major and up")
    towns: list[str] = Field(default_factory=list, description="only these towns' stations (empty: all)")
    min_severity: AlertSeverity = "minor"
    quiet_hours: str | None = Field(default=None, pattern=_QUIET_HOURS,
                                    description="HH:MM-HH:MM local; messages below quiet_min_severity wait")
    quiet_min_severity: AlertSeverity = Field(default="critical", description="sent even in quiet hours")
    max_per_minute: int = Field(default=20, ge=1, le=600, description="the robot's limit (20 for WeCom, DingTalk)")
    digest_threshold: int = Field(default=4, ge=2, le=100,
                                  description="this many messages due at once go as one digest")
    timeout_seconds: float = Field(default=10, gt=0, le=120)
    # email
    smtp_host: str | None = None
    smtp_port: int = Field(default=465, ge=1, le=65535)
    smtp_security: Literal["ssl", "starttls", "none"] = "ssl"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    mail_from: str | None = None
    mail_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> AlertChannelSettings:
        if self.type == "email":
            if not self.smtp_host or not self.mail_from or not self.mail_to:
                raise ValueError(f"channel {self.name}: email needs smtp_host, mail_from and mail_to")
            if self.smtp_security == "none" and self.smtp_user:
                raise ValueError(f"channel {self.name}: smtp_security none with smtp_user would send the password "
                                 "unencrypted: use ssl or starttls")
        else:
            url = self.url.get_secret_value() if self.url else ""
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"channel {self.name}: {self.type} needs url, an http(s) address")
        if self.type == "dingtalk" and self.secret and not self.secret.get_secret_value().startswith("SEC"):
            raise ValueError(f"channel {self.name}: a DingTalk signing secret starts with SEC")
        if self.quiet_hours:
            start, end = (int(t[:2]) * 60 + int(t[3:]) for t in self.quiet_hours.split("-"))
            if start % 1440 == end % 1440:  # 07:00-07:00, 00:00-24:00: quiet all day, every day
                raise ValueError(f"channel {self.name}: quiet_hours {self.quiet_hours} starts and ends at the same "
                                 "time: messages below quiet_min_severity would wait forever (leave quiet_hours "
                                 "unset for none)")
        return self


class AlertSettings(AlertRuleSettings):
    enabled: bool = True
    # The simplest set-up: one generic webhook channel named "webhook" (JSON body, HMAC-signed with
    # webhook_secret when set). More channels go in `channels`.
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    channels: list[AlertChannelSettings] = Field(default_factory=list)
    per_town: dict[str, AlertRuleOverrides] = Field(default_factory=dict, description="town name -> thresholds")
    per_station: dict[str, AlertRuleOverrides] = Field(default_factory=dict, description="station id -> thresholds")
    evaluate_seconds: float = Field(default=15, gt=0, le=600, description="check the rules and send this often")
    reminder_minutes: list[float] = Field(
        default_factory=lambda: [30.0, 60.0, 120.0, 240.0, 480.0],
        description="reminders of an unacknowledged alert after these waits; the last one repeats")
    disk_min_free_percent: float = Field(default=5, ge=0, le=100, description="a volume with less free: disk_low")
    database_grace_seconds: float = Field(default=60, ge=0, description="database unreachable this long alerts")
    retry_max_hours: float = Field(default=24, gt=0, description="a message not delivered by then is given up")
    mute_max_hours: float = Field(default=24 * 7, gt=0, description="longest mute of one alert")
    keep_days: float = Field(default=365, gt=0, description="ended alerts and their messages are kept this long")

    @field_validator("reminder_minutes")
    @classmethod
    def _growing(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v):
            raise ValueError("reminder waits must be positive minutes")
        return v

    @model_validator(mode="after")
    def _channel_names(self) -> AlertSettings:
        names = [c.name for c in self.channels] + (["webhook"] if self.webhook_url else [])
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"channel names must be unique: {', '.join(dup)} (webhook_url makes one named webhook)")
        if self.webhook_url and not self.webhook_url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s) address")
        return self

    def all_channels(self) -> list[AlertChannelSettings]:
        """The configured channels, with webhook_url as the channel named "webhook"."""
        out = list(self.channels)
        if self.webhook_url:
            out.insert(0, AlertChannelSettings(name="webhook", type="webhook", url=self.webhook_url,
                                               secret=self.webhook_secret, min_severity="info"))
        return out


class Gb28181Settings(StrictModel):
    """GB/T 28181 device access (docs/design/gb28181.md): cameras behind NAT register to us over SIP."""

    enabled: bool = Field(default=False, description="listen for GB/T 28181 devices (SIP over UDP and TCP)")
    sip_host: str = Field(default="0.0.0.0", description="address the SIP server binds")
    sip_port: int = Field(default=5060, ge=0, le=65535, description="SIP port, UDP and TCP (0: any free port)")
    server_id: str = Field(default="44132300002000000001", pattern=r"^\d{20}$",
                           description="our 20-digit SIP server ID (centre code, 200 = SIP server)")
    domain: str = Field(default="4413230000", pattern=r"^\d{10}$",
                        description="our 10-digit SIP domain (realm): by convention the first 10 digits of server_id")
    password: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="the global device password (per-device passwords are set with "
                                             "`vms gb28181 accept --password`); null: only per-device ones")
    media_host: str | None = Field(
        default=None, description="address devices send media to, written into INVITEs (the public address "
                                  "when the platform is behind NAT); null: the local address facing the device")
    media_bind: str = Field(default="0.0.0.0", description="address media receivers bind")
    media_ports: tuple[int, int] = Field(default=(30000, 30999), description="inclusive UDP/TCP port range for "
                                         "media; open it in the firewall")
    media_transport: Literal["udp", "tcp-passive", "tcp-active"] = Field(
        default="tcp-passive", description="how devices send media: tcp-passive (the device connects to us: "
                                           "crosses NAT), udp, or tcp-active (we connect: devices on a reachable "
                                           "network only); per station by its transport: udp|tcp")
    keepalive_interval_seconds: float = Field(default=60, gt=0, le=3600,
                                              description="the devices' keepalive period (set on the device)")
    keepalive_missed: int = Field(default=3, ge=1, le=20, description="a device is offline after this many "
                                  "keepalive periods without a keepalive")
    register_expires_min_seconds: int = Field(default=60, ge=10, le=86400,
                                              description="shorter REGISTER expiries are answered 423")
    invite_timeout_seconds: float = Field(default=8, gt=0, le=60, description="an INVITE with no final answer "
                                          "this long ends with reason invite_timeout")
    no_media_seconds: float = Field(default=10, gt=0, le=120, description="an invited stream that sends no "
                                    "media this long ends with reason no_media")
    requests_per_second: float = Field(default=20, gt=0, description="REGISTER/MESSAGE per source address, "
                                       "above this they are dropped")
    backfill: bool = Field(default=True, description="fill a GB camera's link-outage gaps from its own recording "
                                                     "(SD card) once it is back")
    backfill_scan_seconds: float = Field(default=30, gt=0, le=3600, description="look for gaps to fill this often")
    backfill_delay_seconds: float = Field(default=10, ge=0, le=3600,
                                          description="wait this long after a gap ends (the card file closes)")
    backfill_max_age_hours: float = Field(default=72, gt=0, le=24 * 30, description="older gaps are left alone")

    @model_validator(mode="after")
    def _ports_in_order(self) -> Gb28181Settings:
        low, high = self.media_ports
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"media_ports must be a range within 1024-65535, low first; got {low}-{high}")
        return self


class Settings(StrictModel):
    data_dir: Path = Path("data")
    database_url: str | None = None
    timezone: str = "Asia/Shanghai"
    stations_file: Path = Path("config/stations.yaml")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    storage: StorageSettings = Field(default_factory=StorageSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    gb28181: Gb28181Settings = Field(default_factory=Gb28181Settings)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("database_url must start with sqlite: or postgresql:")
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def db_url(self) -> str:
        if self.database_url:
            if self.database_url.startswith("postgresql:"):
                return "postgresql+psycopg:" + self.database_url[len("postgresql:"):]
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vms.db').resolve()}"


def _env_overrides(env: dict[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    data: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith("VMS_") or name in NON_SETTING_ENV or name.startswith(NON_SETTING_ENV_PREFIXES):
            continue
        path = tuple(part.lower() for part in name[4:].split("__"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) is False and not isinstance(value, (int, float, bool)) and value is not None:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"environment {name}: conflicts with another VMS_ variable"])
        node[path[-1]] = value
        names[path] = name
    return data, names


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _may_echo(loc: tuple, value: Any) -> bool:
    """Whether an error may show the value it got. Never under `alerts` (a robot key can sit in any
    shape of it: a channel written as a bare URL, `alerts: <url>`, a mistyped VMS_ALERTS__CHANNELS),
    never under a secret key, never a URL with userinfo or a query (where passwords and keys go),
    never a mapping or list (it may hold any of these)."""
    if isinstance(value, (dict, list)):
        return False
    if loc and str(loc[0]) == "alerts":
        return False
    if any(str(p) in SECRET_KEYS for p in loc):
        return False
    text = str(value)
    return not ("://" in text and ("?" in text or "@" in text))


def load_settings(config_path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read, merge and validate settings; raise ConfigError naming every problem found."""
    env = dict(os.environ if env is None else env)
    explicit = config_path is not None or "VMS_CONFIG" in env
    path = Path(config_path or env.get("VMS_CONFIG") or DEFAULT_CONFIG)
    file_data: dict[str, Any] = {}
    lines: dict = {}
    if path.exists() or explicit:
        loaded, lines = load_with_lines(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}:1: the settings file must be a mapping of keys, not {type(loaded).__name__}"])
        file_data = loaded
    env_data, env_names = _env_overrides(env)
    merged = _merge(file_data, env_data)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif "input" in err and err["type"] not in ("missing",) and _may_echo(loc, err["input"]):
                msg = f"{msg} (got {err['input']!r})"
            env_name = next((n for p, n in env_names.items()
                             if loc[: len(p)] == p or p[: len(loc)] == loc), None)
            if env_name:
                problems.append(f"environment {env_name}: {key}: {msg}")
            else:
                line = line_of(lines, loc)
                where = f"{path}:{line}" if line else str(path)
                problems.append(f"{where}: {key}: {msg}")
        raise ConfigError(problems) from None
