"""Machine-readable codes with the Chinese text operators read, for daily findings and monthly reasons."""

from __future__ import annotations

FAULT_KINDS_ZH = {
    "signal_lost": "信号丢失",
    "frozen": "画面冻结",
    "black": "黑屏",
    "overexposed": "过曝",
    "blurred": "画面模糊",
    "covered": "镜头遮挡",
    "color_cast": "偏色",
    "scene_changed": "画面移位",
}

GAP_REASONS_ZH = {
    "offline": "摄像机离线",
    "camera_offline": "摄像机离线",
    "connect_failed": "连接失败",
    "auth_failed": "认证失败",
    "timeout": "超时",
    "stalled": "码流中断",
    "stall": "码流中断",
    "disk_full": "磁盘已满",
    "write_error": "写入错误",
    "disabled": "已停用",
    "restart": "服务重启",
    "shutdown": "服务停止",
    "unknown": "原因不明",
}


def fault_zh(kind: str) -> str:
    return FAULT_KINDS_ZH.get(kind, kind)


def gap_zh(reason: str) -> str:
    return GAP_REASONS_ZH.get(reason, reason)


def finding(code: str, message: str, severity: str = "warning") -> dict:
    """A finding or reason as stored in JSON: {code, message (Chinese), severity: info|warning|critical}."""
    return {"code": code, "message": message, "severity": severity}


def hours(ms: int) -> str:
    """Milliseconds as hours with one decimal, e.g. '7.5'."""
    return f"{ms / 3_600_000:.1f}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"
