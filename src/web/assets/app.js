// estate-gateway local page: sign-in, dashboard, alarm console, devices,
// users, audit log, configuration (read only). Plain JS, no build step.
"use strict";

const T = {
  "zh-CN": {
    brand: "安防网关", nav_dashboard: "概览", nav_alarms: "报警台", nav_devices: "设备",
    nav_users: "用户", nav_audit: "审计", nav_config: "配置", logout: "退出",
    login_title: "登录", user: "用户名", password: "密码", login: "登录",
    setup_title: "创建第一个技术员账户", setup_token: "设置令牌（见日志，或 journal 目录中的 setup-token 文件）", create: "创建",
    bad_login: "用户名或密码错误", throttled: "失败次数过多，请稍后再试", busy: "系统正忙，请稍后再试",
    uplink: "上行链路", connected: "已连接", disconnected: "未连接", backlog: "待发送事件",
    devices_online: "在线设备", devices_offline: "离线设备", alarms_active: "活动报警",
    prio: "优先级", alarm: "报警", state: "状态", category: "类别", actions: "操作",
    comment: "备注", ack: "确认", shelve: "搁置", no_alarms: "无活动报警", live: "实时",
    reconnecting: "重新连接中…", device: "设备", point: "点位", value: "值", quality: "质量",
    time: "时间", role: "角色", add_user: "添加用户", remove: "删除", action: "动作",
    target: "对象", result: "结果", ok: "成功", failed: "失败", lang_other: "English",
    active_unacked: "未确认", active_acked: "已确认", returned_unacked: "已恢复未确认",
    shelved: "已搁置", normal: "正常", online: "在线", offline: "离线", unknown: "未知",
    disabled: "停用", good: "良好", bad: "故障", stale: "过期",
    technician: "技术员", guard: "保安", viewer: "查看者",
    shelve_minutes: "分钟", journal: "日志", uptime: "运行时间", zone_disarmed: "防区已撤防，仅记录",
    refused_unknown_alarm: "没有这个报警（可能已恢复正常）", refused_not_unacked: "该报警无需确认（已确认或未在报警）",
    refused_not_shelvable: "生命安全类报警不能搁置", refused_trouble_not_shelvable: "网关自身的报警不能搁置，请确认",
    cat_fire: "消防", cat_intrusion: "入侵", cat_perimeter: "周界", cat_access: "门禁", cat_hvac: "暖通", cat_video: "视频", cat_system: "系统",
  },
  "en": {
    brand: "Security gateway", nav_dashboard: "Dashboard", nav_alarms: "Alarm console", nav_devices: "Devices",
    nav_users: "Users", nav_audit: "Audit", nav_config: "Configuration", logout: "Sign out",
    login_title: "Sign in", user: "User name", password: "Password", login: "Sign in",
    setup_title: "Create the first technician", setup_token: "Setup token (in the log, or the file setup-token in the journal directory)", create: "Create",
    bad_login: "Wrong user name or password", throttled: "Too many failed attempts; try again later", busy: "Busy; try again in a moment",
    uplink: "Uplink", connected: "connected", disconnected: "disconnected", backlog: "Events to send",
    devices_online: "Devices online", devices_offline: "Devices offline", alarms_active: "Active alarms",
    prio: "Priority", alarm: "Alarm", state: "State", category: "Category", actions: "Actions",
    comment: "Comment", ack: "Acknowledge", shelve: "Shelve", no_alarms: "No active alarms", live: "live",
    reconnecting: "reconnecting…", device: "Device", point: "Point", value: "Value", quality: "Quality",
    time: "Time", role: "Role", add_user: "Add user", remove: "Remove", action: "Action",
    target: "Target", result: "Result", ok: "ok", failed: "failed", lang_other: "中文",
    active_unacked: "unacknowledged", active_acked: "acknowledged", returned_unacked: "returned, unacknowledged",
    shelved: "shelved", normal: "normal", online: "online", offline: "offline", unknown: "unknown",
    disabled: "disabled", good: "good", bad: "bad", stale: "stale",
    technician: "technician", guard: "guard", viewer: "viewer",
    shelve_minutes: "min", journal: "Journal", uptime: "Uptime", zone_disarmed: "zone disarmed: recorded only",
    refused_unknown_alarm: "No such alarm (it may be back to normal)", refused_not_unacked: "This alarm is not awaiting acknowledgement",
    refused_not_shelvable: "A life-safety alarm cannot be shelved", refused_trouble_not_shelvable: "The gateway's own alarms cannot be shelved; acknowledge it",
    cat_fire: "fire", cat_intrusion: "intrusion", cat_perimeter: "perimeter", cat_access: "access", cat_hvac: "HVAC", cat_video: "video", cat_system: "system",
  },
};

