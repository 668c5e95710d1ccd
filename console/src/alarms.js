// The alarm center's words (as in the first console, vms/console/static/app.js).
export const SEVERITY_TEXT = { info: "提示", minor: "一般", major: "重要", critical: "紧急" };
export const SEVERITY_TAG = { info: "info", minor: "primary", major: "warning", critical: "danger" };
export const ALARM_TABS = { firing: "进行中", resolved: "已恢复", all: "全部" };
export const DELIVERY_KIND = { firing: "告警", reminder: "提醒", resolved: "恢复", digest: "汇总", test: "测试" };
export const DELIVERY_STATE = { queued: "待发送", sent: "已发送", batched: "已并入汇总", failed: "发送失败", dropped: "已取消" };
export const MUTE_CHOICES = [[30, "30 分钟"], [120, "2 小时"], [480, "8 小时"], [1440, "24 小时"]];
// What the dispatcher writes as a message's last error (vms/alerts/dispatch.py, engine.py, jobs.py), in
// Chinese; an error from a receiver (an HTTP answer, an SMTP reply) is shown as it came, marked as such.
const DELIVERY_ERRORS = {
  "no longer needed": "告警已确认或已恢复，无需再发",
  "channel not configured": "该通道已不在配置中",
  "nothing left to send": "没有需要发送的内容",
  "outcome unknown": "发送结果未知（发送时服务中断）",
  "unknown error": "未知错误",
};
export const deliveryError = (text) => (!text ? "—" : DELIVERY_ERRORS[text] || `接收方返回：${text}`);

export const MAINT_STATE = { active: "进行中", future: "未开始", past: "已结束" };
export const MAINT_TAG = { active: "warning", future: "primary", past: "info" };
