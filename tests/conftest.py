"""Shared test helpers: a scripted coordinator on respx, a fake child runner, a worker factory.

Everything is reached through fixtures (`coord`, `child`, `announcer`, `make_worker`,
`threads_hold_clock`) so that test modules never import this file.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import respx
import trio
import trio.testing

from mito_trio.announce import RecordingAnnouncer
from mito_trio.config import WorkerConfig
from mito_trio.process import ChildOutcome, SpawnError
from mito_trio.stopping import HardStop
from mito_trio.wire import TaskExecState
from mito_trio.worker import Worker

#: A scripted answer: a response, an exception (class or instance) to raise from the
#: transport, an async function of the request (e.g. one that never returns), or None for
#: the default answer.
Effect = (
    None
    | httpx.Response
    | BaseException
    | type[BaseException]
    | Callable[[httpx.Request], Awaitable[httpx.Response]]
)

_ARTIFACT = re.compile(r"^/workers/tasks/([0-9a-f-]{36})/artifacts/([a-z-]+)$")
_ATTACHMENT = re.compile(r"^/workers/tasks/([0-9a-f-]{36})/attachments/(.+)$")
_QUERY = re.compile(r"^/workers/tasks/([0-9a-f-]{36})$")


def reply(status: int = 200, body: Any = None, *, text: str | None = None) -> httpx.Response:
    """A coordinator answer: JSON `body` (`{"msg": ...}` for errors when omitted) or text."""
    if text is not None:
        return httpx.Response(status, text=text)
    if body is None and status >= 400:
        body = {"msg": f"scripted {status}"}
    content = json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"content-type": "application/json"})


async def hang(request: httpx.Request) -> httpx.Response:
    """An answer that never comes."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")


