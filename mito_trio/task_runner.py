"""One task from fetch to commit (PROTOCOL.md §6), in the order the coordinator expects.

Phases: resources, watch, execution, then a shielded finalisation (Finish or Cancel,
archives and uploads, downstream submission, Commit). Once the child has exited, a stop of
the worker no longer loses the result: finalisation runs under its own deadlines and only a
second signal (a hard stop) cuts it short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import attrs
import httpx
import trio

from . import archive, storage, wire
from .announce import TTL_FETCH, TTL_SHORT, TTL_UPLOAD, Announcer
from .backoff import Backoff, retry_transient
from .cache import TaskCache
from .client import CoordinatorClient
from .durations import DurationError, parse_duration
from .errors import CoordinatorError, CoordinatorStopped, Fatal, Forbidden, NotFound, Unauthorized
from .outcomes import EarlyEnd
from .process import ChildOutcome, SpawnError, child_environment, run_child
from .stopping import HardStop
from .wire import ArtifactContentType, TaskExecState, TaskResultMessage

log = logging.getLogger(__name__)

#: §6.1: resources (and watch) must be done this long after the task was fetched.
RESOURCE_DEADLINE = 1800.0
#: §6.7: archiving and uploading together must be done within this.
UPLOAD_DEADLINE = 600.0
#: How long one report (Finish, Cancel, Submit, Commit) may keep retrying.
REPORT_DEADLINE = 300.0
#: Everything after the child exited, as a whole; a hard stop cuts it short.
FINALIZE_BUDGET = UPLOAD_DEADLINE + 3 * REPORT_DEADLINE
#: SIGTERM to SIGKILL, for the task's process group.
KILL_GRACE = 10.0
#: `new_task.json` larger than this is not a task description.
NEW_TASK_MAX_BYTES = 1 << 20


class ResourcePhase(Protocol):
    """Downloads a task's resources into its resource directory (§6.2)."""

    async def fetch(self, task: wire.WorkerTaskResp, deadline: float) -> EarlyEnd | None:
        """None when every resource is in place; an `EarlyEnd` when the task cannot run."""


class WatchPhase(Protocol):
    """Waits until the watched task reaches its target state (§8.4)."""

    async def wait(self, task: wire.WorkerTaskResp, deadline: float) -> EarlyEnd | None:
        """None when the target was reached; an `EarlyEnd` on a watch timeout."""


class ChildRunner(Protocol):
    """Runs the task's child process: `process.run_child`, or a stand-in in unit tests."""

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
        """Run `argv` until it exits or `deadline` passes."""


@attrs.define
class RunnerSettings:
    """What the runner takes from the worker's configuration."""

    polling_interval: float
    artifact_compression: int
    kill_grace: float = KILL_GRACE


