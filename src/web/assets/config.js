// estate-gateway local page: configuration editing (technicians). Loaded
// after app.js and uses its helpers (api, t, esc, $, T, VIEWS, lang).
// Forms for devices, points, rules, zones, cameras and push channels; a
// raw TOML editor; validate and apply (atomic, rolled back when the new
// configuration does not start); history with diffs. Form changes are
// sent as an ordered list of edits against the file's version.
"use strict";

Object.assign(T["zh-CN"], {
  cfg_forms: "表单", cfg_raw: "TOML 原文", cfg_history: "历史",
  cfg_validate: "校验", cfg_apply: "应用", cfg_discard: "放弃更改", cfg_reload: "重新载入",
  cfg_comment: "变更说明（可选）", cfg_devices: "设备", cfg_points: "点位", cfg_rules: "报警规则",
  cfg_zones: "防区", cfg_cameras: "摄像机", cfg_channels: "推送通道",
  cfg_add_point: "添加点位", cfg_add_rule: "添加规则", cfg_remove: "删除",
  cfg_pending: "未应用的更改：", cfg_none_pending: "没有未应用的更改",
  cfg_valid: "校验通过", cfg_invalid: "配置有问题，未应用；运行中的配置未改变",
  cfg_applied: "已应用并重新载入", cfg_unchanged: "没有变化",
  cfg_rolled_back: "新配置未能启动，已自动回滚到之前的配置（文件已恢复）：",
  cfg_needs_restart: "这些更改需要重启网关，未应用（文件已恢复）：",
  cfg_failed: "应用失败：", cfg_stale: "配置文件已被他人修改，请重新载入后再改",
  cfg_line: "行", cfg_secret_note: "密钥只可写入：不会显示；网址中的凭据显示为 ***",
  cfg_file_differs: "磁盘上的文件与运行中的配置不同（在网页之外修改过）",
  cfg_diff: "差异", cfg_by: "操作人", cfg_summary: "摘要", cfg_version: "版本",
  cfg_raw_dirty: "原文已修改：请先应用或放弃，再使用表单", cfg_restarted: "重启：",
  cfg_new_id: "新编号", cfg_yes: "是", cfg_no: "否", cfg_unset: "（未设置）",
  cfg_file_before: "页面修改之前的文件",
  cfg_partly: "请先修正标出的问题再校验：文件的语法和类型都正确之后才会检查各项取值，修正后可能还会出现其他问题。",
});
Object.assign(T["en"], {
  cfg_forms: "Forms", cfg_raw: "TOML text", cfg_history: "History",
  cfg_validate: "Validate", cfg_apply: "Apply", cfg_discard: "Discard changes", cfg_reload: "Reload",
  cfg_comment: "What and why (optional)", cfg_devices: "Devices", cfg_points: "Points", cfg_rules: "Alarm rules",
  cfg_zones: "Zones", cfg_cameras: "Cameras", cfg_channels: "Push channels",
  cfg_add_point: "Add point", cfg_add_rule: "Add rule", cfg_remove: "Remove",
  cfg_pending: "Changes not applied yet:", cfg_none_pending: "No pending changes",
  cfg_valid: "Valid", cfg_invalid: "The configuration has problems; nothing applied, the running configuration is unchanged",
  cfg_applied: "Applied and reloaded", cfg_unchanged: "Nothing changed",
  cfg_rolled_back: "The new configuration did not start; rolled back to the previous one (file restored):",
  cfg_needs_restart: "These changes need a restart of the gateway; not applied (file restored):",
  cfg_failed: "Apply failed:", cfg_stale: "The file was changed by someone else: reload it and make your change again",
  cfg_line: "line", cfg_secret_note: "Secrets are write-only: never shown; credentials in URLs show as ***",
  cfg_file_differs: "The file on disk differs from the running configuration (changed outside the page)",
  cfg_diff: "Diff", cfg_by: "By", cfg_summary: "Summary", cfg_version: "Version",
  cfg_raw_dirty: "The text was edited: apply or discard it before using the forms", cfg_restarted: "Restarted:",
  cfg_new_id: "new id", cfg_yes: "yes", cfg_no: "no", cfg_unset: "(not set)",
  cfg_file_before: "the file before changes from the page",
  cfg_partly: "Fix the problems marked, then validate again: the values are checked once the file's syntax and types are right, so more problems may show up then.",
});

