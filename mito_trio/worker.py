"""The worker daemon: start-up, the root nursery, heartbeat and task loops, and shutdown.

Shape: one root nursery holds the heartbeat loop, the lifetime timer and the task loop.
Polling runs in a cancel scope of its own, and so does each task. The first stop request
ends polling and gives a running task `drain_timeout` to finish; a second one acts at once.
Whatever ends the run, the worker unregisters (3 s) and removes its task cache.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from uuid import UUID

import httpx
import platformdirs
import trio

from . import wire
from .announce import Announcer, NullAnnouncer, TeeAnnouncer
from .auth import MissingCredentials, obtain_user_token
from .backoff import retry_transient
from .cache import TaskCache
from .client import CoordinatorClient, new_http_client
from .config import WorkerConfig
from .durations import format_duration
from .errors import CoordinatorError, CoordinatorStopped, Transient, Unauthorized
from .exitcodes import ExitCode
from .logs import add_secret, setup_console_logging, start_file_logging
from .process import run_child
from .redis import RedisAnnouncer, open_redis
from .resources import ResourceFetcher
from .stopping import HardStop
from .task_runner import ChildRunner, RunnerSettings, TaskRunner
from .watch import Watcher

log = logging.getLogger(__name__)

#: §9.4: the final `DELETE /workers` may take this long.
UNREGISTER_TIMEOUT = 3.0
#: How long before the end of its lifetime the worker stops, at most.
LIFETIME_MARGIN = 60.0
#: How long start-up keeps retrying an unreachable or failing coordinator.
STARTUP_RETRY_WINDOW = 15.0


class StartupError(Exception):
    """Start-up failed; `code` is the process exit code to use."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def default_credential_path() -> Path:
    """`<CONFIG_DIR>/mitosis/credentials`."""
    return Path(platformdirs.user_config_dir()) / "mitosis" / "credentials"


def default_cache_base() -> Path:
    """`<CACHE_DIR>/mitosis`."""
    return Path(platformdirs.user_cache_dir()) / "mitosis"


