"""A small HTTP/1.1 server on trio streams and h11, just enough for the local coordinator.

One task per connection, keep-alive, Content-Length and chunked request bodies read as a
stream of chunks (so a 1 GiB upload never sits in memory unless the handler keeps it), and
an answer may instead be "drop the connection".
"""

from __future__ import annotations

import http
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import cast
from urllib.parse import parse_qsl, unquote

import attrs
import h11
import trio

__all__ = ["BodyTooLarge", "Handler", "Request", "Response", "serve_connection"]

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
SEND_PIECE = 1024 * 1024
RAW_BODY_MIN = 1024 * 1024


class BodyTooLarge(Exception):
    """`Request.read_body` saw more than its limit."""


@attrs.frozen
class Response:
    """One answer; `drop=True` closes the connection without answering instead."""

    status: int = 200
    body: bytes | bytearray | memoryview = b""
    content_type: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    drop: bool = False


Handler = Callable[["Request"], Awaitable[Response]]


class Request:
    """A request whose head has arrived; its body is read on demand."""

    def __init__(self, conn: _Connection, event: h11.Request) -> None:
        self._conn = conn
        self.method = event.method.decode("ascii")
        self.target = event.target.decode("ascii")
        raw_path, _, raw_query = self.target.partition("?")
        self.raw_path = raw_path
        self.path = unquote(raw_path)
        self.query: dict[str, str] = dict(parse_qsl(raw_query, keep_blank_values=True))
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self.content_length = int(length) if length is not None and not self.chunked else None
        self.body_done = False

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield the body in the pieces it arrives in; each piece is yielded once only."""
        while not self.body_done:
            chunk = await self._conn.next_body_chunk()
            if chunk is None:
                self.body_done = True
            elif chunk:
                yield chunk

    async def read_body(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.iter_body():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def drain(self) -> int:
        """Read and forget what is left of the body; returns how many bytes that was."""
        size = 0
        async for chunk in self.iter_body():
            size += len(chunk)
        return size


class _Connection:
    """h11 bookkeeping for one connection.

    A large Content-Length body bypasses h11: its bytes are read straight off the stream
    (h11 would copy each piece three times), and then a fresh h11 connection is primed with
    the same request head minus the body, so the answer and the next request go through h11
    as usual.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self._head: h11.Request | None = None
        self._raw_left: int | None = None
        self._raw_started = False
        self._pending = b""

    def begin(self, head: h11.Request, content_length: int | None) -> None:
        """Note a new request head; decide how its body will be read."""
        self._head = head
        raw = content_length is not None and content_length >= RAW_BODY_MIN
        self._raw_left = content_length if raw else None
        self._raw_started = False

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            await self._continue_if_expected()
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.h11.receive_data(data if isinstance(data, bytes) else bytes(data))

    async def _continue_if_expected(self) -> None:
        if self.h11.they_are_waiting_for_100_continue:
            await self.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )

    async def next_body_chunk(self) -> bytes | None:
        """The next body piece, or None at the end of the body."""
        if self._raw_left is not None:
            return await self._next_raw_chunk(self._raw_left)
        event = await self.next_event()
        if isinstance(event, h11.Data):
            return event.data
        if isinstance(event, h11.EndOfMessage):
            return None
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a request body")

    async def _next_raw_chunk(self, left: int) -> bytes | None:
        if not self._raw_started:
            self._raw_started = True
            await self._continue_if_expected()
            self._pending = self.h11.trailing_data[0]
        if left == 0:
            self._end_raw_body()
            return None
        if self._pending:
            chunk = self._pending[:left]
            self._pending = self._pending[len(chunk) :]
        else:
            received = await self.stream.receive_some(min(RECEIVE_SIZE, left))
            if not received:
                raise h11.RemoteProtocolError("peer closed the connection in a request body")
            chunk = received if isinstance(received, bytes) else bytes(received)
        self._raw_left = left - len(chunk)
        return chunk

    def _end_raw_body(self) -> None:
        head = self._head
        assert head is not None
        lines = [b"%s %s HTTP/%s" % (head.method, head.target, head.http_version)]
        lines += [b"%s: %s" % kv for kv in head.headers if kv[0] in (b"host", b"connection")]
        lines.append(b"content-length: 0")
        fresh = h11.Connection(h11.SERVER)
        fresh.receive_data(b"\r\n".join(lines) + b"\r\n\r\n" + self._pending)
        if not isinstance(fresh.next_event(), h11.Request) or not isinstance(
            fresh.next_event(), h11.EndOfMessage
        ):
            raise h11.LocalProtocolError("could not re-prime h11 after a raw body")
        self.h11 = fresh
        self._raw_left = None
        self._pending = b""

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def respond(self, response: Response) -> None:
        headers = [
            ("content-length", str(len(response.body))),
            ("server", "mito-trio-local-coordinator"),
            *response.headers,
        ]
        if response.content_type is not None:
            headers.append(("content-type", response.content_type))
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        await self.send(
            h11.Response(status_code=response.status, headers=headers, reason=reason.encode())
        )
        view = memoryview(response.body)
        for start in range(0, len(view), SEND_PIECE):
            # h11 only needs len() and the buffer protocol; a view avoids copying big bodies.
            await self.send(h11.Data(data=cast(bytes, view[start : start + SEND_PIECE])))
        await self.send(h11.EndOfMessage())


async def serve_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    """Answer requests on `stream` until the peer closes it or a request asks to close."""
    conn = _Connection(stream)
    try:
        async with stream:
            await _serve(conn, handler)
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("connection ended: %r", exc)


async def _serve(conn: _Connection, handler: Handler) -> None:
    while True:
        try:
            event = await conn.next_event()
        except h11.RemoteProtocolError as exc:
            if conn.h11.our_state is h11.SEND_RESPONSE:
                await conn.respond(Response(400, str(exc).encode(), "text/plain; charset=utf-8"))
            return
        if not isinstance(event, h11.Request):
            return  # ConnectionClosed (or garbage after a closed cycle)
        request = Request(conn, event)
        conn.begin(event, request.content_length)
        response = await handler(request)
        await request.drain()
        if response.drop:
            return
        await conn.respond(response)
        if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
            return
        conn.h11.start_next_cycle()