def snapshot(root: Path) -> list[str]:
    """Every non-directory below `root`, as sorted relative paths."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


class FakeCoordinator:
    """The coordinator and its object store, as respx routes driven by scripts.

    `timeline` lists every call in order (plus `R <state>` entries from `announcer`):
    `fetch`, `heartbeat`, `Finish`, `Cancel`, `Upload result`, `Submit`,
    `Commit <exit_status> <msg>`, `locate artifact result`, `locate attachment <key>`,
    `download <name>`, `put <content type>`, `query`, `auth`, `login`, `register`,
    `unregister`. `script[key]` holds answers used once each, in order, before the
    defaults (keys: the names above, with `Upload` for all uploads, `locate`, `download`,
    `put`, and the op names for reports).
    """

    base = "http://coord.test"
    store = "http://store.test"
    worker_id = UUID("0b6f5a5e-3c1d-4c47-9a0e-8f0f0d7d2f11")
    task_uuid = UUID("9a7e3c1b-6f0e-4f55-9d7c-2a1b3c4d5e6f")
    watched_uuid = UUID("5d4c0a52-1111-4a2b-9c3d-000000000002")
    artifact_uuid = UUID("5d4c0a52-1111-4a2b-9c3d-000000000001")
    reply = staticmethod(reply)
    hang = staticmethod(hang)

    def __init__(self) -> None:
        self.router = respx.MockRouter(assert_all_called=False, assert_all_mocked=True)
        self.router.route(host="coord.test").mock(side_effect=self._coordinator)
        self.router.route(host="store.test").mock(side_effect=self._store)
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.router.async_handler))
        self.timeline: list[str] = []
        self.times: list[tuple[float, str]] = []
        self.requests: dict[str, list[httpx.Request]] = defaultdict(list)
        self.script: dict[str, list[Effect]] = defaultdict(list)
        #: Tasks handed out by `GET /workers/tasks`; afterwards fetches answer
        #: `no_task_status` (401: the worker stops; 200: `null`, no task).
        self.tasks: list[dict[str, Any]] = []
        self.no_task_status = 401
        #: Objects behind presigned GET URLs, by name (`<uuid>/<type>.tar.gz` or the key).
        self.objects: dict[str, bytes] = {}
        #: Bodies received by presigned PUTs, by content type.
        self.uploads: dict[str, list[bytes]] = defaultdict(list)
        #: `info` of `GET /workers/tasks/{uuid}`.
        self.query_info: dict[str, Any] = {"state": "Finished", "result": None}
        #: User tokens `GET /auth` accepts, with the user they belong to.
        self.user_tokens: dict[str, str] = {}
        #: When set, the files below it are recorded at every fetch.
        self.cache_root: Path | None = None
        self.cache_snapshots: list[list[str]] = []

    # --- inspection ------------------------------------------------------------------------

    def calls(self) -> list[str]:
        """The timeline without announcements."""
        return [entry for entry in self.timeline if not entry.startswith("R ")]

    def calls_without(self, *names: str) -> list[str]:
        """The calls except the named ones (e.g. heartbeats)."""
        return [entry for entry in self.calls() if entry not in names]

    def reports(self) -> list[str]:
        """Only `POST /workers/tasks` calls."""
        return [entry for entry in self.calls() if entry.split()[0] in _REPORT_KINDS]

    def bodies(self, key: str) -> list[Any]:
        """Parsed JSON bodies of the requests under `key`."""
        return [json.loads(r.content) for r in self.requests[key]]

    def cache_files(self) -> list[str]:
        """The files in the task cache right now."""
        assert self.cache_root is not None
        return snapshot(self.cache_root)

    def time_of(self, entry: str, index: int = 0) -> float:
        """When the `index`-th call described as `entry` happened."""
        return [t for t, e in self.times if e == entry][index]

    # --- building tasks --------------------------------------------------------------------

    def task(
        self,
        *,
        id: int = 4211,
        timeout: str = "1h",
        args: Sequence[str] = ("python3", "job.py"),
        envs: Mapping[str, str] | None = None,
        resources: Sequence[Mapping[str, Any]] = (),
        terminal_output: bool = False,
        watch: Sequence[str] | None = None,
        upstream: UUID | None = None,
    ) -> dict[str, Any]:
        """A `WorkerTaskResp` JSON object."""
        return {
            "id": id,
            "uuid": str(self.task_uuid),
            "timeout": timeout,
            "upstream_task_uuid": None if upstream is None else str(upstream),
            "spec": {
                "args": list(args),
                "envs": dict(envs or {}),
                "resources": list(resources),
                "terminal_output": terminal_output,
                "watch": None if watch is None else list(watch),
            },
        }

    def artifact(self, local_path: str, data: bytes | None = b"artifact") -> dict[str, Any]:
        """A resource naming the `result` artifact of `artifact_uuid` (stored unless None)."""
        if data is not None:
            self.objects[f"{self.artifact_uuid}/result.tar.gz"] = data
        return {
            "remote_file": {
                "Artifact": {"uuid": str(self.artifact_uuid), "content_type": "result"}
            },
            "local_path": local_path,
        }

    def attachment(self, key: str, local_path: str, data: bytes | None = b"attached") -> Any:
        """A resource naming an attachment (stored unless None)."""
        if data is not None:
            self.objects[key] = data
        return {"remote_file": {"Attachment": {"key": key}}, "local_path": local_path}

    # --- the routes ------------------------------------------------------------------------

    def _record(self, key: str, entry: str, request: httpx.Request) -> None:
        self.timeline.append(entry)
        self.times.append((trio.current_time(), entry))
        self.requests[key].append(request)

    async def _answer(
        self,
        key: str,
        request: httpx.Request,
        default: Callable[[], httpx.Response],
    ) -> httpx.Response:
        if not self.script[key]:
            return default()
        effect = self.script[key].pop(0)
        if effect is None:
            return default()
        if isinstance(effect, httpx.Response):
            return effect
        if isinstance(effect, type) and issubclass(effect, BaseException):
            if issubclass(effect, httpx.RequestError):
                raise effect("scripted transport error", request=request)
            raise effect()
        if isinstance(effect, BaseException):
            raise effect
        return await effect(request)

    async def _coordinator(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        if (method, path) == ("GET", "/auth"):
            self._record("auth", "auth", request)
            return await self._answer("auth", request, lambda: self._auth(request))
        if (method, path) == ("POST", "/login"):
            self._record("login", "login", request)
            return await self._answer("login", request, lambda: self._login(request))
        if (method, path) == ("POST", "/workers"):
            self._record("register", "register", request)
            body = {"worker_id": str(self.worker_id), "token": "worker-1", "redis_url": None}
            return await self._answer("register", request, lambda: reply(200, body))
        if (method, path) == ("POST", "/workers/heartbeat"):
            self._record("heartbeat", "heartbeat", request)
            return await self._answer("heartbeat", request, lambda: reply(200, None))
        if (method, path) == ("DELETE", "/workers"):
            self._record("unregister", "unregister", request)
            return await self._answer("unregister", request, lambda: reply(200, None))
        if (method, path) == ("GET", "/workers/tasks"):
            self._record("fetch", "fetch", request)
            if self.cache_root is not None:
                self.cache_snapshots.append(snapshot(self.cache_root))
            return await self._answer("fetch", request, self._next_task)
        if (method, path) == ("POST", "/workers/tasks"):
            return await self._report(request)
        if method == "GET" and (match := _ARTIFACT.match(path)):
            self._record("locate", f"locate artifact {match[2]}", request)
            name = f"{match[1]}/{match[2]}.tar.gz"
            return await self._answer("locate", request, lambda: self._locate(name))
        if method == "GET" and (match := _ATTACHMENT.match(path)):
            self._record("locate", f"locate attachment {match[2]}", request)
            return await self._answer("locate", request, lambda: self._locate(match[2]))
        if method == "GET" and _QUERY.match(path):
            self._record("query", "query", request)
            return await self._answer("query", request, lambda: reply(200, self._query()))
        raise AssertionError(f"unexpected coordinator call {method} {path}")

    def _auth(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.user_tokens:
            return reply(200, text=self.user_tokens[token])
        return reply(401)

    def _login(self, request: httpx.Request) -> httpx.Response:
        token = f"user-{len(self.requests['login'])}"
        self.user_tokens[token] = json.loads(request.content)["username"]
        return reply(200, {"token": token})

    def _next_task(self) -> httpx.Response:
        if self.tasks:
            return reply(200, self.tasks.pop(0))
        if self.no_task_status == 200:
            return reply(200, None)
        return reply(self.no_task_status, {"msg": "worker not found"})

    def _locate(self, name: str) -> httpx.Response:
        if name not in self.objects:
            return reply(404)
        size = len(self.objects[name])
        return reply(200, {"url": f"{self.store}/get/{name}", "size": size})

    def _query(self) -> dict[str, Any]:
        return {"info": self.query_info, "artifacts": []}

    async def _report(self, request: httpx.Request) -> httpx.Response:
        op = json.loads(request.content)["op"]
        if isinstance(op, str):
            kind, entry = op, op
        else:
            ((kind, body),) = op.items()
            if kind == "Upload":
                entry = f"Upload {body['content_type']}"
            elif kind == "Commit":
                entry = f"Commit {body['exit_status']} {body['msg']}"
            else:
                entry = kind
        self._record(kind, entry, request)

        def default() -> httpx.Response:
            if kind == "Upload":
                return reply(200, {"url": f"{self.store}/put/{op['Upload']['content_type']}"})
            return reply(200, {"url": None})

        return await self._answer(kind, request, default)

    async def _store(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        if method == "GET" and path.startswith("/get/"):
            name = path.removeprefix("/get/")
            self._record("download", f"download {name}", request)

            def download() -> httpx.Response:
                if name not in self.objects:
                    return httpx.Response(404, text="<Error><Message>NoSuchKey</Message></Error>")
                return httpx.Response(200, content=self.objects[name])

            return await self._answer("download", request, download)
        if method == "PUT" and path.startswith("/put/"):
            content_type = path.removeprefix("/put/")
            self._record("put", f"put {content_type}", request)

            def put() -> httpx.Response:
                self.uploads[content_type].append(request.content)
                return httpx.Response(200)

            return await self._answer("put", request, put)
        raise AssertionError(f"unexpected storage call {method} {path}")


_REPORT_KINDS = frozenset({"Finish", "Cancel", "Upload", "Commit", "Submit"})


class TimelineAnnouncer(RecordingAnnouncer):
    """A RecordingAnnouncer that also writes `R <state>` into the coordinator's timeline."""

    def __init__(self, timeline: list[str]) -> None:
        super().__init__()
        self._timeline = timeline

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Record the announcement in both places."""
        self._timeline.append(f"R {state.name}")
        await super().announce(task, state, ttl)


class FakeChild:
    """A `child_runner` with `run_child`'s signature that runs no process.

    It writes `files` (`"MITO_RESULT_DIR/out.txt": text`), `new_task`, `stdout`/`stderr`
    where the environment and arguments say, then, by `mode`:
    `exit` sleeps `run_time` and exits with `exit_code`; `timeout` waits for the deadline,
    awaits `on_timeout` and reports `timeout_status`; `forever` never returns;
    `spawn-error` raises `SpawnError` before anything else.
    """

    def __init__(self) -> None:
        self.mode = "exit"
        self.exit_code = 0
        self.timeout_status = 15
        self.run_time = 1.0
        self.files: dict[str, str] = {}
        self.new_task: str | None = None
        self.stdout = ""
        self.stderr = ""
        self.on_start: Callable[[], None] | None = None
        self.calls: list[dict[str, Any]] = []

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdout: Path | None,
        stderr: Path | None,
        deadline: float,
        hard_stop: HardStop,
        on_timeout: Callable[[], Awaitable[None]] | None = None,
        on_spawn: Callable[[], None] | None = None,
        grace: float = 10.0,
        cwd: Path | None = None,
    ) -> ChildOutcome:
        if self.mode == "spawn-error":
            raise SpawnError(f"cannot start {argv[1]!r}: no such file")
        self.calls.append(
            {
                "argv": list(argv),
                "env": dict(env),
                "stdout": stdout,
                "stderr": stderr,
                "deadline": deadline,
                "started": trio.current_time(),
                "resources": {
                    name: (Path(env["MITO_RESOURCE_DIR"]) / name).read_bytes()
                    for name in snapshot(Path(env["MITO_RESOURCE_DIR"]))
                },
            }
        )
        self._write_outputs(env, stdout, stderr)
        if on_spawn is not None:
            on_spawn()
        if self.on_start is not None:
            self.on_start()
        if self.mode == "forever":
            await trio.sleep_forever()
        if self.mode == "timeout":
            await trio.sleep_until(deadline)
            if on_timeout is not None:
                await on_timeout()
            return ChildOutcome(raw_status=self.timeout_status, timed_out=True)
        await trio.sleep(self.run_time)
        return ChildOutcome(raw_status=self.exit_code << 8, timed_out=False)

    def _write_outputs(
        self, env: Mapping[str, str], stdout: Path | None, stderr: Path | None
    ) -> None:
        # Plain blocking writes on purpose: no threads, so the autojump clock stays exact.
        for name, text in self.files.items():
            variable, _, relative = name.partition("/")
            path = Path(env[variable]) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if self.new_task is not None:
            Path(env["MITO_NEW_TASK"]).write_text(self.new_task)
        for target, text in ((stdout, self.stdout), (stderr, self.stderr)):
            if target is not None:
                with open(target, "a") as file:
                    file.write(text)


@pytest.fixture
def threads_hold_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Keep the autojump clock still while a `trio.to_thread` call runs.

    A thread looks idle to the clock, which would jump to the next deadline (the upload
    deadline, say) while an archive is being written. Tests that archive or stream files
    use this together with `autojump_clock`.
    """
    original = trio.to_thread.run_sync
    busy = 0

    async def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal busy
        busy += 1
        autojump_clock.autojump_threshold = math.inf
        try:
            return await original(fn, *args, **kwargs)
        finally:
            busy -= 1
            if busy == 0:
                autojump_clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    yield


