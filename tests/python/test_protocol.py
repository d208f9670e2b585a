"""End-to-end tests of the chat protocol, driven from Python over real sockets.

Every test talks to its own hubbub process (see conftest.py). Nothing here
waits on a timer to decide that something did not happen; a test reads up to
the answer of a request that the server handles after the event in question:

- `Chat.sync` (ping/pong) covers frames the connection itself produced, since
  one connection's frames arrive in order;
- `Chat.room_barrier` (a `presence` request) covers frames that come from a
  room, because a room's owner shard handles requests in order and sends its
  broadcasts and its replies to a connection's shard down one queue. A ping
  does not cover those: with several workers the pong can overtake a
  broadcast that is still on its way between shards.
"""

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

# Longest wait for any single expected frame.
FRAME_TIMEOUT = 5.0
# Longest a whole test scenario may run.
SCENARIO_TIMEOUT = 30.0

REPLY_TYPES = ("ack", "error", "pong", "history")


# ---------------------------------------------------------------- tokens


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _segment(obj: dict) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def make_token(secret: str, sub: str, *, alg: str = "HS256", ttl: int = 3600, **claims) -> str:
    """An HS256 JWT for `sub`; `alg="none"` gives an unsigned one."""
    payload = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    head_and_body = _segment({"typ": "JWT", "alg": alg}) + "." + _segment(payload)
    if alg == "none":
        return head_and_body + "."
    mac = hmac.new(secret.encode(), head_and_body.encode(), hashlib.sha256).digest()
    return head_and_body + "." + _b64url(mac)


# ---------------------------------------------------------------- client


class Chat:
    """One WebSocket connection with a backlog of frames not yet looked at.

    `take` returns the first frame matching a predicate, reading from the
    socket as needed and keeping the frames it passes over in the backlog, so
    no frame is lost and per-connection order is kept.
    """

    _ids = itertools.count(1)

    def __init__(self, ws, label: str):
        self.ws = ws
        self.label = label
        self.backlog = []

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    def new_id(self) -> str:
        return f"{self.label}-{next(self._ids)}"

    async def _read(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError
        raw = await asyncio.wait_for(self.ws.recv(), left)
        assert isinstance(raw, str), f"{self.label}: binary frame {raw!r}"
        return json.loads(raw)

    async def take(self, pred, what: str = "a matching frame") -> dict:
        for i, frame in enumerate(self.backlog):
            if pred(frame):
                return self.backlog.pop(i)
        deadline = time.monotonic() + FRAME_TIMEOUT
        while True:
            try:
                frame = await self._read(deadline)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"{self.label}: no {what} within {FRAME_TIMEOUT}s; unread: {self.backlog}"
                ) from None
            if pred(frame):
                return frame
            self.backlog.append(frame)

    async def next_frame(self) -> dict:
        """The next frame in arrival order, whatever it is."""
        return await self.take(lambda f: True, "frame")

    async def request(self, frame: dict) -> dict:
        """Send `frame` with a fresh id and return the reply carrying that id."""
        rid = self.new_id()
        await self.send({**frame, "id": rid})
        return await self.take(
            lambda f: f.get("id") == rid and f.get("type") in REPLY_TYPES,
            f"reply to {frame.get('type')} {rid}",
        )

    async def sync(self) -> None:
        """Read until the pong of a fresh ping: afterwards the backlog holds
        everything the server sent before answering it."""
        reply = await self.request({"type": "ping"})
        assert reply["type"] == "pong", reply

    async def room_barrier(self, room: str) -> None:
        """Read until the room's owner answers a presence request: afterwards
        the backlog holds every frame the room sent this connection before."""
        reply = await self.request({"type": "presence", "room": room})
        assert reply["type"] == "ack" and reply["room"] == room, reply

    def drain(self, pred) -> list:
        """Remove and return every backlog frame matching `pred`."""
        hits = [f for f in self.backlog if pred(f)]
        self.backlog = [f for f in self.backlog if not pred(f)]
        return hits

    async def join(self, room: str, **extra) -> dict:
        ack = await self.request({"type": "join", "room": room, **extra})
        assert ack["type"] == "ack" and ack["room"] == room, ack
        return ack

    async def close(self) -> None:
        await self.ws.close()


