"""The Redis side channel (PROTOCOL.md §8): announcing task states, reading them, pub/sub.

A small RESP2 client on trio streams. Not redis-py: its async client runs on asyncio, not
Trio. Not hiredis either: the worker sends six commands with tiny replies, and a pure-Python
reader of about sixty lines (`parse_reply`) is easier to audit than a C extension. RESP2 even
though the coordinator's URL asks for `protocol=resp3`: every command used behaves the same
in RESP2, which needs no `HELLO` and is understood by every Redis since 2.0.

Better than the original (§13.13, §13.14):

* a lost connection is re-established (with backoff) instead of being gone for good;
* every key is written with a TTL, never without;
* a subscription is unsubscribed when the watch is over;
* Redis trouble never stops a task, and is logged once, not once per announcement.

`open_redis` is the entry point: an async context manager that yields a `RedisAnnouncer`
(None without Redis) and closes its connections on exit. It starts no background task: the
announcement connection reconnects on the next use, a subscription while it is read.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, quote, unquote
from uuid import UUID

import attrs
import trio

from .backoff import Backoff
from .logs import add_secret
from .wire import TaskExecState

__all__ = [
    "ConnectionLost",
    "ProtocolError",
    "RedisAnnouncer",
    "RedisConnection",
    "RedisError",
    "RedisURL",
    "Reply",
    "ReplyError",
    "Subscription",
    "encode_command",
    "open_redis",
    "parse_redis_url",
    "parse_reply",
    "task_key",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 6379
#: Connecting (TCP, AUTH, SELECT) may take this long before the attempt counts as failed.
CONNECT_TIMEOUT = 3.0
#: One announcement or GET may take this long; a task never waits longer on Redis.
COMMAND_TIMEOUT = 3.0
#: Longest pause between reconnection attempts.
RECONNECT_CAP = 30.0
#: Leaving a subscription (UNSUBSCRIBE and its confirmation) may take this long.
UNSUBSCRIBE_TIMEOUT = 2.0
#: While Redis keeps failing, repeat the warning at most this often.
WARN_INTERVAL = 60.0
#: Replies larger than this are not something this client asked for.
MAX_REPLY_BYTES = 1 << 20


def task_key(task: UUID) -> str:
    """Key and channel of a task: `task:<uuid>` (§8.2)."""
    return f"task:{task}"


# --- errors ----------------------------------------------------------------------------------


class RedisError(Exception):
    """Redis could not be reached, or did not do what was asked."""


class ReplyError(RedisError):
    """An error reply (`-ERR ...`, `-NOPERM ...`, `-WRONGPASS ...`) from the server."""


class ConnectionLost(RedisError):
    """The connection broke, or could not be made."""


class ProtocolError(RedisError):
    """The server sent something that is not RESP2."""


# --- the URL ---------------------------------------------------------------------------------


@attrs.frozen
class RedisURL:
    """Where Redis is and how to log in. `masked()` is the form fit for logs."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    db: int = 0

    def masked(self) -> str:
        """The URL with the password replaced by `***`."""
        auth = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            auth = f"{user}:***@" if self.password is not None else f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse the registration's `redis_url` (§3.3, §8.1); ValueError if it is not usable.

    The coordinator formats the password into the URL without escaping it, and writes IPv6
    hosts without brackets (`redis://u:p@::1:6379/`), so this parser is lenient: the user
    info ends at the last `@`, the port is what follows the last `:`. `protocol=resp3` and
    other query parameters are ignored (RESP2 is used). Error messages never contain the URL.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != "redis":
        raise ValueError("only redis:// URLs are supported")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    end = min((i for i in (hostpart.find(c) for c in "/?#") if i >= 0), default=len(hostpart))
    authority, tail = hostpart[:end], hostpart[end:]
    host, port = _split_host_port(authority)

    username: str | None = None
    password: str | None = None
    if at:
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
        if password == "":
            password = None

    path, _, query = tail.partition("?")
    path = path.partition("#")[0].strip("/")
    db = 0
    if path:
        if not path.isdigit():
            raise ValueError("the database in the URL path must be a number")
        db = int(path)
    for name, value in parse_qsl(query.partition("#")[0]):
        if name == "db" and value.isdigit():
            db = int(value)
    return RedisURL(host=host, port=port, username=username, password=password, db=db)


