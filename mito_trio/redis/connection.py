"""One RESP2 connection to Redis on a trio stream."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import trio

from .resp import Arg, ConnectionLost, Reply, ReplyError, encode_command, parse_reply
from .url import RedisURL

__all__ = ["CONNECT_TIMEOUT", "RECONNECT_CAP", "RedisConnection"]

#: Connecting (TCP, AUTH, SELECT) may take this long before the attempt counts as failed.
CONNECT_TIMEOUT = 3.0
#: Longest pause between reconnection attempts.
RECONNECT_CAP = 30.0


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
