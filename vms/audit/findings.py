"""Machine-readable codes with the Chinese text operators read, for daily findings and monthly reasons."""

from __future__ import annotations

# vms.analysis.detector.FAULT_KINDS, and the ingest's own kind (vms.ingest.session.AUTH_FAULT)
FAULT_KINDS_ZH = {
    "auth_failed": "认证失败",
    "signal_lost": "信号丢失",
    "frozen": "画面冻结",
    "black": "黑屏",
    "overexposed": "过曝",
    "blurred": "画面模糊",
    "covered": "镜头遮挡",
    "color_cast": "偏色",
    "scene_changed": "画面移位",
    "undecodable": "画面无法解码",
}

# vms.recording.index.GAP_REASONS
GAP_REASONS_ZH = {
    "unreachable": "无法连接摄像机",
    "refused": "连接被拒绝",
    "auth_failed": "认证失败",
    "stalled": "码流中断",
    "stream_ended": "码流结束",
    "unsupported_codec": "编码格式不支持",
    "no_video": "无视频流",
    "bad_stream": "码流异常",
    "resolution_changed": "分辨率变更",
    "clock_jump": "摄像机时钟跳变",
    "disk_error": "磁盘错误",
    "ingest_stopped": "录像服务停止",
    "ingest_hung": "录像进程卡死（已自动重启）",
    # GB/T 28181 devices (vms.gb28181.source)
    "unregistered": "设备未注册",
    "keepalive_lost": "设备心跳丢失",
    "invite_timeout": "设备未应答点播",
    "invite_refused": "设备拒绝点播",
    "no_media": "设备无媒体流",
    "no_media_port": "媒体端口已用尽",
    "device_bye": "设备结束推流",
    "gb28181_unavailable": "国标信令服务不可用",
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
