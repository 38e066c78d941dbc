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

from .announcer import RedisAnnouncer, open_redis, task_key
from .connection import RedisConnection
from .resp import (
    ConnectionLost,
    ProtocolError,
    RedisError,
    Reply,
    ReplyError,
    encode_command,
    parse_reply,
)
from .subscription import Subscription
from .url import RedisURL, parse_redis_url

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