let me = null;          // {name, role, lang, csrf}
let lang = "zh-CN";
let stream = null;      // EventSource of the alarm console
let alarms = [];        // active alarms, as last streamed
let heard = new Set();  // alarm keys already announced by the beep
let audio = null;
let streamLive = false; // the alarm stream delivered and has not failed since

const $ = (s, el = document) => el.querySelector(s);
const t = (k) => (T[lang] && T[lang][k]) || T["en"][k] || k;
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    if (me) opts.headers["X-CSRF-Token"] = me.csrf;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
  }
  const r = await fetch("/api/v1" + path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (r.status === 401 && path !== "/session") { signedOut(); }
  return { status: r.status, ok: r.ok, data: data || {} };
}

function applyLang() {
  document.documentElement.lang = lang;
  document.title = t("brand");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = t("lang_other");
}

function signedOut() {
  me = null;
  streamLive = false;
  if (stream) { stream.close(); stream = null; }
  $("#top").hidden = true;
  $("#view").hidden = true;
  $("#login-view").hidden = false;
  api("GET", "/setup").then((r) => { $("#setup-form").hidden = !r.data.needed; });
}

function signedIn(m) {
  me = m;
  lang = m.lang || "zh-CN";
  applyLang();
  $("#top").hidden = false;
  $("#login-view").hidden = true;
  $("#view").hidden = false;
  $("#who").textContent = `${m.name} (${t(m.role)})`;
  for (const a of document.querySelectorAll("nav .tech")) a.hidden = m.role !== "technician";
  route();
}

function beep() {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    if (audio.state === "suspended") audio.resume();
    const o = audio.createOscillator(), g = audio.createGain();
    o.type = "square"; o.frequency.value = 880;
    g.gain.value = 0.15;
    o.connect(g); g.connect(audio.destination);
    const now = audio.currentTime;
    o.start(now); o.stop(now + 0.6);
    document.body.dataset.lastBeep = String(Date.now());
  } catch (_) { /* no audio device */ }
}

function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return String(v);
}

// ---- views ------------------------------------------------------------

async function viewDashboard(el) {
  const r = await api("GET", "/dashboard");
  if (!r.ok) return;
  const d = r.data;
  const card = (k, v, cls = "") => `<div class="card ${cls}"><div class="k">${esc(t(k))}</div><div class="v">${esc(v)}</div></div>`;
  el.innerHTML = `<h1>${esc(t("nav_dashboard"))} · ${esc(d.site)}</h1>
    <div class="cards" id="dash-cards">
      ${card("uplink", d.uplink.connected ? t("connected") : t("disconnected"), d.uplink.connected ? "q-good" : "q-bad")}
      ${card("backlog", d.uplink.backlog)}
      ${card("devices_online", d.devices.online)}
      ${card("devices_offline", d.devices.offline)}
      ${card("alarms_active", d.alarms.active)}
      ${d.alarms.by_priority.map((n, i) => card("prio", `P${i + 1}: ${n}`)).join("")}
      ${card("journal", d.journal.last_seq)}
      ${card("uptime", Math.round(d.uptime_s / 60) + " min")}
    </div>`;
}

