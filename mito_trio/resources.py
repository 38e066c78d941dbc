"""The resource phase (PROTOCOL.md §3.6-§3.8, §6.2), with the original's pitfalls closed.

- `local_path` is validated before anything is written: absolute paths, `..` and symlinked
  components are refused (Cancel + Commit `ResourceForbidden`, the task does not run).
- A download times out when it stalls, not after a fixed 120 s; the 30-minute deadline stays.
- The received size is checked against the announced one.
- Transient network trouble is retried with backoff and a fresh locate, not committed as
  `ResourceForbidden`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

import httpx
import trio

from . import storage, wire
from .announce import TTL_SHORT, Announcer
from .backoff import Backoff, retry_transient
from .cache import TaskCache
from .client import CoordinatorClient
from .errors import (
    CoordinatorError,
    CoordinatorStopped,
    Forbidden,
    NotFound,
    Transient,
    Unauthorized,
)
from .outcomes import EarlyEnd
from .wire import TaskExecState, TaskResultMessage

log = logging.getLogger(__name__)

#: A download that receives nothing for this long is abandoned and tried again.
STALL_TIMEOUT = 120.0
#: Wrong-size downloads tried before the resource counts as unavailable.
SIZE_MISMATCH_ATTEMPTS = 3

NOT_FOUND = EarlyEnd(
    TaskResultMessage.ResourceNotFound, ((TaskExecState.FetchResourceNotFound, TTL_SHORT),)
)
FORBIDDEN = EarlyEnd(
    TaskResultMessage.ResourceForbidden, ((TaskExecState.FetchResourceForbidden, TTL_SHORT),)
)
TIMED_OUT = EarlyEnd(
    TaskResultMessage.FetchResourceTimeout, ((TaskExecState.FetchResourceTimeout, TTL_SHORT),)
)


class UnsafePath(ValueError):
    """A `local_path` that would write outside the resource directory."""


def resource_destination(resource_dir: Path, local_path: str) -> Path:
    """Where `local_path` lands inside `resource_dir`, refusing anything that could escape it."""
    if not local_path or "\x00" in local_path:
        raise UnsafePath(f"empty or invalid local_path {local_path!r}")
    pure = PurePosixPath(local_path)
    if pure.is_absolute():
        raise UnsafePath(f"local_path {local_path!r} is absolute")
    if any(part == ".." for part in pure.parts):
        raise UnsafePath(f"local_path {local_path!r} contains '..'")
    parts = [part for part in pure.parts if part != "."]
    if not parts:
        raise UnsafePath(f"local_path {local_path!r} names the resource directory itself")
    current = resource_dir
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"local_path {local_path!r} passes through a symlink")
    return current


class ResourceFetcher:
    """Locates and downloads a task's resources, in order."""

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        http: httpx.AsyncClient,
        cache: TaskCache,
        announcer: Announcer,
        polling_interval: float,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self._client = client
        self._http = http
        self._cache = cache
        self._announcer = announcer
        self._polling_interval = polling_interval
        self._stall_timeout = stall_timeout

    async def fetch(self, task: wire.WorkerTaskResp, deadline: float) -> EarlyEnd | None:
        """Download every resource; None when all are in place."""
        if not task.spec.resources:
            return None
        resource_dir = self._cache.resource_dir
        resource_dir.mkdir(parents=True, exist_ok=True)
        destinations: list[Path] = []
        for resource in task.spec.resources:
            # Every path is checked before anything is fetched or written.
            try:
                destinations.append(resource_destination(resource_dir, resource.local_path))
            except UnsafePath as exc:
                log.error("task %s: refusing resource: %s", task.uuid, exc)
                return FORBIDDEN
        with trio.move_on_at(deadline):
            for resource, dest in zip(task.spec.resources, destinations, strict=True):
                early = await self._fetch_one(task, resource, dest)
                if early is not None:
                    return early
            return None
        log.error("task %s: resources not fetched within the deadline", task.uuid)
        return TIMED_OUT

    async def _locate(
        self, task: wire.WorkerTaskResp, remote: wire.RemoteResource
    ) -> wire.RemoteResourceDownloadResp:
        if isinstance(remote, wire.ArtifactRef):
            return await self._client.locate_artifact(remote.uuid, remote.content_type)
        return await self._client.locate_attachment(task.uuid, remote.key)

    async def _fetch_one(
        self, task: wire.WorkerTaskResp, resource: wire.RemoteResourceDownload, dest: Path
    ) -> EarlyEnd | None:
        backoff = Backoff(cap=self._polling_interval)
        wrong_sizes = 0
        while True:
            try:
                located = await retry_transient(
                    lambda: self._locate(task, resource.remote_file),
                    what=f"task {task.uuid}: locating {resource.local_path}",
                    cap=self._polling_interval,
                    log=log,
                )
            except NotFound as exc:
                log.error("task %s: resource not found: %s", task.uuid, exc)
                return NOT_FOUND
            except Forbidden as exc:
                log.error("task %s: resource forbidden: %s", task.uuid, exc)
                return FORBIDDEN
            except Unauthorized as exc:
                raise CoordinatorStopped(f"the coordinator removed this worker ({exc})") from exc
            except CoordinatorError:
                await self._announcer.announce(
                    task.uuid, TaskExecState.FetchResourceError, TTL_SHORT
                )
                raise
            try:
                received = await self._download(located.url, dest)
            except OSError as exc:
                # A local write that failed (a path naming a directory, a full disk) will not
                # work better on a second try.
                log.error("task %s: cannot write %s: %s", task.uuid, resource.local_path, exc)
                return FORBIDDEN
            except Transient as exc:
                delay = backoff.next_delay()
                log.warning(
                    "task %s: download of %s failed (%s); retrying in %.1fs",
                    task.uuid,
                    resource.local_path,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                continue
            except CoordinatorError as exc:
                log.error(
                    "task %s: download of %s refused: %s", task.uuid, resource.local_path, exc
                )
                return FORBIDDEN
            if received == located.size or located.size < 0:
                log.info("task %s: fetched %s (%d bytes)", task.uuid, resource.local_path, received)
                return None
            wrong_sizes += 1
            log.warning(
                "task %s: %s has %d bytes, expected %d",
                task.uuid,
                resource.local_path,
                received,
                located.size,
            )
            if wrong_sizes >= SIZE_MISMATCH_ATTEMPTS:
                await trio.Path(dest).unlink(missing_ok=True)
                return FORBIDDEN

    async def _download(self, url: str, dest: Path) -> int:
        """Stream into a temporary file beside `dest`, then move it into place."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        with trio.CancelScope() as stall:
            stall.deadline = trio.current_time() + self._stall_timeout

            def progressed(_: int) -> None:
                stall.deadline = trio.current_time() + self._stall_timeout

            try:
                received = await storage.download_file(
                    self._http, url, partial, on_progress=progressed
                )
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        if stall.cancelled_caught:
            partial.unlink(missing_ok=True)
            raise Transient(f"no data for {self._stall_timeout:.0f}s")
        os.replace(partial, dest)
        return received
