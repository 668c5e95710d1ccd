"""What a channel is given to send: one alert's message, or several as one digest."""

from __future__ import annotations

from dataclasses import dataclass

# Chinese labels for the console's and the robots' texts.
SEVERITY_LABELS = {"info": "提示", "minor": "一般", "major": "重要", "critical": "紧急"}
KIND_LABELS = {"firing": "告警", "reminder": "提醒", "resolved": "恢复", "test": "测试"}


@dataclass(frozen=True)
class AlertMessage:
    """One message about one alert. Texts are Chinese, for the people who read the robots' groups."""

    kind: str  # firing | reminder | resolved | test
    rule: str  # a name from vms.core.settings.ALERT_RULES ("test" for a test message)
    severity: str  # info | minor | major | critical
    title: str  # one line, e.g. "平山镇服务站：摄像机离线"
    detail: str | None  # a sentence or two: since when, why, what to check
    station_id: str | None
    station_name: str | None
    town: str | None
    since_ms: int  # the condition began (UTC epoch ms)
    at_ms: int  # the message was made (UTC epoch ms)
    local_time: str  # at_ms in the server's time zone, "YYYY-MM-DD HH:MM:SS"
    alert_id: int | None = None

    @property
    def state(self) -> str:
        """firing or resolved: what a webhook's consumer keys on."""
        return "resolved" if self.kind == "resolved" else "firing"


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None  # what went wrong, never containing a secret
    retry_after_s: float | None = None  # the receiver asked us to slow down (a robot's rate limit)
    permanent: bool = False  # retrying cannot help (bad key, signature refused): give up now