def _split_host_port(authority: str) -> tuple[str, int]:
    if not authority:
        raise ValueError("the URL has no host")
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("the URL has a malformed IPv6 host")
        port_text = rest[1:]
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    else:
        host, port_text = authority, ""
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the URL has an invalid port")
    return host, int(port_text)


# --- RESP2 -----------------------------------------------------------------------------------

#: A decoded reply: simple string, bulk string (None for nil), integer, array, or an error.
Reply = str | bytes | int | None | list["Reply"] | ReplyError
Arg = str | bytes | int


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes | bytearray, pos: int = 0) -> tuple[Reply, int] | None:
    """Decode the reply that starts at `buf[pos]`: (reply, end position), or None if incomplete.

    Pure, so a reader can call it again with more data after a cancelled receive.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_REPLY_BYTES:
            raise ProtocolError("reply line too long")
        return None
    kind = buf[pos : pos + 1]
    line = bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), after
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return _integer(line), after
    if kind == b"$":
        size = _integer(line)
        if size == -1:
            return None, after
        if not 0 <= size <= MAX_REPLY_BYTES:
            raise ProtocolError(f"bulk string of {size} bytes")
        if len(buf) < after + size + 2:
            return None
        if buf[after + size : after + size + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        return bytes(buf[after : after + size]), after + size + 2
    if kind == b"*":
        count = _integer(line)
        if count == -1:
            return None, after
        if not 0 <= count <= MAX_REPLY_BYTES:
            raise ProtocolError(f"array of {count} elements")
        items: list[Reply] = []
        for _ in range(count):
            parsed = parse_reply(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ProtocolError(f"unknown reply type {kind!r}")


def _integer(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"not an integer: {line[:20]!r}") from None


class RedisConnection:
    """One RESP2 connection. Not safe for concurrent use: callers serialise access.

    A command cancelled between sending and reading its reply leaves the connection out of
    step; callers close it then (`RedisAnnouncer` does). Reading alone is safe to cancel.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    @classmethod
    async def open(cls, url: RedisURL, *, time_limit: float = CONNECT_TIMEOUT) -> RedisConnection:
        """Connect, AUTH and SELECT; `ConnectionLost` or `ReplyError` when that fails."""
        try:
            with trio.fail_after(time_limit):
                stream = await trio.open_tcp_stream(url.host, url.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectionLost(str(exc) or "timed out") from None
        # Notice a peer that vanished without closing (a subscriber only ever reads).
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn = cls(stream)
        setup: list[list[Arg]] = []
        if url.password is not None:
            auth: list[Arg] = ["AUTH", url.password]
            setup.append(auth if url.username is None else ["AUTH", url.username, url.password])
        if url.db:
            setup.append(["SELECT", url.db])
        try:
            with trio.fail_after(time_limit):
                for reply in await conn.execute_many(setup):
                    if isinstance(reply, ReplyError):
                        raise reply
        except BaseException as exc:
            await conn.aclose()
            if isinstance(exc, trio.TooSlowError):
                raise ConnectionLost("no answer to AUTH") from None
            raise
        return conn

    async def send(self, *commands: Sequence[Arg]) -> None:
        """Write commands without reading their replies."""
        data = b"".join(encode_command(command) for command in commands)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection lost: {exc or type(exc).__name__}") from None

    async def read_reply(self) -> Reply:
        """The next reply; error replies are returned, not raised."""
        while True:
            parsed = parse_reply(self._buffer)
            if parsed is not None:
                reply, used = parsed
                del self._buffer[:used]
                return reply
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"connection lost: {exc or type(exc).__name__}") from None
            if not data:
                raise ConnectionLost("connection closed by the server")
            self._buffer += data

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Pipeline: send all commands in one write, then read one reply each."""
        if not commands:
            return []
        await self.send(*commands)
        return [await self.read_reply() for _ in commands]

    async def execute(self, *args: Arg) -> Reply:
        """One command and its reply."""
        return (await self.execute_many([args]))[0]

    async def aclose(self) -> None:
        """Close at once; never blocks, never raises."""
        await trio.aclose_forcefully(self._stream)


# --- rate-limited complaints -----------------------------------------------------------------


class _Trouble:
    """Warns when Redis starts failing, then at most every `WARN_INTERVAL`; notes recovery."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None
        self._last_warning = -math.inf
        self._quiet = 0

    def failed(self, detail: str) -> None:
        now = trio.current_time()
        if self._since is None:
            self._since = now
            self._last_warning = now
            log.warning("%s: %s", self._what, detail)
        elif now - self._last_warning >= WARN_INTERVAL:
            log.warning(
                "%s: still failing (%d more times since the last warning): %s",
                self._what,
                self._quiet + 1,
                detail,
            )
            self._last_warning = now
            self._quiet = 0
        else:
            self._quiet += 1
            log.debug("%s: %s", self._what, detail)

    def ok(self) -> None:
        if self._since is not None:
            log.info("%s: works again after %.1fs", self._what, trio.current_time() - self._since)
            self._since = None
            self._quiet = 0


