// estate-gateway local page, second script: cameras and their clips, the
// clips of alarms in the console, "read now" of a device, the system page,
// and the cameras card of the dashboard. Loaded after app.js, whose globals
// (T, VIEWS, api, t, esc, me, lang, alarms, refresh) it uses.
"use strict";

Object.assign(T["zh-CN"], {
  nav_cameras: "摄像机", nav_system: "系统", cameras: "摄像机", cameras_online: "在线摄像机",
  fps: "帧率", bitrate: "码率", resolution: "分辨率", last_frame: "最后一帧", reconnects: "重连次数",
  last_error: "最后错误", clips: "录像片段", no_clips: "暂无录像", play: "播放", close: "关闭",
  starting: "启动中", recording: "录制中", ready: "可播放", clip_failed: "录制失败", seconds_ago: "秒前",
  read_now: "立即读取", reading: "读取中…", raw: "原始值", address: "地址", table: "寄存器表",
  probe_failed: "读取失败", probe_last: "非 Modbus 设备：显示最近值", took: "耗时",
  version: "版本", boot_id: "启动标识", disk: "磁盘（日志所在）", free: "可用", total: "总计",
  journal_size: "日志大小", events_held: "保留事件", last_seq: "最新序号", sinks: "投递目标",
  sink: "目标", backlog_events: "待投递事件", backlog_telemetry: "待投递遥测", pressure: "空间压力",
  logs: "最近日志", level: "级别", message: "内容", yes: "是", no: "否", no_cameras: "未配置摄像机",
  alarm_key: "报警", size: "大小",
});
Object.assign(T["en"], {
  nav_cameras: "Cameras", nav_system: "System", cameras: "Cameras", cameras_online: "Cameras online",
  fps: "Frame rate", bitrate: "Bit rate", resolution: "Resolution", last_frame: "Last frame", reconnects: "Reconnects",
  last_error: "Last error", clips: "Clips", no_clips: "No clips yet", play: "Play", close: "Close",
  starting: "starting", recording: "recording", ready: "ready", clip_failed: "failed", seconds_ago: "s ago",
  read_now: "Read now", reading: "reading…", raw: "Raw", address: "Address", table: "Table",
  probe_failed: "Read failed", probe_last: "Not a Modbus device: last values", took: "took",
  version: "Version", boot_id: "Boot id", disk: "Disk (journal)", free: "free", total: "total",
  journal_size: "Journal size", events_held: "Events held", last_seq: "Last seq", sinks: "Sinks",
  sink: "Sink", backlog_events: "Events to deliver", backlog_telemetry: "Telemetry to deliver", pressure: "Size pressure",
  logs: "Recent logs", level: "Level", message: "Message", yes: "yes", no: "no", no_cameras: "No cameras configured",
  alarm_key: "Alarm", size: "Size",
});

const fmtBytes = (n) => {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + u[i];
};
const fmtAge = (s) => (s === null || s === undefined) ? "—" : (s < 10 ? s.toFixed(1) : Math.round(s)) + " " + t("seconds_ago");
const fmtTime = (ts) => ts ? new Date(ts).toLocaleString(lang) : "—";
const clipUrl = (id) => "/clips/" + encodeURIComponent(id) + ".mp4";

// ---- the clip player (outside the views, so refreshes keep it playing) ---

function player() {
  let p = document.getElementById("clip-player");
  if (p) return p;
  p = document.createElement("div");
  p.id = "clip-player";
  p.hidden = true;
  p.innerHTML = `<div class="player-box"><div class="player-head"><span id="clip-title"></span>
    <button type="button" id="clip-close" class="secondary"></button></div>
    <video id="clip-video" controls playsinline preload="metadata"></video></div>`;
  document.body.appendChild(p);
  document.getElementById("clip-close").onclick = closeClip;
  p.onclick = (ev) => { if (ev.target === p) closeClip(); };
  return p;
}

function openClip(id) {
  const p = player();
  document.getElementById("clip-close").textContent = t("close");
  document.getElementById("clip-title").textContent = id;
  const v = document.getElementById("clip-video");
  v.src = clipUrl(id);
  v.dataset.clip = id;
  p.hidden = false;
  v.play().catch(() => { /* autoplay refused: the controls are there */ });
}

