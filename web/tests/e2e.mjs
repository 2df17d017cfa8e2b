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
// `EDGE_B_RESTARTED` (edge B comes back on the same port); `DRAIN_EDGE_B` and `EDGE_B_DRAINED`
// (edge B drains through its operator API).
//
// Headless Chromium has no Web Push service (`PushManager.subscribe` is refused), so this script
// runs one (`pushService`): the origin pushes to it, encrypted, as to any browser's vendor; it
// decrypts each push as the browser would and hands it to the page's service worker with the
// DevTools protocol (`ServiceWorker.deliverPushMessage`).
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
import http from 'node:http';
import crypto from 'node:crypto';

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

// ---- a push service ----

/**
 * A Web Push service of our own on 127.0.0.1, as the browser's vendor runs one: Chromium here
 * has none (`PushManager.subscribe` is refused). It holds one subscription's keys, takes the
 * origin's encrypted pushes for it (`POST`, RFC 8291 `aes128gcm`), decrypts each as the browser
 * would, and hands over the plaintext: what `ServiceWorker.deliverPushMessage` then gives sw.js.
 */
async function pushService() {
  const ecdh = crypto.createECDH('prime256v1');
  const uaPublic = ecdh.generateKeys();
  const authSecret = crypto.randomBytes(16);
  const inbox = [];
  let wake = () => {};
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let got;
      try {
        if (req.headers['content-encoding'] !== 'aes128gcm') throw new Error(`content-encoding ${req.headers['content-encoding']}`);
        got = { text: decrypt(Buffer.concat(chunks)) };
      } catch (e) {
        got = { error: e.message };
      }
      inbox.push(got);
      res.writeHead(got.error ? 400 : 201).end();
      wake();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const hkdf = (ikm, salt, info, len) => Buffer.from(crypto.hkdfSync('sha256', ikm, salt, Buffer.from(info), len));
  function decrypt(body) {
    const salt = body.subarray(0, 16);
    const rs = body.readUInt32BE(16);
    const idLen = body[20];
    const asPublic = body.subarray(21, 21 + idLen);
    const record = body.subarray(21 + idLen);
    if (record.length > rs) throw new Error('more than one record');
    const ikm = hkdf(ecdh.computeSecret(asPublic), authSecret, Buffer.concat([Buffer.from('WebPush: info\0'), uaPublic, asPublic]), 32);
    const decipher = crypto.createDecipheriv('aes-128-gcm', hkdf(ikm, salt, 'Content-Encoding: aes128gcm\0', 16),
      hkdf(ikm, salt, 'Content-Encoding: nonce\0', 12));
    decipher.setAuthTag(record.subarray(record.length - 16));
    const plain = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
    let end = plain.length - 1;
    while (end > 0 && plain[end] === 0) end--;
    if (plain[end] !== 2) throw new Error('no last-record delimiter');
    return plain.subarray(0, end).toString('utf8');
  }
  return {
    subscription: {
      endpoint: `http://127.0.0.1:${server.address().port}/push/${nonce}`,
      keys: { p256dh: uaPublic.toString('base64url'), auth: authSecret.toString('base64url') },
    },
    /** The next push's plaintext. */
    async next(timeoutMs = STEP_MS) {
      const deadline = Date.now() + timeoutMs;
      while (!inbox.length) {
        if (Date.now() > deadline) throw new Error('no push from the origin in time');
        await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 200); });
      }
      const got = inbox.shift();
      if (got.error) throw new Error(`a push that does not decrypt: ${got.error}`);
      return got.text;
    },
    close: () => server.close(),
  };
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

/** Alice sends `n` messages to #general (on her page); answers their texts. */
async function sendMany(n, what) {
  const texts = [];
  for (let i = 1; i <= n; i++) {
    texts.push(`${what} ${i} ${nonce}`);
    await send(alicePage, texts.at(-1));
  }
  return texts;
}