// Re-rendered on every update (a new alarm must always show, also while a
// guard types a comment): comments being typed, the focus and the caret
// are carried over to the new rows of the same alarms.
function renderAlarms(el) {
  const tbody = $("#alarm-rows", el);
  if (!tbody) return;
  const typed = new Map();
  let focus = null;
  for (const inp of tbody.querySelectorAll("input.comment")) {
    const key = inp.closest("tr").dataset.key;
    if (inp.value) typed.set(key, inp.value);
    if (inp === document.activeElement) {
      focus = { key, start: inp.selectionStart, end: inp.selectionEnd, dir: inp.selectionDirection };
    }
  }
  renderAlarmRows(tbody);
  for (const tr of tbody.querySelectorAll("tr[data-key]")) {
    const inp = tr.querySelector("input.comment");
    if (!inp) continue;
    const key = tr.dataset.key;
    if (typed.has(key)) inp.value = typed.get(key);
    if (focus && focus.key === key) {
      inp.focus();
      try { inp.setSelectionRange(focus.start, focus.end, focus.dir); } catch (_) { /* not a text input */ }
    }
  }
}

function renderAlarmRows(tbody) {
  if (alarms.length === 0) {
    tbody.innerHTML = `<tr><td colspan="5" id="no-alarms">${esc(t("no_alarms"))}</td></tr>`;
    return;
  }
  const canOperate = me && me.role !== "viewer";
  tbody.innerHTML = alarms.map((a) => {
    const unacked = a.state === "active_unacked" || a.state === "returned_unacked";
    return `<tr class="${unacked ? "unacked" : ""}" data-key="${esc(a.key)}" data-state="${esc(a.state)}">
      <td data-label="${esc(t("prio"))}"><span class="prio p${a.priority}">P${a.priority}</span></td>
      <td data-label="${esc(t("alarm"))}">${esc(lang === "zh-CN" && a.message_zh ? a.message_zh : a.message)}<br><small>${esc(a.key)}</small>${a.zone_disarmed ? `<br><small class="zone-disarmed">${esc(t("zone_disarmed"))}</small>` : ""}${typeof alarmExtra === "function" ? alarmExtra(a) : ""}</td>
      <td data-label="${esc(t("state"))}" class="state">${esc(t(a.state))}</td>
      <td data-label="${esc(t("category"))}">${esc(t("cat_" + a.category))}</td>
      <td data-label="${esc(t("actions"))}">${canOperate ? `<div class="alarm-actions">
        <input class="comment" placeholder="${esc(t("comment"))}" maxlength="500">
        ${unacked ? `<button class="ack" type="button">${esc(t("ack"))}</button>` : ""}
        ${a.state !== "shelved" && a.priority > 1 ? `<button class="shelve secondary" type="button">${esc(t("shelve"))} 60 ${esc(t("shelve_minutes"))}</button>` : ""}
      </div>` : ""}</td></tr>`;
  }).join("");
}

function viewAlarms(el) {
  el.innerHTML = `<h1>${esc(t("nav_alarms"))} <span class="live" id="live-state">${esc(streamLive ? "● " + t("live") : t("reconnecting"))}</span></h1>
    <p class="error" id="alarm-error" role="alert"></p>
    <table><thead><tr><th>${esc(t("prio"))}</th><th>${esc(t("alarm"))}</th><th>${esc(t("state"))}</th><th>${esc(t("category"))}</th><th>${esc(t("actions"))}</th></tr></thead>
    <tbody id="alarm-rows"></tbody></table>`;
  renderAlarms(el);
  el.onclick = async (ev) => {
    const b = ev.target.closest("button");
    if (!b) return;
    const tr = b.closest("tr");
    const key = tr.dataset.key;
    const comment = $(".comment", tr).value;
    const r = b.classList.contains("ack")
      ? await api("POST", "/alarms/ack", { key, comment })
      : await api("POST", "/alarms/shelve", { key, comment, duration_s: 3600 });
    $("#alarm-error").textContent = r.ok ? "" : refusalText(r, key);
  };
}

