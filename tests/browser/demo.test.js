// The demo page in headless Chromium, against the real server.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import { Hubbub } from '../../clients/js/hubbub.js';
import { demoToken, launchBrowser, startServer } from './helpers.js';

const WAIT_MS = 15000;
/** Screenshots land here (ignored by git). */
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/** Open the demo as `name` in `room` and wait until it is online. */
async function openChat(browser, server, name, { room = 'course:demo', query = '' } = {}) {
  const page = await browser.context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err));
  await page.goto(`${server.base}/${query}`);
  await page.getByTestId('name').fill(name);
  await page.getByTestId('room').fill(room);
  await page.getByTestId('connect').click();
  await page.locator('[data-testid="status"][data-state="open"]').waitFor();
  await page.getByTestId('chat').waitFor();
  return page;
}

async function say(page, text) {
  await page.getByTestId('composer').fill(text);
  await page.getByTestId('send').click();
}

/** Wait until a stored (acked, echoed) message with this text is shown. */
function shown(page, text) {
  return page.locator('[data-testid="message"][data-seq]', { hasText: text }).first().waitFor();
}

/** The messages a page shows: [{seq, from, text, pending}]. */
function messagesOf(page) {
  return page.$$eval('[data-testid="message"]', (items) => items.map((li) => ({
    seq: li.dataset.seq ? Number(li.dataset.seq) : null,
    from: li.dataset.from,
    text: li.querySelector('.text').textContent,
    pending: li.dataset.pending === 'true',
  })));
}

function onlineOf(page) {
  return page.$$eval('[data-testid="member"]', (items) => items.map((li) => li.dataset.user).sort());
}