// Keys shown for each kind of entry (others present in the file are shown
// too); how their values are typed.
const CFG_KEYS = {
  device: ["id", "name", "zone", "category", "enabled", "life_safety", "poll_interval_s", "timeout_s", "offline_after", "profile"],
  point: ["id", "name", "register", "address", "type", "bit", "scale", "offset", "unit", "deadband", "zone", "telemetry", "writable"],
  rule: ["id", "point", "equals", "high", "low", "hysteresis", "on_delay_s", "off_delay_s", "priority", "category", "zone", "message", "latching", "when_disarmed", "cameras", "tamper"],
  zone: ["id", "name", "armed_at_start"],
  camera: ["id", "name", "zone", "url", "username", "transport", "video_loss_s", "pre_s", "post_s", "pre_buffer_bytes", "enabled"],
  channel: ["name", "kind", "url", "format", "language", "rate_per_minute", "storm_threshold", "storm_window_s"],
};
const CFG_BOOL = new Set(["enabled", "life_safety", "telemetry", "writable", "latching", "armed_at_start", "tamper"]);
const CFG_NUM = new Set(["poll_interval_s", "timeout_s", "offline_after", "address", "bit", "scale", "offset", "deadband",
  "high", "low", "hysteresis", "on_delay_s", "off_delay_s", "priority", "video_loss_s", "pre_s", "post_s",
  "pre_buffer_bytes", "rate_per_minute", "storm_threshold", "storm_window_s", "port", "unit", "backoff_max_s"]);
const CFG_LIST = new Set(["cameras", "channels", "tiers", "days"]);

const cfg = {
  file: null,      // GET /config/file
  model: null,     // the model shown (file + edits)
  edits: [],       // ordered edits not applied yet
  tab: "forms",
  rawDirty: false,
  rawText: "",
  problems: [],
  partly: false,   // the problems are syntax or type errors: values not checked yet
  banner: null,    // {cls, text}
};

function cfgValueOf(key, input) {
  const raw = input.type === "checkbox" ? input.checked : input.value;
  if (input.tagName === "SELECT") {
    if (raw === "") return null;
    if (raw === "true" || raw === "false") return raw === "true";
    return raw;
  }
  const s = String(raw).trim();
  if (s === "") return null;
  if (CFG_LIST.has(key)) return s.split(",").map((x) => x.trim()).filter((x) => x !== "");
  if (CFG_NUM.has(key)) {
    const n = Number(s);
    return Number.isFinite(n) ? n : s; // a non-number is left to validation, which names the field
  }
  if (key === "equals") {
    if (s === "true" || s === "false") return s === "true";
    const n = Number(s);
    return Number.isFinite(n) ? n : s;
  }
  return s;
}

function cfgField(path, key, value) {
  const p = esc(path);
  const label = `<span>${esc(key)}</span>`;
  let input;
  if (CFG_BOOL.has(key) || typeof value === "boolean") {
    const v = value === true ? "true" : value === false ? "false" : "";
    input = `<select data-path="${p}" data-key="${esc(key)}">
      <option value=""${v === "" ? " selected" : ""}>${esc(t("cfg_unset"))}</option>
      <option value="true"${v === "true" ? " selected" : ""}>${esc(t("cfg_yes"))}</option>
      <option value="false"${v === "false" ? " selected" : ""}>${esc(t("cfg_no"))}</option></select>`;
  } else {
    const shown = Array.isArray(value) ? value.join(", ") : value === undefined || value === null ? "" : String(value);
    const mode = CFG_NUM.has(key) ? ' inputmode="decimal"' : "";
    input = `<input data-path="${p}" data-key="${esc(key)}" value="${esc(shown)}"${mode} autocomplete="off">`;
  }
  return `<label class="cfg-field" data-field="${p}">${label}${input}<small class="field-error" role="alert"></small></label>`;
}

