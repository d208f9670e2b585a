// hubbub.js from Node, against the real server, with `ws` as the WebSocket.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { Hubbub, HubbubError, backoffDelay, contentText } from '../../clients/js/hubbub.js';
import { demoToken, startServer } from './helpers.js';

/** A promise and the function that settles it. */
function gate() {
  let open;
  const promise = new Promise((r) => { open = r; });
  return { promise, open };
}

/** Resolves with the first truthy value of `probe`, polled every ms. */
async function until(probe, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Resolves with the first event of `type` that satisfies `pred`. */
function next(client, type, pred = () => true, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} event in time`)); }, timeoutMs);
    const off = client.on(type, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

describe('hubbub.js client (Node, ws)', { timeout: 60000 }, () => {
  let server;
  const clients = [];

  /** A client for `name` whose token getter counts its calls and can be
   * held shut with `hold` (a gate) to keep the client offline. */
  function client(name, options = {}) {
    const c = new Hubbub({
      url: server.wsUrl,
      WebSocket,
      backoff: { baseMs: 100, maxMs: 1000 },
      getToken: async () => {
        c.tokenCalls = (c.tokenCalls || 0) + 1;
        if (c.hold) await c.hold.promise;
        return demoToken(server, name);
      },
      ...options,
    });
    clients.push(c);
    return c;
  }

  before(async () => { server = await startServer(); });
  after(async () => {
    for (const c of clients) c.close();
    await server.destroy();
  });

  it('computes full-jitter backoff within its ceiling', () => {
    assert.equal(backoffDelay(0, { baseMs: 500, maxMs: 30000 }, () => 0), 0);
    assert.equal(backoffDelay(0, { baseMs: 500, maxMs: 30000 }, () => 0.5), 250);
    assert.equal(backoffDelay(3, { baseMs: 500, maxMs: 30000 }, () => 0.5), 2000);
    assert.equal(backoffDelay(20, { baseMs: 500, maxMs: 30000 }, () => 0.999999), 29999);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(i % 12);
      assert.ok(d >= 0 && d < 30000, `delay ${d}`);
    }
  });

  it('shows a late or out-of-order message once, and never a repeat', async () => {
    // A scripted socket: the server's frames are pushed by the test. In
    // cluster mode a room message can arrive after newer ones (the server
    // gave up waiting for it), and DMs sent through two nodes can cross.
    let socket;
    class Scripted {
      constructor() {
        socket = this;
        this.sent = [];
        queueMicrotask(() => this.push({
          type: 'welcome', user: { id: 'ana', name: 'Ana', role: 'student' }, limits: {},
        }));
      }
      send(data) { this.sent.push(JSON.parse(data)); }
      close() {}
      push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
    }
    const c = new Hubbub({ url: 'ws://x/ws/chat', WebSocket: Scripted, getToken: () => 't' });
    clients.push(c);
    const shown = [];
    c.on('message', (m) => shown.push(`r${m.seq}`));
    c.on('dm', (m) => shown.push(`d${m.seq}`));
    await c.connect();
    const joined = c.join('r');
    const join = await until(() => socket?.sent.find((f) => f.type === 'join'));
    socket.push({ type: 'ack', id: join.id, room: 'r', members: [], last_seq: 0 });
    await joined;

    const from = { id: 'bo', name: 'Bo', role: 'student' };
    const msg = (seq) => ({ type: 'message', room: 'r', seq, ts: 1, from, content: 'x' });
    const dm = (seq) => ({ type: 'dm', to: 'ana', seq, ts: 1, from, content: 'x' });
    for (const f of [msg(1), msg(2), msg(4), msg(3), msg(4), msg(2), dm(7), dm(6), dm(7)]) {
      socket.push(f);
    }
    assert.deepEqual(shown, ['r1', 'r2', 'r4', 'r3', 'd7', 'd6']);
    assert.equal(c.lastSeq('r'), 4);
  });

  it('undoes the server HTML escaping for text rendering', () => {
    assert.equal(contentText('a &lt;b&gt; &amp;lt; &quot;x&quot; &#x27;y&#x27; &#x2F;'), 'a <b> &lt; "x" \'y\' /');
  });

  it('joins, sends, receives its own message once, pages history, pings', async () => {
    const ana = client('Ana', { tokenIn: 'protocol' }); // token in Sec-WebSocket-Protocol
    const user = await ana.connect();
    assert.equal(user.id, 'demo-ana');
    assert.equal(ana.state, 'open');
    assert.equal(ana.tokenCalls, 1);

    const joined = await ana.join('course:unit');
    assert.equal(joined.room, 'course:unit');
    assert.equal(joined.last_seq, 0);
    assert.deepEqual(joined.members.map((m) => m.id), ['demo-ana']);
    assert.deepEqual(ana.members('course:unit').map((m) => m.id), ['demo-ana']);

    const seen = [];
    ana.on('message', (m) => seen.push(m));
    const request = ana.send('course:unit', 'hello <world>');
    assert.match(request.id, /^[0-9a-f]+-\w+$/);
    const ack = await request;
    assert.equal(ack.seq, 1);
    const second = next(ana, 'message', (m) => m.seq === 2);
    await ana.send('course:unit', 'second');
    await second;
    assert.deepEqual(seen.map((m) => [m.seq, m.id]), [[1, request.id], [2, seen[1].id]]);
    assert.equal(contentText(seen[0].content), 'hello <world>');
    assert.equal(ana.lastSeq('course:unit'), 2);

    const page = await ana.history('course:unit', { limit: 1 });
    assert.deepEqual(page.messages.map((m) => m.seq), [2]);
    assert.equal(page.has_more, true);
    const older = await ana.history('course:unit', { before: 2, limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.seq), [1]);
    assert.equal(older.has_more, false);

    assert.equal((await ana.ping()).type, 'pong');
    assert.deepEqual((await ana.presence('course:unit')).members.map((m) => m.id), ['demo-ana']);
  });

  it('rejects a request with a HubbubError carrying the server code', async () => {
    const ana = client('Ana');
    await ana.connect();
    await assert.rejects(ana.join('not a room!'), (err) => err instanceof HubbubError && err.code === 'bad_request');
    await assert.rejects(ana.send('course:never-joined', 'x'), (err) => err.code === 'not_joined');
    assert.deepEqual(ana.rooms(), []);
    ana.close();
    await assert.rejects(ana.send('course:x', 'late'), (err) => err.code === 'closed');
  });

  it('queues requests made before the connection is open', async () => {
    const ben = client('Ben');
    const joining = ben.join('course:queued');
    const sending = ben.send('course:queued', 'queued before connect');
    await ben.connect();
    assert.equal((await joining).room, 'course:queued');
    assert.equal((await sending).seq, 1);
  });

  it('sees presence and typing of another user', async () => {
    const ana = client('Ana');
    const ben = client('Ben');
    await Promise.all([ana.connect(), ben.connect()]);
    await ana.join('course:presence');
    const online = next(ana, 'presence', (p) => p.user.id === 'demo-ben' && p.status === 'online');
    await ben.join('course:presence');
    await online;
    assert.deepEqual(ana.members('course:presence').map((m) => m.id).sort(), ['demo-ana', 'demo-ben']);

    const typing = next(ana, 'typing', (t) => t.user === 'demo-ben');
    ben.typing('course:presence', true);
    assert.deepEqual(await typing, { type: 'typing', room: 'course:presence', user: 'demo-ben', state: true });

    const offline = next(ana, 'presence', (p) => p.user.id === 'demo-ben' && p.status === 'offline');
    await ben.leave('course:presence');
    await offline;
    assert.deepEqual(ana.members('course:presence').map((m) => m.id), ['demo-ana']);
  });

  it('resends an unanswered message with the same id and gets the original ack', async () => {
    // A WebSocket that goes deaf after sending the first chat message and
    // then drops the connection: the server stores the message, but the
    // client never hears the ack.
    let tripped = false;
    class LossyWebSocket extends WebSocket {
      set onmessage(fn) { super.onmessage = fn && ((e) => { if (!this.deaf) fn(e); }); }
      get onmessage() { return super.onmessage; }
      send(data) {
        super.send(data);
        if (!tripped && data.includes('"type":"message"')) {
          tripped = true;
          this.deaf = true;
          setTimeout(() => this.close(), 300);
        }
      }
    }
    const cho = client('Cho', { WebSocket: LossyWebSocket });
    const watcher = client('Dee');
    await Promise.all([cho.connect(), watcher.connect()]);
    await cho.join('course:resend');
    await watcher.join('course:resend');
    const received = [];
    watcher.on('message', (m) => received.push(m));

    const request = cho.send('course:resend', 'exactly once');
    const ack = await request;
    assert.equal(ack.id, request.id);
    assert.ok(cho.tokenCalls >= 2, 'reconnected with a fresh token');
    const page = await watcher.history('course:resend');
    assert.deepEqual(page.messages.map((m) => [m.seq, m.content]), [[ack.seq, 'exactly once']]);
    assert.deepEqual(received.map((m) => m.seq), [ack.seq]);
  });

  it('survives a server restart without losing or repeating room messages and DMs', async () => {
    const eve = client('Eve');
    const finn = client('Finn');
    await Promise.all([eve.connect(), finn.connect()]);
    await eve.join('course:restart');
    await finn.join('course:restart');
    const eveRoom = [];
    const eveDms = [];
    eve.on('message', (m) => eveRoom.push(m.content));
    eve.on('dm', (m) => eveDms.push(m.content));
    const states = [];
    eve.on('state', (s) => states.push(s.state));

    await finn.send('course:restart', 'before');
    const dmBefore = next(eve, 'dm', (m) => m.content === 'dm before');
    await finn.dm('demo-eve', 'dm before');
    await dmBefore;
    await eve.dm('demo-finn', 'my own dm'); // Eve's connection gets only the ack

    // Stop the server; hold Eve offline after it comes back.
    eve.hold = gate();
    const eveDown = next(eve, 'state', (s) => s.state === 'closed');
    const stopped = await server.stop('SIGTERM');
    assert.equal(stopped.code, 0, 'graceful exit');
    await eveDown;
    const queued = finn.send('course:restart', 'queued while down');
    server = await startServer({ port: server.port, dataDir: server.dataDir });

    assert.equal((await queued).seq, 2);
    await finn.send('course:restart', 'while eve away');
    await finn.dm('demo-eve', 'dm while away');
    assert.equal(eve.state === 'open', false);

    const caughtUp = next(eve, 'dm', (m) => m.content === 'dm while away');
    eve.hold.open();
    eve.hold = null;
    await next(eve, 'message', (m) => m.content === 'while eve away');
    await caughtUp;
    const last = next(eve, 'message', (m) => m.content === 'after');
    await finn.send('course:restart', 'after');
    await last;

    assert.deepEqual(eveRoom, ['before', 'queued while down', 'while eve away', 'after']);
    assert.deepEqual(eveDms, ['dm before', 'dm while away'], 'own DMs are not replayed');
    assert.equal(eve.lastSeq('course:restart'), 4);
    assert.ok(states.includes('connecting') && states.at(-1) === 'open');
  });

  it('does not reconnect after a policy close (1008)', async () => {
    const gus = client('Gus');
    await gus.connect();
    await gus.join('course:flood');
    const closed = next(gus, 'state', (s) => s.state === 'closed');
    // Far past the burst: the server closes a client that ignores rate limits.
    const sends = Array.from({ length: 120 }, (_, i) => gus.send('course:flood', `m${i}`).catch((e) => e));
    const state = await closed;
    assert.equal(state.code, 1008);
    assert.equal(state.final, true);
    const results = await Promise.all(sends);
    assert.ok(results.some((r) => r.code === 'rate_limited'));
    assert.ok(results.some((r) => r.code === 'closed'), 'the unanswered ones were rejected');
    assert.equal(gus.state, 'closed');
    assert.equal(gus.tokenCalls, 1);
  });
});
