// Browser tests of the web client in real headless Chromium (issue 25), driven by Playwright's
// `playwright-core`. The Rust test harness starts an origin and two edges, makes the rig and
// runs:
//
//     node web/tests/e2e.mjs RIG.json
//
// RIG.json: {"edges": [A, B], "users": {"alice"|"bob"|"carol": {"id", "token"}},
//            "channels": {"general", "secret"}, "chromium": "/usr/bin/chromium",
//            "screenshot": "/path/web-client.png"}
// — all three users in #general; `secret` is private, alice and bob only.
//
// Edge B is killed and restarted through a line protocol with the harness: this script prints
// `KILL_EDGE_B` and waits for the line `EDGE_B_KILLED` on stdin, later `RESTART_EDGE_B` and
// `EDGE_B_RESTARTED` (edge B comes back on the same port).
//
// Each scenario prints `ok - <name>` (or `skip - <name>: reason`); the first failure prints
// `not ok - <name>: <why>` and exits with code 1. Every page's console errors are printed as
// `# console error [page]: …` (some are expected: a WebSocket refused while edge B is down).
//
// `E2E_ONLY=a,c` runs only some scenarios (by letter; later ones may need earlier ones' state).
// Playwright comes from the path in $PLAYWRIGHT_CORE (a directory or module path), else the
// package `playwright-core` found the usual way (NODE_PATH included).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const STEP_MS = 20_000; // the most one wait may take
const SCENARIO_MS = 90_000; // the most one scenario may take

const rig = JSON.parse(readFileSync(process.argv[2] ?? die('usage: node e2e.mjs RIG.json'), 'utf8'));
const [edgeA, edgeB] = rig.edges;
const { alice, bob, carol } = rig.users;
const { general, secret } = rig.channels;
const nonce = Date.now().toString(36);

// A 48×32 PNG, half red and half blue: a real image for the origin to make a thumbnail of.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAADAAAAAgCAIAAADbtmxLAAAAOklEQVR42u3OMQ0AMAgAMJTsniaUIHEiJgYXhKNJBTTezVVCSEhISEhISGg4dOqvIiQkJCQkJCQ0rAHdhjR5rIxedwAAAABJRU5ErkJggg==',
  'base64');

function die(message) {
  console.error(message);
  process.exit(2);
}

// ---- talking to the harness ----

const stdinLines = [];
const lineWaiters = [];
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const waiter = lineWaiters.findIndex((w) => w.line === line.trim());
  if (waiter >= 0) lineWaiters.splice(waiter, 1)[0].resolve();
  else stdinLines.push(line.trim());
});

/** Prints `say` for the harness and waits for its answer line `expect`. */
function askHarness(say, expect, timeoutMs = 60_000) {
  console.log(say);
  const seen = stdinLines.indexOf(expect);
  if (seen >= 0) {
    stdinLines.splice(seen, 1);
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the harness did not answer ${say} with ${expect} in ${timeoutMs} ms`)), timeoutMs);
    lineWaiters.push({ line: expect, resolve: () => { clearTimeout(timer); resolve(); } });
  });
}

// ---- browsers and pages ----

const browser = await chromium.launch({
  executablePath: rig.chromium || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-renderer-backgrounding', '--disable-background-timer-throttling',
    '--disable-backgrounding-occluded-windows'],
});

async function newContext() {
  return browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
}

/** A page signed in as `user` on `edge`; `hash` adds fragment parameters (`c=<channel>`). */
async function signIn(context, label, edge, user, hash = '') {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`# console error [${label}]: ${redact(m.text())}`);
  });
  page.on('pageerror', (e) => console.log(`# page error [${label}]: ${redact(e.message)}`));
  await page.goto(`${edge}/#token=${encodeURIComponent(user.token)}${hash ? `&${hash}` : ''}`);
  await waitState(page, ['connected']);
  return page;
}

/** Tokens out of what is printed (a refused WebSocket's URL carries one). */
const redact = (text) => text.replace(/token=[^&\s']+/g, 'token=…');

async function waitState(page, states, timeout = STEP_MS) {
  await page.waitForFunction((wanted) => wanted.includes(document.querySelector('[data-testid="conn-state"]')?.textContent),
    states, { timeout });
}

async function openChannel(page, cid) {
  await page.locator(`[data-testid="channel-item"][data-channel-id="${cid}"]`).click();
  await page.waitForFunction((id) => location.hash === `#c=${id}`
    && !document.querySelector('[data-testid="message-list"]').hasAttribute('aria-busy'), cid);
}

const message = (page, text) => page.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: text });

