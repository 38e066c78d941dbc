"""An in-process coordinator for tests, demos and benchmarks (PROTOCOL.md §3, §9.6, §12).

It serves every endpoint a worker calls, plus an S3-like object store behind presigned URLs,
on 127.0.0.1 with all state in memory. Tests script it (submit tasks, stop workers, inject
faults) and inspect it (task reports in order, request log, worker counters); every state
change wakes `wait_for`, so nothing needs to poll.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, TypeVar
from uuid import UUID, uuid4

import attrs
import h11
import trio

from mito_trio import wire

from ._humantime import format_duration, parse_duration
from .http_server import BodyTooLarge, Request, Response, serve_connection
from .object_store import (
    ARTIFACTS,
    ATTACHMENTS,
    ObjectStore,
    PresignError,
    StoredObject,
    s3_error,
)
from .records import (
    ENDPOINTS,
    REPORT_OPS,
    ArtifactRecord,
    Fault,
    GroupRole,
    RejectedPut,
    RequestRecord,
    TaskRecord,
    UserRecord,
    WorkerRecord,
    WorkerState,
)

__all__ = ["LocalCoordinator"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_USERS = {"mitosis_admin": "mitosis_admin"}
DEFAULT_TOKEN_LIFETIME = 7 * 86400.0
UPLOAD_URL_TTL = 3600.0
TASK_TIMEOUT_GRACE = 60.0
MAX_JSON_BODY = 16 * 1024 * 1024

_ROLES = {
    **dict.fromkeys(("read", "Read", "READ"), GroupRole.Read),
    **dict.fromkeys(("write", "Write", "WRITE"), GroupRole.Write),
    **dict.fromkeys(("admin", "Admin", "ADMIN"), GroupRole.Admin),
}
_CONTENT_TYPES = {
    **dict.fromkeys(("result", "Result", "RESULT"), wire.ArtifactContentType.RESULT),
    **dict.fromkeys(
        ("exec-log", "exec", "EXEC", "Exec", "execlog", "EXECLOG", "Execlog", "ExecLog"),
        wire.ArtifactContentType.EXEC_LOG,
    ),
    **dict.fromkeys(
        (
            *("std-log", "std", "STD", "Std", "stdlog", "Stdlog", "STDLOG"),
            *("terminal", "Terminal", "TERMINAL"),
        ),
        wire.ArtifactContentType.STD_LOG,
    ),
}
_DONE = (wire.TaskState.Finished, wire.TaskState.Cancelled)
_WRITERS = (GroupRole.Write, GroupRole.Admin)


class ApiError(Exception):
    """An error answer: `{"msg": ...}` JSON, or plain text for framework-level rejections."""

    def __init__(self, status: int, msg: str, *, plain: bool = False) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.plain = plain

    def response(self) -> Response:
        """The HTTP answer for this error."""
        if self.plain:
            return Response(self.status, self.msg.encode(), "text/plain; charset=utf-8")
        return _json(self.status, {"msg": self.msg})


@attrs.frozen
class _Token:
    kind: str  # "user" or "worker"
    subject: str
    signature: int
    expires_at: float


def parse_groups(entries: Iterable[str], user: str) -> dict[str, GroupRole]:
    """Group roles from registration entries (§3.3); the user's own group is always Admin."""
    groups: dict[str, GroupRole] = {}
    for entry in entries:
        parts = entry.split(":")
        if len(parts) == 1:
            groups[parts[0]] = GroupRole.Write
        elif len(parts) == 2:
            groups[parts[0]] = _ROLES.get(parts[1], GroupRole.Write)
    groups[user] = GroupRole.Admin
    return groups


