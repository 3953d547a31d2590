"""A fake Discord on loopback, written from https://discord.com/developers/docs: the Gateway
(a real websocket server speaking the Gateway protocol), the REST endpoints the bot uses, and an
interactions client that signs with a real Ed25519 key.

The Gateway (`ws_url`), as Discord documents it:

- HELLO (op 10, `heartbeat_interval`) on connect; then IDENTIFY (op 2: the token, intents; a
  wrong token closes 4004, a privileged intent not enabled for the app closes 4014) answered
  with READY (`session_id`, `resume_gateway_url`, the bot's `user`), or RESUME (op 6: token,
  session_id, seq) answered with every event of the session after `seq`, then RESUMED; an
  unknown session gets INVALID_SESSION (op 9, false);
- heartbeats (op 1, d: the last seq) acknowledged with op 11; a connection without a heartbeat
  for twice the interval is closed 4009 (its session is then gone);
- dispatches (op 0) numbered per session; a session outlives its connection: what is
  dispatched while no one is connected waits for a RESUME;
- without the privileged MESSAGE_CONTENT intent, a server message's `content` (and
  attachments, embeds) is empty unless it mentions the bot; GUILD_MESSAGES and DIRECT_MESSAGES
  decide which MESSAGE_CREATE are sent at all.

Knobs: `drop()` (the TCP connection cut, no close frame), `drop_after(n)` (cut after the next
n dispatches: mid-stream), `request_reconnect()` (op 7), `invalidate(resumable)` (op 9),
`pause_acks(True)` (heartbeats unacknowledged: a zombie connection), `ask_heartbeat()`.
Counters: `identifies`, `resumes`, `connections_open`, `max_connections_open`, `heartbeats`.

REST (`api_url`, like https://discord.com/api/v10), `Authorization: Bot TOKEN` (401 otherwise):
GET /gateway/bot, GET /users/@me, POST /channels/{id}/messages (content 1-2,000 characters,
counted in UTF-16 code units, else 400 50035; 5 per 5 s per channel, with the X-RateLimit-*
headers, else 429 with retry_after), POST /channels/{id}/typing, PUT
/applications/{app}/commands (and per guild); interaction webhooks (no bot token): PATCH
/webhooks/{app}/{token}/messages/@original and POST /webhooks/{app}/{token}, 404 10015 before
the interaction was answered, 401 50027 after its 15 minutes. `fail(route, status, retry_after,
times)` answers the next calls of a route ("message", "typing", "webhook") with an error. The
bot's own messages come back to it over the Gateway, as on Discord.

Interactions: `interact(url, body)` POSTs a body built by `command(...)`/`ping()` signed with
`signing_key` (X-Signature-Ed25519 over X-Signature-Timestamp + body) and, like Discord,
notes whether the answer came within 3 seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.support.servers import ServerThread

GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT = 1 << 9, 1 << 12, 1 << 15
PRIVILEGED = (1 << 1) | (1 << 8) | MESSAGE_CONTENT
MESSAGES_PER_WINDOW, WINDOW_S = 5, 5.0
_snowflakes = itertools.count(1_310_000_000_000_000_000)  # above the fixed ids below
_COMMAND_NAME = re.compile(r"^[-_a-z0-9]{1,32}$")


def snowflake() -> str:
    return str(next(_snowflakes))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def user(user_id: str, username: str = "ada", *, bot: bool = False) -> dict[str, Any]:
    return {"id": user_id, "username": username, "discriminator": "0", "global_name": username.title(),
            "avatar": None, "bot": bot}


@dataclass
class _Session:
    id: str
    intents: int
    events: list[tuple[int, str, Any]] = field(default_factory=list)
    connection: ServerConnection | None = None
    alive: bool = True


@dataclass
class Interaction:
    id: str
    token: str
    body: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    answered: bool = False
    answer: dict[str, Any] | None = None
    answer_s: float | None = None  # how long the endpoint took to answer
    status: int | None = None
    original: dict[str, Any] | None = None  # the message shown for it (edited in place)
    followups: list[dict[str, Any]] = field(default_factory=list)
    expired: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(((self.answer or {}).get("data") or {}).get("flags", 0) & 64)


class FakeDiscord:
    def __init__(self, *, token: str = "MTMwMDAwMDAwMDAwMDAwMDAwMQ.Gfake.bot-token-for-tests",
                 application_id: str = "1300000000000000001", username: str = "SwitchboardBot",
                 heartbeat_interval_ms: int = 1000) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_user = user(application_id, username, bot=True)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.signing_key = Ed25519PrivateKey.generate()
        self.public_key = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self.privileged_enabled = 0  # the privileged intents switched on in the "developer portal"
        self.session_starts_left = 1000
        # What happened
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[Any] = []
        self.closes: list[int] = []  # close codes the clients sent
        self.connections_open = 0
        self.max_connections_open = 0
        self.connections_total = 0
        self.messages: list[dict[str, Any]] = []  # every message the bot made (channel, webhook)
        self.typing: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST call
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or a guild id -> commands
        self.interactions: dict[str, Interaction] = {}  # by token
        self.rate_limited: list[str] = []  # routes answered 429
        # Knobs and state
        self._failures: list[tuple[str, int, float | None]] = []
        self._windows: dict[str, list[float]] = {}
        self._acks = True
        self._drop_after: int | None = None
        self._sessions: dict[str, _Session] = {}
        self._current: _Session | None = None
        self._lock = threading.Lock()
        self._rest = ServerThread(Starlette(routes=[
            Route("/api/v10/gateway/bot", self._gateway_bot, methods=["GET"]),
            Route("/api/v10/users/@me", self._me, methods=["GET"]),
            Route("/api/v10/channels/{channel}/messages", self._create_message, methods=["POST"]),
            Route("/api/v10/channels/{channel}/typing", self._typing, methods=["POST"]),
            Route("/api/v10/applications/{app}/commands", self._put_commands, methods=["PUT"]),
            Route("/api/v10/applications/{app}/guilds/{guild}/commands", self._put_commands, methods=["PUT"]),
            Route("/api/v10/webhooks/{app}/{token}/messages/@original", self._edit_original, methods=["PATCH"]),
            Route("/api/v10/webhooks/{app}/{token}", self._followup, methods=["POST"]),
        ]))
        self.api_url = self._rest.url + "/api/v10"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self.ws_url = ""

    def __enter__(self) -> "FakeDiscord":
        self._rest.__enter__()
        self._thread.start()
        self._server = self._run(_start(self._connection))
        port = self._server.sockets[0].getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self._run(self._server.wait_closed(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._rest.__exit__(*exc)

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(_wrap(coro), self._loop).result(timeout)

    # -- the Gateway ----------------------------------------------------------------------------
    async def _connection(self, ws: ServerConnection) -> None:
        self.connections_open += 1
        self.connections_total += 1
        self.max_connections_open = max(self.max_connections_open, self.connections_open)
        session: _Session | None = None
        try:
            await _send(ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
            session = await self._handshake(ws)
            if session is None:
                return
            await self._serve(ws, session)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                self.closes.append(exc.rcvd.code)
        finally:
            self.connections_open -= 1
            if session is not None and session.connection is ws:
                session.connection = None

    async def _handshake(self, ws: ServerConnection) -> _Session | None:
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        op, d = first.get("op"), first.get("d") or {}
        if op not in (2, 6):
            await ws.close(4003, "Not authenticated.")
            return None
        if d.get("token") != self.token:
            await ws.close(4004, "Authentication failed.")
            return None
        if op == 2:
            intents = int(d.get("intents") or 0)
            if intents & PRIVILEGED & ~self.privileged_enabled:
                await ws.close(4014, "Disallowed intent(s).")
                return None
            self.identifies.append(d)
            self.session_starts_left -= 1
            session = _Session(snowflake() + "abcdef", intents)
            self._sessions[session.id] = session
            await self._attach(session, ws)
            self._push(session, "READY", {"v": 10, "user": self.bot_user, "guilds": [], "session_id": session.id,
                                          "resume_gateway_url": self.ws_url, "shard": [0, 1],
                                          "application": {"id": self.application_id, "flags": 0}})
            return session
        self.resumes.append(d)
        session = self._sessions.get(str(d.get("session_id")))
        seq = d.get("seq")
        if session is None or not session.alive or not isinstance(seq, int) or seq > len(session.events):
            await _send(ws, {"op": 9, "d": False, "s": None, "t": None})
            await ws.close(4000, "Invalid session")
            return None
        await self._attach(session, ws)
        for s, kind, data in session.events[seq:]:
            await _send(ws, {"op": 0, "s": s, "t": kind, "d": data})
        self._push(session, "RESUMED", {})
        return session

    async def _attach(self, session: _Session, ws: ServerConnection) -> None:
        old, session.connection = session.connection, ws
        if old is not None and old is not ws:  # a session is resumed on one connection only
            await old.close(4000, "Session resumed elsewhere")
        self._current = session

    async def _serve(self, ws: ServerConnection, session: _Session) -> None:
        limit = 2 * self.heartbeat_interval_ms / 1000 + 1
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), limit)
            except TimeoutError:
                session.alive = False
                await ws.close(4009, "Session timed out")
                return
            payload = orjson.loads(raw)
            if payload.get("op") == 1:
                self.heartbeats.append(payload.get("d"))
                if self._acks:
                    await _send(ws, {"op": 11, "s": None, "t": None, "d": None})
            elif payload.get("op") == 2:
                await ws.close(4005, "Already authenticated.")
                return

    def _push(self, session: _Session, kind: str, data: Any) -> int:
        """Number the event in its session and send it if the session has a connection."""
        seq = len(session.events) + 1
        session.events.append((seq, kind, data))
        ws = session.connection
        if ws is not None:
            asyncio.ensure_future(self._deliver(ws, {"op": 0, "s": seq, "t": kind, "d": data}))
        return seq

    async def _deliver(self, ws: ServerConnection, payload: dict[str, Any]) -> None:
        try:
            await _send(ws, payload)
        except ConnectionClosed:
            return
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                ws.transport.abort()

    # Knobs (called from the test's thread).
    def dispatch(self, kind: str, data: Any) -> int:
        async def go() -> int:
            assert self._current is not None, "nobody identified yet"
            return self._push(self._current, kind, data)
        return int(self._run(go()))

    def drop(self) -> None:
        async def go() -> None:
            if self._current is not None and self._current.connection is not None:
                self._current.connection.transport.abort()
        self._run(go())

    def drop_after(self, dispatches: int) -> None:
        self._drop_after = dispatches

    def request_reconnect(self) -> None:
        self._send_op({"op": 7, "d": None, "s": None, "t": None})

    def invalidate(self, resumable: bool) -> None:
        if not resumable and self._current is not None:
            self._current.alive = False
        self._send_op({"op": 9, "d": resumable, "s": None, "t": None})

    def ask_heartbeat(self) -> None:
        self._send_op({"op": 1, "d": None, "s": None, "t": None})

    def pause_acks(self, paused: bool) -> None:
        self._acks = not paused

    def _send_op(self, payload: dict[str, Any]) -> None:
        async def go() -> None:
            if self._current is not None and self._current.connection is not None:
                await _send(self._current.connection, payload)
        self._run(go())

    @property
    def connected(self) -> bool:
        return self._current is not None and self._current.connection is not None

    @property
    def last_seq(self) -> int:
        return len(self._current.events) if self._current else 0

    # -- messages as Discord dispatches them --------------------------------------------------------
    def message_create(self, author: dict[str, Any], content: str, *, channel_id: str, guild_id: str | None = None,
                       mentions_bot: bool = False, reply_to_bot: bool = False, message_id: str | None = None,
                       attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A MESSAGE_CREATE's `d`, as the bot would get it (content hidden where Discord hides it)."""
        mentions = [self.bot_user] if mentions_bot or reply_to_bot else []
        if mentions_bot:
            content = f"<@{self.application_id}> {content}"
        d: dict[str, Any] = {"id": message_id or snowflake(), "channel_id": channel_id, "author": author,
                             "content": content, "timestamp": "2026-03-01T10:00:00.000000+00:00",
                             "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": mentions,
                             "mention_roles": [], "attachments": attachments or [], "embeds": [], "pinned": False,
                             "type": 19 if reply_to_bot else 0, "flags": 0}
        if guild_id:
            d["guild_id"] = guild_id
            d["member"] = {"roles": [], "joined_at": "2025-01-01T00:00:00+00:00", "deaf": False, "mute": False}
        if reply_to_bot:
            d["message_reference"] = {"type": 0, "message_id": snowflake(), "channel_id": channel_id}
            d["referenced_message"] = {"id": d["message_reference"]["message_id"], "author": self.bot_user,
                                       "content": "an earlier answer", "channel_id": channel_id}
        return d

    def send_message(self, d: dict[str, Any]) -> int | None:
        """Dispatch a MESSAGE_CREATE to the bot's session, as its intents let it see it."""
        session = self._current
        assert session is not None, "nobody identified yet"
        guild = d.get("guild_id")
        if not session.intents & (GUILD_MESSAGES if guild else DIRECT_MESSAGES):
            return None
        d = dict(d)
        mentioned = any(u.get("id") == self.bot_user["id"] for u in d.get("mentions") or [])
        if guild and not mentioned and not session.intents & MESSAGE_CONTENT and d["author"]["id"] != self.bot_user["id"]:
            d.update(content="", attachments=[], embeds=[])
        return self.dispatch("MESSAGE_CREATE", d)

    # -- REST ----------------------------------------------------------------------------------
    def fail(self, route: str, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([(route, status, retry_after)] * times)

    def texts(self, channel_id: str | None = None) -> list[str]:
        return [m["content"] for m in self.messages if channel_id is None or m["channel_id"] == channel_id]

    def _failure(self, route: str) -> Response | None:
        with self._lock:
            found = next((f for f in self._failures if f[0] == route), None)
            if found is not None:
                self._failures.remove(found)
        if found is None:
            return None
        _, status, retry_after = found
        if status == 429:
            self.rate_limited.append(route)
            wait = retry_after or 1.0
            return JSONResponse({"message": "You are being rate limited.", "retry_after": wait, "global": False},
                                429, headers={"Retry-After": str(int(wait) + 1), "X-RateLimit-Scope": "user",
                                              "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                                              "X-RateLimit-Reset-After": str(wait), "X-RateLimit-Bucket": "fakebucket"})
        return _error(status, 0, {500: "Internal Server Error", 502: "Bad Gateway"}.get(status, "Error"))

    def _authorised(self, request: Request) -> bool:
        self.requests.append((request.method, request.url.path))
        return request.headers.get("authorization") == f"Bot {self.token}"

    async def _gateway_bot(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        return JSONResponse({"url": self.ws_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": self.session_starts_left, "reset_after": 3_600_000, "max_concurrency": 1}})

    async def _me(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        return JSONResponse(self.bot_user)

    def _window(self, key: str) -> tuple[bool, dict[str, str]]:
        """Discord's message limit per channel: 5 per 5 s, told in the headers."""
        now = time.monotonic()
        with self._lock:
            window = [t for t in self._windows.get(key, []) if now - t < WINDOW_S]
            allowed = len(window) < MESSAGES_PER_WINDOW
            if allowed:
                window.append(now)
            self._windows[key] = window
        reset_after = WINDOW_S - (now - window[0]) if window else WINDOW_S
        headers = {"X-RateLimit-Limit": str(MESSAGES_PER_WINDOW),
                   "X-RateLimit-Remaining": str(max(0, MESSAGES_PER_WINDOW - len(window))),
                   "X-RateLimit-Reset-After": f"{reset_after:.3f}", "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                   "X-RateLimit-Bucket": "messages-" + key.split(":")[0]}
        return allowed, headers

    def _content(self, body: Any) -> tuple[dict[str, Any] | None, Response | None]:
        if not isinstance(body, dict):
            return None, _error(400, 50109, "The request body contains invalid JSON.")
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            return None, _error(400, 50006, "Cannot send an empty message")
        if utf16_len(content) > 2000:
            return None, JSONResponse({"code": 50035, "message": "Invalid Form Body", "errors": {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}, 400)
        return body, None

    async def _create_message(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        failure = self._failure("message")
        if failure is not None:
            return failure
        channel = request.path_params["channel"]
        allowed, headers = self._window(f"{channel}:bot")
        if not allowed:
            self.rate_limited.append("message")
            retry = float(headers["X-RateLimit-Reset-After"])
            return JSONResponse({"message": "You are being rate limited.", "retry_after": retry, "global": False}, 429,
                                headers={**headers, "Retry-After": str(int(retry) + 1), "X-RateLimit-Scope": "user"})
        body, problem = self._content(orjson.loads(await request.body() or b"null"))
        if problem is not None:
            return problem
        assert body is not None
        message = self._record(channel, body, via="bot")
        return JSONResponse(message, headers=headers)

    def _record(self, channel_id: str, body: dict[str, Any], *, via: str,
                interaction: Interaction | None = None) -> dict[str, Any]:
        message = {"id": snowflake(), "channel_id": channel_id, "author": self.bot_user, "content": body["content"],
                   "message_reference": body.get("message_reference"), "allowed_mentions": body.get("allowed_mentions"),
                   "flags": body.get("flags", 0), "type": 0, "mentions": [], "attachments": [], "embeds": [],
                   "timestamp": "2026-03-01T10:00:01.000000+00:00", "via": via,
                   "interaction": interaction.id if interaction else None}
        self.messages.append(message)
        if self._current is not None and not message["flags"] & 64:  # the bot sees its own messages
            echo = {k: v for k, v in message.items() if k not in ("via", "interaction", "allowed_mentions")}
            self._loop.call_soon_threadsafe(self._push, self._current, "MESSAGE_CREATE", echo)
        return message

    async def _typing(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        failure = self._failure("typing")
        if failure is not None:
            return failure
        self.typing.append(request.path_params["channel"])
        return Response(status_code=204)

    async def _put_commands(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        if request.path_params["app"] != self.application_id:
            return _error(403, 50001, "Missing Access")
        commands = orjson.loads(await request.body() or b"null")
        if not isinstance(commands, list):
            return _error(400, 50035, "Invalid Form Body")
        for command in commands:
            description = command.get("description") or ""
            if not _COMMAND_NAME.match(command.get("name") or "") or not 1 <= len(description) <= 100:
                return _error(400, 50035, "Invalid Form Body")
        stored = [{"id": snowflake(), "application_id": self.application_id, "version": snowflake(), **c}
                  for c in commands]
        self.commands[request.path_params.get("guild", "global")] = stored
        return JSONResponse(stored)

    def _interaction_of(self, request: Request) -> tuple[Interaction | None, Response | None]:
        self.requests.append((request.method, request.url.path))
        found = self.interactions.get(request.path_params["token"])
        if request.path_params["app"] != self.application_id or found is None or not found.answered:
            return None, _error(404, 10015, "Unknown Webhook")
        if found.expired:
            return None, _error(401, 50027, "Invalid Webhook Token")
        failure = self._failure("webhook")
        return (None, failure) if failure is not None else (found, None)

    async def _webhook_call(self, request: Request) -> tuple[Interaction, dict[str, Any]] | Response:
        """The interaction a webhook call is for and the message it carries, or the error."""
        interaction, problem = self._interaction_of(request)
        if problem is None:
            body, problem = self._content(orjson.loads(await request.body() or b"null"))
        if problem is not None:
            return problem
        assert interaction is not None and body is not None
        return interaction, body

    async def _edit_original(self, request: Request) -> Response:
        call = await self._webhook_call(request)
        if isinstance(call, Response):
            return call
        interaction, body = call
        if interaction.original is None:
            flags = 64 if interaction.ephemeral else 0
            interaction.original = self._record(str(interaction.body.get("channel_id")), {**body, "flags": flags},
                                                via="webhook", interaction=interaction)
        else:
            interaction.original["content"] = body["content"]
        return JSONResponse(interaction.original)

    async def _followup(self, request: Request) -> Response:
        call = await self._webhook_call(request)
        if isinstance(call, Response):
            return call
        interaction, body = call
        message = self._record(str(interaction.body.get("channel_id")), body, via="webhook", interaction=interaction)
        interaction.followups.append(message)
        return JSONResponse(message)

    # -- interactions, as Discord sends them --------------------------------------------------------
    def command(self, name: str, options: dict[str, str], *, author: dict[str, Any], channel_id: str,
                guild_id: str | None = None) -> dict[str, Any]:
        """An APPLICATION_COMMAND interaction (a slash command) from `author`."""
        body: dict[str, Any] = {
            "id": snowflake(), "application_id": self.application_id, "type": 2, "token": "aW50ZXJhY3Rpb246" + snowflake()
            + "OnRva2Vu" + "x" * 200, "version": 1, "locale": "en-US", "app_permissions": "2248473465835073",
            "channel_id": channel_id, "channel": {"id": channel_id, "type": 0 if guild_id else 1},
            "context": 0 if guild_id else 1,
            "data": {"id": snowflake(), "name": name, "type": 1,
                     "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()]},
        }
        if guild_id:
            body["guild_id"] = guild_id
            body["member"] = {"user": author, "roles": [], "permissions": "0", "joined_at": "2025-01-01T00:00:00+00:00"}
        else:
            body["user"] = author
        return body

    def ping(self) -> dict[str, Any]:
        return {"id": snowflake(), "application_id": self.application_id, "type": 1,
                "token": "aW50ZXJhY3Rpb246" + snowflake(), "version": 1}

    def sign(self, raw: bytes, timestamp: str | None = None) -> dict[str, str]:
        stamp = timestamp or str(int(time.time()))
        return {"X-Signature-Ed25519": self.signing_key.sign(stamp.encode() + raw).hex(),
                "X-Signature-Timestamp": stamp, "content-type": "application/json"}

    def interact(self, url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST the interaction, signed (unless `headers` are given), and note the answer as
        Discord would: its interaction is then answered, and on time if within 3 s."""
        raw = orjson.dumps(body)
        interaction = Interaction(str(body["id"]), str(body["token"]), body)
        self.interactions[interaction.token] = interaction
        started = time.monotonic()
        response = httpx.post(url, content=raw, headers=headers if headers is not None else self.sign(raw), timeout=10)
        interaction.answer_s = time.monotonic() - started
        interaction.status = response.status_code
        if response.status_code == 200 and interaction.answer_s <= 3.0:
            interaction.answer = response.json()
            interaction.answered = interaction.answer.get("type") in (4, 5)
            if interaction.answer.get("type") == 4:
                flags = (interaction.answer.get("data") or {}).get("flags", 0)
                interaction.original = self._record(str(body.get("channel_id")),
                                                    {**interaction.answer["data"], "flags": flags}, via="response",
                                                    interaction=interaction)
        return response

    def interaction(self, body: dict[str, Any]) -> Interaction:
        return self.interactions[str(body["token"])]


async def _wrap(coro: Any) -> Any:
    return await coro


async def _start(handler: Any) -> Any:
    return await serve(handler, "127.0.0.1", 0, compression=None)


async def _send(ws: ServerConnection, payload: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(payload).decode())


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "code": code}, status)