/** Sends `text` from the main composer and waits until the edge acknowledged it. */
async function send(page, text) {
  const composer = page.getByTestId('composer');
  await composer.fill(text);
  await composer.press('Enter');
  await message(page, text).and(page.locator('[data-state="sent"]')).waitFor();
}

async function channelCounts(page, cid) {
  return page.locator(`[data-testid="channel-item"][data-channel-id="${cid}"]`).evaluate((a) => ({
    unread: Number(a.dataset.unread), mentions: Number(a.dataset.mentions),
  }));
}

/** Waits until `cid`'s item shows some unread messages (`some`) or none (`none`). */
async function waitUnread(page, cid, want, what) {
  await page.waitForFunction(({ id, some }) => {
    const a = document.querySelector(`[data-testid="channel-item"][data-channel-id="${id}"]`);
    return a && (Number(a.dataset.unread) > 0) === some;
  }, { id: cid, some: want === 'some' }, { timeout: STEP_MS }).catch(() => {
    throw new Error(`the badge of ${cid} never became ${what}`);
  });
}

// ---- scenarios ----

let failed = false;

/** `E2E_ONLY=a,b,…` runs only those scenarios (by their letter), for trying one by hand. */
const only = process.env.E2E_ONLY?.split(',').map((s) => s.trim());

async function scenario(name, body) {
  if (only && !only.includes(name.split(':')[0])) return;
  let timer;
  try {
    const outcome = await Promise.race([
      body(),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`took over ${SCENARIO_MS} ms`)), SCENARIO_MS); }),
    ]);
    if (outcome?.skip) console.log(`skip - ${name}: ${outcome.skip}`);
    else console.log(`ok - ${name}`);
  } catch (e) {
    console.log(`not ok - ${name}: ${String(e.message ?? e).split('\n')[0]}`);
    failed = true;
  } finally {
    clearTimeout(timer);
  }
  if (failed) await finish();
}

async function finish() {
  await browser.close().catch(() => {});
  process.exit(failed ? 1 : 0);
}

const aliceContext = await newContext();
const bobContext = await newContext();
const carolContext = await newContext();
let alicePage;
let bobPage;
const rootText = `thread root ${nonce}`;

await scenario('a: bob on edge B sees alice\'s message from edge A live', async () => {
  alicePage = await signIn(aliceContext, 'alice', edgeA, alice, `c=${general}`);
  bobPage = await signIn(bobContext, 'bob', edgeB, bob, `c=${general}`);
  const text = `hello from alice ${nonce}`;
  await send(alicePage, text);
  await message(bobPage, text).waitFor();
  const state = await message(bobPage, text).getAttribute('data-state');
  if (state !== 'sent') throw new Error(`bob sees it as ${state}`);
});

await scenario('b: a thread reply shows in the panel and the root\'s reply count updates', async () => {
  await send(alicePage, rootText);
  const bobRoot = message(bobPage, rootText);
  await bobRoot.waitFor();
  await bobRoot.hover();
  await bobRoot.locator('[data-action="reply"]').click();
  const panel = bobPage.getByTestId('thread-panel');
  await panel.getByTestId('thread-root').waitFor();
  const reply = `a reply from bob ${nonce}`;
  await panel.getByTestId('thread-composer').fill(reply);
  await panel.getByTestId('thread-composer').press('Enter');
  await panel.getByTestId('thread-reply').filter({ hasText: reply }).and(bobPage.locator('[data-state="sent"]')).waitFor();
  // Alice sees the count move, opens the thread from it, and sees the reply there.
  const count = message(alicePage, rootText).getByTestId('reply-count');
  await alicePage.waitForFunction((t) => [...document.querySelectorAll('[data-testid="message"]')]
    .some((m) => m.textContent.includes(t) && m.querySelector('[data-testid="reply-count"]')?.dataset.count === '1'), rootText);
  await count.click();
  const alicePanel = alicePage.getByTestId('thread-panel');
  await alicePanel.getByTestId('thread-reply').filter({ hasText: reply }).waitFor();
  // A second reply arrives live in the open panel, and the count follows.
  const second = `second reply ${nonce}`;
  await panel.getByTestId('thread-composer').fill(second);
  await panel.getByTestId('thread-composer').press('Enter');
  await alicePanel.getByTestId('thread-reply').filter({ hasText: second }).waitFor();
  await alicePage.waitForFunction((t) => [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]')]
    .some((m) => m.textContent.includes(t) && m.querySelector('[data-testid="reply-count"]')?.dataset.count === '2'), rootText);
  await bobPage.keyboard.press('Escape');
  await panel.waitFor({ state: 'hidden' });
});