/** `texts` each show once on `page`, in their order, and the list's seqs only go up. */
async function assertOnceInOrder(page, texts) {
  await message(page, texts.at(-1)).waitFor();
  const seen = await page.locator('[data-testid="message-list"] [data-testid="message"]').evaluateAll((els) =>
    els.map((el) => ({ seq: Number(el.dataset.seq), text: el.querySelector('[data-testid="message-text"]')?.textContent ?? '' })));
  for (const text of texts) {
    const n = seen.filter((m) => m.text === text).length;
    if (n !== 1) throw new Error(`"${text}" shows ${n} times`);
  }
  const order = texts.map((t) => seen.findIndex((m) => m.text === t));
  if (order.some((at, i) => i > 0 && at < order[i - 1])) throw new Error(`out of order: ${order.join(',')}`);
  const seqs = seen.map((m) => m.seq);
  if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1])) throw new Error(`seqs not strictly increasing: ${seqs.join(',')}`);
}

await scenario('g: edge B killed: bob reconnects, resumes, every message once and in order', async () => {
  await openChannel(bobPage, general);
  await askHarness('KILL_EDGE_B', 'EDGE_B_KILLED');
  await waitState(bobPage, ['reconnecting']);
  const texts = await sendMany(5, 'while bob was away');
  await askHarness('RESTART_EDGE_B', 'EDGE_B_RESTARTED');
  await waitState(bobPage, ['resumed', 'connected'], 45_000);
  console.log(`# bob's connection after the restart: ${await bobPage.getByTestId('conn-state').textContent()}`);
  await assertOnceInOrder(bobPage, texts);
});