class Worker:
    """One registration with the coordinator, from login to unregister."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        http: httpx.AsyncClient,
        cache_base: Path | None = None,
        worker_env: Mapping[str, str] | None = None,
        announcer: Announcer | None = None,
        interactive: bool | None = None,
        startup_retry_window: float = STARTUP_RETRY_WINDOW,
        child_runner: ChildRunner = run_child,
    ) -> None:
        self.config = config
        self._http = http
        self._cache_base = cache_base or default_cache_base()
        self._worker_env = dict(os.environ if worker_env is None else worker_env)
        self._announcer: Announcer = announcer or NullAnnouncer()
        self._interactive = interactive
        self._startup_retry_window = startup_retry_window
        self._child_runner = child_runner
        self.client = CoordinatorClient(http, config.coordinator_addr)
        self.hard_stop = HardStop()
        self.worker_id: UUID | None = None
        self.registered = trio.Event()
        self._stopping = False
        self._startup_scope = trio.CancelScope()
        self._root_scope: trio.CancelScope | None = None
        self._poll_scope: trio.CancelScope | None = None
        self._task_scope: trio.CancelScope | None = None

    # --- stopping --------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """First call: stop polling and drain; second call: stop everything now."""
        if not self._stopping:
            self._stopping = True
            drain = self.config.drain_timeout
            log.info(
                "stopping (%s): no new tasks; a running task gets %s",
                reason,
                format_duration(drain),
            )
            self._startup_scope.cancel()
            if self._poll_scope is not None:
                self._poll_scope.cancel()
            if self._task_scope is not None:
                self._task_scope.deadline = min(
                    self._task_scope.deadline, trio.current_time() + drain
                )
            return
        log.warning("stopping at once (%s)", reason)
        self.hard_stop.trigger()
        self._startup_scope.cancel()
        if self._task_scope is not None:
            self._task_scope.cancel()
        if self._root_scope is not None:
            self._root_scope.cancel()

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """Log in, register, serve tasks until stopped; the exit code says why it ended."""
        started_at = trio.current_time()
        try:
            with self._startup_scope:
                registration = await self._start()
        except StartupError as exc:
            log.error("%s", exc)
            return exc.code
        if self._startup_scope.cancelled_caught:
            return ExitCode.OK
        self.worker_id = registration.worker_id
        cache = TaskCache(self._cache_base / str(registration.worker_id))
        # §11: after registration, so that login lines never reach the file.
        file_logs = start_file_logging(
            worker_id=registration.worker_id,
            log_dir=self._cache_base / "worker",
            file_log=self.config.file_log,
            shared_log=self.config.shared_log,
            log_path=self.config.log_path,
        )
        try:
            (self._cache_base / "worker").mkdir(parents=True, exist_ok=True)
            cache.prepare()
            log.info(
                "registered as worker %s with %s", registration.worker_id, self.client.base_url
            )
            self.registered.set()
            async with open_redis(registration.redis_url, skip=self.config.skip_redis) as redis:
                return await self._serve(cache, started_at, redis)
        finally:
            with trio.CancelScope(shield=True):
                await self._unregister()
            cache.remove()
            file_logs.close()

    async def _start(self) -> wire.RegisterWorkerResp:
        config = self.config
        credential_path = config.credential_path or default_credential_path()
        add_secret(config.password)
        request = wire.RegisterWorkerReq(
            tags=list(config.tags),
            labels=list(config.labels),
            groups=list(config.groups),
            lifetime=None if config.lifetime is None else format_duration(config.lifetime),
        )

        last_error: list[Transient] = []

        async def login_and_register() -> wire.RegisterWorkerResp:
            try:
                return await register()
            except Transient as exc:
                last_error[:] = [exc]
                raise

        async def register() -> wire.RegisterWorkerResp:
            token = await obtain_user_token(
                self.client,
                credential_path=credential_path,
                user=config.user,
                password=config.password,
                retain=config.retain,
                interactive=self._interactive,
            )
            add_secret(token)
            registration = await self.client.register(token, request)
            add_secret(registration.token)
            return registration

        try:
            with trio.fail_after(max(self._startup_retry_window, 0.001)):
                return await retry_transient(
                    login_and_register,
                    what=f"reaching the coordinator at {self.client.base_url}",
                    cap=5.0,
                    log=log,
                )
        except MissingCredentials as exc:
            raise StartupError(str(exc), ExitCode.CONFIG_ERROR) from exc
        except trio.TooSlowError as exc:
            detail = f" (last error: {last_error[0]})" if last_error else ""
            raise StartupError(
                f"cannot reach the coordinator at {self.client.base_url}{detail}: is it "
                "running, and is --coordinator right?",
                ExitCode.UNREACHABLE,
            ) from exc
        except CoordinatorError as exc:
            raise StartupError(
                f"login or registration refused: {exc}", ExitCode.AUTH_ERROR
            ) from exc

    async def _serve(
        self, cache: TaskCache, started_at: float, redis: RedisAnnouncer | None = None
    ) -> ExitCode:
        config = self.config
        announcer = self._announcer if redis is None else TeeAnnouncer(self._announcer, redis)
        resources = ResourceFetcher(
            client=self.client,
            http=self._http,
            cache=cache,
            announcer=announcer,
            polling_interval=config.polling_interval,
        )
        watch = Watcher(
            client=self.client,
            announcer=announcer,
            polling_interval=config.polling_interval,
            read_state=None if redis is None else redis.read_state,
            subscribe=None if redis is None else redis.task_states,
        )
        runner = TaskRunner(
            client=self.client,
            http=self._http,
            cache=cache,
            announcer=announcer,
            resources=resources,
            watch=watch,
            hard_stop=self.hard_stop,
            settings=RunnerSettings(
                polling_interval=config.polling_interval,
                artifact_compression=config.artifact_compression,
            ),
            worker_env=self._worker_env,
            child_runner=self._child_runner,
        )
        code = ExitCode.OK
        try:
            async with trio.open_nursery() as root:
                self._root_scope = root.cancel_scope
                root.start_soon(self._heartbeat_loop)
                if config.lifetime is not None:
                    root.start_soon(self._lifetime_timer, started_at + config.lifetime)
                await self._task_loop(runner)
                root.cancel_scope.cancel()
        except* CoordinatorStopped as group:
            log.warning("%s; stopping", group.exceptions[0])
        except* CoordinatorError as group:
            log.error("stopping after a fatal error: %s", group.exceptions[0])
            code = ExitCode.INTERNAL_ERROR
        return code

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await trio.sleep(interval)
            try:
                await retry_transient(
                    self.client.heartbeat, what="heartbeat", cap=interval, log=log
                )
            except Unauthorized as exc:
                raise CoordinatorStopped(f"the coordinator removed this worker ({exc})") from exc

    async def _lifetime_timer(self, end: float) -> None:
        # Stop a little before the token expires (the clock started before registration), so
        # that the final unregister still succeeds (§13.21).
        lifetime = end - trio.current_time()
        await trio.sleep_until(end - min(LIFETIME_MARGIN, lifetime / 10))
        self.request_stop("the worker's lifetime ended")

    async def _fetch(self) -> wire.WorkerTaskResp | None:
        try:
            return await retry_transient(
                self.client.fetch_task,
                what="fetching a task",
                cap=self.config.polling_interval,
                log=log,
            )
        except Unauthorized as exc:
            raise CoordinatorStopped(f"the coordinator removed this worker ({exc})") from exc

    async def _task_loop(self, runner: TaskRunner) -> None:
        while not self._stopping:
            task = None
            with trio.CancelScope() as self._poll_scope:
                task = await self._fetch()
                if task is None:
                    await trio.sleep(self.config.polling_interval)
            self._poll_scope = None
            if task is None:
                continue
            # Fetch only when no task is held (§12.1): the next fetch waits for this commit.
            with trio.CancelScope() as self._task_scope:
                if self._stopping:
                    self._task_scope.deadline = trio.current_time() + self.config.drain_timeout
                await runner.run(task)
            self._task_scope = None

    async def _unregister(self) -> None:
        try:
            with trio.move_on_after(UNREGISTER_TIMEOUT):
                await self.client.unregister(time_limit=UNREGISTER_TIMEOUT)
                log.info("unregistered from the coordinator")
        except CoordinatorError as exc:
            log.info("unregister: %s", exc)


async def _watch_signals(
    worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            worker.request_stop(f"received {signal.Signals(signum).name}")


async def serve(config: WorkerConfig) -> ExitCode:
    """Run a worker until it stops; SIGINT/SIGTERM request a stop (twice: at once)."""
    async with new_http_client(request_timeout=config.request_timeout) as http:
        worker = Worker(config, http=http)
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, worker)
            code = await worker.run()
            nursery.cancel_scope.cancel()
    return code


def run_worker_from_config(config: WorkerConfig) -> int:
    """Entry point of `mito worker`: run, and return the process exit code."""
    setup_console_logging()
    started = time.monotonic()
    try:
        code = trio.run(serve, config)
    except KeyboardInterrupt:
        # Ctrl+C before the signal handler was installed: nothing had started yet.
        return ExitCode.OK
    except Exception:
        log.exception("internal error")
        return ExitCode.INTERNAL_ERROR
    log.info("worker stopped after %.1fs (exit code %d)", time.monotonic() - started, code)
    return int(code)


__all__ = ["StartupError", "Transient", "Worker", "run_worker_from_config", "serve"]