# --- announcements and reads -----------------------------------------------------------------


class RedisAnnouncer:
    """The `Announcer` of §8 on Redis, plus `read_state` and `subscribe` for watches.

    Announcements and reads share one connection, made on first use and re-made after it
    breaks: once at once (a connection killed while idle costs nothing), then with backoff.
    While Redis is unreachable, announcements are dropped (counted in `dropped`), never
    queued: a state is only useful while it is current.
    """

    def __init__(
        self,
        url: RedisURL,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        reconnect_cap: float = RECONNECT_CAP,
    ) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._reconnect_cap = reconnect_cap
        self._conn: RedisConnection | None = None
        self._lock = trio.Lock()
        self._backoff = Backoff(cap=reconnect_cap)
        self._retry_at = -math.inf
        self._trouble = _Trouble(f"Redis at {url.masked()}")
        self._closed = False
        #: Announcements that did not reach Redis.
        self.dropped = 0

    @property
    def connected(self) -> bool:
        """Whether the announcement connection is open right now."""
        return self._conn is not None

    async def connect(self) -> bool:
        """Connect now instead of on first use; False (and a warning) if that fails."""
        async with self._lock:
            return await self._connection() is not None

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """`SET task:<uuid> <n> EX <ttl>` then `PUBLISH task:<uuid> <n>`; never raises."""
        key = task_key(task)
        value = str(int(state))
        # Every key expires (§13.14): a dead worker must not leave states behind for ever.
        seconds = max(1, int(ttl))
        commands: list[list[Arg]] = [["SET", key, value, "EX", seconds], ["PUBLISH", key, value]]
        replies = await self._run(f"announcing {state.name} for {key}", commands)
        if replies is None:
            self.dropped += 1

    async def read_state(self, task: UUID) -> TaskExecState | None:
        """The latest state announced for `task`, or None (none, unreadable, Redis trouble)."""
        replies = await self._run(f"GET {task_key(task)}", [["GET", task_key(task)]])
        if replies is None:
            return None
        return parse_state(replies[0])

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Messages published to `channel`, on a connection of its own, until the block ends.

        Entering tries to subscribe once and never raises; iterating re-subscribes after a
        lost connection. Leaving unsubscribes (and waits for Redis to confirm, briefly).
        """
        subscription = Subscription(
            self.url,
            channel,
            connect_timeout=self._connect_timeout,
            reconnect_cap=self._reconnect_cap,
        )
        try:
            await subscription.start()
            yield subscription
        finally:
            await subscription.aclose()

    @asynccontextmanager
    async def task_states(self, task: UUID) -> AsyncIterator[AsyncIterator[TaskExecState]]:
        """The states published for `task` while the block runs (for `watch.Watcher`)."""
        async with self.subscribe(task_key(task)) as messages:
            yield _States(messages)

    async def aclose(self) -> None:
        """Close the connection; later calls drop their commands."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def _connection(self) -> RedisConnection | None:
        if self._conn is not None:
            return self._conn
        if self._closed or trio.current_time() < self._retry_at:
            return None
        try:
            self._conn = await RedisConnection.open(self.url, time_limit=self._connect_timeout)
        except RedisError as exc:
            self._retry_at = trio.current_time() + self._backoff.next_delay()
            self._trouble.failed(f"cannot connect ({exc}); task states are not announced")
            return None
        self._backoff.reset()
        log.debug("connected to Redis at %s", self.url.masked())
        return self._conn

    async def _run(self, what: str, commands: list[list[Arg]]) -> list[Reply] | None:
        async with self._lock:
            for attempt in range(2):
                conn = await self._connection()
                if conn is None:
                    return None
                try:
                    with trio.fail_after(self._command_timeout):
                        replies = await conn.execute_many(commands)
                except (RedisError, trio.TooSlowError) as exc:
                    self._conn = None
                    await conn.aclose()
                    if attempt == 0 and isinstance(exc, ConnectionLost):
                        # An idle connection may have been closed by the server: retry now.
                        log.debug("Redis: %s while %s; reconnecting", exc, what)
                        continue
                    reason = "no answer in time" if isinstance(exc, trio.TooSlowError) else exc
                    self._trouble.failed(f"{what}: {reason}")
                    return None
                except BaseException:
                    # Cancelled mid-command: the reply would arrive out of step.
                    self._conn = None
                    await conn.aclose()
                    raise
                errors = [reply for reply in replies if isinstance(reply, ReplyError)]
                if errors:
                    self._trouble.failed(f"{what}: {errors[0]}")
                    return None
                self._trouble.ok()
                return replies
            return None


