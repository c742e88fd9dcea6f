// Drives Debian's headless chromium through the gateway's page for
// tests/web_browser.rs. Protocol on stdout, one line each:
//   READY                 the guard is signed in, the console is open
//   VISIBLE <unix ms>     the alarm row appeared (after the test flipped the door)
//   BEEP <yes|no>         the audible cue for a priority 1–2 alarm played
//   TYPING                a comment is being typed (focus in its box)
//   UPDATED <state>       the row shows the alarm's new state (after the test
//                         closed, then opened the door), the comment kept
//   ACKED                 the row shows "acknowledged"
//   LANG <lang> <nav>     language switched; nav text of the console link
//   DONE                  screenshots saved
// Anything else is diagnostics. Exit code 0 only when every step passed.
//
// Usage: node console.mjs URL GUARD GUARD_PW TECH TECH_PW ALARM_KEY SHOTS_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, say } from "./launch.mjs";

const [url, guard, guardPw, tech, techPw, alarmKey, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });

const { context, fail } = await launch({ extraArgs: ["--autoplay-policy=no-user-gesture-required"] });
const timer = setTimeout(() => fail("timed out"), 90_000);

try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => say("console: " + m.text()));
  await page.goto(url);
  await page.waitForSelector("#login-form", { state: "visible" });
  await page.screenshot({ path: join(shots, "01-login.png"), fullPage: true });

  // Wrong password first: the error shows, no session.
  await page.fill("#login-name", guard);
  await page.fill("#login-password", "wrong password");
  await page.click("#login-submit");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.length > 0);

  await page.fill("#login-name", guard);
  await page.fill("#login-password", guardPw);
  await page.click("#login-submit");
  await page.waitForSelector("#dash-cards");
  const htmlLang = await page.getAttribute("html", "lang");
  if (htmlLang !== "zh-CN") await fail("default language " + htmlLang);
  await page.screenshot({ path: join(shots, "02-dashboard-zh.png"), fullPage: true });

  await page.click('a[href="#/alarms"]');
  await page.waitForFunction(() => (document.querySelector("#live-state") || {}).textContent?.startsWith("●"));
  await page.waitForSelector("#no-alarms");
  say("READY");

  const row = `tr[data-key="${alarmKey}"]`;
  await page.waitForSelector(row, { timeout: 10_000 });
  say("VISIBLE " + Date.now());
  await page.waitForTimeout(100);
  const beeped = await page.evaluate(() => document.body.dataset.lastBeep !== undefined);
  say("BEEP " + (beeped ? "yes" : "no"));
  await page.screenshot({ path: join(shots, "03-console-alarm.png"), fullPage: true });

  // A guard types a comment while the alarm changes (the test closes the
  // door, then opens it again): the console keeps updating, the comment,
  // the focus and the caret survive.
  const box = `${row} input.comment`;
  await page.click(box);
  await page.keyboard.type("正在查看 checking");
  say("TYPING");
  for (const state of ["returned_unacked", "active_unacked"]) {
    await page.waitForSelector(`${row}[data-state="${state}"]`, { timeout: 10_000 });
    const kept = await page.evaluate((sel) => {
      const i = document.querySelector(sel);
      return { value: i.value, focused: document.activeElement === i, caret: i.selectionStart };
    }, box);
    if (kept.value !== "正在查看 checking" || !kept.focused || kept.caret !== kept.value.length) {
      await fail(`comment not kept across an update to ${state}: ${JSON.stringify(kept)}`);
    }
    say("UPDATED " + state);
  }

  await page.fill(`${row} input.comment`, "保安已到场 guard on site");
  await page.click(`${row} button.ack`);
  await page.waitForSelector(`${row}[data-state="active_acked"]`, { timeout: 10_000 });
  say("ACKED");
  await page.screenshot({ path: join(shots, "04-console-acked.png"), fullPage: true });

  // Phone-sized console.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, "05-console-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });

  await page.click('a[href="#/devices"]');
  await page.waitForSelector("[data-device] tr[data-point]");
  await page.screenshot({ path: join(shots, "06-devices.png"), fullPage: true });

  // Switch to English; the choice is kept for the user.
  await page.click("#lang");
  await page.waitForFunction(() => document.documentElement.lang === "en");
  const nav = await page.textContent('a[href="#/alarms"]');
  say("LANG " + (await page.getAttribute("html", "lang")) + " " + nav);
  await page.reload();
  await page.waitForFunction(() => document.documentElement.lang === "en" && !document.querySelector("#top").hidden);
  await page.click('a[href="#/alarms"]');
  await page.waitForSelector(row);
  await page.screenshot({ path: join(shots, "07-console-en.png"), fullPage: true });
  await page.click("#logout");
  await page.waitForSelector("#login-form", { state: "visible" });

  // The technician's pages.
  await page.fill("#login-name", tech);
  await page.fill("#login-password", techPw);
  await page.click("#login-submit");
  await page.waitForSelector('nav a.tech:not([hidden])');
  for (const [view, sel, file] of [
    ["users", "#add-user", "08-users.png"],
    ["audit", "table tbody tr", "09-audit.png"],
    ["config", "#cfg-forms", "10-config.png"],
  ]) {
    await page.click(`a[href="#/${view}"]`);
    await page.waitForSelector(sel);
    await page.screenshot({ path: join(shots, file), fullPage: true });
  }
  say("DONE");
  clearTimeout(timer);
  await context.close();
  process.exit(0);
} catch (e) {
  await fail(String(e && e.stack || e).replace(/\n/g, " | "));
}