// A refused acknowledgement or shelving, in the console's language where the
// gateway names the reason (the English text otherwise).
function refusalText(r, key) {
  const reason = r.data && r.data.reason;
  if (reason) return `${t("refused_" + reason)}: ${key}`;
  return (r.data && r.data.error) || r.status;
}

function startStream() {
  if (stream) return;
  stream = new EventSource("/api/v1/alarms/stream");
  stream.addEventListener("alarms", (ev) => {
    alarms = JSON.parse(ev.data);
    streamLive = true;
    for (const a of alarms) {
      const fresh = !heard.has(a.key) && a.state === "active_unacked";
      if (fresh && a.priority <= 2) beep();
      if (a.state === "active_unacked") heard.add(a.key);
    }
    for (const k of [...heard]) if (!alarms.some((a) => a.key === k && a.state === "active_unacked")) heard.delete(k);
    const live = $("#live-state");
    if (live) live.textContent = "● " + t("live");
    const el = $("#view");
    // Always: a comment being typed is kept by renderAlarms.
    if (location.hash.startsWith("#/alarms")) renderAlarms(el);
    document.body.dataset.alarmCount = String(alarms.length);
  });
  stream.onerror = () => {
    streamLive = false;
    const live = $("#live-state");
    if (live) live.textContent = t("reconnecting");
    // A closed session ends the stream: check it.
    api("GET", "/me");
  };
}

async function viewDevices(el) {
  const r = await api("GET", "/devices");
  if (!r.ok) return;
  el.innerHTML = `<h1>${esc(t("nav_devices"))}</h1>` + r.data.devices.map((d) => `
    <div class="device" data-device="${esc(d.id)}"><h2>${esc(d.name || d.id)} <small class="q-${esc(d.status)}">${esc(t(d.status))}</small></h2>
    <table><thead><tr><th>${esc(t("point"))}</th><th>${esc(t("value"))}</th><th>${esc(t("quality"))}</th><th>${esc(t("time"))}</th></tr></thead><tbody>
    ${d.points.map((p) => `<tr data-point="${esc(p.point)}"><td data-label="${esc(t("point"))}">${esc(p.point)}</td>
      <td data-label="${esc(t("value"))}" class="value">${esc(fmtValue(p.value))} ${esc(p.unit || "")}</td>
      <td data-label="${esc(t("quality"))}" class="q-${esc(p.quality || "unknown")}">${esc(t(p.quality || "unknown"))}</td>
      <td data-label="${esc(t("time"))}">${esc(p.ts ? new Date(p.ts).toLocaleTimeString(lang) : "—")}</td></tr>`).join("")}
    </tbody></table></div>`).join("");
}

async function viewUsers(el) {
  const r = await api("GET", "/users");
  if (!r.ok) { el.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  el.innerHTML = `<h1>${esc(t("nav_users"))}</h1>
    <table><thead><tr><th>${esc(t("user"))}</th><th>${esc(t("role"))}</th><th></th></tr></thead><tbody>
    ${r.data.users.map((u) => `<tr><td>${esc(u.name)}</td><td>${esc(t(u.role))}</td><td><button class="secondary rm" data-name="${esc(u.name)}" type="button">${esc(t("remove"))}</button></td></tr>`).join("")}
    </tbody></table>
    <form id="add-user"><h2>${esc(t("add_user"))}</h2>
      <label><span>${esc(t("user"))}</span><input name="name" required></label>
      <label><span>${esc(t("role"))}</span><select name="role"><option value="guard">${esc(t("guard"))}</option><option value="viewer">${esc(t("viewer"))}</option><option value="technician">${esc(t("technician"))}</option></select></label>
      <label><span>${esc(t("password"))}</span><input name="password" type="password" autocomplete="new-password" minlength="10" required></label>
      <button type="submit">${esc(t("create"))}</button><p class="error" id="user-error"></p></form>`;
  $("#add-user").onsubmit = async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const res = await api("POST", "/users", Object.fromEntries(f));
    if (res.ok) viewUsers(el); else $("#user-error").textContent = res.data.error;
  };
  for (const b of el.querySelectorAll("button.rm")) {
    b.onclick = async () => {
      const res = await api("DELETE", "/users/" + encodeURIComponent(b.dataset.name));
      if (res.ok) viewUsers(el); else $("#user-error").textContent = res.data.error;
    };
  }
}