describe('demo page in Chromium', { timeout: 120000 }, () => {
  let browser;
  let server;

  before(async () => { browser = await launchBrowser(); });
  after(async () => { await browser?.close(); });
  beforeEach(async () => { server = await startServer(); });
  afterEach(async () => {
    for (const page of browser.context.pages()) await page.close();
    await server.destroy();
  });

  it('two users chat both ways, see typing and who is online', async () => {
    const ana = await openChat(browser, server, 'Ana');
    const ben = await openChat(browser, server, 'Ben');

    // Presence: both lists show both users.
    await ana.waitForFunction(() => document.querySelectorAll('[data-testid="member"]').length === 2);
    assert.deepEqual(await onlineOf(ana), ['demo-ana', 'demo-ben']);
    assert.deepEqual(await onlineOf(ben), ['demo-ana', 'demo-ben']);

    // Chat both ways, with markup that must stay text.
    await say(ana, 'Hello Ben <img src=x onerror="window.pwned=1">');
    await shown(ben, 'Hello Ben');
    await say(ben, 'Hi Ana & welcome');
    await shown(ana, 'Hi Ana & welcome');
    await shown(ana, 'Hello Ben');
    assert.equal(await ben.locator('[data-testid="messages"] img').count(), 0);
    assert.equal(await ben.evaluate(() => window.pwned), undefined);
    const seen = await messagesOf(ana);
    assert.deepEqual(seen.map((m) => [m.seq, m.from, m.text]), [
      [1, 'demo-ana', 'Hello Ben <img src=x onerror="window.pwned=1">'],
      [2, 'demo-ben', 'Hi Ana & welcome'],
    ]);
    assert.deepEqual((await messagesOf(ben)).map((m) => m.seq), [1, 2]);

    // Typing, both ways; a sent message clears the indicator.
    await ben.getByTestId('composer').pressSequentially('Let me');
    await ana.getByTestId('typing').filter({ hasText: 'Ben is typing…' }).waitFor();
    await ana.screenshot({ path: join(ARTIFACTS, 'demo-two-users.png') }); // for people to look at
    await ana.getByTestId('composer').pressSequentially('Sure');
    await ben.getByTestId('typing').filter({ hasText: 'Ana is typing…' }).waitFor();
    await ben.getByTestId('send').click();
    await shown(ana, 'Let me');
    await ana.waitForFunction(() => document.querySelector('[data-testid="typing"]').textContent === '');

    // Ben leaves: Ana's list shows only Ana.
    await ben.close();
    await ana.waitForFunction(() => document.querySelectorAll('[data-testid="member"]').length === 1);
    assert.deepEqual(await onlineOf(ana), ['demo-ana']);
    assert.deepEqual(ana.errors, []);
  });

  it('shows every message exactly once across a server restart', async () => {
    // Short backoff ceiling so the test does not wait long for reconnects.
    const query = '?backoffMax=1500';
    const ana = await openChat(browser, server, 'Ana', { query });
    const ben = await openChat(browser, server, 'Ben', { query });
    await say(ana, 'before the restart');
    await shown(ben, 'before the restart');

    // Ana cannot get a token for now, so she stays offline after the restart.
    await ana.route('**/demo/token*', (route) => route.abort());
    const { code } = await server.stop('SIGTERM');
    assert.equal(code, 0);
    for (const page of [ana, ben]) await page.locator('[data-testid="status"][data-state="closed"]').waitFor();

    // Sent while the server is down: queued in the client, shown as pending.
    await say(ben, 'queued while the server was down');
    await ben.locator('[data-testid="message"][data-pending="true"]').waitFor();

    server = await startServer({ port: server.port, dataDir: server.dataDir });
    await ben.locator('[data-testid="status"][data-state="open"]').waitFor();
    await shown(ben, 'queued while the server was down');
    await say(ben, 'while Ana was away (1)');
    await say(ben, 'while Ana was away (2)');
    await shown(ben, 'while Ana was away (2)');
    assert.equal(await ana.getByTestId('status').getAttribute('data-state') === 'open', false);

    // Ana comes back: the missed messages arrive through join with `since`.
    await ana.unroute('**/demo/token*');
    await ana.locator('[data-testid="status"][data-state="open"]').waitFor();
    await shown(ana, 'while Ana was away (2)');
    await say(ana, 'back again');
    await shown(ben, 'back again');
    await shown(ana, 'back again');

    const expected = [
      'before the restart',
      'queued while the server was down',
      'while Ana was away (1)',
      'while Ana was away (2)',
      'back again',
    ];
    for (const page of [ana, ben]) {
      const list = await messagesOf(page);
      assert.deepEqual(list.map((m) => m.text), expected);
      assert.deepEqual(list.map((m) => m.seq), [1, 2, 3, 4, 5]);
      assert.ok(list.every((m) => !m.pending));
    }
    assert.deepEqual([...ana.errors, ...ben.errors], []);
  });

  it('pages back through history with "load older"', async () => {
    // 25 messages from a Node client, then a page that shows 10 at a time.
    const seeder = new Hubbub({ url: server.wsUrl, WebSocket, getToken: () => demoToken(server, 'Teacher') });
    await seeder.connect();
    await seeder.join('course:history');
    for (let i = 1; i <= 25; i++) await seeder.send('course:history', `lesson note ${i}`);
    seeder.close();

    const page = await openChat(browser, server, 'Ana', { room: 'course:history', query: '?page=10' });
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length === 10);
    const older = page.getByTestId('load-older');
    const texts = async () => (await messagesOf(page)).map((m) => m.text);
    const notes = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => `lesson note ${from + i}`);
    assert.deepEqual(await texts(), notes(16, 25));

    await older.click();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length === 20);
    assert.deepEqual(await texts(), notes(6, 25));
    assert.equal(await older.isVisible(), true);

    await older.click();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length === 25);
    assert.deepEqual(await texts(), notes(1, 25));
    await older.waitFor({ state: 'hidden' });

    // Live messages still go to the bottom, once.
    await say(page, 'a new question');
    await shown(page, 'a new question');
    assert.deepEqual((await messagesOf(page)).map((m) => m.seq), Array.from({ length: 26 }, (_, i) => i + 1));
  });
});
