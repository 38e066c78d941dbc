"""The Redis side channel (PROTOCOL.md §8) against a real `redis-server` on a free port.

The server gets the ACL user the coordinator creates (`mitosis_worker`, keys and channels
`task:*`, +@read +@write +@connection +@pubsub -@dangerous), and the worker gets the URL in
the coordinator's exact format (`redis://mitosis_worker:<pw>@host:port/?protocol=resp3`).
Assertions read Redis back through a second, independent connection.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from mito_trio.announce import RecordingAnnouncer
from mito_trio.client import new_http_client
from mito_trio.config import WorkerConfig
from mito_trio.exitcodes import ExitCode
from mito_trio.redis import (
    ProtocolError,
    RedisConnection,
    RedisURL,
    Reply,
    ReplyError,
    encode_command,
    open_redis,
    parse_redis_url,
    parse_reply,
)
from mito_trio.testing import LocalCoordinator
from mito_trio.wire import TaskExecState as S
from mito_trio.wire import TaskState
from mito_trio.worker import Worker

REDIS_SERVER = shutil.which("redis-server")
#: Like the coordinator's `ACL GENPASS`: 64 hex digits.
WORKER_PASSWORD = "5f1c0ffee0ddba11c0de7e57ab1e5eed5f1c0ffee0ddba11c0de7e57ab1e5eed"
#: The rules of the coordinator's `build_redis_connection_info` (netmito config/coordinator.rs).
WORKER_ACL = [
    "ACL", "SETUSER", "mitosis_worker", "reset", "on", f">{WORKER_PASSWORD}", "~task:*",
    "&task:*", "+@read", "+@write", "+@connection", "+@pubsub", "-@dangerous",
]  # fmt: skip
#: Bound on every wait for something observable (the tests themselves take well under 1 s).
PATIENCE = 15.0


# --- the server --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, *args: str) -> Reply:
    """One admin command on a fresh blocking connection (fixtures only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode_command(args))
        buffer = b""
        while (parsed := parse_reply(buffer)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            buffer += chunk
        return parsed[0]


@attrs.frozen
class RedisServer:
    port: int

    def worker_url(self, password: str = WORKER_PASSWORD) -> str:
        """The URL exactly as the coordinator hands it out at registration."""
        return f"redis://mitosis_worker:{password}@127.0.0.1:{self.port}/?protocol=resp3"

    async def admin(self) -> RedisConnection:
        """A connection as the default (unrestricted) user."""
        return await RedisConnection.open(RedisURL("127.0.0.1", self.port))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH: the Redis tests need a Redis 7 server binary")
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
    )  # fmt: skip
    try:
        give_up = time.monotonic() + PATIENCE
        while True:
            try:
                if _command(port, "PING") == "PONG":
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > give_up:
                log_text = (workdir / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start on port {port}:\n{log_text}")
            time.sleep(0.02)  # polling for the server to listen, bounded above
        assert _command(port, *WORKER_ACL) == "OK"
        yield RedisServer(port)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The server, emptied for this test."""
    assert _command(redis_server.port, "FLUSHALL") == "OK"
    return redis_server


@pytest.fixture
async def admin(redis: RedisServer) -> AsyncIterator[RedisConnection]:
    conn = await redis.admin()
    try:
        yield conn
    finally:
        await conn.aclose()


async def eventually(check: Callable[[], Any], what: str) -> None:
    """Poll observable state (Redis counters) until `check()` is true, within `PATIENCE`."""
    with trio.fail_after(PATIENCE):
        while True:
            if await check():
                return
            await trio.sleep(0.01)


async def numsub(admin: RedisConnection, channel: str) -> int:
    reply = await admin.execute("PUBSUB", "NUMSUB", channel)
    assert isinstance(reply, list)
    count = reply[1]
    assert isinstance(count, int)
    return count


async def worker_connections(admin: RedisConnection) -> int:
    listing = await admin.execute("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return len(re.findall(r"\buser=mitosis_worker\b", listing.decode()))


# --- watching what the worker publishes ----------------------------------------------------------


@attrs.define
class Published:
    """Everything published on `task:*`, with the key's TTL sampled at each message."""

    port: int
    #: (channel, state number, TTL of the key right after the message)
    messages: list[tuple[str, int, int]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def run(
        self, *, task_status: trio.TaskStatus[Published] = trio.TASK_STATUS_IGNORED
    ) -> None:
        url = RedisURL("127.0.0.1", self.port)
        sub = await RedisConnection.open(url)
        probe = await RedisConnection.open(url)
        try:
            await sub.send(["PSUBSCRIBE", "task:*"])
            assert await sub.read_reply() == [b"psubscribe", b"task:*", 1]
            task_status.started(self)
            while True:
                reply = await sub.read_reply()
                assert isinstance(reply, list) and reply[0] == b"pmessage"
                channel, payload = reply[2], reply[3]
                assert isinstance(channel, bytes) and isinstance(payload, bytes)
                if not payload.lstrip(b"-").isdigit():
                    continue  # a test's own garbage
                ttl = await probe.execute("TTL", channel)
                assert isinstance(ttl, int)
                self.messages.append((channel.decode(), int(payload), ttl))
                self._changed.set()
                self._changed = trio.Event()
        finally:
            await sub.aclose()
            await probe.aclose()

    def states(self, task: UUID) -> list[int]:
        return [state for channel, state, _ in self.messages if channel == f"task:{task}"]

    async def wait_for(self, task: UUID, state: S) -> None:
        with trio.fail_after(PATIENCE):
            while int(state) not in self.states(task):
                await self._changed.wait()


@asynccontextmanager
async def published(redis: RedisServer) -> AsyncIterator[Published]:
    async with trio.open_nursery() as nursery:
        collector = await nursery.start(Published(redis.port).run)
        try:
            yield collector
        finally:
            nursery.cancel_scope.cancel()


@attrs.define
class RunningWorker:
    worker: Worker
    coordinator: LocalCoordinator
    recorder: RecordingAnnouncer
    codes: list[ExitCode]


@asynccontextmanager
async def running_worker(
    tmp_path: Path, redis_url: str | None, **config: Any
) -> AsyncIterator[RunningWorker]:
    """LocalCoordinator handing out `redis_url`, and an in-process Worker (real clock)."""
    coordinator = LocalCoordinator(redis_url=redis_url)
    recorder = RecordingAnnouncer()
    async with coordinator.running():
        settings = WorkerConfig(
            coordinator_addr=coordinator.url,
            polling_interval=0.1,
            heartbeat_interval=60.0,
            credential_path=tmp_path / "credentials",
            user="mitosis_admin",
            password="mitosis_admin",
            **config,
        )
        async with new_http_client(request_timeout=10.0) as http:
            worker = Worker(
                settings,
                http=http,
                cache_base=tmp_path / "cache",
                announcer=recorder,
                interactive=False,
            )
            running = RunningWorker(worker, coordinator, recorder, [])

            async def run() -> None:
                running.codes.append(await worker.run())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                with trio.fail_after(PATIENCE):
                    await worker.registered.wait()
                yield running
                worker.request_stop("test finished")
    assert running.codes == [ExitCode.OK]


async def all_keys_expire(admin: RedisConnection) -> None:
    """Every `task:*` key in Redis has a TTL (-1 would mean "never expires")."""
    keys = await admin.execute("KEYS", "task:*")
    assert isinstance(keys, list)
    for key in keys:
        assert isinstance(key, bytes)
        ttl = await admin.execute("TTL", key)
        assert isinstance(ttl, int) and ttl > 0, (key, ttl)


# --- pure parts: URL and RESP ------------------------------------------------------------------


def test_coordinator_url_is_parsed_and_resp3_ignored() -> None:
    url = parse_redis_url(f"redis://mitosis_worker:{WORKER_PASSWORD}@10.0.0.5:6380/?protocol=resp3")
    assert url == RedisURL("10.0.0.5", 6380, "mitosis_worker", WORKER_PASSWORD, 0)
    assert url.masked() == "redis://mitosis_worker:***@10.0.0.5:6380/0"
    assert WORKER_PASSWORD not in repr(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://localhost", RedisURL("localhost")),
        ("redis://:pw@h:1/3", RedisURL("h", 1, None, "pw", 3)),
        # The coordinator does not escape the password, nor bracket an IPv6 address.
        ("redis://u:p@ss/w?rd@::1:6379/?protocol=resp3", RedisURL("::1", 6379, "u", "p@ss/w?rd")),
        ("redis://u:p%40ss@[::1]:7000", RedisURL("::1", 7000, "u", "p@ss")),
        ("REDIS://u:pw@host/?db=2&protocol=resp3", RedisURL("host", 6379, "u", "pw", 2)),
    ],
)
def test_lenient_url_parsing(text: str, expected: RedisURL) -> None:
    assert parse_redis_url(text) == expected


@pytest.mark.parametrize(
    "text", ["rediss://u:secretpw@h:1", "http://h", "redis://u:secretpw@h:99999", "redis://u:pw@"]
)
def test_unusable_urls_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(text)
    assert "secretpw" not in str(info.value)


def test_replies_parse_only_when_complete() -> None:
    wire = b"*3\r\n$7\r\nmessage\r\n$6\r\ntask:1\r\n$2\r\n12\r\n+OK\r\n:5\r\n$-1\r\n-ERR no\r\n"
    for cut in range(len(b"*3\r\n$7\r\nmessage\r\n$6\r\ntask:1\r\n$2\r\n12\r\n")):
        assert parse_reply(wire[:cut]) is None
    replies: list[Reply] = []
    pos = 0
    while (parsed := parse_reply(wire, pos)) is not None:
        reply, pos = parsed
        replies.append(reply)
    assert replies[:4] == [[b"message", b"task:1", b"12"], "OK", 5, None]
    assert isinstance(replies[4], ReplyError) and str(replies[4]) == "ERR no"
    with pytest.raises(ProtocolError):
        parse_reply(b"%2\r\n")  # RESP3 map: never requested, refused


# --- announcements -----------------------------------------------------------------------------


async def test_announce_sets_with_ttl_then_publishes(
    redis: RedisServer, admin: RedisConnection
) -> None:
    task = uuid4()
    async with published(redis) as seen, open_redis(redis.worker_url()) as announcer:
        assert announcer is not None and announcer.connected
        await announcer.announce(task, S.ExecPending, 70)
        await seen.wait_for(task, S.ExecPending)
        assert 60 < seen.messages[0][2] <= 70
        other = uuid4()
        await announcer.announce(other, S.ExecSpawned, 0)  # even a zero TTL gets an expiry
        pttl = await admin.execute("PTTL", f"task:{other}")
        assert isinstance(pttl, int) and 0 < pttl <= 1000
        assert await announcer.read_state(task) is S.ExecPending
        assert await announcer.read_state(uuid4()) is None
        await seen.wait_for(other, S.ExecSpawned)
    assert seen.states(task) == [10]
    assert await admin.execute("GET", f"task:{task}") == b"10"


async def test_reconnects_after_client_kill(redis: RedisServer, admin: RedisConnection) -> None:
    task = uuid4()
    async with open_redis(redis.worker_url()) as announcer:
        assert announcer is not None
        await announcer.announce(task, S.ExecPending, 60)
        killed = await admin.execute("CLIENT", "KILL", "USER", "mitosis_worker")
        assert killed == 1
        await announcer.announce(task, S.ExecSpawned, 60)
        assert await admin.execute("GET", f"task:{task}") == b"11"
        assert announcer.dropped == 0
        # Killed again while idle: reads recover the same way.
        await admin.execute("CLIENT", "KILL", "USER", "mitosis_worker")
        assert await announcer.read_state(task) is S.ExecSpawned


async def test_redis_down_never_raises_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()  # nothing listens there
    url = f"redis://mitosis_worker:{WORKER_PASSWORD}@127.0.0.1:{port}/?protocol=resp3"
    caplog.set_level(logging.DEBUG, logger="mito_trio")
    task = uuid4()
    with trio.fail_after(5):
        async with open_redis(url) as announcer:
            assert announcer is not None and not announcer.connected
            for state in S:
                await announcer.announce(task, state, 60)
            assert await announcer.read_state(task) is None
    assert announcer.dropped == len(S)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"redis://mitosis_worker:***@127.0.0.1:{port}/0" in warnings[0].getMessage()
    assert WORKER_PASSWORD not in caplog.text


async def test_wrong_password_is_reported_without_the_password(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mito_trio")
    async with open_redis(redis.worker_url("not-the-password")) as announcer:
        assert announcer is not None and not announcer.connected
        await announcer.announce(uuid4(), S.ExecPending, 60)
        assert announcer.dropped == 1
    assert "WRONGPASS" in caplog.text
    assert "not-the-password" not in caplog.text


async def test_connections_closed_on_exit(redis: RedisServer, admin: RedisConnection) -> None:
    async with open_redis(redis.worker_url()) as announcer:
        assert announcer is not None
        async with announcer.subscribe("task:x") as subscription:
            assert subscription.subscribed
            assert await worker_connections(admin) == 2

    async def none_left() -> bool:
        return await worker_connections(admin) == 0

    await eventually(none_left, "the worker's connections to close")


# --- subscriptions -----------------------------------------------------------------------------


async def test_subscription_resubscribes_after_client_kill(
    redis: RedisServer, admin: RedisConnection
) -> None:
    channel = f"task:{uuid4()}"
    async with open_redis(redis.worker_url()) as announcer:
        assert announcer is not None
        async with announcer.subscribe(channel) as subscription:
            assert await numsub(admin, channel) == 1
            assert await admin.execute("CLIENT", "KILL", "USER", "mitosis_worker") == 2
            assert await numsub(admin, channel) == 0
            received: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def read_one() -> None:
                    received.append(await subscription.__anext__())

                nursery.start_soon(read_one)

                async def resubscribed() -> bool:
                    return await numsub(admin, channel) == 1

                await eventually(resubscribed, "the subscription to come back")
                await admin.execute("PUBLISH", channel, "12")
            assert received == [b"12"]
        assert await numsub(admin, channel) == 0


async def test_cancelled_subscription_still_unsubscribes(
    redis: RedisServer, admin: RedisConnection
) -> None:
    channel = f"task:{uuid4()}"
    async with open_redis(redis.worker_url()) as announcer:
        assert announcer is not None
        with trio.CancelScope() as scope:
            async with announcer.subscribe(channel) as subscription:
                assert await numsub(admin, channel) == 1
                scope.cancel()
                await subscription.__anext__()
        assert scope.cancelled_caught
        # UNSUBSCRIBE was confirmed before the block was left: no waiting needed.
        assert await numsub(admin, channel) == 0


# --- a whole worker ----------------------------------------------------------------------------

SUCCESS = [1, 10, 11, 12, 14, 15, 17, 19]
TIMED_OUT = [1, 10, 11, 13, 14, 16, 17, 19]


@pytest.mark.parametrize(
    ("args", "task_timeout", "expected"),
    [(["true"], "1m", SUCCESS), (["sleep", "30"], "1s", TIMED_OUT)],
    ids=["success", "exec-timeout"],
)
async def test_task_states_reach_redis(
    redis: RedisServer,
    admin: RedisConnection,
    tmp_path: Path,
    args: list[str],
    task_timeout: str,
    expected: list[int],
) -> None:
    async with (
        published(redis) as seen,
        running_worker(tmp_path, redis.worker_url()) as running,
    ):
        task = running.coordinator.submit_task(args, timeout=task_timeout)
        await seen.wait_for(task, S.TaskCommitted)
        record = running.coordinator.task(task)
    assert seen.states(task) == expected
    # The same announcements, in the same order, as the in-process recorder saw.
    assert seen.states(task) == [int(state) for state in running.recorder.states(task)]
    assert all(ttl > 0 for _, _, ttl in seen.messages), seen.messages
    await all_keys_expire(admin)
    assert await admin.execute("GET", f"task:{task}") == b"19"
    assert record.result is not None
    assert (record.result.msg is None) == (expected is SUCCESS)


async def test_skip_redis_leaves_redis_alone(
    redis: RedisServer, admin: RedisConnection, tmp_path: Path
) -> None:
    async with running_worker(tmp_path, redis.worker_url(), skip_redis=True) as running:
        task = running.coordinator.submit_task(["true"])
        with trio.fail_after(PATIENCE):
            await running.coordinator.wait_committed(task)
        assert await worker_connections(admin) == 0
    assert await admin.execute("KEYS", "*") == []


async def test_watch_returns_on_a_published_state(
    redis: RedisServer, admin: RedisConnection, tmp_path: Path
) -> None:
    """Only pub/sub can tell: the watched task stays Ready and its key is never set."""
    async with (
        published(redis) as seen,
        running_worker(tmp_path, redis.worker_url()) as running,
    ):
        coordinator = running.coordinator
        upstream = coordinator.submit_task(["true"], tags=["never-on-this-worker"])
        task = coordinator.submit_task(["true"], watch=(upstream, S.ExecFinished))
        channel = f"task:{upstream}"

        async def subscribed() -> bool:
            return await numsub(admin, channel) == 1

        await eventually(subscribed, "the worker to subscribe")
        await seen.wait_for(task, S.Watch)
        # A state short of the target does not release the watch.
        await admin.execute("PUBLISH", channel, str(int(S.ExecSpawned)))
        await admin.execute("PUBLISH", channel, "garbage")
        started = trio.current_time()
        await admin.execute("PUBLISH", channel, str(int(S.ExecFinished)))
        await seen.wait_for(task, S.TaskCommitted)
        assert trio.current_time() - started < 5.0
        assert await numsub(admin, channel) == 0
        assert coordinator.task(upstream).state.name == "Ready"
    assert seen.states(task) == [1, 7, 8, 10, 11, 12, 14, 15, 17, 19]


async def test_watch_reads_the_state_already_in_redis(
    redis: RedisServer, admin: RedisConnection, tmp_path: Path
) -> None:
    async with (
        published(redis) as seen,
        running_worker(tmp_path, redis.worker_url()) as running,
    ):
        coordinator = running.coordinator
        upstream = coordinator.submit_task(["true"], tags=["never-on-this-worker"])
        await admin.execute("SET", f"task:{upstream}", "19", "EX", "60")
        task = coordinator.submit_task(["true"], watch=(upstream, S.TaskCommitted))
        await seen.wait_for(task, S.TaskCommitted)
        assert await numsub(admin, f"task:{upstream}") == 0
    assert seen.states(task)[:3] == [1, 7, 8]


async def test_task_runs_to_its_commit_while_redis_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mito_trio")
    url = f"redis://mitosis_worker:{WORKER_PASSWORD}@127.0.0.1:{_free_port()}/?protocol=resp3"
    async with running_worker(tmp_path, url) as running:
        coordinator = running.coordinator
        upstream = coordinator.submit_task(["true"], tags=["never-on-this-worker"])
        task = coordinator.submit_task(["true"], watch=(upstream, S.ExecFinished))
        await coordinator.wait_for(lambda: coordinator.task(task).runs or None)
        # The watch falls back to the coordinator's view of the watched task.
        coordinator.set_task_state(upstream, TaskState.Finished)
        with trio.fail_after(PATIENCE):
            record = await coordinator.wait_committed(task)
    assert record.result is not None and record.result.exit_status == 0
    assert running.recorder.states(task)[-1] is S.TaskCommitted
    assert WORKER_PASSWORD not in caplog.text
    redis_warnings = [
        r for r in caplog.records if r.name.startswith("mito_trio.redis.") and r.levelno >= 30
    ]
    assert len(redis_warnings) <= 2, [r.getMessage() for r in redis_warnings]
