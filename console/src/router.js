import { createRouter, createWebHistory } from "vue-router";
import { can, loadMe, session, whenSessionExpired } from "./session.js";
import LoginView from "./views/LoginView.vue";
import LayoutView from "./views/LayoutView.vue";
import HomeView from "./views/HomeView.vue";
import WallView from "./views/WallView.vue";
import PlaybackView from "./views/PlaybackView.vue";
import DownloadsView from "./views/DownloadsView.vue";

const lastPageKey = () => `vms-next:last-page:${session.me ? session.me.username : ""}`;

export const router = createRouter({
  history: createWebHistory("/console/next/"),
  routes: [
    { path: "/login", name: "login", component: LoginView, meta: { public: true, title: "登录" } },
    {
      path: "/",
      component: LayoutView,
      children: [
        { path: "", name: "home", component: HomeView, meta: { title: "首页" } },
        { path: "wall", name: "wall", component: WallView, meta: { perm: "live", title: "视频墙" } },
        { path: "playback", name: "playback", component: PlaybackView, meta: { perm: "playback", title: "录像回放" } },
        { path: "downloads", name: "downloads", component: DownloadsView, meta: { perm: "export", title: "下载中心" } },
        // Loaded when first opened: the audit charts (ECharts) stay out of the wall's download.
        { path: "alarms", name: "alarms", component: () => import("./views/AlarmsView.vue"), meta: { perm: "alerts:read", title: "告警中心" } },
        { path: "audits", name: "audits", component: () => import("./views/AuditsView.vue"), meta: { perm: "audits:read", title: "审计报表" } },
        { path: "access-log", name: "access-log", component: () => import("./views/AccessLogView.vue"), meta: { perm: "access_log:read", title: "调用登记" } },
        { path: "status", name: "status", component: () => import("./views/StatusView.vue"), meta: { perm: "status:read", title: "站点状态" } },
        { path: "station/:id", name: "station", component: () => import("./views/StationView.vue"), meta: { perm: "status:read", title: "站点", menu: "status" } },
        { path: "gb28181", name: "gb28181", component: () => import("./views/GbView.vue"), meta: { perm: "stations:write", title: "国标接入" } },
        { path: "users", name: "users", component: () => import("./views/UsersView.vue"), meta: { perm: "users:admin", title: "用户管理" } },
      ],
    },
    { path: "/:rest(.*)*", redirect: "/" },
  ],
});

router.beforeEach(async (to) => {
  let me = null;
  try {
    me = await loadMe();
  } catch {
    me = null;  // the server is not answering: the login page says so when the operator tries
  }
  if (to.meta.public) return me && to.name === "login" ? landing() : true;
  if (!me) return { name: "login", query: to.fullPath !== "/" ? { redirect: to.fullPath } : {} };
  if (to.meta.perm && !can(to.meta.perm)) return { name: "home" };
  if (to.name === "home" && !to.query.stay) {
    // The page the operator was on last (reload of the bare address, or after login), else the wall.
    const last = localStorage.getItem(lastPageKey());
    const target = last && last !== "/" ? router.resolve(last) : null;
    if (target && target.name && target.name !== "home" && (!target.meta.perm || can(target.meta.perm))) return last;
    if (can("live")) return { name: "wall" };
  }
  return true;
});

router.afterEach((to) => {
  document.title = `${to.meta.title ? to.meta.title + " · " : ""}惠东县电商服务站视频监控联网系统`;
  if (!to.meta.public && session.me) localStorage.setItem(lastPageKey(), to.name === "wall" ? "/wall" : to.path);
});

function landing() {
  return can("live") ? { name: "wall" } : { name: "home", query: { stay: "1" } };
}

whenSessionExpired(() => {
  const here = router.currentRoute.value;
  if (!here.meta.public) router.replace({ name: "login", query: { redirect: here.fullPath, expired: "1" } });
});
