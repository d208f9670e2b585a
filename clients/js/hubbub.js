// hubbub.js: a small, dependency-free client for the hubbub chat server
// (chat protocol v1). Works in browsers and, given a WebSocket constructor
// such as the `ws` package, in Node.
//
//   import { Hubbub } from '/hubbub.js';
//   const getToken = async () => (await (await fetch('/api/chat/token')).json()).token;
//   const chat = new Hubbub({ url: 'wss://chat.example.com/ws/chat', getToken });
//   chat.on('message', (m) => console.log(m.from.name, m.content));
//   await chat.connect();
//   await chat.join('course:42');
//   await chat.send('course:42', 'hello');

/** Close codes after which reconnecting would only repeat the failure. */
const FINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);

/** An `error` frame from the server (or a local failure) as an Error. */
export class HubbubError extends Error {
  constructor(code, message, retryAfterMs, frame) {
    super(message || code);
    this.name = 'HubbubError';
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.frame = frame;
  }
}

/** Delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, i.e. uniform in [0, min(maxMs, baseMs * 2^attempt)). */
export function backoffDelay(attempt, { baseMs = 500, maxMs = 30000 } = {}, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', '#x27': "'", '#x2F': '/', '#39': "'", '#47': '/' };

/** The text as typed, from `content` that the server HTML-escaped (its
 * default `escape` content policy). Only for text rendering (textContent). */
export function contentText(content) {
  return String(content).replace(/&(amp|lt|gt|quot|#x27|#x2F|#39|#47);/g, (_, name) => ENTITIES[name]);
}

/** How far below the newest seq a message may arrive and still be shown. */
const RECENT_SEQS = 1024;

/**
 * True the first time `seq` is seen in a room or DM conversation `s`. A seq
 * below the newest is new if it was not seen: in cluster mode a message can
 * arrive late (after the server gave up waiting for it), and DMs sent
 * through two nodes at once can arrive out of order.
 */
function firstSight(s, seq) {
  if (s.lastSeq != null && seq <= s.lastSeq) {
    if (seq <= s.lastSeq - RECENT_SEQS || s.recent.has(seq)) return false;
  } else {
    s.lastSeq = seq;
  }
  s.recent.add(seq);
  if (s.recent.size > 2 * RECENT_SEQS) {
    for (const x of s.recent) if (x <= s.lastSeq - RECENT_SEQS) s.recent.delete(x);
  }
  return true;
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new TypeError('hubbub: `url` is required outside a browser');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws/chat`;
}

function randomPrefix() {
  const bytes = new Uint8Array(6);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class Hubbub {
  constructor(options = {}) {
    if (typeof options.getToken !== 'function') throw new TypeError('hubbub: `getToken` is required');
    this.url = options.url || defaultUrl();
    this.getToken = options.getToken;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('hubbub: no WebSocket; pass one as `WebSocket`');
    this.tokenIn = options.tokenIn || 'query';
    this.backoff = { baseMs: 500, maxMs: 30000, stableMs: 10000, ...options.backoff };
    this.heartbeatMs = options.heartbeatMs ?? 20000;

    this.state = 'closed';
    this.user = null; // from the welcome frame
    this.limits = null;

    this._ws = null;
    this._stopped = true; // no connection wanted (before connect(), after close())
    this._closedForGood = false; // close() or a final close code: requests are refused
    this._attempt = 0;
    this._dials = 0;
    this._timers = { retry: 0, stable: 0, heartbeat: 0 };
    this._awaitingPong = false;
    this._rooms = new Map(); // room -> { lastSeq, synced, members: Map }
    this._dms = new Map(); // peer id -> { lastSeq, buffer, own }
    this._pending = new Map(); // request id -> { msg, resolve, reject }
    this._listeners = new Map();
    this._openWaiters = [];
    this._prefix = randomPrefix();
    this._counter = 0;
    this._onOnline = () => { if (this._timers.retry) this._dial(); };
  }

  // ---- events --------------------------------------------------------------

  /** Listen for 'message', 'dm', 'typing', 'presence', 'members', 'state' or
   * 'error'. Returns a function that removes the listener. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) { this._listeners.get(type)?.delete(fn); }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try { fn(detail); } catch (err) { console.error('hubbub listener failed:', err); }
    }
  }

  // ---- connection ----------------------------------------------------------

  /** Start connecting (and keep reconnecting). Resolves with the user from
   * the first welcome; rejects if the client is closed for good before. */
  connect() {
    if (this.state === 'open') return Promise.resolve(this.user);
    const opened = new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject }));
    if (this._stopped) {
      this._stopped = false;
      this._closedForGood = false;
      globalThis.addEventListener?.('online', this._onOnline);
      this._dial();
    }
    return opened;
  }

  /** Close the connection and stop reconnecting. Pending requests are rejected. */
  close() {
    this._dials++;
    const ws = this._ws;
    this._detach();
    if (ws) try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    this._finish(1000, 'client closed');
  }

  async _dial() {
    clearTimeout(this._timers.retry);
    this._timers.retry = 0;
    const dial = ++this._dials; // a close() or newer dial makes this one stale
    this._setState('connecting');
    let token;
    try {
      token = await this.getToken();
    } catch (err) {
      if (this._stopped || dial !== this._dials) return;
      this._emit('error', new HubbubError('token', `token getter failed: ${err?.message || err}`));
      this._retry(1006, 'token getter failed');
      return;
    }
    if (this._stopped || dial !== this._dials) return;
    let ws;
    try {
      if (this.tokenIn === 'protocol') {
        ws = new this.WebSocket(this.url, ['bearer', token]);
      } else {
        const sep = this.url.includes('?') ? '&' : '?';
        ws = new this.WebSocket(`${this.url}${sep}token=${encodeURIComponent(token)}`);
      }
    } catch (err) {
      this._emit('error', new HubbubError('connect', String(err?.message || err)));
      this._retry(1006, 'could not create the WebSocket');
      return;
    }
    this._ws = ws;
    ws.onmessage = (e) => { if (this._ws === ws) this._onFrame(e.data); };
    ws.onclose = (e) => { if (this._ws === ws) this._onClose(e.code, e.reason); };
    ws.onerror = () => {}; // a close event follows and decides what to do
  }

  _detach() {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = null;
      ws.onerror = () => {}; // `ws` in Node throws on an unhandled error event
    }
    for (const t of Object.values(this._timers)) clearTimeout(t);
    this._timers = { retry: 0, stable: 0, heartbeat: 0 };
  }

  _onClose(code, reason) {
    this._detach();
    if (this._stopped) return;
    if (FINAL_CLOSE_CODES.has(code) || (code >= 4000 && code < 5000)) this._finish(code, reason);
    else this._retry(code, reason);
  }

  /** Give up on the current socket (heartbeat missed) and reconnect. */
  _drop(reason) {
    const ws = this._ws;
    this._detach();
    try { ws?.close(4000, reason); } catch { /* ignore */ }
    this._retry(1006, reason);
  }

  _retry(code, reason) {
    const delay = backoffDelay(this._attempt, this.backoff);
    this._attempt++;
    this._setState('closed', { code, reason, final: false, retryInMs: delay });
    this._timers.retry = setTimeout(() => this._dial(), delay);
  }

  _finish(code, reason) {
    this._stopped = true;
    this._closedForGood = true;
    globalThis.removeEventListener?.('online', this._onOnline);
    const err = new HubbubError('closed', `connection closed (${code}${reason ? ` ${reason}` : ''})`);
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
    for (const w of this._openWaiters.splice(0)) w.reject(err);
    this._setState('closed', { code, reason, final: true, retryInMs: null });
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit('state', { state, ...detail });
  }

  _heartbeat() {
    clearTimeout(this._timers.heartbeat);
    if (!this.heartbeatMs) return;
    this._timers.heartbeat = setTimeout(() => {
      if (this._awaitingPong) return this._drop('heartbeat timeout');
      this._awaitingPong = true;
      this._raw({ type: 'ping' });
      this._heartbeat();
    }, this.heartbeatMs);
  }

  _raw(msg) {
    try { this._ws?.send(JSON.stringify(msg)); } catch { /* the close event follows */ }
  }

  // ---- incoming frames -----------------------------------------------------

  _onFrame(data) {
    this._awaitingPong = false; // any frame shows the connection is alive
    let f;
    try { f = JSON.parse(typeof data === 'string' ? data : String(data)); } catch { return; }
    switch (f.type) {
      case 'welcome': return this._onWelcome(f);
      case 'message': return this._onMessage(f);
      case 'dm': return this._onDm(f);
      case 'typing': return this._emit('typing', f);
      case 'presence': return this._onPresence(f);
      case 'ack': case 'history': case 'pong': return this._settle(f, null);
      case 'error': {
        const err = new HubbubError(f.code, f.message, f.retry_after_ms, f);
        if (f.id && this._pending.has(f.id)) return this._settle(f, err);
        return this._emit('error', err);
      }
    }
  }

  _onWelcome(f) {
    this.user = f.user;
    this.limits = f.limits;
    this._timers.stable = setTimeout(() => { this._attempt = 0; }, this.backoff.stableMs);
    this._heartbeat();

    // Before anything else goes out: rejoin every room (with `since`, so that
    // what was missed is replayed), then resend what is still unanswered,
    // oldest first. The state is not 'open' yet, so nothing jumps the queue.
    for (const [room, r] of this._rooms) {
      if (!r.joinId || !this._pending.has(r.joinId)) this._request({ type: 'join', room }).catch(() => {});
    }
    const queued = [...this._pending.values()];
    for (const p of queued) if (p.msg.type === 'join') this._transmit(p);
    for (const p of queued) {
      if (p.msg.type === 'leave') this._settle({ type: 'ack', id: p.msg.id, room: p.msg.room }, null);
      else if (p.msg.type !== 'join') this._transmit(p);
    }
    this._setState('open', { welcome: f });
    for (const [peer, d] of this._dms) if (!d.buffer) this._catchUpDms(peer, d);
    for (const w of this._openWaiters.splice(0)) w.resolve(this.user);
  }

  _onMessage(f) {
    const r = this._rooms.get(f.room);
    if (!r || !firstSight(r, f.seq)) return; // not ours, or seen already
    this._emit('message', f);
  }

  _onDm(f) {
    const peer = f.from?.id === this.user?.id ? f.to : f.from?.id;
    const d = this._dmState(peer);
    if (d.buffer) return void d.buffer.push(f); // a catch-up is in flight
    // The sending connection gets no copy of its own DM, only the ack; so a
    // catch-up page must skip what this connection sent itself.
    if (d.own.delete(f.seq)) return void firstSight(d, f.seq);
    if (!firstSight(d, f.seq)) return;
    for (const seq of d.own) if (seq <= d.lastSeq - RECENT_SEQS) d.own.delete(seq);
    this._emit('dm', f);
  }

  _dmState(peer) {
    if (!this._dms.has(peer)) {
      this._dms.set(peer, { lastSeq: 0, recent: new Set(), buffer: null, own: new Set() });
    }
    return this._dms.get(peer);
  }

  /** After a reconnect, fetch the DMs with `peer` that came while we were away. */
  _catchUpDms(peer, d) {
    d.buffer = [];
    // The page holds the conversation's past too: only what is newer than
    // what this client had seen when it went away is missed.
    const seen = d.lastSeq;
    this._request({ type: 'history', with: peer, limit: 100 })
      .then((page) => page.messages.filter((m) => m.seq > seen), () => [])
      .then((older) => {
        const all = [...older, ...d.buffer].sort((a, b) => a.seq - b.seq);
        d.buffer = null;
        for (const m of all) this._onDm(m);
      });
  }

  _onPresence(f) {
    const r = this._rooms.get(f.room);
    if (r) {
      if (f.status === 'online') r.members.set(f.user.id, f.user);
      else r.members.delete(f.user.id);
      this._emit('members', { room: f.room, members: [...r.members.values()] });
    }
    this._emit('presence', f);
  }

  _setMembers(room, members) {
    const r = this._rooms.get(room);
    if (!r || !Array.isArray(members)) return;
    r.members = new Map(members.map((u) => [u.id, u]));
    this._emit('members', { room, members: [...r.members.values()] });
  }

  _settle(f, err) {
    const p = f.id && this._pending.get(f.id);
    if (!p) return;
    const { msg } = p;
    if (msg.type === 'join') {
      const r = this._rooms.get(msg.room);
      if (err?.code === 'rate_limited' && r) {
        // Joining is idempotent: try again when the server says, same promise.
        setTimeout(() => { if (this.state === 'open' && this._pending.get(msg.id) === p) this._transmit(p); },
          err.retryAfterMs || 1000);
        return;
      }
      if (r && r.joinId === msg.id) r.joinId = null;
      if (err) {
        this._rooms.delete(msg.room); // the server refused: this room is not joined
        if (!p.user) this._emit('error', err); // an automatic rejoin failed
      } else if (r) {
        // The first join says where live delivery starts; on a rejoin the
        // replay after the ack brings lastSeq up to date by itself.
        if (!r.synced) r.lastSeq = Math.max(r.lastSeq ?? 0, f.last_seq ?? 0);
        r.synced = true;
        this._setMembers(msg.room, f.members);
      }
    } else if (msg.type === 'presence' && !err) {
      this._setMembers(msg.room, f.members);
    } else if (msg.type === 'dm' && !err) {
      this._dmState(msg.to).own.add(f.seq);
    }
    this._pending.delete(f.id);
    if (!err) return p.resolve(f);
    err.request = msg;
    p.reject(err);
  }

  // ---- requests ------------------------------------------------------------

  _request(fields, fromUser = false) {
    const id = `${this._prefix}-${(++this._counter).toString(36)}`;
    const msg = { ...fields, id };
    let settle;
    const promise = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    promise.id = id;
    if (this._closedForGood) {
      settle.reject(new HubbubError('closed', 'the client is closed'));
      return promise;
    }
    const p = { msg, user: fromUser, ...settle };
    this._pending.set(id, p);
    if (msg.type === 'join') this._rooms.get(msg.room).joinId = id;
    if (this.state === 'open') this._transmit(p);
    return promise;
  }

  _transmit(p) {
    if (p.msg.type === 'join') {
      const r = this._rooms.get(p.msg.room);
      if (r?.synced && r.lastSeq != null) p.msg.since = r.lastSeq;
    }
    this._raw(p.msg);
  }

  /** Subscribe to a room. Resolves with the ack (`members`, `last_seq`). The
   * room is rejoined after every reconnect until `leave`. */
  join(room) {
    if (!this._rooms.has(room)) {
      this._rooms.set(room, {
        lastSeq: null, recent: new Set(), synced: false, members: new Map(), joinId: null,
      });
    }
    return this._request({ type: 'join', room }, true);
  }

  leave(room) {
    const r = this._rooms.get(room);
    this._rooms.delete(room);
    const join = r?.joinId && this._pending.get(r.joinId);
    if (join) {
      this._pending.delete(r.joinId);
      join.reject(new HubbubError('cancelled', 'left before the join was answered'));
    }
    if (this.state !== 'open' && !this._closedForGood) return Promise.resolve({ type: 'ack', room });
    return this._request({ type: 'leave', room }, true);
  }

  /** Post to a joined room. The promise (which carries the request `.id`,
   * also found on the echoed message) resolves with the ack: `seq`, `ts`. */
  send(room, content) {
    return this._request({ type: 'message', room, content }, true);
  }

  dm(to, content) {
    return this._request({ type: 'dm', to, content }, true);
  }

  /** Typing state in a room (when `target` is a joined room or `{room}`) or
   * towards a user (`{to}` or any other string). Not queued, never acked. */
  typing(target, state = true) {
    const msg = { type: 'typing', state: Boolean(state) };
    if (typeof target === 'object') Object.assign(msg, target.room ? { room: target.room } : { to: target.to });
    else if (this._rooms.has(target)) msg.room = target;
    else msg.to = target;
    if (this.state === 'open') this._raw(msg);
  }

  /** One history page, newest first: `history('course:42', { before, limit })`
   * or, for DMs, `history({ with: 'u2' }, ...)`. */
  history(target, { before, limit } = {}) {
    const where = typeof target === 'string' ? { room: target } : { with: target.with };
    return this._request({ type: 'history', ...where, before, limit }, true);
  }

  presence(room) {
    return this._request({ type: 'presence', room }, true);
  }

  ping() {
    return this._request({ type: 'ping' }, true);
  }

  /** The online members of a joined room, as last heard. */
  members(room) {
    return [...(this._rooms.get(room)?.members.values() || [])];
  }

  /** The newest seq seen in a joined room (undefined before its first ack). */
  lastSeq(room) {
    return this._rooms.get(room)?.lastSeq ?? undefined;
  }

  /** The rooms this client is in (or will rejoin). */
  rooms() {
    return [...this._rooms.keys()];
  }
}

export default Hubbub;