class Session:
    """Opens clients against one server and closes them all at the end."""

    def __init__(self, server):
        self.server = server
        self.clients = []

    def token(self, sub: str, **claims) -> str:
        return make_token(self.server.secret, sub, **claims)

    async def open(self, sub: str, label: str = None, *, welcome: bool = True, **claims) -> Chat:
        ws = await connect(
            f"{self.server.ws_url}?token={self.token(sub, **claims)}",
            open_timeout=FRAME_TIMEOUT,
            close_timeout=2,
            ping_interval=None,
            compression=None,
        )
        chat = Chat(ws, label or sub)
        self.clients.append(chat)
        if welcome:
            frame = await chat.next_frame()
            assert frame["type"] == "welcome", frame
            assert frame["user"]["id"] == sub, frame
        return chat

    async def close_all(self) -> None:
        for chat in self.clients:
            await chat.close()


def scenario(server, body):
    """Run `body(session)` on a fresh event loop, closing its clients after."""

    async def main():
        session = Session(server)
        try:
            await asyncio.wait_for(body(session), SCENARIO_TIMEOUT)
        finally:
            await session.close_all()

    asyncio.run(main())


def wait_connections(server, count: int) -> None:
    """Poll /health until the server counts `count` open connections.

    A closing connection is uncounted just before its rooms are told, so once
    this returns, a request sent to the room is handled after the leave.
    """
    deadline = time.monotonic() + FRAME_TIMEOUT
    while True:
        with urllib.request.urlopen(f"{server.http_base}/health", timeout=FRAME_TIMEOUT) as resp:
            seen = json.load(resp)["connections"]
        if seen == count:
            return
        assert time.monotonic() < deadline, f"/health still counts {seen} connections, not {count}"
        time.sleep(0.01)


async def wait_connections_async(server, count: int) -> None:
    await asyncio.to_thread(wait_connections, server, count)


def member_ids(frame: dict) -> set:
    return {m["id"] for m in frame["members"]}


def is_message(room: str):
    return lambda f: f.get("type") == "message" and f.get("room") == room


# ---------------------------------------------------------------- tests


def test_two_clients_chat_in_a_course_room(server):
    room = "course:42:general"

    async def body(s: Session):
        ana = await s.open("u-ana", name="Ana", role="teacher", rooms=["course:42:*"])
        bo = await s.open("u-bo", name="Bo")

        # The welcome frame tells who the server thinks we are.
        w = await s.open("u-cy", "cy-probe", welcome=False, name="Cy")
        welcome = await w.next_frame()
        assert welcome["type"] == "welcome"
        assert welcome["user"] == {"id": "u-cy", "name": "Cy", "role": "student"}
        assert isinstance(welcome["conn"], str) and welcome["conn"]
        assert abs(welcome["server_time"] - time.time() * 1000) < 60_000
        assert welcome["limits"]["max_message_bytes"] == 4096
        assert welcome["limits"]["messages_per_sec"] == 1000

        # Joins: the member list grows with each joiner.
        first = await ana.join(room)
        assert first["members"] == [{"id": "u-ana", "name": "Ana", "role": "teacher"}]
        assert first["last_seq"] == 0
        second = await bo.join(room)
        assert member_ids(second) == {"u-ana", "u-bo"}
        assert second["last_seq"] == 0

        # A message: the sender's ack and both broadcasts agree.
        mid = ana.new_id()
        await ana.send({"type": "message", "room": room, "content": "1 < 2 & 3 > 2", "id": mid})
        ack = await ana.take(lambda f: f.get("type") == "ack" and f.get("id") == mid, "ack")
        assert ack["room"] == room and ack["seq"] == 1, ack
        assert isinstance(ack["ts"], int)
        seen_by_ana = await ana.take(is_message(room), "own broadcast")
        seen_by_bo = await bo.take(is_message(room), "broadcast")
        assert seen_by_ana == seen_by_bo
        assert seen_by_bo["seq"] == ack["seq"] and seen_by_bo["ts"] == ack["ts"]
        assert seen_by_bo["id"] == mid
        assert seen_by_bo["from"] == {"id": "u-ana", "name": "Ana", "role": "teacher"}
        assert seen_by_bo["content"] == "1 &lt; 2 &amp; 3 &gt; 2"

        # A reply from Bo takes the next seq, and markup never survives.
        ack2 = await bo.request({"type": "message", "room": room, "content": "<script>x()</script>"})
        assert ack2["type"] == "ack" and ack2["seq"] == 2, ack2
        for c in (ana, bo):
            frame = await c.take(is_message(room), "second broadcast")
            assert frame["seq"] == 2 and frame["from"]["id"] == "u-bo"
            assert "<" not in frame["content"] and "&lt;script&gt;" in frame["content"]

        # Each side saw each message exactly once.
        for c in (ana, bo):
            await c.room_barrier(room)
            assert c.drain(is_message(room)) == []

    scenario(server, body)