function closeClip() {
  const p = document.getElementById("clip-player");
  if (!p) return;
  const v = document.getElementById("clip-video");
  v.pause();
  v.removeAttribute("src");
  v.load();
  p.hidden = true;
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a.clip-link");
  if (!a) return;
  ev.preventDefault();
  openClip(a.dataset.clip);
});
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeClip(); });

function clipLink(c) {
  const cls = c.state === "ready" || c.state === undefined ? "" : " pending";
  const label = c.state === "recording" ? t("recording") : c.state === "failed" ? t("clip_failed") : "▶ " + t("play");
  if (c.state === "failed" || c.state === "recording") {
    return `<span class="clip-state ${esc(c.state)}" data-clip="${esc(c.id)}">${esc(c.camera || "")} ${esc(label)}</span>`;
  }
  return `<a class="clip-link${cls}" href="${esc(clipUrl(c.id))}" data-clip="${esc(c.id)}">${esc(label)} ${esc(c.camera || "")}</a>`;
}

// ---- the clips of active alarms (the console) --------------------------

let alarmClipMap = {};

// Called by app.js for each alarm row.
function alarmExtra(a) {
  const list = alarmClipMap[a.key] || [];
  return `<div class="alarm-clips" data-clips-for="${esc(a.key)}">${list.map(clipLink).join(" ")}</div>`;
}

async function refreshAlarmClips() {
  if (!me || !location.hash.startsWith("#/alarms") || alarms.length === 0) return;
  const r = await api("GET", "/alarms/clips");
  if (!r.ok) return;
  alarmClipMap = r.data.clips || {};
  for (const div of document.querySelectorAll(".alarm-clips")) {
    const html = (alarmClipMap[div.dataset.clipsFor] || []).map(clipLink).join(" ");
    if (div.innerHTML !== html) div.innerHTML = html;
  }
}
setInterval(refreshAlarmClips, 2000);
window.addEventListener("hashchange", refreshAlarmClips);

// ---- cameras -----------------------------------------------------------

