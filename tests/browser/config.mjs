// Drives Debian's headless chromium through the page's configuration
// editor for tests/web_config_browser.rs. Protocol on stdout, one line each:
//   APPLIED               a point changed and a point added in the forms, applied
//   RUNNING <unit>        the devices page shows the new point and the changed unit
//   FIELD_ERROR <text>    a bad value was refused; the error shows at its field
//   ROLLED_BACK <text>    a configuration that cannot start was rolled back (banner)
//   HISTORY <n>           history rows; a diff shown
//   LANG <lang> <tab>     language switched; text of the forms tab
//   PHONE <scroll width>  the editor at phone width
//   DONE                  screenshots saved
// Anything else is diagnostics. Exit code 0 only when every step passed.
//
// Usage: node config.mjs URL TECH TECH_PW TAKEN_PORT SHOTS_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, say } from "./launch.mjs";

const [url, tech, techPw, takenPort, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });

const { context, fail } = await launch({ height: 900 });
const timer = setTimeout(() => fail("timed out"), 120_000);
const field = (path) => `[data-field="${path}"]`;
const input = (path) => `[data-path="${path}"][data-key]`;

try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => say("console: " + m.text()));
  page.on("pageerror", (e) => say("FAIL page error: " + e.message));
  await page.goto(url);
  await page.waitForSelector("#login-form", { state: "visible" });
  await page.fill("#login-name", tech);
  await page.fill("#login-password", techPw);
  await page.click("#login-submit");
  await page.waitForSelector("nav a.tech:not([hidden])");

  // The forms, in Chinese by default.
  await page.click('a[href="#/config"]');
  await page.waitForSelector("#cfg-forms " + input("devices[0].points[0].unit"));
  await page.screenshot({ path: join(shots, "config-01-forms-zh.png"), fullPage: true });

  // Change a point (its unit) and add one, then apply.
  await page.fill(input("devices[0].points[0].unit"), "门磁");
  await page.dispatchEvent(input("devices[0].points[0].unit"), "change");
  const add = 'form.cfg-add[data-add="devices[0].points"]';
  await page.fill(`${add} input[name="id"]`, "door-8");
  await page.fill(`${add} input[name="address"]`, "8");
  await page.click(`${add} button[type="submit"]`);
  await page.waitForSelector(input("devices[0].points[1].id"));
  // The earlier change survives the re-render.
  const unit = await page.inputValue(input("devices[0].points[0].unit"));
  if (unit !== "门磁") await fail("pending change lost: " + unit);
  await page.fill("#cfg-comment", "门7 加单位，加门8");
  const v0 = await page.evaluate(() => document.body.dataset.cfgVersion);
  // A double click sends the change once.
  let applies = 0;
  const countApply = (req) => {
    if (req.method() === "POST" && req.url().endsWith("/api/v1/config/apply")) applies += 1;
  };
  page.on("request", countApply);
  await page.dblclick("#cfg-apply");
  await page.waitForFunction((v) => document.body.dataset.cfgVersion !== v, v0);
  await page.waitForSelector("#cfg-banner.good");
  page.off("request", countApply);
  if (applies !== 1) await fail(`a double click sent ${applies} applies`);
  await page.screenshot({ path: join(shots, "config-02-applied.png"), fullPage: true });
  say("APPLIED");

  // Running: the devices page shows it.
  await page.click('a[href="#/devices"]');
  await page.waitForSelector('[data-device] tr[data-point="door-8"] td.q-good', { timeout: 20_000 });
  const cell = await page.textContent('[data-device] tr[data-point="door-7"] td.value');
  say("RUNNING " + cell.trim());
  await page.screenshot({ path: join(shots, "config-03-devices.png"), fullPage: true });

  // A bad value: refused, shown at its field.
  await page.click('a[href="#/config"]');
  await page.waitForSelector(input("devices[0].points[0].address"));
  const v1 = await page.evaluate(() => document.body.dataset.cfgVersion);
  await page.fill(input("devices[0].points[0].address"), "70000");
  await page.dispatchEvent(input("devices[0].points[0].address"), "change");
  await page.click("#cfg-apply");
  const errSel = `${field("devices[0].points[0].address")}.invalid .field-error`;
  await page.waitForSelector(errSel);
  const err = await page.textContent(errSel);
  const still = await page.evaluate(() => document.body.dataset.cfgVersion);
  if (still !== v1) await fail("version changed after a refused apply");
  // A type error: the page says the values are checked once it is fixed.
  await page.waitForSelector("#cfg-problems li.cfg-hint");
  await page.screenshot({ path: join(shots, "config-04-field-error.png"), fullPage: true });
  say("FIELD_ERROR " + err.trim());
  await page.click("#cfg-discard");
  await page.waitForFunction(() => !document.querySelector(".cfg-field.invalid"));

  // The raw editor: a change that cannot start is rolled back.
  await page.click('.cfg-tabs button[data-tab="raw"]');
  await page.waitForSelector("#cfg-text");
  const text = await page.inputValue("#cfg-text");
  await page.fill("#cfg-text", `${text}\n[site_broker.embedded]\nlisten = "127.0.0.1:${takenPort}"\n`);
  await page.click("#cfg-apply");
  await page.waitForFunction(() => document.body.dataset.cfgOutcome === "rolled_back");
  const banner = await page.textContent("#cfg-banner");
  await page.screenshot({ path: join(shots, "config-05-rolled-back.png"), fullPage: true });
  say("ROLLED_BACK " + banner.trim());
  await page.click("#cfg-discard");

  // History with a diff.
  await page.click('.cfg-tabs button[data-tab="history"]');
  await page.waitForSelector("#cfg-history tbody tr");
  const rows = await page.$$eval("#cfg-history tbody tr", (r) => r.length);
  await page.click("#cfg-history tbody tr:first-child button.cfg-diff");
  await page.waitForSelector("#cfg-diff-text .add");
  await page.screenshot({ path: join(shots, "config-06-history.png"), fullPage: true });
  say("HISTORY " + rows);

  // English; a pending change survives the redraw.
  await page.click('.cfg-tabs button[data-tab="forms"]');
  await page.waitForSelector(input("alarms[0].message"));
  await page.fill(input("alarms[0].message"), "门7被强行打开");
  await page.dispatchEvent(input("alarms[0].message"), "change");
  await page.click("#lang");
  await page.waitForFunction(() => document.documentElement.lang === "en");
  await page.waitForSelector("#cfg-forms");
  await page.waitForFunction(() => /1$/.test(document.querySelector("#cfg-pending").textContent));
  const kept = await page.inputValue(input("alarms[0].message"));
  if (kept !== "门7被强行打开") await fail("pending change lost on language switch: " + kept);
  const tab = await page.textContent('.cfg-tabs button[data-tab="forms"]');
  say("LANG " + (await page.getAttribute("html", "lang")) + " " + tab.trim());
  await page.screenshot({ path: join(shots, "config-07-forms-en.png"), fullPage: true });

  // Phone width: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: join(shots, "config-08-phone.png"), fullPage: true });
  say("PHONE " + width);

  say("DONE");
  clearTimeout(timer);
  await context.close();
  process.exit(0);
} catch (e) {
  await fail(String(e && e.stack || e).replace(/\n/g, " | "));
}
