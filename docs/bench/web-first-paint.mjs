// The web client's start, measured in Debian's Chromium (docs/bench/web.sh runs it):
//
//     node docs/bench/web-first-paint.mjs SIGN_IN_LINK LOADS
//
// One load warms the edge (its caches, the workspace), then LOADS loads in fresh browser
// contexts — no cache, no service worker, like a first visit — and LOADS reloads of one page
// (the browser revalidates every file: 304s). For each, the time from navigation start to the
// client's `selvage-first-messages` mark (the first message list on screen), and the bytes of
// JavaScript and CSS the page loaded (uncompressed). Prints one JSON report.

import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || new URL('../../web/tests/node_modules/playwright-core', import.meta.url).pathname);

const [link, loadsArg] = process.argv.slice(2);
if (!link) {
  console.error('usage: node web-first-paint.mjs SIGN_IN_LINK [LOADS]');
  process.exit(2);
}
const loads = Number(loadsArg || 20);

const browser = await chromium.launch({
  executablePath: process.env.SELVAGE_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});

/** Navigates `page` (or reloads it) and answers the mark's time and the JS + CSS bytes. */
async function measure(page, go) {
  await go();
  await page.waitForFunction(() => performance.getEntriesByName('selvage-first-messages').length > 0, null, { timeout: 20_000 });
  return page.evaluate(() => {
    const mark = performance.getEntriesByName('selvage-first-messages')[0].startTime;
    const bytes = performance.getEntriesByType('resource')
      .filter((r) => /\.(js|css)$/.test(new URL(r.name).pathname))
      .reduce((sum, r) => sum + r.decodedBodySize, 0);
    return { ms: mark, bytes };
  });
}

const fresh = [];
let bytes = 0;
for (let i = 0; i <= loads; i++) {
  const context = await browser.newContext({ serviceWorkers: 'block' });
  const page = await context.newPage();
  const m = await measure(page, () => page.goto(link));
  if (i > 0) fresh.push(m.ms); // the first load warms the edge
  bytes = Math.max(bytes, m.bytes);
  await context.close();
}

const context = await browser.newContext({ serviceWorkers: 'block' });
const page = await context.newPage();
await measure(page, () => page.goto(link));
const reloads = [];
for (let i = 0; i < loads; i++) {
  // The token left the address bar at sign-in; the page keeps it in sessionStorage.
  reloads.push((await measure(page, () => page.reload())).ms);
}
await browser.close();

const sorted = (xs) => [...xs].sort((a, b) => a - b);
const pick = (xs, q) => sorted(xs)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
const summary = (xs) => ({ median_ms: pick(xs, 0.5), p90_ms: pick(xs, 0.9), runs_ms: xs.map((x) => Math.round(x * 10) / 10) });
console.log(JSON.stringify({ loads, js_css_bytes: bytes, first_visit: summary(fresh), reload: summary(reloads) }, null, 2));
