// One headless chromium for the browser tests: Debian's binary (or
// $CHROMIUM), a fresh profile directory that is removed when the script
// exits (however it exits), and the `fail` that every script reports
// through (prints "FAIL <why>", closes the browser, exits 1).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const say = (s) => process.stdout.write(s + "\n");

export async function launch({ height = 800, extraArgs = [] } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), "gw-chromium-"));
  process.on("exit", () => rmSync(userDataDir, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
      ...extraArgs,
    ],
    viewport: { width: 1280, height },
  });
  const fail = async (msg) => {
    say("FAIL " + msg);
    await context.close().catch(() => {});
    process.exit(1);
  };
  return { context, fail };
}
