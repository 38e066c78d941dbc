"""Announcing task states to Redis and reading them back (§8); `open_redis` is the entry point."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote
from uuid import UUID

import trio

from ..backoff import Backoff
from ..logs import add_secret
from ..wire import TaskExecState
from .connection import CONNECT_TIMEOUT, RECONNECT_CAP, RedisConnection
from .resp import Arg, ConnectionLost, RedisError, Reply, ReplyError
from .subscription import Subscription
from .trouble import Trouble
from .url import RedisURL, parse_redis_url

__all__ = ["COMMAND_TIMEOUT", "RedisAnnouncer", "open_redis", "parse_state", "task_key"]

log = logging.getLogger(__name__)

#: One announcement or GET may take this long; a task never waits longer on Redis.
COMMAND_TIMEOUT = 3.0


def task_key(task: UUID) -> str:
    """Key and channel of a task: `task:<uuid>` (§8.2)."""
    return f"task:{task}"


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
        self._trouble = Trouble(f"Redis at {url.masked()}")
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