await scenario('c: a reaction shows for the other user', async () => {
  const target = message(bobPage, rootText);
  await target.hover();
  await target.locator('[data-action="react"]').click();
  await target.locator('.picker [data-emoji="heart"]').click();
  await message(alicePage, rootText).locator('[data-testid="reaction"][data-emoji="heart"][data-count="1"]').waitFor();
});

await scenario('d: an uploaded image previews for bob', async () => {
  const probe = await alicePage.evaluate(async () => {
    const token = sessionStorage.getItem('selvage.token');
    const r = await fetch('/v1/files/Fnone', { headers: { Authorization: `Bearer ${token}` } });
    return (await r.json().catch(() => ({})))?.error?.message ?? '';
  });
  if (probe.includes('not enabled')) return { skip: 'files are not enabled on this origin' };
  await alicePage.locator('#composer-file').setInputFiles({ name: `pixels-${nonce}.png`, mimeType: 'image/png', buffer: PNG });
  await alicePage.locator(`[data-testid="message"][data-state="sent"] img[alt="pixels-${nonce}.png"]`).waitFor();
  await bobPage.locator(`[data-testid="message-list"] [data-testid="file-preview"][alt="pixels-${nonce}.png"]`).waitFor();
  await bobPage.waitForFunction((alt) => {
    const img = document.querySelector(`[data-testid="file-preview"][alt="${alt}"]`);
    return img && img.complete && img.naturalWidth > 0;
  }, `pixels-${nonce}.png`);
});

const searchWord = `zebrafinch${nonce}`;

await scenario('e: search finds a message and opens it', async () => {
  await send(alicePage, `the ${searchWord} sings at dawn`);
  await message(bobPage, searchWord).waitFor();
  // Bob looks elsewhere first, so opening the result has to switch conversations.
  await openChannel(bobPage, secret);
  await bobPage.getByTestId('search-box').fill(searchWord);
  await bobPage.getByTestId('search-box').press('Enter');
  const result = bobPage.getByTestId('search-result').filter({ hasText: searchWord });
  await result.first().waitFor();
  await result.first().click();
  await bobPage.waitForFunction((id) => location.hash === `#c=${id}`, general);
  await bobPage.locator('[data-testid="message"].highlight', { hasText: searchWord }).waitFor();
});

await scenario('f: reading #general in one of alice\'s tabs clears its badge in the other', async () => {
  await openChannel(alicePage, secret);
  const otherTab = await signIn(aliceContext, 'alice tab 2', edgeB, alice, `c=${secret}`);
  await openChannel(bobPage, general);
  await send(bobPage, `unread for alice ${nonce}`);
  await waitUnread(alicePage, general, 'some', 'unread in tab 1');
  await waitUnread(otherTab, general, 'some', 'unread in tab 2');
  await openChannel(alicePage, general);
  await waitUnread(alicePage, general, 'none', 'read in tab 1');
  await waitUnread(otherTab, general, 'none', 'read in tab 2 (live, from tab 1)');
  const { mentions } = await channelCounts(otherTab, general);
  if (mentions !== 0) throw new Error(`tab 2 still shows ${mentions} mentions`);
  await otherTab.close();
});

await scenario('h: carol never sees the private channel', async () => {
  const secretWord = `hushhush${nonce}`;
  await openChannel(alicePage, secret);
  await send(alicePage, `the ${secretWord} plan`);
  await openChannel(alicePage, general);
  // Alice, a member, finds it: the index has it before carol looks.
  await alicePage.getByTestId('search-box').fill(secretWord);
  await alicePage.getByTestId('search-box').press('Enter');
  await alicePage.getByTestId('search-result').filter({ hasText: secretWord }).first().waitFor();
  await alicePage.keyboard.press('Escape');
  const carolPage = await signIn(carolContext, 'carol', edgeA, carol);
  const sidebar = carolPage.getByTestId('sidebar');
  await sidebar.locator('[data-testid="channel-item"]').first().waitFor();
  if (await sidebar.locator(`[data-channel-id="${secret}"]`).count()) throw new Error('secret is in carol\'s sidebar');
  // Search: the word exists only in secret, so carol's search finds nothing at all.
  await carolPage.getByTestId('search-box').fill(secretWord);
  await carolPage.getByTestId('search-box').press('Enter');
  await carolPage.waitForFunction(() => /result|Nothing found/.test(document.querySelector('#search')?.textContent ?? '')
    && !document.querySelector('#search')?.textContent.includes('Searching…'));
  const hits = await carolPage.getByTestId('search-result').count();
  if (hits) throw new Error(`carol's search found ${hits} result(s) for a word only in secret`);
  await carolPage.keyboard.press('Escape');
  // Its URL, in place and on a fresh load.
  for (const how of ['navigate', 'reload']) {
    if (how === 'navigate') await carolPage.evaluate((id) => { location.hash = `c=${id}`; }, secret);
    else await carolPage.reload();
    await carolPage.getByTestId('not-found').waitFor();
    const body = await carolPage.locator('body').innerText();
    if (body.includes(secretWord)) throw new Error(`carol sees the secret message after ${how}`);
    if (await carolPage.locator('[data-testid="message-list"] [data-testid="message"]').count()) {
      throw new Error(`carol sees messages of secret after ${how}`);
    }
  }
  await carolPage.close();
});

