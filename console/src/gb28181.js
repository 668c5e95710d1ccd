// GB/T 28181 devices as the admin reads them: the API's refusals and the server's English reasons
// (vms/gb28181/server.py) in Chinese, as the first console's page says them (vms/console/static/gb28181.js).
const HAS_CJK = /[\u3400-\u9fff\uf900-\ufaff]/;

export function gbErrorText(e) {
  if (!e || typeof e.status !== "number" || e.status === 0) return "无法连接服务器，请检查网络后重试";
  if (e.status === 401) return "登录已过期，请重新登录";
  if (e.status === 403) return "没有权限：仅管理员可管理国标设备接入";
  // api.js already put the API's Chinese detail first, or a Chinese meaning of the status.
  if (HAS_CJK.test(e.message) && !/[A-Za-z]{4,}/.test(e.message)) return e.message;
  if (e.status === 400 || e.status === 422) return "输入不符合要求，请检查后重试";
  if (e.status === 404) return "找不到该设备或通道，请刷新后重试";
  if (e.status >= 500) return `服务器出错（${e.status}），请稍后重试`;
  return `操作失败（${e.status}）`;
}

const PROBLEMS = [
  [/^registration refused: wrong password/, () => "注册被拒绝：密码错误（设备上的密码与本平台为它设置的不一致）"],
  [/^registration refused: /, () => "注册被拒绝：认证信息有误"],
  [/^unknown device/, () => "未登记的设备：密码正确，等待管理员点击「接入」（或在站点目录文件中绑定它的通道）"],
  [/^no password/, () => "没有可用的密码：请在接入时为设备设置密码，或在配置中设置 gb28181.password"],
  [/^its registration expired/, () => "注册已过期，设备未重新注册"],
  [/^no keepalive for (\d+) s \((\d+) missed\)/, (m) => `心跳超时：${m[1]} 秒未收到心跳（连续 ${m[2]} 次）`],
  [/^unregistered$/, () => "设备已注销"],
];

export function gbProblemText(d) {
  if (d.state === "online") return "";
  if (d.problem) {
    for (const [re, text] of PROBLEMS) {
      const m = d.problem.match(re);
      if (m) return text(m);
    }
    return "设备异常（原因见服务器日志）";
  }
  if (d.state === "offline" && d.registered_ms == null) return "已接入，等待设备注册";
  if (d.state === "offline") return "长时间未收到心跳或注册已过期";
  return "";
}