def download_url_ttl(size: int) -> float:
    """Lifetime of a presigned GET URL (§3.8)."""
    return float(max(3600, min(86400, size // 1_000_000)))


def format_timestamp(moment: datetime) -> str:
    """The `time` crate's display form, e.g. `2025-03-01 12:34:56.123456 +00:00:00`."""
    fraction = f"{moment.microsecond:06d}".rstrip("0") or "0"
    return f"{moment:%Y-%m-%d %H:%M:%S}.{fraction} +00:00:00"


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode(), "application/json")


def _wire(value: object, status: int = 200) -> Response:
    return Response(status, wire.dumps(value), "application/json")


def _s3(status: int, code: str, message: str) -> Response:
    return Response(status, s3_error(code, message), "application/xml")


def _op_name(body: bytes) -> str | None:
    try:
        op = json.loads(body).get("op")
    except (ValueError, AttributeError):
        return None
    if isinstance(op, str):
        return op
    if isinstance(op, dict) and len(op) == 1:
        return str(next(iter(op)))
    return None


def _now() -> datetime:
    return datetime.now(UTC)


class LocalCoordinator:
    """The coordinator side of the worker protocol, in memory, on a free loopback port.

    `clock` (default `trio.current_time`) drives token expiry, presigned URL expiry and the
    heartbeat and task-timeout deadlines; pass a settable function to test expiry without
    waiting. `token_leeway` is the grace after expiry (the original's JWT library uses 60 s).
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        redis_url: str | None = None,
        heartbeat_timeout: float | None = None,
        discard_uploads: bool = False,
        clock: Callable[[], float] | None = None,
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
        token_leeway: float = 0.0,
    ) -> None:
        self.redis_url = redis_url
        self.heartbeat_timeout = heartbeat_timeout
        self.discard_uploads = discard_uploads
        self.token_lifetime = token_lifetime
        self.token_leeway = token_leeway
        self._clock: Callable[[], float] = clock or trio.current_time
        self.users: dict[str, UserRecord] = {
            name: UserRecord(name=name, password=password, signature=secrets.randbits(62))
            for name, password in (DEFAULT_USERS if users is None else users).items()
        }
        if not self.users:
            raise ValueError("LocalCoordinator needs at least one user")
        self.workers: dict[UUID, WorkerRecord] = {}
        self.tasks: dict[UUID, TaskRecord] = {}
        self.requests: list[RequestRecord] = []
        self.rejected_puts: list[RejectedPut] = []
        self.faults: list[Fault] = []
        self.internal_errors: list[BaseException] = []
        self.store = ObjectStore(self._clock)
        self._tokens: dict[str, _Token] = {}
        self._tasks_by_id: dict[int, TaskRecord] = {}
        self._queue: list[tuple[int, int, UUID]] = []
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._task_ids: dict[str, itertools.count[int]] = {}
        self._changed = trio.Event()
        self._port: int | None = None
        self._routes: dict[str, Callable[[Request, bytes, list[str]], Awaitable[Response]]] = {
            "auth": self._auth,
            "login": self._login,
            "register": self._register,
            "heartbeat": self._heartbeat,
            "fetch": self._fetch,
            "report": self._report,
            "locate_artifact": self._locate_artifact,
            "locate_attachment": self._locate_attachment,
            "query_task": self._query_task,
            "unregister": self._unregister,
            "store_put": self._store_put,
            "store_get": self._store_get,
        }

    # --- serving ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:40123`; only known once serving."""
        if self._port is None:
            raise RuntimeError("LocalCoordinator is not serving yet")
        return f"http://127.0.0.1:{self._port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[LocalCoordinator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on a free loopback port and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._port = int(listeners[0].socket.getsockname()[1])
        log.info("local coordinator listening on %s", self.url)
        async with trio.open_nursery() as nursery:
            if self.heartbeat_timeout is not None:
                nursery.start_soon(self._reap_loop)
            await nursery.start(trio.serve_listeners, self._serve_stream, listeners)
            task_status.started(self)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LocalCoordinator]:
        """Serve in a nursery of its own for the duration of the block."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        await serve_connection(stream, self._handle)

    async def _reap_loop(self) -> None:
        while True:
            changed = self._changed
            self.reap_expired()
            deadlines = [
                w.heartbeat_deadline
                for w in self.workers.values()
                if not w.removed and w.heartbeat_deadline is not None
            ]
            wait = min(deadlines) - self._clock() if deadlines else math.inf
            with trio.move_on_after(max(wait, 0.0)):
                await changed.wait()

    def reap_expired(self) -> list[WorkerRecord]:
        """Remove workers whose heartbeat deadline has passed (§12.3); returns them."""
        now = self._clock()
        expired = [
            w
            for w in self.workers.values()
            if not w.removed and w.heartbeat_deadline is not None and now >= w.heartbeat_deadline
        ]
        for worker in expired:
            log.info("worker %s missed its heartbeat deadline", worker.uuid)
            self._remove_worker(worker, "heartbeat_timeout")
        if expired:
            self._notify()
        return expired

    # --- request handling -------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        try:
            endpoint, params = self._route(request)
            route_error = None
        except ApiError as exc:
            endpoint, params, route_error = None, [], exc
        record = RequestRecord(
            method=request.method,
            path=request.path,
            target=request.target,
            endpoint=endpoint,
            time=self._clock(),
            chunked=request.chunked,
            content_length=request.content_length,
        )
        self.requests.append(record)
        self._notify()
        try:
            if route_error is not None:
                raise route_error
            assert endpoint is not None
            response = await self._answer(request, endpoint, params, record)
        except ApiError as exc:
            response = exc.response()
        except BodyTooLarge as exc:
            response = ApiError(413, str(exc), plain=True).response()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._notify()
            raise
        except Exception as exc:
            log.exception("local coordinator failed on %s %s", request.method, request.target)
            self.internal_errors.append(exc)
            response = _json(500, {"msg": f"internal error: {exc!r}"})
        record.status = None if response.drop else response.status
        record.dropped = response.drop
        record.answered = self._clock()
        log.debug("%s %s -> %s", request.method, request.target, record.status or "dropped")
        self._notify()
        return response

    def _route(self, request: Request) -> tuple[str, list[str]]:
        method = request.method
        parts = request.raw_path.split("/")[1:]
        match parts:
            case ["auth"]:
                allowed = {"GET": "auth"}
            case ["login"]:
                allowed = {"POST": "login"}
            case ["workers"]:
                allowed = {"POST": "register", "DELETE": "unregister"}
            case ["workers", "heartbeat"]:
                allowed = {"POST": "heartbeat"}
            case ["workers", "tasks"]:
                allowed = {"GET": "fetch", "POST": "report"}
            case ["workers", "tasks", uuid] if uuid:
                allowed = {"GET": "query_task"}
            case ["workers", "tasks", uuid, "artifacts", content_type] if uuid and content_type:
                allowed = {"GET": "locate_artifact"}
            case ["workers", "tasks", uuid, "attachments", *key] if uuid and key:
                allowed = {"GET": "locate_attachment"}
            case ["store", bucket, *key] if bucket and key:
                allowed = {"PUT": "store_put", "GET": "store_get"}
            case _:
                raise ApiError(404, "", plain=True)
        if method not in allowed:
            raise ApiError(405, "", plain=True)
        return allowed[method], parts

    async def _answer(
        self, request: Request, endpoint: str, parts: list[str], record: RequestRecord
    ) -> Response:
        body = b"" if endpoint == "store_put" else await request.read_body(MAX_JSON_BODY)
        record.op = _op_name(body) if endpoint == "report" else None
        fault = self._take_fault(endpoint, record.op)
        record.fault = fault
        replaces = fault is not None and (fault.drop or fault.status is not None)
        if fault is not None:
            log.info("injecting %r into %s %s", fault, request.method, request.target)
            if fault.delay:
                await trio.sleep(fault.delay)
            if replaces and not fault.process:
                return _fault_response(fault)
        try:
            response = await self._routes[endpoint](request, body, parts)
        except ApiError as exc:
            response = exc.response()
        if fault is not None and replaces:
            return _fault_response(fault)
        return response

    def _take_fault(self, endpoint: str, op: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(endpoint, op):
                fault.hits += 1
                return fault
        return None

    # --- authentication ---------------------------------------------------------------------

    def _issue(self, kind: str, subject: str, signature: int, lifetime: float) -> str:
        token = base64.b64encode(secrets.token_bytes(36)).decode()
        self._tokens[token] = _Token(kind, subject, signature, self._clock() + lifetime)
        return token

    def _token(self, request: Request, kind: str) -> _Token:
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(400, "Header of type `authorization` was missing", plain=True)
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(400, "Header of type `authorization` is not a bearer token", plain=True)
        token = self._tokens.get(value.strip())
        if token is None or token.kind != kind:
            raise ApiError(401, "Invalid token")
        if self._clock() > token.expires_at + self.token_leeway:
            raise ApiError(401, "Token expired")
        return token

    def _user_auth(self, request: Request) -> UserRecord:
        token = self._token(request, "user")
        user = self.users.get(token.subject)
        if user is None:
            raise ApiError(401, "User not found")
        if not user.active:
            raise ApiError(403, "User is not active")
        if token.signature != user.signature:
            raise ApiError(401, "Token signature mismatch")
        return user

    def _worker_auth(self, request: Request) -> WorkerRecord:
        token = self._token(request, "worker")
        worker = self.workers.get(UUID(token.subject))
        if worker is None or worker.removed:
            raise ApiError(401, "Worker not found")
        return worker

    @staticmethod
    def _parse(request: Request, body: bytes, cls: type[T]) -> T:
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "application/json" and not (
            mime.startswith("application/") and mime.endswith("+json")
        ):
            raise ApiError(
                415, "Expected request with `Content-Type: application/json`", plain=True
            )
        try:
            json.loads(body)
        except ValueError as exc:
            raise ApiError(
                400, f"Failed to parse the request body as JSON: {exc}", plain=True
            ) from None
        try:
            return wire.loads(body, cls)
        except wire.WireError as exc:
            raise ApiError(422, f"Failed to deserialize the JSON body: {exc}", plain=True) from None

    @staticmethod
    def _duration(text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise ApiError(422, f"Failed to deserialize the JSON body: {exc}", plain=True) from None

    # --- endpoints --------------------------------------------------------------------------

    async def _auth(self, request: Request, body: bytes, parts: list[str]) -> Response:
        user = self._user_auth(request)
        return Response(200, user.name.encode(), "text/plain; charset=utf-8")

    async def _login(self, request: Request, body: bytes, parts: list[str]) -> Response:
        req = self._parse(request, body, wire.LoginReq)
        if len(req.md5_password) != 16 or not all(0 <= b <= 255 for b in req.md5_password):
            raise ApiError(422, "md5_password must be 16 integers 0-255", plain=True)
        user = self.users.get(req.username)
        digest = hashlib.md5(user.password.encode()).digest() if user else b""
        if user is None or bytes(req.md5_password) != digest:
            raise ApiError(401, "Invalid username or password")
        if not user.active:
            raise ApiError(403, "User is not active")
        if not req.retain:
            old = user.signature
            while user.signature == old:
                user.signature = secrets.randbits(62)
        user.login_count += 1
        token = self._issue("user", user.name, user.signature, self.token_lifetime)
        return _wire(wire.LoginResp(token=token))

    async def _register(self, request: Request, body: bytes, parts: list[str]) -> Response:
        user = self._user_auth(request)
        req = self._parse(request, body, wire.RegisterWorkerReq)
        lifetime = self.token_lifetime if req.lifetime is None else self._duration(req.lifetime)
        now = self._clock()
        worker = WorkerRecord(
            uuid=uuid4(),
            user=user.name,
            tags=frozenset(req.tags),
            labels=frozenset(req.labels),
            groups=parse_groups(req.groups, user.name),
            lifetime=lifetime,
            token_expires_at=now + lifetime,
            heartbeat_deadline=self._heartbeat_deadline(),
        )
        self.workers[worker.uuid] = worker
        token = self._issue("worker", str(worker.uuid), 0, lifetime)
        log.info("registered worker %s for %s", worker.uuid, user.name)
        return _wire(
            wire.RegisterWorkerResp(worker_id=worker.uuid, token=token, redis_url=self.redis_url)
        )

    async def _heartbeat(self, request: Request, body: bytes, parts: list[str]) -> Response:
        worker = self._worker_auth(request)
        worker.heartbeats += 1
        worker.heartbeat_deadline = self._heartbeat_deadline()
        task = self.tasks.get(worker.assigned_task) if worker.assigned_task else None
        if (
            task is not None
            and task.state is wire.TaskState.Running
            and self._clock() - task.touched_at > task.timeout + TASK_TIMEOUT_GRACE
        ):
            log.info("worker %s overran task %s; removing it", worker.uuid, task.uuid)
            self._remove_worker(worker, "task_timeout")
        return _wire(None)

    async def _fetch(self, request: Request, body: bytes, parts: list[str]) -> Response:
        worker = self._worker_auth(request)
        worker.fetches += 1
        if worker.assigned_task is not None:
            worker.fetch_while_holding += 1
            log.warning("worker %s fetched while holding %s", worker.uuid, worker.assigned_task)
        task = self._pop_for(worker)
        if task is None:
            return _wire(None)
        task.state = wire.TaskState.Running
        task.assigned_worker = worker.uuid
        task.runs += 1
        self._touch(task)
        worker.assigned_task = task.uuid
        return _wire(
            wire.WorkerTaskResp(
                id=task.id,
                uuid=task.uuid,
                timeout=format_duration(task.timeout),
                spec=task.spec,
                upstream_task_uuid=task.upstream,
            )
        )

    async def _report(self, request: Request, body: bytes, parts: list[str]) -> Response:
        worker = self._worker_auth(request)
        req = self._parse(request, body, wire.ReportTaskReq)
        if isinstance(req.op, wire.Submit):
            self._duration(req.op.request.timeout)
        task = self._tasks_by_id.get(req.id)
        if task is None or task.archived or task.assigned_worker != worker.uuid:
            raise ApiError(404, f"Task {req.id} not found")
        task.reports.append(req.op)
        op = req.op
        if op is wire.SimpleOp.Finish:
            task.state = wire.TaskState.Finished
        elif op is wire.SimpleOp.Cancel:
            task.state = wire.TaskState.Cancelled
        elif isinstance(op, wire.Upload):
            return _wire(wire.ReportTaskResp(url=self._prepare_upload(task, op)))
        elif isinstance(op, wire.Submit):
            self._submit_downstream(task, worker, op.request)
        elif isinstance(op, wire.Commit):
            self._commit(task, worker, op)
        self._touch(task)
        return _wire(wire.ReportTaskResp(url=None))

    def _prepare_upload(self, task: TaskRecord, op: wire.Upload) -> str:
        if op.content_length < 0:
            raise ApiError(400, "content_length must not be negative")
        key = f"{task.uuid}/{op.content_type.archive_name}"
        artifact = task.artifacts.get(op.content_type)
        if artifact is None:
            now = _now()
            artifact = ArtifactRecord(op.content_type, op.content_length, key, now, now)
            task.artifacts[op.content_type] = artifact
        artifact.size = max(artifact.size, op.content_length)
        artifact.updated_at = _now()
        artifact.upload_requests += 1
        self._touch(task)
        path = self.store.presign(
            "PUT", ARTIFACTS, key, expires_in=UPLOAD_URL_TTL, length=op.content_length
        )
        return self.url + path

    def _submit_downstream(
        self, task: TaskRecord, worker: WorkerRecord, req: wire.SubmitTaskReq
    ) -> None:
        if task.state not in _DONE:
            raise ApiError(400, "Task is not finished or cancelled")
        creator = self.users.get(task.creator)
        if creator is None:
            raise ApiError(401, "Task creator not found")
        if not creator.active:
            raise ApiError(403, "Task creator is not active")
        if req.group_name != task.group:
            raise ApiError(400, f"Group name mismatch: expected {task.group}, got {req.group_name}")
        if worker.groups.get(req.group_name) not in _WRITERS:
            raise ApiError(403, "Permission denied")
        for download in req.task_spec.resources:
            path = PurePosixPath(download.local_path)
            if path.is_absolute() or ".." in path.parts:
                raise ApiError(400, f"Invalid local path {download.local_path!r}")
        if task.downstream is not None:
            raise ApiError(400, f"Task {task.uuid} already has a downstream task")
        new = self._create_task(
            creator=task.creator,
            group=req.group_name,
            spec=req.task_spec,
            timeout=parse_duration(req.timeout),
            tags=req.tags,
            labels=req.labels,
            priority=req.priority,
            state=wire.TaskState.Pending,
            upstream=task.uuid,
        )
        task.downstream = new.uuid

    def _commit(self, task: TaskRecord, worker: WorkerRecord, op: wire.Commit) -> None:
        if task.state not in _DONE:
            raise ApiError(400, "Task can not be marked as done")
        task.result = wire.TaskResultSpec(exit_status=op.exit_status, msg=op.msg)
        task.reporter = worker.uuid
        task.archived = True
        task.assigned_worker = None
        if worker.assigned_task == task.uuid:
            worker.assigned_task = None
        if worker.state is WorkerState.GracefulShutdown:
            self._remove_worker(worker, "graceful_shutdown")
        self._touch(task)
        if task.downstream is not None:
            downstream = self.tasks[task.downstream]
            if downstream.state is not wire.TaskState.Pending:
                raise ApiError(404, f"Task {downstream.uuid} not found")
            downstream.state = wire.TaskState.Ready
            self._enqueue(downstream)

    async def _query_task(self, request: Request, body: bytes, parts: list[str]) -> Response:
        self._worker_auth(request)
        task = self.tasks.get(_parse_uuid(parts[2]))
        if task is None:
            raise ApiError(404, "Task not found")
        info = {
            "uuid": str(task.uuid),
            "creator_username": task.creator,
            "group_name": task.group,
            "task_id": task.task_id,
            "tags": sorted(task.tags),
            "labels": sorted(task.labels),
            "created_at": format_timestamp(task.created_at),
            "updated_at": format_timestamp(task.updated_at),
            "state": task.state.value,
            "timeout": int(task.timeout),
            "priority": task.priority,
            "spec": wire.converter.unstructure(task.spec),
            "result": wire.converter.unstructure(task.result),
            "upstream_task_uuid": _opt_str(task.upstream),
            "downstream_task_uuid": _opt_str(task.downstream),
            "reporter_uuid": _opt_str(task.reporter),
        }
        artifacts = [
            {
                "content_type": artifact.content_type.value,
                "size": artifact.size,
                "created_at": format_timestamp(artifact.created_at),
                "updated_at": format_timestamp(artifact.updated_at),
            }
            for artifact in task.artifacts.values()
        ]
        return _json(200, {"info": info, "artifacts": artifacts})

    async def _locate_artifact(self, request: Request, body: bytes, parts: list[str]) -> Response:
        self._worker_auth(request)
        task_uuid = _parse_uuid(parts[2])
        content_type = _CONTENT_TYPES.get(parts[4])
        if content_type is None:
            raise ApiError(400, f"Invalid artifact content type {parts[4]!r}", plain=True)
        task = self.tasks.get(task_uuid)
        artifact = task.artifacts.get(content_type) if task else None
        if artifact is None:
            raise ApiError(404, "Artifact not found")
        path = self.store.presign(
            "GET", ARTIFACTS, artifact.key, expires_in=download_url_ttl(artifact.size)
        )
        return _wire(wire.RemoteResourceDownloadResp(url=self.url + path, size=artifact.size))

    async def _locate_attachment(self, request: Request, body: bytes, parts: list[str]) -> Response:
        self._worker_auth(request)
        task = self.tasks.get(_parse_uuid(parts[2]))
        if task is None:
            raise ApiError(404, "Task not found")
        key = f"{task.group}/{request.path.split('/', 5)[5]}"
        obj = self.store.get(ATTACHMENTS, key)
        if obj is None:
            raise ApiError(404, "Attachment not found")
        path = self.store.presign("GET", ATTACHMENTS, key, expires_in=download_url_ttl(obj.size))
        return _wire(wire.RemoteResourceDownloadResp(url=self.url + path, size=obj.size))

    async def _unregister(self, request: Request, body: bytes, parts: list[str]) -> Response:
        worker = self._worker_auth(request)
        self._remove_worker(worker, "unregister")
        return _wire(None)

    # --- object store -----------------------------------------------------------------------

    async def _store_put(self, request: Request, body: bytes, parts: list[str]) -> Response:
        bucket, key = parts[1], request.path.split("/", 3)[3]
        try:
            grant = self.store.verify("PUT", bucket, key, request.query)
        except PresignError as exc:
            return _s3(exc.status, exc.code, exc.message)
        reason = None
        if request.chunked:
            reason = "chunked transfer encoding is not allowed; send Content-Length"
        elif request.content_length != grant.length:
            reason = (
                f"Content-Length {request.content_length} does not match the signed length "
                f"{grant.length}"
            )
        if reason is not None:
            self.rejected_puts.append(
                RejectedPut(
                    path=request.path,
                    reason=reason,
                    signed_length=grant.length,
                    content_length=request.content_length,
                    chunked=request.chunked,
                )
            )
            log.info("rejected PUT %s: %s", request.path, reason)
            return _s3(403, "SignatureDoesNotMatch", reason)
        obj = await self._receive_object(request, grant.length or 0)
        self.store.put(bucket, key, obj)
        if bucket == ARTIFACTS:
            self._link_artifact(key, obj)
        return Response(200, headers=[("etag", f'"{obj.sha256[:32]}"')])

    async def _receive_object(self, request: Request, length: int) -> StoredObject:
        digest = hashlib.sha256()
        data = None if self.discard_uploads else bytearray(length)
        size = 0
        async for chunk in request.iter_body():
            digest.update(chunk)
            if data is not None:
                data[size : size + len(chunk)] = chunk
            size += len(chunk)
        return StoredObject(size=size, sha256=digest.hexdigest(), data=data)

    def _link_artifact(self, key: str, obj: StoredObject) -> None:
        task_part, _, _ = key.partition("/")
        try:
            task = self.tasks.get(UUID(task_part))
        except ValueError:
            return
        for artifact in task.artifacts.values() if task else ():
            if artifact.key == key:
                artifact.stored = obj
                artifact.updated_at = _now()

    async def _store_get(self, request: Request, body: bytes, parts: list[str]) -> Response:
        bucket, key = parts[1], request.path.split("/", 3)[3]
        try:
            self.store.verify("GET", bucket, key, request.query)
        except PresignError as exc:
            return _s3(exc.status, exc.code, exc.message)
        obj = self.store.get(bucket, key)
        if obj is None:
            return _s3(404, "NoSuchKey", "The specified key does not exist.")
        if obj.data is None:
            return _s3(404, "NoSuchKey", "The object body was discarded (discard_uploads)")
        return Response(
            200,
            obj.data,
            "application/octet-stream",
            headers=[("etag", f'"{obj.sha256[:32]}"')],
        )

    # --- state helpers ----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _heartbeat_deadline(self) -> float | None:
        if self.heartbeat_timeout is None:
            return None
        return self._clock() + self.heartbeat_timeout

    def _touch(self, task: TaskRecord) -> None:
        task.touched_at = self._clock()
        task.updated_at = _now()

    def _enqueue(self, task: TaskRecord) -> None:
        task.queue_seq = next(self._seq)
        heapq.heappush(self._queue, (-task.priority, task.queue_seq, task.uuid))

    def _pop_for(self, worker: WorkerRecord) -> TaskRecord | None:
        skipped: list[tuple[int, int, UUID]] = []
        found = None
        while self._queue:
            entry = heapq.heappop(self._queue)
            task = self.tasks.get(entry[2])
            if (
                task is None
                or task.state is not wire.TaskState.Ready
                or task.queue_seq != entry[1]
                or task.archived
            ):
                continue  # stale entry
            if worker.can_run(task):
                found = task
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        return found

    def _remove_worker(self, worker: WorkerRecord, reason: str) -> None:
        worker.removed = True
        worker.removed_reason = reason
        task = self.tasks.get(worker.assigned_task) if worker.assigned_task else None
        worker.assigned_task = None
        if task is not None and not task.archived:
            log.info("re-queueing task %s of removed worker %s", task.uuid, worker.uuid)
            task.state = wire.TaskState.Ready
            task.assigned_worker = None
            self._touch(task)
            self._enqueue(task)

    def _create_task(
        self,
        *,
        creator: str,
        group: str,
        spec: wire.TaskSpec,
        timeout: float,
        tags: Iterable[str],
        labels: Iterable[str],
        priority: int,
        state: wire.TaskState,
        upstream: UUID | None = None,
    ) -> TaskRecord:
        now = _now()
        counter = self._task_ids.setdefault(creator, itertools.count(1))
        task = TaskRecord(
            uuid=uuid4(),
            id=next(self._ids),
            task_id=next(counter),
            creator=creator,
            group=group,
            tags=frozenset(tags),
            labels=frozenset(labels),
            timeout=timeout,
            priority=priority,
            spec=spec,
            created_at=now,
            updated_at=now,
            touched_at=self._clock(),
            state=state,
            upstream=upstream,
        )
        self.tasks[task.uuid] = task
        self._tasks_by_id[task.id] = task
        if state is wire.TaskState.Ready:
            self._enqueue(task)
        return task

    # --- test and demo API ------------------------------------------------------------------

    def submit_task(
        self,
        args: Iterable[str],
        *,
        envs: Mapping[str, str] | None = None,
        resources: Iterable[wire.RemoteResourceDownload] = (),
        terminal_output: bool = False,
        watch: tuple[UUID, wire.TaskExecState] | None = None,
        timeout: str | float = "10m",
        tags: Iterable[str] = (),
        labels: Iterable[str] = (),
        priority: int = 0,
        group: str | None = None,
        user: str | None = None,
    ) -> UUID:
        """Submit a Ready task as `user` (default: the first user) to `group` (default: theirs)."""
        creator = user if user is not None else next(iter(self.users))
        if creator not in self.users:
            raise KeyError(f"unknown user {creator!r}")
        spec = wire.TaskSpec(
            args=list(args),
            envs=dict(envs or {}),
            resources=list(resources),
            terminal_output=terminal_output,
            watch=watch,
        )
        task = self._create_task(
            creator=creator,
            group=creator if group is None else group,
            spec=spec,
            timeout=parse_duration(timeout) if isinstance(timeout, str) else float(timeout),
            tags=tags,
            labels=labels,
            priority=priority,
            state=wire.TaskState.Ready,
        )
        self._notify()
        return task.uuid

    def add_attachment(self, group: str, key: str, data: bytes) -> None:
        """Store an attachment of `group` under `key` (may contain `/`)."""
        self.store.put(ATTACHMENTS, f"{group}/{key}", StoredObject.of(bytes(data)))
        self._notify()

    def artifact(self, task_uuid: UUID, content_type: wire.ArtifactContentType | str) -> bytes:
        """The uploaded bytes of an artifact; KeyError if it was never (fully) uploaded."""
        kind = _CONTENT_TYPES[content_type] if isinstance(content_type, str) else content_type
        artifact = self.task(task_uuid).artifacts.get(kind)
        if artifact is None or artifact.stored is None:
            raise KeyError(f"no uploaded {kind.value} artifact for task {task_uuid}")
        if artifact.stored.data is None:
            raise KeyError(f"the {kind.value} artifact of {task_uuid} was discarded")
        return bytes(artifact.stored.data)

    def task(self, uuid: UUID) -> TaskRecord:
        """The record of a task, active or committed."""
        return self.tasks[uuid]

    def calls(self, endpoint: str) -> list[RequestRecord]:
        """The requests to one endpoint, in arrival order."""
        return [record for record in self.requests if record.endpoint == endpoint]

    def set_task_state(
        self, uuid: UUID, state: wire.TaskState, result: wire.TaskResultSpec | None = None
    ) -> None:
        """Force a task's state and result (to script watch targets); Ready re-queues it."""
        task = self.tasks[uuid]
        task.state = state
        task.result = result
        self._touch(task)
        if state is wire.TaskState.Ready:
            if task.assigned_worker is not None:
                holder = self.workers.get(task.assigned_worker)
                if holder is not None and holder.assigned_task == uuid:
                    holder.assigned_task = None
                task.assigned_worker = None
            task.archived = False
            self._enqueue(task)
        self._notify()

    def stop_worker(self, worker_uuid: UUID, *, force: bool) -> None:
        """Stop a worker the way `DELETE /workers/{uuid}?op=...` does (§9.6)."""
        worker = self.workers[worker_uuid]
        if worker.removed:
            return
        if force or worker.assigned_task is None:
            self._remove_worker(worker, "force" if force else "graceful_idle")
        else:
            worker.state = WorkerState.GracefulShutdown
        self._notify()

    def inject(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        delay: float = 0,
        drop: bool = False,
        times: int = 1,
        op: str | None = None,
        body: bytes | None = None,
        process: bool = False,
    ) -> Fault:
        """Make the next `times` requests to `endpoint` misbehave.

        `status` answers with that status (and `body`, default `{"msg": "injected fault"}`)
        instead of handling the request; `drop` closes the connection without answering;
        `delay` sleeps first. `op` limits a `report` fault to one op name. With
        `process=True` the request is handled for real before its answer is replaced (a lost
        response). Faults apply in the order they were injected.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
        if op is not None and (endpoint != "report" or op not in REPORT_OPS):
            raise ValueError(f"op {op!r} only applies to report faults, one of {REPORT_OPS}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if status is None and not drop and delay <= 0:
            raise ValueError("a fault needs a status, drop=True or a delay")
        if body is not None and status is None:
            raise ValueError("a fault body needs a status")
        fault = Fault(endpoint, status, delay, drop, times, op, body, process)
        self.faults.append(fault)
        return fault

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until `predicate()` is truthy (re-checked on every state change); return it."""
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            await changed.wait()

    async def wait_committed(self, uuid: UUID) -> TaskRecord:
        """Wait until the task has been committed."""
        task = self.tasks[uuid]
        return await self.wait_for(lambda: task if task.archived else None)

    async def wait_for_worker(
        self, predicate: Callable[[WorkerRecord], bool] | None = None
    ) -> WorkerRecord:
        """Wait for the first registered, not removed worker (matching `predicate`)."""

        def find() -> WorkerRecord | None:
            for worker in self.workers.values():
                if not worker.removed and (predicate is None or predicate(worker)):
                    return worker
            return None

        return await self.wait_for(find)


def _fault_response(fault: Fault) -> Response:
    if fault.drop:
        return Response(drop=True)
    status = fault.status if fault.status is not None else 500
    if fault.body is not None:
        try:
            json.loads(fault.body)
            content_type = "application/json"
        except ValueError:
            content_type = "text/plain; charset=utf-8"
        return Response(status, fault.body, content_type)
    if fault.endpoint.startswith("store_"):
        return _s3(status, "InjectedFault", "injected fault")
    return _json(status, {"msg": "injected fault"})


def _parse_uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ApiError(400, f"Invalid URL: cannot parse {text!r} as a UUID", plain=True) from None


def _opt_str(value: UUID | None) -> str | None:
    return None if value is None else str(value)
