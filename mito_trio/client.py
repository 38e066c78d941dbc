"""The coordinator's HTTP API as the worker sees it (PROTOCOL.md §3).

One `httpx.AsyncClient` is injected; every call has a timeout; every failure leaves this
module as one of the errors in `errors.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx

from . import wire
from .errors import (
    CoordinatorError,
    Fatal,
    Forbidden,
    NotFound,
    Transient,
    Unauthorized,
    Unreachable,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: httpx errors raised before a request reached the server.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)
#: httpx errors that a later attempt may well not see again.
_TRANSIENT_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


#: Endpoint paths without data in them, whose URLs are worth keeping.
_FIXED_PATHS = frozenset({"auth", "login", "workers", "workers/heartbeat", "workers/tasks"})


def error_for_status(status: int, message: str) -> CoordinatorError:
    """The error class a non-2xx status maps to."""
    if status == 401:
        return Unauthorized(message, status=status)
    if status == 403:
        return Forbidden(message, status=status)
    if status == 404:
        return NotFound(message, status=status)
    if status >= 500 or status in (408, 429):
        return Transient(message, status=status)
    return Fatal(message, status=status)


def error_for_transport(exc: httpx.HTTPError, target: str) -> CoordinatorError:
    """The error class an httpx exception maps to."""
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Fatal(f"cannot use {target}: {exc}")
    if isinstance(exc, _CONNECT_ERRORS):
        return Unreachable(f"cannot connect to {target}: {exc or type(exc).__name__}")
    if isinstance(exc, _TRANSIENT_ERRORS):
        return Transient(f"{type(exc).__name__} talking to {target}: {exc}")
    return Fatal(f"{type(exc).__name__} talking to {target}: {exc}")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("msg"), str):
        detail = body["msg"]
    else:
        detail = response.text.strip()[:200] or response.reason_phrase
    return f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}"


def md5_password(password: str) -> list[int]:
    """The password as the coordinator wants it: the 16 bytes of its MD5 digest."""
    return list(hashlib.md5(password.encode()).digest())


class CoordinatorClient:
    """Calls the coordinator on behalf of one worker.

    `base_url` keeps its path: unlike the original, a coordinator behind a path-prefixed
    reverse proxy (`http://host/mitosis/`) works.
    """

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self._base = httpx.URL(base_url)
        self._prefix = self._base.path.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self.worker_token: str | None = None

    @property
    def base_url(self) -> str:
        """The coordinator address, for messages."""
        return str(self._base)

    def url(self, path: str) -> httpx.URL:
        """The absolute URL of an endpoint path such as `workers/tasks`."""
        url = self._urls.get(path)
        if url is None:
            # Building an httpx.URL parses it again; the fixed endpoints are built once.
            url = self._base.copy_with(raw_path=(self._prefix + "/" + path).encode())
            if path in _FIXED_PATHS:
                self._urls[path] = url
        return url

    async def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        body: object = None,
        time_limit: float | None = None,
    ) -> httpx.Response:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = wire.dumps(body)
        url = self.url(path)
        extensions = {} if time_limit is None else {"timeout": httpx.Timeout(time_limit).as_dict()}
        try:
            response = await self._http.request(
                method, url, headers=headers, content=content, extensions=extensions
            )
        except httpx.HTTPError as exc:
            raise error_for_transport(exc, self.base_url) from exc
        if not response.is_success:
            raise error_for_status(response.status_code, _error_message(response))
        return response

    async def _worker_call(
        self, method: str, path: str, *, body: object = None, time_limit: float | None = None
    ) -> httpx.Response:
        if self.worker_token is None:
            raise RuntimeError("the worker is not registered")
        return await self._send(
            method, path, token=self.worker_token, body=body, time_limit=time_limit
        )

    @staticmethod
    def _parse(response: httpx.Response, cls: type[T]) -> T:
        try:
            return wire.loads(response.content, cls)
        except wire.WireError as exc:
            raise Fatal(f"unexpected answer to {response.request.url.path}: {exc}") from exc

    # --- start-up, with the user token ---------------------------------------------------

    async def auth(self, user_token: str) -> str:
        """`GET /auth`: the name of the user the token belongs to."""
        response = await self._send("GET", "auth", token=user_token)
        return response.text

    async def login(self, username: str, password: str, *, retain: bool) -> str:
        """`POST /login`: a fresh user token."""
        request = wire.LoginReq(username, md5_password(password), retain)
        response = await self._send("POST", "login", token=None, body=request)
        return self._parse(response, wire.LoginResp).token

    async def register(
        self, user_token: str, request: wire.RegisterWorkerReq
    ) -> wire.RegisterWorkerResp:
        """`POST /workers`; keeps the worker token for all later calls."""
        response = await self._send("POST", "workers", token=user_token, body=request)
        registration = self._parse(response, wire.RegisterWorkerResp)
        self.worker_token = registration.token
        return registration

    # --- running, with the worker token --------------------------------------------------

    async def heartbeat(self) -> None:
        """`POST /workers/heartbeat`."""
        await self._worker_call("POST", "workers/heartbeat")

    async def fetch_task(self) -> wire.WorkerTaskResp | None:
        """`GET /workers/tasks`: the next task, or None when there is none."""
        response = await self._worker_call("GET", "workers/tasks")
        try:
            if json.loads(response.content) is None:
                return None
        except ValueError as exc:
            raise Fatal(f"unexpected answer to GET /workers/tasks: {exc}") from exc
        return self._parse(response, wire.WorkerTaskResp)

    async def report(self, task_id: int, op: wire.ReportOp) -> wire.ReportTaskResp:
        """`POST /workers/tasks`: Finish, Cancel, Upload, Commit or Submit."""
        response = await self._worker_call(
            "POST", "workers/tasks", body=wire.ReportTaskReq(task_id, op)
        )
        if not isinstance(op, wire.Upload):
            # Only Upload needs the answer (its URL); the original ignores the others' bodies.
            return wire.ReportTaskResp()
        return self._parse(response, wire.ReportTaskResp)

    async def locate_artifact(
        self, task_uuid: UUID, content_type: wire.ArtifactContentType
    ) -> wire.RemoteResourceDownloadResp:
        """Where to download another task's artifact from."""
        path = f"workers/tasks/{task_uuid}/artifacts/{content_type.value}"
        response = await self._worker_call("GET", path)
        return self._parse(response, wire.RemoteResourceDownloadResp)

    async def locate_attachment(self, task_uuid: UUID, key: str) -> wire.RemoteResourceDownloadResp:
        """Where to download an attachment of the running task's group from."""
        path = f"workers/tasks/{task_uuid}/attachments/{quote(key, safe='/')}"
        response = await self._worker_call("GET", path)
        return self._parse(response, wire.RemoteResourceDownloadResp)

    async def query_task(self, task_uuid: UUID) -> wire.TaskQueryResult:
        """State and result of any task, for the watch fallback."""
        response = await self._worker_call("GET", f"workers/tasks/{task_uuid}")
        return self._parse(response, wire.TaskQueryResult)

    async def unregister(self, *, time_limit: float) -> None:
        """`DELETE /workers`; the coordinator re-queues a task this worker still holds."""
        await self._worker_call("DELETE", "workers", time_limit=time_limit)


def new_http_client(*, request_timeout: float) -> httpx.AsyncClient:
    """The one HTTP client of a worker: timeouts on every phase, proxies from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout),
        follow_redirects=True,
        trust_env=True,
        headers={"User-Agent": _user_agent()},
    )


def _user_agent() -> str:
    from . import __version__

    return f"mito-trio/{__version__}"