// Scalar (and scalar-list) fields of one entry; nested tables one level
// down (a device's `modbus`, a camera's `password` source).
function cfgFields(path, obj, kind) {
  const keys = [...(CFG_KEYS[kind] || [])];
  for (const k of Object.keys(obj)) if (!keys.includes(k)) keys.push(k);
  let html = "";
  let nested = "";
  for (const k of keys) {
    const v = obj[k];
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      nested += `<fieldset class="cfg-nested" data-path="${esc(path + "." + k)}"><legend>${esc(k)}</legend>
        <div class="cfg-grid">${Object.keys(v).filter((kk) => typeof v[kk] !== "object" || Array.isArray(v[kk]))
          .map((kk) => cfgField(`${path}.${k}.${kk}`, kk, v[kk])).join("")}</div></fieldset>`;
    } else if (Array.isArray(v) && v.some((x) => x !== null && typeof x === "object")) {
      continue; // lists of tables: their own sections (points) or the TOML text
    } else {
      html += cfgField(`${path}.${k}`, k, v);
    }
  }
  return `<div class="cfg-grid">${html}</div>${nested}`;
}

function cfgEntry(path, obj, kind, title, extra = "") {
  return `<details class="cfg-entry" data-path="${esc(path)}" open>
    <summary><strong>${esc(title)}</strong> <small>${esc(path)}</small>
      <button type="button" class="secondary cfg-remove" data-remove="${esc(path)}">${esc(t("cfg_remove"))}</button></summary>
    <small class="field-error entry-error" role="alert"></small>
    ${cfgFields(path, obj, kind)}${extra}</details>`;
}

function cfgAddForm(path, kind) {
  const fields = kind === "point"
    ? [["id", ""], ["register", "coil"], ["address", ""]]
    : [["point", ""], ["equals", "true"], ["priority", "3"], ["message", ""]];
  return `<form class="cfg-add" data-add="${esc(path)}" data-kind="${kind}"><div class="cfg-grid">
    ${fields.map(([k, v]) => `<label class="cfg-field"><span>${esc(k)}</span><input name="${k}" value="${esc(v)}" autocomplete="off"></label>`).join("")}
    </div><button type="submit" class="secondary">${esc(t(kind === "point" ? "cfg_add_point" : "cfg_add_rule"))}</button></form>`;
}

function cfgRenderForms(body) {
  const m = cfg.model || {};
  if (cfg.rawDirty) { body.innerHTML = `<p class="cfg-note">${esc(t("cfg_raw_dirty"))}</p>`; return; }
  const devices = (m.devices || []).map((d, i) => {
    const dp = `devices[${i}]`;
    const points = (d.points || []).map((p, j) => cfgEntry(`${dp}.points[${j}]`, p, "point", p.id || `#${j}`)).join("");
    return cfgEntry(dp, d, "device", d.name ? `${d.id} · ${d.name}` : d.id || dp,
      `<h4>${esc(t("cfg_points"))}</h4><div class="cfg-points">${points}</div>${cfgAddForm(dp + ".points", "point")}`);
  }).join("");
  const rules = (m.alarms || []).map((r, i) => cfgEntry(`alarms[${i}]`, r, "rule", r.id || r.point || `#${i}`)).join("");
  const zones = ((m.arming || {}).zones || []).map((z, i) => cfgEntry(`arming.zones[${i}]`, z, "zone", z.id)).join("");
  const cams = (m.cameras || []).map((c, i) => cfgEntry(`cameras[${i}]`, c, "camera", c.id)).join("");
  const chans = ((m.push || {}).channels || []).map((c, i) => cfgEntry(`push.channels[${i}]`, c, "channel", c.name)).join("");
  const section = (k, html, more = "") => `<section class="cfg-section"><h2>${esc(t(k))}</h2>${html}${more}</section>`;
  body.innerHTML = `<div id="cfg-forms">
    ${section("cfg_devices", devices)}
    ${section("cfg_rules", rules, cfgAddForm("alarms", "rule"))}
    ${zones ? section("cfg_zones", zones) : ""}
    ${cams ? section("cfg_cameras", cams) : ""}
    ${chans ? section("cfg_channels", chans) : ""}</div>`;
  for (const inp of body.querySelectorAll("[data-path][data-key]")) {
    inp.addEventListener("change", () => {
      const path = inp.dataset.path;
      const value = cfgValueOf(inp.dataset.key, inp);
      // A later edit of the same key replaces the earlier one when nothing
      // structural happened in between.
      const last = cfg.edits[cfg.edits.length - 1];
      if (last && last.op === "set" && last.path === path) cfg.edits.pop();
      cfg.edits.push({ op: "set", path, value });
      cfgPending();
    });
  }
  for (const b of body.querySelectorAll("button.cfg-remove")) {
    b.addEventListener("click", async (ev) => {
      ev.preventDefault();
      cfg.edits.push({ op: "remove", path: b.dataset.remove });
      await cfgValidate(true);
    });
  }
  for (const f of body.querySelectorAll("form.cfg-add")) {
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const value = {};
      for (const inp of f.querySelectorAll("input")) {
        const v = cfgValueOf(inp.name, inp);
        if (v !== null) value[inp.name] = v;
      }
      cfg.edits.push({ op: "add", path: f.dataset.add, value });
      await cfgValidate(true);
    });
  }
  cfgShowProblems();
}