class TaskRunner:
    """Runs fetched tasks one at a time."""

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        http: httpx.AsyncClient,
        cache: TaskCache,
        announcer: Announcer,
        resources: ResourcePhase,
        watch: WatchPhase,
        hard_stop: HardStop,
        settings: RunnerSettings,
        worker_env: Mapping[str, str],
        child_runner: ChildRunner = run_child,
    ) -> None:
        self._client = client
        self._run_child = child_runner
        self._http = http
        self._cache = cache
        self._announcer = announcer
        self._resources = resources
        self._watch = watch
        self._hard_stop = hard_stop
        self._settings = settings
        self._worker_env = dict(worker_env)

    async def run(self, task: wire.WorkerTaskResp) -> None:
        """Run `task` to its Commit, or stop part-way when cancelled (the worker stops).

        Raises `CoordinatorStopped` when the coordinator removed this worker, and `Fatal`
        when the coordinator answers in a way that leaves no sensible next step.
        """
        try:
            exec_seconds = parse_duration(task.timeout)
        except DurationError as exc:
            raise Fatal(f"task {task.uuid} has an unreadable timeout {task.timeout!r}") from exc
        log.info("task %s: fetched (id %d, timeout %s)", task.uuid, task.id, task.timeout)
        self._cache.reset()
        # The original's 360 s can run out during a long resource phase or watch (§13.14).
        waits = bool(task.spec.resources) or task.spec.watch is not None
        fetch_ttl = int(RESOURCE_DEADLINE) + TTL_SHORT if waits else TTL_FETCH
        await self._announce(task, TaskExecState.FetchResource, fetch_ttl)
        deadline = trio.current_time() + RESOURCE_DEADLINE

        early = await self._resources.fetch(task, deadline)
        if early is None and task.spec.watch is not None:
            early = await self._watch.wait(task, deadline)
        if early is not None:
            await self._end_early(task, early)
            return

        outcome = await self._execute(task, exec_seconds)
        with self._hard_stop.shielded(FINALIZE_BUDGET) as scope:
            await self._finalize(task, outcome)
        if scope.cancelled_caught:
            log.error(
                "task %s: gave up before its Commit (%s); the coordinator will hand it out again",
                task.uuid,
                "second stop signal" if self._hard_stop.triggered else "finalisation took too long",
            )
            if not self._hard_stop.triggered:
                # The coordinator still counts the task as ours: fetching another one now
                # would orphan it (§12.1). Stopping unregisters, which re-queues it.
                raise Fatal(f"task {task.uuid} could not be finalised")

    # --- execution -------------------------------------------------------------------------

    async def _execute(self, task: wire.WorkerTaskResp, exec_seconds: float) -> ChildOutcome:
        await self._announce(task, TaskExecState.ExecPending, int(exec_seconds) + TTL_SHORT)
        deadline = trio.current_time() + exec_seconds
        self._cache.new_task_file.unlink(missing_ok=True)
        injected = {
            "MITO_RESULT_DIR": str(self._cache.result_dir),
            "MITO_EXEC_DIR": str(self._cache.exec_dir),
            "MITO_RESOURCE_DIR": str(self._cache.resource_dir),
            "MITO_TASK_UUID": str(task.uuid),
            "MITO_NEW_TASK": str(self._cache.new_task_file),
        }
        if task.upstream_task_uuid is not None:
            injected["MITO_UPSTREAM_TASK_UUID"] = str(task.upstream_task_uuid)
        env = child_environment(self._worker_env, task.spec.envs, injected)
        capture = task.spec.terminal_output

        async def on_timeout() -> None:
            log.warning("task %s: exec timeout after %s, stopping it", task.uuid, task.timeout)
            await self._announce(task, TaskExecState.ExecTimeout, TTL_SHORT)

        # Errors are caught inside the nursery: out of it they come wrapped in a group, which
        # `except trio.Cancelled` / `except SpawnError` would never match.
        spawn_error: SpawnError | None = None
        async with trio.open_nursery() as nursery:
            # ExecSpawned goes out once the child exists, while run_child waits on it.
            spawned = trio.Event()
            nursery.start_soon(self._announce_spawned, task, exec_seconds, spawned)
            try:
                outcome = await self._run_child(
                    ["/usr/bin/env", *task.spec.args],
                    env=env,
                    stdout=self._cache.stdout_file if capture else None,
                    stderr=self._cache.stderr_file if capture else None,
                    deadline=deadline,
                    hard_stop=self._hard_stop,
                    on_timeout=on_timeout,
                    grace=self._settings.kill_grace,
                    on_spawn=spawned.set,
                )
            except SpawnError as exc:
                spawn_error = exc
            except trio.Cancelled:
                with self._hard_stop.shielded(5):
                    await self._announce(task, TaskExecState.WorkerExited, TTL_SHORT)
                log.warning("task %s: stopped with the worker; it is not committed", task.uuid)
                raise
            if not spawned.is_set():
                nursery.cancel_scope.cancel()
            # Otherwise the nursery waits for ExecSpawned, so it always precedes ExecFinished.
        if spawn_error is not None:
            raise Fatal(f"task {task.uuid}: {spawn_error}") from spawn_error
        log.info(
            "task %s: %s (wait status %d)",
            task.uuid,
            "timed out" if outcome.timed_out else "exited",
            outcome.raw_status,
        )
        return outcome

    async def _announce_spawned(
        self, task: wire.WorkerTaskResp, exec_seconds: float, spawned: trio.Event
    ) -> None:
        await spawned.wait()
        # The original sets ExecSpawned without expiry; a dead worker must not leave it forever.
        await self._announce(task, TaskExecState.ExecSpawned, int(exec_seconds) + TTL_UPLOAD)

    # --- after the child exited (runs shielded) --------------------------------------------

    async def _finalize(self, task: wire.WorkerTaskResp, outcome: ChildOutcome) -> None:
        if outcome.timed_out:
            await self._announce(task, TaskExecState.UploadResult, TTL_UPLOAD)
            await self._announce(task, TaskExecState.UploadCancelledResult, TTL_UPLOAD)
            await self._report(task, wire.SimpleOp.Cancel)
        else:
            await self._announce(task, TaskExecState.ExecFinished, TTL_UPLOAD)
            await self._announce(task, TaskExecState.UploadResult, TTL_UPLOAD)
            await self._announce(task, TaskExecState.UploadFinishedResult, TTL_UPLOAD)
            await self._report(task, wire.SimpleOp.Finish)

        with trio.move_on_after(UPLOAD_DEADLINE) as upload_scope:
            await self._upload_artifacts(task)
        upload_timed_out = upload_scope.cancelled_caught
        if upload_timed_out:
            log.error("task %s: uploads did not finish within %ds", task.uuid, UPLOAD_DEADLINE)
        else:
            await self._announce(task, TaskExecState.UploadResultFinished, TTL_SHORT)

        # Better than the original: the downstream task is submitted on the upload-timeout
        # path too, and an exec timeout keeps its ExecTimeout message.
        submitted = await self._submit_new_task(task)
        msg: TaskResultMessage | None = None
        if outcome.timed_out:
            msg = TaskResultMessage.ExecTimeout
        elif upload_timed_out:
            msg = TaskResultMessage.UploadResultTimeout
        elif not submitted:
            msg = TaskResultMessage.SubmitNewTaskFailed
        await self._report(task, wire.Commit(outcome.raw_status, msg))
        if upload_timed_out:
            await self._announce(task, TaskExecState.UploadResultTimeout, TTL_SHORT)
        await self._announce(task, TaskExecState.TaskCommitted, TTL_SHORT)
        log.info(
            "task %s: committed (exit_status %d, msg %s)",
            task.uuid,
            outcome.raw_status,
            None if msg is None else msg.value,
        )
        self._cache.reset()

    async def _end_early(self, task: wire.WorkerTaskResp, early: EarlyEnd) -> None:
        with self._hard_stop.shielded(2 * REPORT_DEADLINE):
            await self._report(task, wire.SimpleOp.Cancel)
            await self._report(task, wire.Commit(0, early.msg))
            for state, ttl in early.states:
                await self._announce(task, state, ttl)
            await self._announce(task, TaskExecState.TaskCommitted, TTL_SHORT)
            log.info("task %s: committed without running (%s)", task.uuid, early.msg.value)
        self._cache.reset()

    # --- artifacts -------------------------------------------------------------------------

    async def _upload_artifacts(self, task: wire.WorkerTaskResp) -> None:
        """Archive and upload each artifact; the next archive is built while one uploads."""
        send, receive = trio.open_memory_channel[tuple[ArtifactContentType, Path, int]](0)
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._archive_artifacts, task, send)
            async with receive:
                async for content_type, path, size in receive:
                    try:
                        await self._upload_one(task, content_type, path, size)
                    except Exception as exc:
                        # Raised after the nursery, so callers see it bare, not in a group.
                        failure = exc
                        nursery.cancel_scope.cancel()
                        break
                    finally:
                        _discard(path)
        if failure is not None:
            raise failure

    async def _archive_artifacts(
        self,
        task: wire.WorkerTaskResp,
        send: trio.MemorySendChannel[tuple[ArtifactContentType, Path, int]],
    ) -> None:
        level = self._settings.artifact_compression
        plan: list[tuple[ArtifactContentType, Path | None]] = [
            (ArtifactContentType.RESULT, self._cache.result_dir),
            (ArtifactContentType.EXEC_LOG, self._cache.exec_dir),
        ]
        if task.spec.terminal_output:
            plan.append((ArtifactContentType.STD_LOG, None))
        async with send:
            for content_type, source in plan:
                if source is not None and not archive.dir_has_entries(source):
                    continue
                dest = self._cache.archive(content_type)
                try:
                    if source is None:
                        size = await archive.build_std_archive(
                            self._cache.stdout_file, self._cache.stderr_file, dest, level=level
                        )
                    else:
                        prefix = content_type.value
                        size = await archive.build_dir_archive(source, dest, prefix, level=level)
                except OSError as exc:
                    # Never fatal: the other artifacts and the Commit still go out.
                    log.error("task %s: cannot archive %s: %s", task.uuid, content_type.value, exc)
                    continue
                await send.send((content_type, dest, size))

    async def _upload_one(
        self, task: wire.WorkerTaskResp, content_type: ArtifactContentType, path: Path, size: int
    ) -> None:
        """Upload report + PUT, asking for a fresh URL whenever the PUT fails."""
        backoff = Backoff(cap=self._settings.polling_interval)
        while True:
            try:
                response = await self._report(
                    task, wire.Upload(content_type, size), refusal_is_final=False
                )
            except (Forbidden, NotFound) as exc:
                log.error("task %s: upload of %s refused: %s", task.uuid, content_type.value, exc)
                return
            if response is None or response.url is None:
                return
            try:
                await storage.put_file(self._http, response.url, path, size)
            except (CoordinatorError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "task %s: PUT of %s failed (%s); new URL in %.1fs",
                    task.uuid,
                    content_type.value,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                continue
            log.info("task %s: uploaded %s (%d bytes)", task.uuid, content_type.value, size)
            return

    # --- downstream task -------------------------------------------------------------------

    async def _submit_new_task(self, task: wire.WorkerTaskResp) -> bool:
        """§7, but the file is always removed, and 401/404 do not count as success."""
        path = self._cache.new_task_file
        try:
            text = _read_new_task(path)
        except FileNotFoundError:
            return True
        except (OSError, UnicodeDecodeError) as exc:
            log.error("task %s: cannot read MITO_NEW_TASK: %s", task.uuid, exc)
            path.unlink(missing_ok=True)
            return False
        path.unlink(missing_ok=True)
        if not text.strip():
            return True
        try:
            request = wire.loads(text, wire.SubmitTaskReq)
            parse_duration(request.timeout)
        except (wire.WireError, DurationError) as exc:
            log.error("task %s: MITO_NEW_TASK is not a valid task: %s", task.uuid, exc)
            return False
        try:
            await self._report(task, wire.Submit(request), refusal_is_final=False)
        except (Fatal, Forbidden, NotFound) as exc:
            log.error("task %s: downstream task refused: %s", task.uuid, exc)
            return False
        log.info("task %s: submitted its downstream task", task.uuid)
        return True

    # --- plumbing --------------------------------------------------------------------------

    async def _report(
        self, task: wire.WorkerTaskResp, op: wire.ReportOp, *, refusal_is_final: bool = True
    ) -> wire.ReportTaskResp | None:
        """Send one report, retrying transient failures for up to `REPORT_DEADLINE`.

        401 means the coordinator removed this worker: `CoordinatorStopped`. With
        `refusal_is_final`, a 404 (the task is no longer ours) is logged and returns None, as
        in the original; otherwise 403/404 propagate to the caller.
        """
        name = type(op).__name__ if not isinstance(op, wire.SimpleOp) else op.value
        try:
            with trio.fail_after(REPORT_DEADLINE):
                return await retry_transient(
                    lambda: self._client.report(task.id, op),
                    what=f"task {task.uuid}: {name} report",
                    cap=self._settings.polling_interval,
                    log=log,
                )
        except trio.TooSlowError as exc:
            raise Fatal(f"task {task.uuid}: {name} report kept failing") from exc
        except Unauthorized as exc:
            raise CoordinatorStopped(f"the coordinator removed this worker ({exc})") from exc
        except NotFound as exc:
            if not refusal_is_final:
                raise
            log.warning("task %s: %s report: %s", task.uuid, name, exc)
            return None

    async def _announce(self, task: wire.WorkerTaskResp, state: TaskExecState, ttl: int) -> None:
        await self._announcer.announce(task.uuid, state, ttl)


def _discard(path: Path) -> None:
    # A single unlink syscall: cheaper than a trip through a worker thread.
    path.unlink(missing_ok=True)


def _read_new_task(path: Path) -> str:
    # O_NOFOLLOW: a task must not make the worker read (and submit) a file it points at.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with contextlib.closing(os.fdopen(fd, "rb")) as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = file.read(NEW_TASK_MAX_BYTES + 1)
    if len(data) > NEW_TASK_MAX_BYTES:
        raise OSError(f"{path} is larger than {NEW_TASK_MAX_BYTES} bytes")
    return data.decode("utf-8")
