"""The RESP2 wire format: encoding commands, decoding replies, and the client's errors."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "Arg",
    "ConnectionLost",
    "ProtocolError",
    "RedisError",
    "Reply",
    "ReplyError",
    "encode_command",
    "parse_reply",
]

#: Replies larger than this are not something this client asked for.
MAX_REPLY_BYTES = 1 << 20


# --- errors ----------------------------------------------------------------------------------


class RedisError(Exception):
    """Redis could not be reached, or did not do what was asked."""


class ReplyError(RedisError):
    """An error reply (`-ERR ...`, `-NOPERM ...`, `-WRONGPASS ...`) from the server."""


class ConnectionLost(RedisError):
    """The connection broke, or could not be made."""


class ProtocolError(RedisError):
    """The server sent something that is not RESP2."""


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
