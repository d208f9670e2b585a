// Type declarations for hubbub.js (chat protocol v1).

export interface User {
  id: string;
  name: string;
  role: 'student' | 'teacher' | 'admin';
}

export interface Limits {
  max_message_bytes: number;
  messages_per_sec: number;
  message_burst?: number;
  max_rooms?: number;
}

export interface Welcome {
  type: 'welcome';
  conn: string;
  user: User;
  server_time: number;
  limits: Limits;
}

/** A message posted to a room. `content` is what the server stored, after
 * its content policy (HTML-escaped by default: see `contentText`). */
export interface RoomMessage {
  type: 'message';
  room: string;
  seq: number;
  ts: number;
  from: User;
  content: string;
  /** The sender's request id, when it gave one. */
  id?: string;
}

export interface DirectMessage {
  type: 'dm';
  seq: number;
  ts: number;
  from: User;
  /** User id of the recipient. */
  to: string;
  content: string;
  id?: string;
}

export interface TypingEvent {
  type: 'typing';
  /** Set for typing in a room. */
  room?: string;
  /** Set for typing towards a user (a DM). */
  to?: string;
  /** Id of the user who types. */
  user: string;
  state: boolean;
}

export interface PresenceEvent {
  type: 'presence';
  room: string;
  user: User;
  status: 'online' | 'offline';
}

export interface MembersEvent {
  room: string;
  /** Everyone online in the room, this user included. */
  members: User[];
}

export type ConnectionState = 'connecting' | 'open' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  /** With 'open': the server's welcome frame. */
  welcome?: Welcome;
  /** With 'closed': the WebSocket close code and reason. */
  code?: number;
  reason?: string;
  /** With 'closed': true when the client will not reconnect. */
  final?: boolean;
  /** With 'closed' and not final: milliseconds until the next attempt. */
  retryInMs?: number | null;
}

/** The ack of a message or DM (`room` is `dm:<a>:<b>` for a DM). */
export interface PostedAck {
  type: 'ack';
  id: string;
  room: string;
  seq: number;
  ts: number;
}

/** The ack of a join or presence request. */
export interface MembersAck {
  type: 'ack';
  id: string;
  room: string;
  members: User[];
  /** Join only: the room's newest stored seq. */
  last_seq?: number;
}

export interface LeaveAck {
  type: 'ack';
  id?: string;
  room: string;
}

export interface HistoryPage<M = RoomMessage | DirectMessage> {
  type: 'history';
  id: string;
  room?: string;
  with?: string;
  /** Newest first. */
  messages: M[];
  has_more: boolean;
}

export interface Pong {
  type: 'pong';
  id?: string;
}

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_joined'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  // raised by the client itself:
  | 'closed'
  | 'cancelled'
  | 'token'
  | 'connect';

export class HubbubError extends Error {
  constructor(code: ErrorCode, message?: string, retryAfterMs?: number, frame?: unknown);
  readonly code: ErrorCode;
  /** With 'rate_limited': how long to wait before trying again. */
  readonly retryAfterMs?: number;
  /** The server's error frame, when there was one. */
  readonly frame?: unknown;
  /** The request that was refused, when there was one. */
  request?: Record<string, unknown>;
}

/** A promise of a request's answer that also carries the request id. */
export type Request<T> = Promise<T> & { id: string };

/** The smallest WebSocket the client needs: the browser's, or `ws` in Node. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface BackoffOptions {
  /** First reconnect delay ceiling. Default 500 ms. */
  baseMs?: number;
  /** Largest delay ceiling. Default 30 000 ms. */
  maxMs?: number;
  /** A connection open this long resets the backoff. Default 10 000 ms. */
  stableMs?: number;
}

export interface HubbubOptions {
  /** Called before every (re)connect: return a fresh token each time. */
  getToken: () => string | Promise<string>;
  /** `wss://host/ws/chat`. Default: `/ws/chat` on the page's own host. */
  url?: string;
  /** Default: the global WebSocket. In Node 20, pass `ws`'s WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** How the token travels: `?token=` (default) or the
   * `Sec-WebSocket-Protocol: bearer, <token>` pair. */
  tokenIn?: 'query' | 'protocol';
  backoff?: BackoffOptions;
  /** Send a ping after this long; reconnect when a whole interval after it
   * passes without any frame. 0 turns it off. Default 20 000 ms. */
  heartbeatMs?: number;
}

export interface HubbubEvents {
  message: RoomMessage;
  dm: DirectMessage;
  typing: TypingEvent;
  presence: PresenceEvent;
  members: MembersEvent;
  state: StateEvent;
  error: HubbubError;
}

export class Hubbub {
  constructor(options: HubbubOptions);

  readonly url: string;
  readonly state: ConnectionState;
  /** The signed-in user, from the latest welcome. */
  readonly user: User | null;
  readonly limits: Limits | null;

  on<K extends keyof HubbubEvents>(type: K, listener: (event: HubbubEvents[K]) => void): () => void;
  off<K extends keyof HubbubEvents>(type: K, listener: (event: HubbubEvents[K]) => void): void;

  /** Start connecting and keep reconnecting; resolves at the first welcome. */
  connect(): Promise<User>;
  /** Close and stop reconnecting; pending requests reject with 'closed'. */
  close(): void;

  join(room: string): Request<MembersAck>;
  leave(room: string): Promise<LeaveAck>;
  send(room: string, content: string): Request<PostedAck>;
  /** The sending connection gets the ack only, no 'dm' event of its own. */
  dm(to: string, content: string): Request<PostedAck>;
  typing(target: string | { room: string } | { to: string }, state?: boolean): void;
  history(room: string, options?: { before?: number; limit?: number }): Request<HistoryPage<RoomMessage>>;
  history(target: { with: string }, options?: { before?: number; limit?: number }): Request<HistoryPage<DirectMessage>>;
  presence(room: string): Request<MembersAck>;
  ping(): Request<Pong>;

  /** Online members of a joined room, as last heard. */
  members(room: string): User[];
  /** Newest seq seen in a joined room. */
  lastSeq(room: string): number | undefined;
  /** Rooms joined (or to be rejoined after a reconnect). */
  rooms(): string[];
}

/** Reconnect delay for attempt `attempt` (0-based): full jitter. */
export function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;

/** Undo the server's HTML escaping, for rendering with textContent only. */
export function contentText(content: string): string;

export default Hubbub;