await scenario('g: edge B killed: bob reconnects, resumes, every message once and in order', async () => {
  await openChannel(bobPage, general);
  await askHarness('KILL_EDGE_B', 'EDGE_B_KILLED');
  await waitState(bobPage, ['reconnecting']);
  const texts = [];
  for (let i = 1; i <= 5; i++) {
    texts.push(`while bob was away ${i} ${nonce}`);
    await send(alicePage, texts.at(-1));
  }
  await askHarness('RESTART_EDGE_B', 'EDGE_B_RESTARTED');
  await waitState(bobPage, ['resumed', 'connected'], 45_000);
  console.log(`# bob's connection after the restart: ${await bobPage.getByTestId('conn-state').textContent()}`);
  await message(bobPage, texts.at(-1)).waitFor();
  const seen = await bobPage.locator('[data-testid="message-list"] [data-testid="message"]').evaluateAll((els) =>
    els.map((el) => ({ seq: Number(el.dataset.seq), text: el.querySelector('[data-testid="message-text"]')?.textContent ?? '' })));
  for (const text of texts) {
    const n = seen.filter((m) => m.text === text).length;
    if (n !== 1) throw new Error(`"${text}" shows ${n} times`);
  }
  const order = texts.map((t) => seen.findIndex((m) => m.text === t));
  if (order.some((at, i) => i > 0 && at < order[i - 1])) throw new Error(`out of order: ${order.join(',')}`);
  const seqs = seen.map((m) => m.seq);
  if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1])) throw new Error(`seqs not strictly increasing: ${seqs.join(',')}`);
});

await scenario('i: navigation to the first message list (Performance API)', async () => {
  const runs = [];
  for (let i = 0; i < 3; i++) {
    const page = await aliceContext.newPage();
    await page.goto(`${edgeA}/#token=${encodeURIComponent(alice.token)}&c=${general}`);
    const ms = await page.waitForFunction(() => performance.getEntriesByName('selvage-first-messages')[0]?.startTime,
      null, { timeout: STEP_MS }).then((h) => h.jsonValue());
    runs.push(Math.round(ms));
    await page.close();
  }
  const median = [...runs].sort((a, b) => a - b)[1];
  console.log(`first-messages-ms ${median}`);
  console.log(`# first-messages-ms runs: ${runs.join(' ')}`);
});

/** Calls the API from a page, with its tab's token. */
function apiFrom(page, method, path, body) {
  return page.evaluate(async ({ method, path, body }) => {
    const token = sessionStorage.getItem('selvage.token');
    const headers = { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) };
    const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    return r.json();
  }, { method, path, body });
}

await scenario('j: screenshot of the main view', async () => {
  // A DM from bob waiting for alice, so the sidebar shows a conversation, a presence dot and a badge.
  const { channel: dm } = await apiFrom(alicePage, 'POST', '/v1/dms', { users: [bob.id] });
  await apiFrom(bobPage, 'POST', `/v1/channels/${dm.id}/messages`, { text: 'Lunch at noon?', client_msg_id: `lunch-${nonce}` });
  await alicePage.waitForFunction((id) => Number(document.querySelector(`[data-channel-id="${id}"]`)?.dataset.unread) > 0, dm.id);
  await openChannel(alicePage, general);
  await message(alicePage, rootText).getByTestId('reply-count').click();
  await alicePage.getByTestId('thread-panel').getByTestId('thread-reply').first().waitFor();
  await alicePage.getByTestId('search-box').fill('');
  await alicePage.getByTestId('search-box').blur();
  await alicePage.mouse.move(0, 0);
  await alicePage.screenshot({ path: rig.screenshot });
  console.log(`# screenshot: ${rig.screenshot}`);
});

await finish();