def parse_state(value: Reply) -> TaskExecState | None:
    """A `TaskExecState` from a stored or published number; None if it is not a number."""
    if isinstance(value, bytes):
        try:
            return TaskExecState.from_number(int(value))
        except ValueError:
            return None
    return None


# --- subscriptions ---------------------------------------------------------------------------


class Subscription:
    """Payloads published on one channel; an async iterator that does not end by itself.

    Runs in the task that reads it: a lost connection is re-made and re-subscribed while the
    reader waits for the next message (messages published meanwhile are missed, which is why
    the watch also polls).
    """

    def __init__(
        self,
        url: RedisURL,
        channel: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_cap: float = RECONNECT_CAP,
    ) -> None:
        self.channel = channel
        self._url = url
        self._name = channel.encode()
        self._connect_timeout = connect_timeout
        self._conn: RedisConnection | None = None
        self._backoff = Backoff(cap=reconnect_cap)
        self._retry_at = -math.inf
        self._trouble = _Trouble(f"Redis subscription to {channel} at {url.masked()}")
        self._closed = False

    @property
    def subscribed(self) -> bool:
        """Whether Redis confirmed the subscription on the current connection."""
        return self._conn is not None

    async def start(self) -> None:
        """One attempt to subscribe; on failure the iteration keeps trying."""
        await self._attempt()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._closed:
                raise StopAsyncIteration
            conn = self._conn
            if conn is None:
                await trio.sleep_until(self._retry_at)
                await self._attempt()
                continue
            try:
                reply = await conn.read_reply()
            except RedisError as exc:
                self._trouble.failed(f"connection lost ({exc}); subscribing again")
                self._conn = None
                self._retry_at = trio.current_time()
                await conn.aclose()
                continue
            if (
                isinstance(reply, list)
                and len(reply) == 3
                and reply[0] == b"message"
                and reply[1] == self._name
                and isinstance(reply[2], bytes)
            ):
                return reply[2]

    async def _attempt(self) -> None:
        conn: RedisConnection | None = None
        try:
            conn = await RedisConnection.open(self._url, time_limit=self._connect_timeout)
            with trio.fail_after(self._connect_timeout):
                await conn.send(["SUBSCRIBE", self.channel])
                reply = await conn.read_reply()
            if isinstance(reply, ReplyError):
                raise reply
            if not (isinstance(reply, list) and reply[:2] == [b"subscribe", self._name]):
                raise ProtocolError(f"unexpected answer to SUBSCRIBE: {reply!r:.80}")
        except (RedisError, trio.TooSlowError) as exc:
            if conn is not None:
                await conn.aclose()
            self._retry_at = trio.current_time() + self._backoff.next_delay()
            reason = "no answer to SUBSCRIBE" if isinstance(exc, trio.TooSlowError) else exc
            self._trouble.failed(f"cannot subscribe ({reason}); polling only")
            return
        except BaseException:
            if conn is not None:
                await conn.aclose()
            raise
        self._conn = conn
        self._backoff.reset()
        self._trouble.ok()
        log.debug("subscribed to %s", self.channel)

    async def aclose(self) -> None:
        """UNSUBSCRIBE (waiting briefly for the confirmation) and close; even when cancelled."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + UNSUBSCRIBE_TIMEOUT):
            try:
                await conn.send(["UNSUBSCRIBE", self.channel])
                while True:
                    reply = await conn.read_reply()
                    if isinstance(reply, list) and reply[:2] == [b"unsubscribe", self._name]:
                        log.debug("unsubscribed from %s", self.channel)
                        break
            except RedisError as exc:
                log.debug("unsubscribing from %s: %s", self.channel, exc)
            finally:
                await conn.aclose()


class _States:
    """Adapts a `Subscription` to the `TaskExecState`s it carries, skipping garbage."""

    def __init__(self, messages: Subscription) -> None:
        self._messages = messages

    def __aiter__(self) -> _States:
        return self

    async def __anext__(self) -> TaskExecState:
        while True:
            payload = await self._messages.__anext__()
            state = parse_state(payload)
            if state is not None:
                return state
            log.debug("ignoring message %r on %s", payload[:40], self._messages.channel)


# --- the entry point -------------------------------------------------------------------------


@asynccontextmanager
async def open_redis(
    redis_url: str | None, *, skip: bool = False, connect_timeout: float = CONNECT_TIMEOUT
) -> AsyncIterator[RedisAnnouncer | None]:
    """The worker's Redis for the duration of the block, or None without it (§8.1).

    None when `skip` (`skip_redis`), when the coordinator offers no Redis, or when its URL
    is unusable (warning). An unreachable Redis still yields an announcer, which keeps trying
    to reconnect. The password is added to the log redaction and never logged.
    """
    if skip:
        log.info("skip_redis is set: not using the coordinator's Redis")
        yield None
        return
    if redis_url is None:
        log.info("the coordinator offers no Redis: task states are not announced")
        yield None
        return
    try:
        url = parse_redis_url(redis_url)
    except ValueError as exc:
        log.warning("cannot use the coordinator's Redis URL (%s): Redis disabled", exc)
        yield None
        return
    if url.password is not None:
        add_secret(url.password)
        add_secret(quote(url.password, safe=""))
    redis = RedisAnnouncer(url, connect_timeout=connect_timeout)
    try:
        if await redis.connect():
            log.info("announcing task states to Redis at %s", url.masked())
        yield redis
    finally:
        await redis.aclose()
