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

RECEIVE_SIZE = 1048576
SEND_PIECE = 1024 * 1024


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
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if self.h11.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.h11.receive_data(data if isinstance(data, bytes) else bytes(data))

    async def next_body_chunk(self) -> bytes | None:
        """The next body piece, or None at the end of the body."""
        event = await self.next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a request body")

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
        response = await handler(request)
        await request.drain()
        if response.drop:
            return
        await conn.respond(response)
        if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
            return
        conn.h11.start_next_cycle()