function cfgRenderRaw(body) {
  body.innerHTML = `<p class="cfg-note">${esc(t("cfg_secret_note"))}</p>
    <textarea id="cfg-text" spellcheck="false" autocapitalize="off" autocomplete="off"></textarea>`;
  const ta = $("#cfg-text", body);
  ta.value = cfg.rawText;
  ta.addEventListener("input", () => { cfg.rawText = ta.value; cfg.rawDirty = true; cfgPending(); });
  cfgShowProblems();
}

// Whether the configuration view is still on the page: a request can
// finish after the user (or the login flow) moved to another view, and
// its answer must then update the model only, not the missing elements.
const cfgMounted = () => !!document.getElementById("config-edit");

async function cfgRenderHistory(body) {
  const r = await api("GET", "/config/history");
  if (!body.isConnected) return;
  if (!r.ok) { body.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  const vs = r.data.versions || [];
  body.innerHTML = `<table id="cfg-history"><thead><tr><th>${esc(t("cfg_version"))}</th><th>${esc(t("time"))}</th><th>${esc(t("cfg_by"))}</th><th>${esc(t("cfg_summary"))}</th><th></th></tr></thead><tbody>
    ${vs.map((v) => `<tr data-id="${v.id}"><td data-label="${esc(t("cfg_version"))}">#${v.id}</td>
      <td data-label="${esc(t("time"))}">${esc(new Date(v.ts).toLocaleString(lang))}</td>
      <td data-label="${esc(t("cfg_by"))}">${esc(v.user || "—")}</td>
      <td data-label="${esc(t("cfg_summary"))}">${esc(v.user ? v.summary : t("cfg_file_before"))}</td>
      <td><button type="button" class="secondary cfg-diff" data-id="${v.id}">${esc(t("cfg_diff"))}</button></td></tr>`).join("")}
    </tbody></table><div id="cfg-diff"></div>`;
  for (const b of body.querySelectorAll("button.cfg-diff")) {
    b.addEventListener("click", async () => {
      const d = await api("GET", `/config/history/${b.dataset.id}/diff`);
      const out = $("#cfg-diff", body);
      if (!d.ok) { out.innerHTML = `<p class="error">${esc(d.data.error)}</p>`; return; }
      const lines = (d.data.diff || "").split("\n").map((l) => {
        const cls = l.startsWith("+++") || l.startsWith("---") ? "hdr" : l.startsWith("@@") ? "hunk"
          : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "";
        return `<span class="${cls}">${esc(l)}</span>`;
      }).join("\n");
      out.innerHTML = `<h3>#${esc(d.data.previous ?? "—")} → #${esc(d.data.id)}</h3><pre class="diff" id="cfg-diff-text">${lines}</pre>`;
    });
  }
}

function cfgPending() {
  const el = $("#cfg-pending");
  if (!el) return;
  if (cfg.tab === "raw") { el.textContent = cfg.rawDirty ? t("cfg_pending") + " TOML" : t("cfg_none_pending"); return; }
  el.textContent = cfg.edits.length ? `${t("cfg_pending")} ${cfg.edits.length}` : t("cfg_none_pending");
  el.title = cfg.edits.map((e) => `${e.op} ${e.path}${e.op === "set" ? " = " + JSON.stringify(e.value) : ""}`).join("\n");
}

function cfgSetBanner(cls, text) {
  cfg.banner = cls ? { cls, text } : null;
  const b = $("#cfg-banner");
  if (!b) return;
  b.className = "cfg-banner " + (cls || "");
  b.textContent = text || "";
  b.hidden = !cls;
}

// Problems next to their field (or the closest entry shown), the rest in
// the list above the editor with their line.
function cfgShowProblems() {
  const view = $("#config-edit");
  if (!view) return;
  for (const e of view.querySelectorAll(".field-error")) e.textContent = "";
  for (const e of view.querySelectorAll(".invalid")) e.classList.remove("invalid");
  const rest = [];
  for (const p of cfg.problems) {
    let placed = false;
    if (cfg.tab === "forms") {
      let key = p.key;
      while (key && !placed) {
        const field = view.querySelector(`[data-field="${CSS.escape(key)}"]`);
        const entry = field ? null : view.querySelector(`details[data-path="${CSS.escape(key)}"]`);
        const target = field || entry;
        if (target) {
          const err = field ? $(".field-error", field) : $(".entry-error", entry);
          err.textContent = (err.textContent ? err.textContent + "; " : "") + p.message;
          target.classList.add("invalid");
          if (entry) entry.open = true;
          placed = true;
        }
        // Not shown: try the enclosing key (`devices[0].modbus.port` → `devices[0].modbus`).
        const cut = Math.max(key.lastIndexOf("."), key.lastIndexOf("["));
        key = cut > 0 ? key.slice(0, cut) : "";
      }
    }
    if (!placed) rest.push(p);
  }
  const list = $("#cfg-problems");
  list.innerHTML = rest.map((p) => `<li data-key="${esc(p.key)}">${p.line ? `${esc(t("cfg_line"))} ${p.line}: ` : ""}<code>${esc(p.key)}</code> ${esc(p.message)}</li>`).join("")
    + (cfg.partly && cfg.problems.length ? `<li class="cfg-hint">${esc(t("cfg_partly"))}</li>` : "");
  const first = view.querySelector(".invalid");
  if (first && first.scrollIntoView) first.scrollIntoView({ block: "center" });
}

function cfgChange() {
  if (cfg.tab === "raw" || cfg.rawDirty) return { text: cfg.rawText };
  return { edits: cfg.edits };
}

// Validate the pending change. `rerender`: structural edits changed the
// entries, draw the forms again from the resulting model.
async function cfgValidate(rerender) {
  const r = await api("POST", "/config/validate", { version: cfg.file.version, ...cfgChange() });
  if (!cfgMounted()) return false;
  if (r.status === 409) { cfgSetBanner("warn", t("cfg_stale")); return false; }
  if (!r.ok) { cfgSetBanner("bad", r.data.error || String(r.status)); return false; }
  cfg.problems = r.data.problems || [];
  cfg.partly = r.data.partly_checked === true;
  if (r.data.model) cfg.model = r.data.model;
  if (r.data.text !== undefined && !cfg.rawDirty) cfg.rawText = r.data.text;
  if (rerender && cfg.tab === "forms") cfgRenderForms($("#cfg-body"));
  cfgShowProblems();
  cfgPending();
  cfgSetBanner(r.data.ok ? "good" : "bad", r.data.ok ? t("cfg_valid") : t("cfg_invalid"));
  return r.data.ok;
}

// One apply in flight at a time: a double click must not send the change
// twice (the second would be refused as stale and hide the outcome).
async function cfgApply() {
  if (cfg.applying) return;
  cfg.applying = true;
  const btn = $("#cfg-apply");
  if (btn) btn.disabled = true;
  try {
    await cfgApplyOnce();
  } finally {
    cfg.applying = false;
    const b = $("#cfg-apply");
    if (b) b.disabled = false;
  }
}

async function cfgApplyOnce() {
  const comment = $("#cfg-comment").value;
  const r = await api("POST", "/config/apply", { version: cfg.file.version, comment, ...cfgChange() });
  const d = r.data;
  if (r.ok) {
    const restarted = (d.restarted || []).length ? ` · ${t("cfg_restarted")} ${d.restarted.join(", ")}` : "";
    await cfgLoad();
    if (!cfgMounted()) return;
    $("#cfg-comment").value = "";
    cfgSetBanner("good", d.applied ? `${t("cfg_applied")} (#${d.history_id ?? "?"})${restarted}` : t("cfg_unchanged"));
    return;
  }
  if (r.status === 422) {
    cfg.problems = d.problems || [];
    cfg.partly = d.partly_checked === true;
    cfgShowProblems();
    cfgSetBanner("bad", t("cfg_invalid"));
  } else if (d.stale) {
    cfgSetBanner("warn", t("cfg_stale"));
  } else if (d.outcome === "rolled_back") {
    cfgSetBanner("bad", `${t("cfg_rolled_back")} ${d.error}`);
  } else if (d.outcome === "needs_restart") {
    cfgSetBanner("warn", `${t("cfg_needs_restart")} ${d.error}`);
  } else {
    cfgSetBanner("bad", `${t("cfg_failed")} ${d.error || r.status}`);
  }
  document.body.dataset.cfgOutcome = d.outcome || (d.stale ? "stale" : String(r.status));
}

async function cfgLoad() {
  const r = await api("GET", "/config/file");
  if (!r.ok) return r;
  cfg.file = r.data;
  cfg.model = r.data.model;
  cfg.rawText = r.data.text;
  cfg.rawDirty = false;
  cfg.edits = [];
  cfg.problems = r.data.problems || [];
  cfg.partly = r.data.partly_checked === true;
  if (!cfgMounted()) return r;
  cfgTab(cfg.tab);
  $("#cfg-differs").hidden = r.data.running_matches_file !== false;
  document.body.dataset.cfgVersion = r.data.version;
  return r;
}

function cfgTab(name) {
  cfg.tab = name;
  for (const b of document.querySelectorAll(".cfg-tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  const body = $("#cfg-body");
  const editing = name !== "history";
  $("#cfg-actions").hidden = !editing;
  if (name === "forms") cfgRenderForms(body);
  else if (name === "raw") cfgRenderRaw(body);
  else cfgRenderHistory(body);
  cfgPending();
}

async function viewConfigEdit(el) {
  el.innerHTML = `<div id="config-edit"><h1>${esc(t("nav_config"))}</h1>
    <div class="cfg-tabs" role="tablist">
      <button type="button" data-tab="forms" class="secondary">${esc(t("cfg_forms"))}</button>
      <button type="button" data-tab="raw" class="secondary">${esc(t("cfg_raw"))}</button>
      <button type="button" data-tab="history" class="secondary">${esc(t("cfg_history"))}</button>
    </div>
    <p class="cfg-banner warn" id="cfg-differs" hidden>${esc(t("cfg_file_differs"))}</p>
    <p id="cfg-banner" class="cfg-banner" role="status" hidden></p>
    <ul id="cfg-problems" class="cfg-problems"></ul>
    <div id="cfg-body"></div>
    <div id="cfg-actions" class="cfg-actions">
      <span id="cfg-pending" class="cfg-note"></span>
      <input id="cfg-comment" maxlength="200" placeholder="${esc(t("cfg_comment"))}">
      <button type="button" id="cfg-validate" class="secondary">${esc(t("cfg_validate"))}</button>
      <button type="button" id="cfg-apply">${esc(t("cfg_apply"))}</button>
      <button type="button" id="cfg-discard" class="secondary">${esc(t("cfg_discard"))}</button>
    </div></div>`;
  for (const b of el.querySelectorAll(".cfg-tabs button")) b.addEventListener("click", () => cfgTab(b.dataset.tab));
  $("#cfg-validate", el).addEventListener("click", () => cfgValidate(false));
  $("#cfg-apply", el).addEventListener("click", cfgApply);
  $("#cfg-discard", el).addEventListener("click", async () => { cfgSetBanner(null); await cfgLoad(); });
  // Pending form edits survive a redraw (language switch, navigation)
  // while the file is still the version they were made against.
  const keep = cfg.file && cfg.edits.length ? { version: cfg.file.version, edits: cfg.edits } : null;
  const r = await cfgLoad();
  if (!cfgMounted()) return;
  if (!r.ok) { el.innerHTML = `<p class="error">${esc(r.data.error)}</p>`; return; }
  if (keep && keep.version === cfg.file.version) {
    cfg.edits = keep.edits;
    await cfgValidate(true);
  } else if (cfg.banner) {
    cfgSetBanner(cfg.banner.cls, cfg.banner.text);
  }
}

VIEWS.config = viewConfigEdit;
