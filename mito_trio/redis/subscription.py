"""Pub/sub: the payloads published on one channel, re-subscribing after a lost connection."""

from __future__ import annotations

import logging
import math

import trio

from ..backoff import Backoff
from .connection import CONNECT_TIMEOUT, RECONNECT_CAP, RedisConnection
from .resp import ProtocolError, RedisError, ReplyError
from .trouble import Trouble
from .url import RedisURL

__all__ = ["UNSUBSCRIBE_TIMEOUT", "Subscription"]

log = logging.getLogger(__name__)

#: Leaving a subscription (UNSUBSCRIBE and its confirmation) may take this long.
UNSUBSCRIBE_TIMEOUT = 2.0


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
        self._trouble = Trouble(f"Redis subscription to {channel} at {url.masked()}")
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