async function viewAudit(el) {
  const r = await api("GET", "/audit");
  if (!r.ok) { el.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  el.innerHTML = `<h1>${esc(t("nav_audit"))}</h1><table><thead><tr><th>${esc(t("time"))}</th><th>${esc(t("user"))}</th><th>${esc(t("action"))}</th><th>${esc(t("target"))}</th><th>${esc(t("result"))}</th></tr></thead><tbody>
    ${r.data.entries.map((e) => `<tr><td data-label="${esc(t("time"))}">${esc(new Date(e.ts).toLocaleString(lang))}</td><td data-label="${esc(t("user"))}">${esc(e.user)} <small>${esc(e.addr)}</small></td>
      <td data-label="${esc(t("action"))}">${esc(e.action)}</td><td data-label="${esc(t("target"))}">${esc(e.target)}</td>
      <td data-label="${esc(t("result"))}">${esc(e.ok ? t("ok") : t("failed"))} ${esc(e.detail)}</td></tr>`).join("")}
    </tbody></table>`;
}

// The configuration view is assets/config.js (VIEWS.config); the cameras
// and system views are assets/pages.js.
const VIEWS = { dashboard: viewDashboard, alarms: viewAlarms, devices: viewDevices, users: viewUsers, audit: viewAudit };
let refresh = null;

function route() {
  if (!me) return;
  const name = (location.hash.replace(/^#\//, "") || "dashboard").split("/")[0];
  const view = VIEWS[name] ? name : "dashboard";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + view);
  const el = $("#view");
  el.onclick = null;
  el.dataset.view = view;
  clearInterval(refresh);
  VIEWS[view](el);
  // Dashboard and devices refresh every 2 s; the console is pushed.
  if (view === "dashboard" || view === "devices") refresh = setInterval(() => VIEWS[view](el), 2000);
  startStream();
}

window.addEventListener("hashchange", route);

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/session", { name: $("#login-name").value, password: $("#login-password").value });
    $("#login-password").value = "";
    if (r.ok) { $("#login-error").textContent = ""; beepUnlock(); signedIn(r.data); }
    else $("#login-error").textContent = r.status === 429 ? t(r.data && r.data.busy ? "busy" : "throttled") : t("bad_login");
  };
  $("#setup-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(ev.target));
    const r = await api("POST", "/setup", f);
    if (r.ok) { $("#setup-form").hidden = true; $("#login-name").value = f.name; }
    else $("#setup-error").textContent = r.data.error || r.status;
  };
  $("#logout").onclick = async () => { await api("DELETE", "/session"); signedOut(); };
  $("#lang").onclick = async () => {
    const next = lang === "zh-CN" ? "en" : "zh-CN";
    const r = await api("PUT", "/me/lang", { lang: next });
    if (r.ok) { lang = next; me.lang = next; applyLang(); $("#who").textContent = `${me.name} (${t(me.role)})`; route(); }
  };
  applyLang();
  const r = await api("GET", "/me");
  if (r.ok) signedIn(r.data); else signedOut();
});

// Browsers start audio only after a user gesture: the sign-in click.
function beepUnlock() {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    audio.resume();
  } catch (_) { /* no audio */ }
}