await scenario('r: edge B drains: bob is told goodbye, comes back once it is replaced, every message once', async () => {
  await openChannel(bobPage, general);
  await waitState(bobPage, ['resumed', 'connected']);
  await askHarness('DRAIN_EDGE_B', 'EDGE_B_DRAINED');
  // The goodbye, not a dropped socket: edge B is still up, refusing new sessions.
  await waitState(bobPage, ['reconnecting']);
  const texts = await sendMany(3, 'while edge B drained');
  await askHarness('KILL_EDGE_B', 'EDGE_B_KILLED');
  await askHarness('RESTART_EDGE_B', 'EDGE_B_RESTARTED');
  await waitState(bobPage, ['resumed', 'connected'], 45_000);
  await assertOnceInOrder(bobPage, texts);
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

await scenario('k: a Web Push from the origin is shown by sw.js; a refused subscription says so', async () => {
  // Carol turns notifications on: the browser allows them, but its PushManager refuses to
  // subscribe (no push service here). She is told, and the toggle stays off.
  await carolContext.grantPermissions(['notifications'], { origin: edgeA });
  const carolPage = await signIn(carolContext, 'carol', edgeA, carol);
  const toggle = carolPage.getByTestId('push-toggle');
  await toggle.click();
  const toast = carolPage.getByTestId('toast');
  await toast.filter({ hasText: 'Desktop notifications could not be turned on' }).waitFor();
  const said = await toast.textContent();
  if (!/refused to subscribe/.test(said)) throw new Error(`the notice says "${said}"`);
  if (await toggle.getAttribute('aria-pressed') !== 'false') throw new Error('the toggle shows notifications on');
  // What the browser would have done: register a subscription, here with our push service.
  const push = await pushService();
  try {
    const sub = await apiFrom(carolPage, 'POST', '/v1/push/subscriptions', push.subscription);
    if (sub.error) throw new Error(`the subscription was refused: ${sub.error.message}`);
    await carolPage.close(); // away from every session: the origin notifies her
    // A tab of the site with nobody signed in: no session, but the service worker's registration.
    const page = await carolContext.newPage();
    page.setDefaultTimeout(STEP_MS);
    await page.goto(`${edgeA}/`);
    await page.locator('#signin').waitFor();
    const cdp = await carolContext.newCDPSession(page);
    const scripts = new Map(); // registration id → script URL, once a version of it is activated
    cdp.on('ServiceWorker.workerVersionUpdated', ({ versions }) => {
      for (const v of versions) if (v.status === 'activated') scripts.set(v.registrationId, v.scriptURL);
    });
    await cdp.send('ServiceWorker.enable');
    const deadline = Date.now() + STEP_MS;
    let registrationId;
    while (!(registrationId = [...scripts].find(([, url]) => url === `${edgeA}/sw.js`)?.[0])) {
      if (Date.now() > deadline) throw new Error(`no registration of sw.js (saw ${[...scripts.values()].join(', ') || 'none'})`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // Alice writes to her twice; the origin's push — one for both — arrives, decrypted, as the
    // browser would see it. Its `body` ("2 new messages from …") is not its `text`.
    const { channel: dm } = await apiFrom(alicePage, 'POST', '/v1/dms', { users: [carol.id] });
    const texts = [`carol? ${nonce}`, `are you there? ${nonce}`];
    for (const [i, text] of texts.entries()) {
      await apiFrom(alicePage, 'POST', `/v1/channels/${dm.id}/messages`, { text, client_msg_id: `push-${i}-${nonce}` });
    }
    const plaintext = await push.next();
    const payload = JSON.parse(plaintext);
    const me = await apiFrom(alicePage, 'GET', '/v1/me');
    const aliceName = me.user.name || me.user.handle;
    if (payload.channel?.id !== dm.id || payload.text !== texts[1] || payload.title !== aliceName
      || payload.body !== `2 new messages from ${aliceName}`) {
      throw new Error(`an unexpected push: ${plaintext}`);
    }
    // Chromium keeps its list of notifications in step with the screen on every read, and one
    // read while a notification is still being put up loses it. So the page asks only after a
    // pause, and a push lost that way is delivered again (sw.js shows each under the same tag).
    const notifications = () => page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications())
      .map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data })));
    let shown = [];
    for (let attempt = 1; !shown.length; attempt++) {
      if (attempt > 3) throw new Error('sw.js showed no notification for three pushes');
      await cdp.send('ServiceWorker.deliverPushMessage', { origin: edgeA, registrationId, data: plaintext });
      for (let wait = 0; wait < 5 && !shown.length; wait++) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        shown = await notifications();
      }
    }
    if (shown.length !== 1) throw new Error(`it shows ${shown.length} notifications for one conversation`);
    const [n] = shown;
    if (n.title !== payload.title || n.body !== payload.body) throw new Error(`it shows "${n.title}": "${n.body}"`);
    // A click opens the conversation: sw.js finds it in the notification's data.
    if (n.data?.channel !== dm.id || n.data?.seq !== payload.seq || n.tag !== dm.id) {
      throw new Error(`its data ${JSON.stringify(n.data)} (tag ${n.tag}) does not name the DM ${dm.id}, seq ${payload.seq}`);
    }
    await cdp.detach();
    await page.close();
  } finally {
    await fetch(`${edgeA}/v1/push/subscriptions`, {
      method: 'DELETE', headers: { Authorization: `Bearer ${carol.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ endpoint: push.subscription.endpoint }),
    }).catch(() => {});
    push.close();
  }
});

const item = (page, cid) => page.locator(`[data-testid="channel-item"][data-channel-id="${cid}"]`);

/** A new public channel of alice's with bob in it, shown in both sidebars. */
async function channelWithBob(name) {
  const { channel } = await apiFrom(alicePage, 'POST', '/v1/channels', { name, private: false });
  const added = await apiFrom(alicePage, 'POST', `/v1/channels/${channel.id}/members`, { user: bob.id });
  if (!added.ok) throw new Error(`bob could not be added: ${JSON.stringify(added)}`);
  await item(alicePage, channel.id).waitFor();
  await item(bobPage, channel.id).waitFor();
  return channel.id;
}

await scenario('l: bob leaves a channel and it leaves his sidebar', async () => {
  const cid = await channelWithBob(`leave-me-${nonce}`);
  await openChannel(bobPage, cid);
  await bobPage.getByTestId('channel-details').click();
  await bobPage.locator('[data-testid="member"]').first().waitFor();
  if (await bobPage.getByTestId('archive-channel').count()) throw new Error('bob, neither its creator nor an admin, is offered to archive it');
  await bobPage.getByTestId('leave-channel').click();
  await item(bobPage, cid).waitFor({ state: 'detached' });
  await bobPage.waitForFunction((id) => !location.hash.includes(id), cid);
  const { members } = await apiFrom(alicePage, 'GET', `/v1/channels/${cid}/members`);
  if (members.includes(bob.id) || !members.includes(alice.id)) throw new Error(`the channel's members are ${members}`);
  if (!(await item(alicePage, cid).count())) throw new Error('it left alice\'s sidebar too');
});

await scenario('m: alice archives a channel and bob\'s composer turns read-only, live', async () => {
  const cid = await channelWithBob(`archive-me-${nonce}`);
  await openChannel(bobPage, cid);
  await send(bobPage, `before the archive ${nonce}`);
  await openChannel(alicePage, cid);
  await alicePage.getByTestId('channel-details').click();
  alicePage.once('dialog', (d) => d.accept());
  await alicePage.getByTestId('archive-channel').click();
  await bobPage.getByTestId('archived-note').waitFor();
  if (await bobPage.getByTestId('composer').isVisible()) throw new Error('bob\'s composer is still there');
  await alicePage.getByTestId('archived-note').waitFor();
  if (await alicePage.getByTestId('composer').isVisible()) throw new Error('alice\'s composer is still there');
  const refused = await apiFrom(bobPage, 'POST', `/v1/channels/${cid}/messages`, { text: 'too late', client_msg_id: `late-${nonce}` });
  if (refused.error?.code !== 'archived') throw new Error(`the origin answered a post with ${JSON.stringify(refused)}`);
});

await scenario('n: the members dialog lists alice, bob and carol, with live presence', async () => {
  await openChannel(bobPage, general);
  await send(bobPage, `bob is here ${nonce}`);
  await openChannel(alicePage, general);
  await alicePage.getByTestId('channel-details').click();
  const member = (id) => alicePage.locator(`[data-testid="member"][data-user-id="${id}"]`);
  const presence = (id, wanted, what) => alicePage.waitForFunction(({ id, wanted }) =>
    wanted.includes(document.querySelector(`[data-testid="member"][data-user-id="${id}"]`)?.dataset.presence), { id, wanted })
    .catch(() => { throw new Error(`${what} never showed as ${wanted.join(' or ')}`); });
  for (const [id, handle] of [[alice.id, 'alice'], [bob.id, 'bob'], [carol.id, 'carol']]) {
    await member(id).waitFor();
    const text = await member(id).textContent();
    if (!text.includes(`@${handle}`)) throw new Error(`the member ${id} reads "${text}"`);
  }
  const listed = await alicePage.locator('#dialog ul').evaluate((ul) => [...ul.childNodes].map((n) => n.textContent));
  if (listed.length !== 3) throw new Error(`the list has ${listed.length} entries: ${listed.join(' | ')}`);
  await presence(bob.id, ['active'], 'bob, who just wrote');
  await presence(alice.id, ['active'], 'alice herself');
  await presence(carol.id, ['offline'], 'carol, signed out');
  // Carol comes and goes on the other edge: her dot follows.
  const carolPage = await signIn(carolContext, 'carol', edgeB, carol);
  await presence(carol.id, ['active', 'away'], 'carol, signed in');
  await carolPage.close();
  await presence(carol.id, ['offline'], 'carol, gone again');
  await alicePage.keyboard.press('Escape');
  await alicePage.locator('#dialog').waitFor({ state: 'hidden' });
});

await scenario('o: a conversation with unread messages opens at the first, under "New"', async () => {
  const lastRead = `read up to here ${nonce}`;
  await send(bobPage, lastRead);
  await openChannel(bobPage, secret);
  // More than a page of unread messages (50): a fresh tab reads a window around the first.
  const texts = [];
  for (let i = 1; i <= 60; i++) {
    texts.push(`unread ${i} ${nonce}\nsecond line\nthird line`);
    await apiFrom(alicePage, 'POST', `/v1/channels/${general}/messages`, { text: texts.at(-1), client_msg_id: `unread-${i}-${nonce}` });
  }
  await bobPage.waitForFunction((id) => document.querySelector(`[data-testid="channel-item"][data-channel-id="${id}"]`)?.dataset.unread === '60', general);
  const check = async (page, where) => {
    const divider = page.getByTestId('new-divider');
    await divider.waitFor();
    const seen = await divider.evaluate((d) => {
      const text = (el) => el?.querySelector('[data-testid="message-text"]')?.textContent;
      const list = d.closest('[data-testid="message-list"]');
      const [l, r] = [list.getBoundingClientRect(), d.getBoundingClientRect()];
      return {
        next: text(d.nextElementSibling), prev: text(d.previousElementSibling), inView: r.top >= l.top && r.bottom <= l.bottom,
        atBottom: list.scrollHeight - list.scrollTop - list.clientHeight < 60,
      };
    });
    if (seen.next !== texts[0]) throw new Error(`${where}: under "New" is "${seen.next}"`);
    if (seen.prev !== lastRead) throw new Error(`${where}: above "New" is "${seen.prev}"`);
    if (!seen.inView || seen.atBottom) throw new Error(`${where}: opened at the newest message, not at the first unread`);
    const { unread } = await channelCounts(page, general);
    if (unread !== 60) throw new Error(`${where}: ${unread} unread before bob read them`);
  };
  const fresh = await signIn(bobContext, 'bob tab 2', edgeA, bob, `c=${general}`);
  await check(fresh, 'a fresh tab');
  await fresh.close();
  await openChannel(bobPage, general);
  await check(bobPage, 'the tab that was elsewhere');
  // Scrolled down to the newest, they are read.
  await bobPage.getByTestId('message-list').evaluate((list) => { list.scrollTop = list.scrollHeight; });
  await waitUnread(bobPage, general, 'none', 'read once scrolled to the bottom');
});

await scenario('p: a group DM alice starts with bob and carol shows up live, and its messages reach both', async () => {
  const carolPage = await signIn(carolContext, 'carol', edgeA, carol);
  await alicePage.getByTestId('new-dm').click();
  await alicePage.locator(`[data-testid="dm-user"][value="${bob.id}"]`).check();
  await alicePage.locator(`[data-testid="dm-user"][value="${carol.id}"]`).check();
  await alicePage.getByTestId('start-dm').click();
  await alicePage.locator('#dialog').waitFor({ state: 'hidden' });
  const gdm = await alicePage.evaluate(() => new URLSearchParams(location.hash.slice(1)).get('c'));
  for (const [page, who, others] of [[bobPage, 'bob', ['alice', 'carol']], [carolPage, 'carol', ['alice', 'bob']]]) {
    const name = await item(page, gdm).locator('.name').textContent();
    if (!others.every((o) => name.includes(o))) throw new Error(`${who}'s sidebar calls it "${name}"`);
  }
  const text = `hello you two ${nonce}`;
  await send(alicePage, text);
  for (const page of [bobPage, carolPage]) {
    await waitUnread(page, gdm, 'some', 'unread');
    await openChannel(page, gdm);
    await message(page, text).waitFor();
  }
  const reply = `hi both ${nonce}`;
  await send(bobPage, reply);
  await message(alicePage, reply).waitFor();
  await message(carolPage, reply).waitFor();
  await carolPage.close();
});

await scenario('q: times are in the browser\'s language and time zone, the full date in their title', async () => {
  const [locale, timeZone] = ['fr-CA', 'Asia/Tokyo']; // `14 h 05`: no other locale's way
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale, timezoneId: timeZone });
  try {
    const page = await signIn(context, `bob (${locale})`, edgeA, bob, `c=${general}`);
    /** The newest message's time as shown, and as this browser's Intl says it in `locale`. */
    const newest = () => page.evaluate(({ locale, timeZone }) => {
      const last = [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"][data-seq]')].at(-1);
      const ts = Number(last.dataset.ts);
      const f = (options) => new Intl.DateTimeFormat(locale, { timeZone, ...options }).format(ts);
      const today = f({ dateStyle: 'short' }) === new Intl.DateTimeFormat(locale, { timeZone, dateStyle: 'short' }).format(Date.now());
      const time = last.querySelector('time');
      return {
        text: time.textContent, title: time.title,
        want: f(today ? { timeStyle: 'short' } : { dateStyle: 'medium' }), full: f({ dateStyle: 'full', timeStyle: 'short' }), today,
      };
    }, { locale, timeZone });
    /** The newest message's time once it is localised (the formatters are made just after the first paint). */
    const localised = async () => {
      await page.locator('[data-testid="message-list"] [data-testid="message"][data-seq] time').first().waitFor({ state: 'attached' });
      let t;
      for (let i = 0; i < 60; i++) {
        t = await newest();
        if (t.text === t.want && t.title === t.full) break;
        await page.waitForTimeout(50);
      }
      return t;
    };
    const now = await localised();
    if (now.text !== now.want || now.title !== now.full) throw new Error(`a message of today shows "${now.text}" ("${now.title}"), not "${now.want}" ("${now.full}")`);
    // Three days on, the same message shows its date.
    await page.clock.setFixedTime(Date.now() + 3 * 24 * 3600 * 1000);
    await page.reload();
    await waitState(page, ['connected']);
    const later = await localised();
    if (later.today || later.text !== later.want || later.title !== later.full) {
      throw new Error(`an older message shows "${later.text}" ("${later.title}"), not "${later.want}" ("${later.full}")`);
    }
  } finally {
    await context.close();
  }
});

await finish();