@pytest.fixture
async def coord() -> Any:
    """A fresh scripted coordinator; its HTTP client is closed afterwards."""
    fake = FakeCoordinator()
    async with fake.http:
        yield fake


@pytest.fixture
def child() -> FakeChild:
    """The fake child runner handed to workers made by `make_worker`."""
    return FakeChild()


@pytest.fixture
def announcer(coord: FakeCoordinator) -> TimelineAnnouncer:
    """Announcements of workers made by `make_worker`, also in `coord.timeline`."""
    return TimelineAnnouncer(coord.timeline)


@pytest.fixture
def make_worker(
    coord: FakeCoordinator, child: FakeChild, announcer: TimelineAnnouncer, tmp_path: Path
) -> Callable[..., Worker]:
    """Build a Worker on `coord` with the fake child; keyword arguments override config.

    Defaults: user alice/secret, polling every 1 s, heartbeat once a day (out of the way),
    credentials in `tmp_path/credentials`, cache under `tmp_path/cache`.
    `startup_retry_window` is taken out of the keywords for the Worker itself.
    """
    coord.cache_root = tmp_path / "cache" / str(coord.worker_id)

    def make(*, startup_retry_window: float = 60.0, **overrides: Any) -> Worker:
        options: dict[str, Any] = {
            "coordinator_addr": coord.base,
            "polling_interval": 1.0,
            "heartbeat_interval": 86400.0,
            "credential_path": tmp_path / "credentials",
            "user": "alice",
            "password": "secret",
        }
        options.update(overrides)
        return Worker(
            WorkerConfig(**options),
            http=coord.http,
            cache_base=tmp_path / "cache",
            worker_env={},
            announcer=announcer,
            interactive=False,
            startup_retry_window=startup_retry_window,
            child_runner=child,
        )

    return make
