// Drives Debian's headless chromium through the cameras, alarm-clip,
// "read now" and system pages for tests/web_pages_browser.rs. Protocol on
// stdout, one line each:
//   DASH <text>            the dashboard's cameras card
//   CAMERAS <state>        the cameras page shows the camera and its state
//   VIDEO <readyState>     the clip player loaded the clip (≥ 1: metadata)
//   ALARMCLIP <id>         the console shows the alarm's clip, and it plays
//   PROBE <text>           "read now" of the device: supply-temp's value cell
//   PROBEERR <text>        "read now" of the device nobody answers for
//   SYSTEM <backlog>       the system page: the uplink sink's backlog
//   WIDTH <page> <px>      document width at a 375 px viewport
//   LANG <nav>             English: the system page's nav text
//   DONE                   screenshots saved
// Anything else is diagnostics. Exit code 0 only when every step passed.
//
// Usage: node pages.mjs URL TECH TECH_PW CLIP_ID SHOTS_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, say } from "./launch.mjs";

const [url, tech, techPw, clipId, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });

const { context, fail } = await launch({ extraArgs: ["--autoplay-policy=no-user-gesture-required"] });
const timer = setTimeout(() => fail("timed out"), 120_000);
const shot = (page, name) => page.screenshot({ path: join(shots, name), fullPage: true });

async function videoLoads(page, what) {
  await page.waitForSelector("#clip-player:not([hidden])");
  const rs = await page.waitForFunction(() => {
    const v = document.querySelector("#clip-video");
    if (v.error) return "error " + v.error.code;
    return v.readyState >= 1 ? String(v.readyState) : null;
  }, null, { timeout: 20_000 }).then((h) => h.jsonValue());
  if (rs.startsWith("error")) await fail(`${what}: video ${rs}`);
  return rs;
}

try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => say("console: " + m.text()));
  page.on("pageerror", (e) => say("pageerror: " + e.message));
  await page.goto(url);
  await page.waitForSelector("#login-form", { state: "visible" });
  await page.fill("#login-name", tech);
  await page.fill("#login-password", techPw);
  await page.click("#login-submit");
  await page.waitForSelector("#top:not([hidden])");

  // Dashboard: the cameras card.
  await page.goto(url + "#/dashboard");
  await page.waitForSelector("#dash-cameras");
  say("DASH " + (await page.textContent("#dash-cameras .v")).trim());
  await shot(page, "p01-dashboard.png");

  // Cameras: health and clips; the alarm's clip plays.
  await page.goto(url + "#/cameras");
  await page.waitForSelector('.camera[data-camera="cam-gate"]');
  await page.waitForFunction(() => document.querySelector(".cam-state").textContent.trim().length > 0);
  say("CAMERAS " + (await page.textContent('.camera[data-camera="cam-gate"] .cam-state')).trim());
  await page.waitForSelector(`a.clip-link[data-clip="${clipId}"]`);
  await shot(page, "p02-cameras.png");
  await page.click(`a.clip-link[data-clip="${clipId}"]`);
  say("VIDEO " + (await videoLoads(page, "cameras page")));
  await shot(page, "p03-clip-player.png");
  await page.click("#clip-close");

  // The console: the alarm carries its clip.
  await page.goto(url + "#/alarms");
  const link = `.alarm-clips a.clip-link[data-clip="${clipId}"]`;
  await page.waitForSelector(link, { timeout: 20_000 });
  await shot(page, "p04-console-clip.png");
  await page.click(link);
  await videoLoads(page, "console");
  say("ALARMCLIP " + clipId);
  await shot(page, "p05-console-player.png");
  await page.click("#clip-close");

  // Devices: read now.
  await page.goto(url + "#/devices");
  await page.click('button.probe-btn[data-device="meter"]');
  const cell = '.probe[data-probe="meter"] tr[data-probe-point="supply-temp"] .probe-value';
  await page.waitForSelector(cell);
  say("PROBE " + (await page.textContent(cell)).trim());
  await page.click('button.probe-btn[data-device="ghost"]');
  await page.waitForSelector('.probe[data-probe="ghost"] .probe-error', { timeout: 15_000 });
  say("PROBEERR " + (await page.textContent('.probe[data-probe="ghost"] .probe-error')).trim());
  // The results survive the page's 2 s refresh.
  await page.waitForTimeout(2500);
  await page.waitForSelector(cell);
  await shot(page, "p06-devices-probe.png");

  // System.
  await page.goto(url + "#/system");
  await page.waitForSelector('#sys-sinks tr[data-sink="uplink"]');
  await page.waitForSelector("#sys-logs .log");
  say("SYSTEM " + (await page.textContent('#sys-sinks tr[data-sink="uplink"] .backlog')).trim());
  await shot(page, "p07-system.png");

  // Phone width: nothing wider than the screen.
  await page.setViewportSize({ width: 375, height: 812 });
  for (const [view, ready, name] of [
    ["dashboard", "#dash-cameras", "p08-phone-dashboard.png"],
    ["cameras", '.camera[data-camera="cam-gate"]', "p09-phone-cameras.png"],
    ["alarms", link, "p10-phone-console.png"],
    ["devices", 'button.probe-btn[data-device="meter"]', "p11-phone-devices.png"],
    ["system", "#sys-logs .log", "p12-phone-system.png"],
  ]) {
    await page.goto(url + "#/" + view);
    await page.waitForSelector(ready);
    if (view === "devices") {
      await page.click('button.probe-btn[data-device="meter"]');
      await page.waitForSelector(cell);
    }
    const w = await page.evaluate(() => document.documentElement.scrollWidth);
    say(`WIDTH ${view} ${w}`);
    await shot(page, name);
  }
  await page.goto(url + "#/cameras");
  await page.waitForSelector(`a.clip-link[data-clip="${clipId}"]`);
  await page.click(`a.clip-link[data-clip="${clipId}"]`);
  await videoLoads(page, "phone");
  await shot(page, "p13-phone-player.png");
  await page.click("#clip-close");

  // English.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(url + "#/system");
  await page.waitForSelector("#sys-logs .log");
  await page.click("#lang");
  await page.waitForFunction(() => document.documentElement.lang === "en");
  await page.waitForSelector("#sys-logs .log");
  say("LANG " + (await page.textContent('nav a[href="#/system"]')).trim());
  await shot(page, "p14-system-en.png");
  await page.goto(url + "#/cameras");
  await page.waitForSelector('.camera[data-camera="cam-gate"]');
  await shot(page, "p15-cameras-en.png");
  // Back to Chinese for the next run of the account.
  await page.click("#lang");
  await page.waitForFunction(() => document.documentElement.lang === "zh-CN");

  clearTimeout(timer);
  say("DONE");
  await context.close();
} catch (e) {
  await fail(String(e && e.stack || e));
}