async function renderCameras(el) {
  const r = await api("GET", "/cameras");
  if (!r.ok) { el.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  if (el.dataset.view !== "cameras") return;
  const cams = r.data.cameras;
  el.innerHTML = `<h1>${esc(t("nav_cameras"))} <small>${esc(r.data.summary.online)}/${esc(r.data.summary.total)}</small></h1>` +
    (cams.length === 0 ? `<p>${esc(t("no_cameras"))}</p>` : "") +
    cams.map((c) => {
      const res = c.width ? `${c.width}×${c.height}` : "—";
      const st = c.state === "online" ? "good" : c.state === "offline" ? "bad" : "unknown";
      return `<div class="camera" data-camera="${esc(c.id)}">
      <h2>${esc(c.name || c.id)} <small class="q-${st} cam-state">${esc(t(c.state))}</small> <small>${esc(c.zone || "")}</small></h2>
      <div class="kv">
        <span><b>${esc(t("fps"))}</b> ${esc(c.fps === null ? "—" : c.fps.toFixed(1))}</span>
        <span><b>${esc(t("last_frame"))}</b> <span class="frame-age">${esc(fmtAge(c.last_frame_age_s))}</span></span>
        <span><b>${esc(t("bitrate"))}</b> ${esc(c.bitrate_bps ? (c.bitrate_bps / 1e6).toFixed(2) + " Mbit/s" : "—")}</span>
        <span><b>${esc(t("resolution"))}</b> ${esc(res)} ${esc(c.codec || "")}</span>
        <span><b>${esc(t("reconnects"))}</b> ${esc(c.reconnects ?? 0)}</span>
      </div>
      ${c.last_error ? `<p class="error cam-error"><b>${esc(t("last_error"))}:</b> ${esc(c.last_error)}</p>` : ""}
      <h3>${esc(t("clips"))}</h3>
      ${c.clips.length === 0 ? `<p class="muted">${esc(t("no_clips"))}</p>` :
        `<table class="clips"><thead><tr><th>${esc(t("time"))}</th><th>${esc(t("alarm_key"))}</th><th>${esc(t("size"))}</th><th></th></tr></thead><tbody>
        ${c.clips.map((f) => `<tr data-clip-row="${esc(f.id)}"><td data-label="${esc(t("time"))}">${esc(fmtTime(f.ts))}</td>
          <td data-label="${esc(t("alarm_key"))}">${esc(f.alarm_key || "—")}</td><td data-label="${esc(t("size"))}">${esc(fmtBytes(f.bytes))}</td>
          <td>${clipLink({ id: f.id, state: "ready" })}</td></tr>`).join("")}</tbody></table>`}
    </div>`;
    }).join("");
}

function viewCameras(el) {
  refresh = setInterval(() => renderCameras(el), 5000);
  return renderCameras(el);
}

// ---- system ------------------------------------------------------------

async function renderSystem(el) {
  const [r, l] = await Promise.all([api("GET", "/system"), api("GET", "/system/logs")]);
  if (!r.ok) { el.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  if (el.dataset.view !== "system") return;
  const d = r.data;
  const card = (k, v, cls = "", id = "") => `<div class="card ${cls}" ${id ? `id="${id}"` : ""}><div class="k">${esc(t(k))}</div><div class="v">${esc(v)}</div></div>`;
  const used = d.disk.total_bytes ? 1 - d.disk.free_bytes / d.disk.total_bytes : 0;
  const logBox = document.getElementById("sys-logs");
  const atBottom = !logBox || logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 20;
  el.innerHTML = `<h1>${esc(t("nav_system"))}</h1>
    <div class="cards" id="sys-cards">
      ${card("version", d.version)}
      ${card("uptime", Math.round(d.uptime_s / 60) + " min")}
      ${card("uplink", d.uplink.connected ? t("connected") : t("disconnected"), d.uplink.connected ? "q-good" : "q-bad", "sys-uplink")}
      ${card("journal_size", fmtBytes(d.journal.bytes_on_disk), "", "sys-journal-size")}
      ${card("events_held", d.journal.events)}
      ${card("last_seq", d.journal.last_seq)}
      ${card("pressure", d.journal.pressure ? t("yes") : t("no"), d.journal.pressure ? "q-bad" : "")}
    </div>
    <h2>${esc(t("disk"))}</h2>
    <div class="disk" id="sys-disk">${d.disk.error ? `<p class="error">${esc(d.disk.error)}</p>` :
      `<div class="bar"><div style="width:${Math.round(used * 100)}%"></div></div>
       <p><span id="disk-free">${esc(fmtBytes(d.disk.free_bytes))}</span> ${esc(t("free"))} / ${esc(fmtBytes(d.disk.total_bytes))} ${esc(t("total"))} <small>${esc(d.disk.path)}</small></p>`}</div>
    <h2>${esc(t("sinks"))}</h2>
    <table id="sys-sinks"><thead><tr><th>${esc(t("sink"))}</th><th>${esc(t("backlog_events"))}</th><th>${esc(t("backlog_telemetry"))}</th></tr></thead><tbody>
      ${d.journal.sinks.map((s) => `<tr data-sink="${esc(s.name)}"><td data-label="${esc(t("sink"))}">${esc(s.name)}</td>
        <td data-label="${esc(t("backlog_events"))}" class="backlog">${esc(s.backlog_events)}</td>
        <td data-label="${esc(t("backlog_telemetry"))}">${esc(s.backlog_telemetry)}</td></tr>`).join("")}
    </tbody></table>
    <p class="muted">${esc(t("boot_id"))}: ${esc(d.boot_id)} · ${esc(d.site)}/${esc(d.gateway)}</p>
    <h2>${esc(t("logs"))}</h2>
    <div id="sys-logs" class="logs">${(l.ok ? l.data.lines : []).map((x) =>
      `<div class="log ${esc(x.level.toLowerCase())}"><span class="ts">${esc(new Date(x.ts).toLocaleTimeString(lang))}</span> <b>${esc(x.level)}</b> <span class="tgt">${esc(x.target)}</span> ${esc(x.text)}</div>`).join("")}</div>`;
  const box = document.getElementById("sys-logs");
  if (box && atBottom) box.scrollTop = box.scrollHeight;
}

function viewSystem(el) {
  refresh = setInterval(() => renderSystem(el), 5000);
  return renderSystem(el);
}

// ---- devices: "read now" -------------------------------------------------

const probes = {}; // device id → {pending} | {result} | {error}

function probeHtml(id) {
  const p = probes[id];
  if (!p) return "";
  if (p.pending) return `<p class="muted">${esc(t("reading"))}</p>`;
  const r = p.result;
  if (!r.ok) return `<p class="error probe-error" role="alert">${esc(t("probe_failed"))}: ${esc(r.error || p.status)}</p>`;
  const hex = (w) => "0x" + Number(w).toString(16).toUpperCase().padStart(4, "0");
  if (r.source === "last") {
    return `<p class="muted">${esc(t("probe_last"))}</p>` + `<table class="probe-table"><tbody>${r.values.map((v) =>
      `<tr><td data-label="${esc(t("point"))}">${esc(v.point)}</td><td data-label="${esc(t("value"))}">${esc(fmtValue(v.value))} ${esc(v.unit || "")}</td>
      <td data-label="${esc(t("quality"))}" class="q-${esc(v.quality || "unknown")}">${esc(t(v.quality || "unknown"))}</td></tr>`).join("")}</tbody></table>`;
  }
  return `<p class="muted"><b>${esc(t("read_now"))}</b> · ${esc(t("took"))} ${esc(r.took_ms.toFixed(1))} ms · unit ${esc(r.unit)} · ${esc(new Date(p.at).toLocaleTimeString(lang))}</p>
    <table class="probe-table"><thead><tr><th>${esc(t("point"))}</th><th>${esc(t("table"))}</th><th>${esc(t("address"))}</th><th>${esc(t("raw"))}</th><th>${esc(t("value"))}</th><th>${esc(t("quality"))}</th></tr></thead><tbody>
    ${r.values.map((v) => `<tr data-probe-point="${esc(v.point)}"><td data-label="${esc(t("point"))}">${esc(v.point)}</td>
      <td data-label="${esc(t("table"))}">${esc(v.table)}</td><td data-label="${esc(t("address"))}">${esc(v.address)}</td>
      <td data-label="${esc(t("raw"))}" class="raw">${esc(v.table === "coil" || v.table === "discrete_input" ? v.raw.join(" ") : v.raw.map((w) => `${hex(w)} (${w})`).join(" "))}</td>
      <td data-label="${esc(t("value"))}" class="probe-value">${esc(fmtValue(v.value))} ${esc(v.unit || "")}</td>
      <td data-label="${esc(t("quality"))}" class="q-${esc(v.quality)}">${esc(t(v.quality))}${v.error ? " " + esc(v.error) : ""}</td></tr>`).join("")}
    </tbody></table>`;
}

function decorateDevices(el) {
  if (!me || me.role !== "technician") return;
  for (const dev of el.querySelectorAll(".device[data-device]")) {
    const id = dev.dataset.device;
    const h = dev.querySelector("h2");
    if (h && !h.querySelector(".probe-btn")) {
      h.insertAdjacentHTML("beforeend", ` <button type="button" class="secondary probe-btn" data-device="${esc(id)}">${esc(t("read_now"))}</button>`);
    }
    let box = dev.querySelector(".probe");
    if (!box) {
      h.insertAdjacentHTML("afterend", `<div class="probe" data-probe="${esc(id)}"></div>`);
      box = dev.querySelector(".probe");
    }
    box.innerHTML = probeHtml(id);
  }
}

async function runProbe(el, id) {
  probes[id] = { pending: true };
  decorateDevices(el);
  const r = await api("POST", "/devices/" + encodeURIComponent(id) + "/probe", {});
  probes[id] = { result: r.data, status: r.status, at: Date.now() };
  if (el.dataset.view === "devices") decorateDevices(el);
}

const baseDevices = VIEWS.devices;
VIEWS.devices = async (el) => {
  await baseDevices(el);
  if (el.dataset.view !== "devices") return;
  decorateDevices(el);
  el.onclick = (ev) => {
    const b = ev.target.closest && ev.target.closest("button.probe-btn");
    if (b && !(probes[b.dataset.device] || {}).pending) runProbe(el, b.dataset.device);
  };
};

// ---- dashboard: cameras --------------------------------------------------

const baseDashboard = VIEWS.dashboard;
VIEWS.dashboard = async (el) => {
  const [, r] = await Promise.all([baseDashboard(el), api("GET", "/cameras/summary")]);
  const cards = document.getElementById("dash-cards");
  if (!r.ok || !cards || el.dataset.view !== "dashboard") return;
  const s = r.data;
  const cls = s.total === 0 ? "" : s.online === s.total ? "q-good" : "q-bad";
  cards.insertAdjacentHTML("beforeend", `<div class="card ${cls}" id="dash-cameras"><div class="k">${esc(t("cameras_online"))}</div><div class="v">${esc(s.online)} / ${esc(s.total)}</div></div>`);
};

VIEWS.cameras = viewCameras;
VIEWS.system = viewSystem;
// The view to show may be one of these (a reload on #/cameras).
if (me) route();