def test_bearer_subprotocol_login_selects_bearer(server):
    async def body(s: Session):
        token = s.token("u-sub", name="Sub")
        async with connect(
            server.ws_url,
            subprotocols=["bearer", token],
            open_timeout=FRAME_TIMEOUT,
            ping_interval=None,
        ) as ws:
            assert ws.subprotocol == "bearer"
            chat = Chat(ws, "sub")
            welcome = await chat.next_frame()
            assert welcome["type"] == "welcome" and welcome["user"]["id"] == "u-sub"
            await chat.sync()

        # The Authorization header works too, and selects no subprotocol.
        async with connect(
            server.ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=FRAME_TIMEOUT,
            ping_interval=None,
        ) as ws:
            assert ws.subprotocol is None
            welcome = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
            assert welcome["type"] == "welcome" and welcome["user"]["id"] == "u-sub"

    scenario(server, body)


def _bad_tokens(secret: str) -> dict:
    good = make_token(secret, "u-x")
    return {
        "wrong secret": make_token(secret + "!", "u-x"),
        "alg none": make_token(secret, "u-x", alg="none"),
        "alg none keeping a real signature": make_token(secret, "u-x", alg="none")
        + good.rsplit(".", 1)[1],
        "expired": make_token(secret, "u-x", ttl=-3600),
        "tampered payload": good.split(".")[0]
        + "."
        + _segment({"sub": "u-admin", "exp": int(time.time()) + 3600, "role": "admin"})
        + "."
        + good.split(".")[2],
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize("transport", ["query", "subprotocol"])
def test_bad_tokens_are_refused_with_401(server, transport):
    async def refused_status(token: str):
        if transport == "query":
            kwargs = {"uri": f"{server.ws_url}?token={token}"}
        else:
            kwargs = {"uri": server.ws_url, "subprotocols": ["bearer", token]}
        try:
            ws = await connect(**kwargs, open_timeout=FRAME_TIMEOUT, ping_interval=None)
        except InvalidStatus as e:
            return e.response.status_code
        await ws.close()
        return "accepted"

    async def body(s: Session):
        results = {what: await refused_status(tok) for what, tok in _bad_tokens(server.secret).items()}
        assert results == {what: 401 for what in results}
        # The same server still lets a good token in.
        await s.open("u-fine")

    scenario(server, body)


def test_direct_messages_reach_every_connection_and_history(server):
    def is_dm(f):
        return f.get("type") == "dm"

    async def body(s: Session):
        ana1 = await s.open("u-ana", "ana1", name="Ana")
        ana2 = await s.open("u-ana", "ana2", name="Ana")
        bo = await s.open("u-bo", name="Bo")
        cy = await s.open("u-cy", name="Cy")

        mid = ana1.new_id()
        await ana1.send({"type": "dm", "to": "u-bo", "content": "hi <Bo>", "id": mid})
        ack = await ana1.take(lambda f: f.get("type") == "ack" and f.get("id") == mid, "dm ack")
        assert isinstance(ack["seq"], int) and isinstance(ack["ts"], int), ack

        # Every connection of both users gets it, except the sending one,
        # which has the ack ("the sender's other connections", PROTOCOL.md).
        copies = [await c.take(is_dm, "dm") for c in (ana2, bo)]
        assert copies[0] == copies[1]
        dm = copies[0]
        assert dm["seq"] == ack["seq"] and dm["ts"] == ack["ts"] and dm["id"] == mid
        assert dm["from"] == {"id": "u-ana", "name": "Ana", "role": "student"}
        assert dm["to"] == "u-bo"
        assert dm["content"] == "hi &lt;Bo&gt;"

        # The answer goes the other way and takes the pair's next seq.
        back = await bo.request({"type": "dm", "to": "u-ana", "content": "hello Ana"})
        assert back["type"] == "ack" and back["seq"] == ack["seq"] + 1, back
        for c in (ana1, ana2):
            frame = await c.take(is_dm, "reply dm")
            assert frame["from"]["id"] == "u-bo" and frame["to"] == "u-ana"
            assert frame["seq"] == back["seq"]

        # A third user is not told about it. (No request of Cy's passes through
        # the pair's owner; by now both DMs have reached three connections, so
        # a stray copy for Cy would have been queued long before this pong.)
        await cy.sync()
        assert cy.drain(is_dm) == []
        await bo.sync()
        assert bo.drain(is_dm) == [], "the sending connection got its own DM back"

        # History of the pair, from either side, newest first.
        for asker, other in ((bo, "u-ana"), (ana2, "u-bo")):
            page = await asker.request({"type": "history", "with": other})
            assert page["type"] == "history", page
            assert page["with"] == other
            assert [m["seq"] for m in page["messages"]] == [back["seq"], ack["seq"]]
            assert [m["content"] for m in page["messages"]] == ["hello Ana", "hi &lt;Bo&gt;"]
            assert page["has_more"] is False

        # A limit of one gives the newest message and says there is more.
        page = await bo.request({"type": "history", "with": "u-ana", "limit": 1})
        assert [m["seq"] for m in page["messages"]] == [back["seq"]]
        assert page["has_more"] is True

    scenario(server, body)


def test_typing_and_presence(server):
    room = "course:7:lab"

    def is_typing(f):
        return f.get("type") == "typing"

    def is_presence(f):
        return f.get("type") == "presence"

    async def body(s: Session):
        ana = await s.open("u-ana", name="Ana")
        await ana.join(room)

        # Bo comes online: Ana is told, with his user record.
        bo1 = await s.open("u-bo", "bo1", name="Bo")
        ack = await bo1.join(room)
        assert member_ids(ack) == {"u-ana", "u-bo"}
        online = await ana.take(is_presence, "online event")
        assert online == {
            "type": "presence",
            "room": room,
            "user": {"id": "u-bo", "name": "Bo", "role": "student"},
            "status": "online",
        }

        # A second connection of Bo's is not news.
        bo2 = await s.open("u-bo", "bo2", name="Bo")
        ack = await bo2.join(room)
        assert member_ids(ack) == {"u-ana", "u-bo"}
        await ana.room_barrier(room)
        assert ana.drain(is_presence) == []

        # The presence request lists each online user once.
        listed = await ana.request({"type": "presence", "room": room})
        assert listed["type"] == "ack", listed
        assert sorted(m["id"] for m in listed["members"]) == ["u-ana", "u-bo"]

        # Typing reaches the other members but not the typist's connections.
        await bo1.send({"type": "typing", "room": room, "state": True})
        typing = await ana.take(is_typing, "typing event")
        assert typing == {"type": "typing", "room": room, "user": "u-bo", "state": True}
        await bo1.send({"type": "typing", "room": room, "state": False})
        typing = await ana.take(is_typing, "typing stop")
        assert typing["state"] is False
        for c in (bo1, bo2):
            await c.room_barrier(room)
            assert c.drain(is_typing) == []

        # Typing is never acked, even with an id.
        await ana.send({"type": "typing", "room": room, "state": True, "id": "t-1"})
        await ana.room_barrier(room)
        assert [f for f in ana.backlog if f.get("id") == "t-1"] == []
        assert ana.drain(is_typing) == []
        seen_by_bo = await bo2.take(is_typing, "Ana's typing")
        assert seen_by_bo == {"type": "typing", "room": room, "user": "u-ana", "state": True}

        # Closing one of Bo's two connections: he is still online.
        await bo1.close()
        await wait_connections_async(server, 2)
        listed = await ana.request({"type": "presence", "room": room})
        assert member_ids(listed) == {"u-ana", "u-bo"}
        assert ana.drain(is_presence) == []

        # Closing the last one: offline, once.
        await bo2.close()
        offline = await ana.take(is_presence, "offline event")
        assert offline == {**online, "status": "offline"}
        await wait_connections_async(server, 1)
        listed = await ana.request({"type": "presence", "room": room})
        assert member_ids(listed) == {"u-ana"}
        assert ana.drain(is_presence) == []

    scenario(server, body)


def test_resume_after_reconnect_gets_exactly_the_missed_messages(server):
    room = "course:9:resume"

    async def body(s: Session):
        ana = await s.open("u-ana")
        bo = await s.open("u-bo")
        await ana.join(room)
        await bo.join(room)

        for i in range(3):
            ack = await ana.request({"type": "message", "room": room, "content": f"before {i}"})
            assert ack["type"] == "ack"
        seen = [await bo.take(is_message(room), "early message") for _ in range(3)]
        last_seen = seen[-1]["seq"]
        assert [f["seq"] for f in seen] == [1, 2, 3]
        await bo.close()

        missed = []
        for i in range(5):
            ack = await ana.request({"type": "message", "room": room, "content": f"missed {i}"})
            missed.append(ack["seq"])
        assert missed == [4, 5, 6, 7, 8]

        bo = await s.open("u-bo", "bo-again")
        ack = await bo.join(room, since=last_seen)
        assert ack["last_seq"] == 8, ack

        replay = [await bo.take(is_message(room), "replayed message") for _ in range(5)]
        assert [f["seq"] for f in replay] == missed
        assert [f["content"] for f in replay] == [f"missed {i}" for i in range(5)]

        live = await ana.request({"type": "message", "room": room, "content": "live"})
        frame = await bo.take(is_message(room), "live message")
        assert frame["seq"] == live["seq"] == 9 and frame["content"] == "live"

        # Nothing else: no duplicate of the replay, no earlier message.
        await bo.room_barrier(room)
        assert bo.drain(is_message(room)) == []

    scenario(server, body)


def test_history_and_seq_survive_a_restart(server):
    room = "course:3:persist"
    contents = [f"kept {i}" for i in range(4)]

    async def before(s: Session):
        ana = await s.open("u-ana", name="Ana")
        await ana.join(room)
        for text in contents:
            ack = await ana.request({"type": "message", "room": room, "content": text})
            assert ack["type"] == "ack"
        await ana.take(lambda f: is_message(room)(f) and f["seq"] == 4, "last own message")

    async def after(s: Session):
        bo = await s.open("u-bo")
        page = await bo.request({"type": "history", "room": room})
        assert page["type"] == "history" and page["room"] == room, page
        assert [m["seq"] for m in page["messages"]] == [4, 3, 2, 1]
        assert [m["content"] for m in page["messages"]] == contents[::-1]
        assert all(m["from"]["id"] == "u-ana" for m in page["messages"])
        assert page["has_more"] is False

        ack = await bo.join(room)
        assert ack["last_seq"] == 4
        posted = await bo.request({"type": "message", "room": room, "content": "after restart"})
        assert posted["type"] == "ack" and posted["seq"] == 5, posted

        # Paging with `before` walks back from the given seq.
        page = await bo.request({"type": "history", "room": room, "before": 3, "limit": 1})
        assert [m["seq"] for m in page["messages"]] == [2]
        assert page["has_more"] is True

    scenario(server, before)
    server.restart()
    scenario(server, after)


def test_bad_input_is_answered_and_the_connection_survives(server):
    async def body(s: Session):
        ana = await s.open("u-ana")

        await ana.send_raw("{this is not json")
        err = await ana.take(lambda f: f.get("type") == "error", "error for invalid JSON")
        assert err["code"] == "bad_request", err

        err = await ana.request({"type": "shout", "room": "x"})
        assert err["type"] == "error" and err["code"] == "bad_request", err

        err = await ana.request({"type": "message", "room": "course:1:nope", "content": "hi"})
        assert err["type"] == "error" and err["code"] == "not_joined", err

        await ana.join("course:1:big")
        err = await ana.request({"type": "message", "room": "course:1:big", "content": "x" * 5000})
        assert err["type"] == "error" and err["code"] == "too_large", err

        # Still usable: ping, and a normal message in the same room.
        pong = await ana.request({"type": "ping"})
        assert pong["type"] == "pong"
        ok = await ana.request({"type": "message", "room": "course:1:big", "content": "x" * 4000})
        assert ok["type"] == "ack" and ok["seq"] == 1, ok

        # None of the refused requests was broadcast.
        await ana.room_barrier("course:1:big")
        assert [f["seq"] for f in ana.drain(is_message("course:1:big"))] == [1]

    scenario(server, body)
