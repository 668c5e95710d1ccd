// The audit's words: verdicts, findings' severities, station levels, and the compliance rules as the
// county states them (the thresholds come with each monthly report: vms/audit/monthly.py).
export const STATUS_TEXT = { pass: "达标", fail: "不达标", exempt: "不考核" };
export const STATUS_TAG = { pass: "success", fail: "danger", exempt: "info" };
export const SEVERITY_TEXT = { info: "提示", warning: "注意", critical: "严重" };
export const LEVEL_TEXT = { town: "镇级服务站", village: "村级服务点" };

// The settings' defaults (AuditSettings), shown before any month has been audited.
export const DEFAULT_RULES = { min_online_percent: 95, min_coverage_percent: 95, min_open_hours: 6, min_open_days: 20,
                               min_open_days_fraction: null };

const num = (x) => String(Number(x));

export function ruleLines(rules) {
  const r = rules || DEFAULT_RULES;
  const openDays = r.min_open_days_fraction != null
    ? `在用天数的 ${num(Math.round(r.min_open_days_fraction * 1000) / 10)}%（向上取整）`
    : `${num(r.min_open_days)} 天（月中启用的站点按在用天数折算，向上取整）`;
  return [
    `摄像机在线率不低于 ${num(r.min_online_percent)}%（按本月已审计时长累计，不是每日平均）`,
    `录像覆盖率不低于 ${num(r.min_coverage_percent)}%（有录像的时长占已审计时长的比例）`,
    `营业时间内开门满 ${num(r.min_open_hours)} 小时（且摄像机在线）的天数不少于 ${openDays}`,
  ];
}

export const VERDICTS = [
  { status: "pass", text: "参与考核，且以上三项全部达到要求。" },
  { status: "fail", text: "参与考核，但至少一项未达到要求；表中逐条列出未达标的原因和实际数值。" },
  { status: "exempt", text: "站点已停用，或本月尚未投入使用（启用日期在本月之后），不计入达标率。" },
];

export const monthText = (month) => {
  const [y, m] = month.split("-");
  return `${y}年${Number(m)}月`;
};
export const dayText = (day) => {
  const [y, m, d] = day.split("-");
  return `${y}年${Number(m)}月${Number(d)}日`;
};
