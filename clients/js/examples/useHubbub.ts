'use client';
// useHubbub: how the Next.js app wraps hubbub.js in a React hook. (An
// example: hubbub's tests type-check it with tsc but do not run it.)
// Copy clients/js/hubbub.js and hubbub.d.ts into the app, e.g. as
// lib/hubbub.js + lib/hubbub.d.ts, and adjust the import below.
//
//   const chat = useHubbub('course:42');
//   chat.messages.map((m) => <p key={m.seq}>{m.from.name}: {contentText(m.content)}</p>)
//   <input onChange={() => chat.notifyTyping()} />
//   chat.send(text)

import { useCallback, useEffect, useRef, useState } from 'react';
import {
  Hubbub,
  type ConnectionState,
  type HubbubError,
  type RoomMessage,
  type User,
} from '../hubbub.js';

/** The chat server, e.g. wss://chat.example.com/ws/chat. */
const HUBBUB_URL = process.env.NEXT_PUBLIC_HUBBUB_URL;

/** Ask the app for a chat token. The route (see next-route.ts) reads the
 * NextAuth session cookie server-side, so nothing else is sent. */
async function fetchChatToken(): Promise<string> {
  const res = await fetch('/api/chat/token', { cache: 'no-store', credentials: 'same-origin' });
  if (!res.ok) throw new Error(`chat token: HTTP ${res.status}`);
  const body: { token: string } = await res.json();
  return body.token;
}

// One client (one WebSocket) for the whole tab, shared by every hook.
let shared: Hubbub | null = null;
const roomUsers = new Map<string, number>(); // room -> hooks using it

export function getChatClient(): Hubbub {
  if (!shared) {
    shared = new Hubbub({ url: HUBBUB_URL, getToken: fetchChatToken });
    void shared.connect().catch(() => {}); // state events report failures
  }
  return shared;
}

/** Call on sign-out: closes the socket; the next hook starts a new client. */
export function closeChatClient(): void {
  shared?.close();
  shared = null;
  roomUsers.clear();
}

export interface RoomChat {
  state: ConnectionState;
  /** The signed-in user (from the server), once connected. */
  me: User | null;
  /** Oldest first, each seq once. */
  messages: RoomMessage[];
  members: User[];
  /** Members typing right now (never this user). */
  typing: User[];
  hasOlder: boolean;
  error: HubbubError | null;
  send(content: string): Promise<void>;
  loadOlder(): Promise<void>;
  /** Call on every keystroke in the composer; the hook throttles. */
  notifyTyping(): void;
}

const PAGE_SIZE = 30;
const TYPING_SHOWN_MS = 6000;
const TYPING_REPEAT_MS = 2500;
const TYPING_IDLE_MS = 3000;

/** Merge messages into a list sorted by seq, dropping repeats. */
function mergeBySeq(list: RoomMessage[], more: RoomMessage[]): RoomMessage[] {
  const bySeq = new Map(list.map((m) => [m.seq, m]));
  for (const m of more) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

export function useHubbub(room: string): RoomChat {
  const client = getChatClient();
  const [state, setState] = useState<ConnectionState>(client.state);
  const [me, setMe] = useState<User | null>(client.user);
  const [messages, setMessages] = useState<RoomMessage[]>([]);
  const [members, setMembers] = useState<User[]>(() => client.members(room));
  const [typingIds, setTypingIds] = useState<string[]>([]);
  const [hasOlder, setHasOlder] = useState(false);
  const [error, setError] = useState<HubbubError | null>(null);
  const typingTimers = useRef(new Map<string, ReturnType<typeof setTimeout>>());

  useEffect(() => {
    let live = true;
    setMessages([]);
    setHasOlder(false);
    setError(null);

    const stopTyping = (userId: string) => {
      clearTimeout(typingTimers.current.get(userId));
      typingTimers.current.delete(userId);
      setTypingIds([...typingTimers.current.keys()]);
    };
    const unsubscribe = [
      client.on('state', (e) => {
        setState(e.state);
        if (e.welcome) setMe(e.welcome.user);
      }),
      client.on('message', (m) => {
        if (m.room !== room) return;
        stopTyping(m.from.id);
        setMessages((list) => mergeBySeq(list, [m]));
      }),
      client.on('members', (e) => {
        if (e.room === room) setMembers(e.members);
      }),
      client.on('typing', (t) => {
        if (t.room !== room) return;
        if (!t.state) return stopTyping(t.user);
        clearTimeout(typingTimers.current.get(t.user));
        typingTimers.current.set(t.user, setTimeout(() => stopTyping(t.user), TYPING_SHOWN_MS));
        setTypingIds([...typingTimers.current.keys()]);
      }),
      client.on('error', (err) => setError(err)),
    ];

    // Join (shared by every hook on this room), then show the newest page.
    // After a reconnect the client rejoins with `since` by itself, so the
    // missed messages arrive as 'message' events: no refetch needed here.
    roomUsers.set(room, (roomUsers.get(room) ?? 0) + 1);
    client
      .join(room)
      .then(() => client.history(room, { limit: PAGE_SIZE }))
      .then((page) => {
        if (!live) return;
        setMessages((list) => mergeBySeq(list, page.messages));
        setHasOlder(page.has_more);
      })
      .catch((err: HubbubError) => { if (live) setError(err); });

    const timers = typingTimers.current;
    return () => {
      live = false;
      unsubscribe.forEach((off) => off());
      timers.forEach((t) => clearTimeout(t));
      timers.clear();
      const users = (roomUsers.get(room) ?? 1) - 1;
      if (users > 0) roomUsers.set(room, users);
      else {
        roomUsers.delete(room);
        void client.leave(room).catch(() => {});
      }
    };
  }, [client, room]);

  const oldestSeq = messages[0]?.seq;
  const loadOlder = useCallback(async () => {
    if (oldestSeq === undefined) return;
    const page = await client.history(room, { before: oldestSeq, limit: PAGE_SIZE });
    setMessages((list) => mergeBySeq(list, page.messages));
    setHasOlder(page.has_more);
  }, [client, room, oldestSeq]);

  const lastTypingSent = useRef(0);
  const idleTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);

  // While disconnected, send() queues: the promise settles after reconnect.
  const send = useCallback(async (content: string) => {
    clearTimeout(idleTimer.current);
    lastTypingSent.current = 0;
    client.typing(room, false);
    await client.send(room, content);
  }, [client, room]);

  const notifyTyping = useCallback(() => {
    const now = Date.now();
    if (now - lastTypingSent.current > TYPING_REPEAT_MS) {
      client.typing(room, true);
      lastTypingSent.current = now;
    }
    clearTimeout(idleTimer.current);
    idleTimer.current = setTimeout(() => {
      lastTypingSent.current = 0;
      client.typing(room, false);
    }, TYPING_IDLE_MS);
  }, [client, room]);

  const typing = typingIds
    .map((id) => members.find((u) => u.id === id))
    .filter((u): u is User => u !== undefined && u.id !== me?.id);

  return { state, me, messages, members, typing, hasOlder, error, send, loadOlder, notifyTyping };
}
