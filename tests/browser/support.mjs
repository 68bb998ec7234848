// What the browser suites share: launching Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through
// playwright-core, and pages that leave a screenshot behind when their test fails.
//
// On a failure the page's screenshot is written as a PNG (under SCREENSHOT_DIR, default the system's temporary
// directory) and printed to the test log twice: its path, and a base64 copy, so that a CI log keeps it even
// when the machine's files are gone (decode with `base64 -d > failure.png`). The page's console output follows.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const WAIT_MS = 15_000;

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * Runs `body(page, console)` on a new page of `browser` (in a context of its own: its own sessionStorage),
 * closing it afterwards. `console` collects the page's console messages and uncaught errors. If `body` throws,
 * a screenshot named after `name` is kept and printed (see above) before the error is rethrown.
 */
export async function withPage(browser, name, body, { viewport } = {}) {
  const context = await browser.newContext(viewport ? { viewport } : {});
  const page = await context.newPage();
  const console = [];
  page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));
  try {
    return await body(page, console);
  } catch (err) {
    await keepScreenshot(page, name, console);
    throw err;
  } finally {
    await context.close();
  }
}

async function keepScreenshot(page, name, console) {
  const dir = process.env.SCREENSHOT_DIR ?? join(tmpdir(), 'agent-sessions-browser-failures');
  const path = join(dir, `${name.replace(/[^A-Za-z0-9._-]+/g, '-')}-${Date.now()}.png`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(path, await page.screenshot({ fullPage: true, timeout: 5_000 }));
  } catch (err) {
    process.stderr.write(`# screenshot of "${name}" failed: ${err.message}\n`);
    return;
  }
  const lines = [
    `# FAILED "${name}": screenshot at ${path}`,
    `# page URL: ${page.url()}`,
    ...console.map((line) => `# console ${line}`),
    `# screenshot base64 (PNG) begins`,
    readFileSync(path).toString('base64'),
    `# screenshot base64 ends`,
  ];
  process.stderr.write(`${lines.join('\n')}\n`);
}
