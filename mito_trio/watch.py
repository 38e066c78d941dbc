"""Waiting for another task before running (PROTOCOL.md §8.4).

Better than the original: without Redis the worker polls `GET /workers/tasks/{uuid}`
instead of ignoring the watch, and it announces `WatchFinished` when the wait is over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

import trio

from . import wire
from .announce import TTL_SHORT, Announcer
from .client import CoordinatorClient
from .errors import CoordinatorError, CoordinatorStopped, Unauthorized
from .outcomes import EarlyEnd
from .reach import exec_state_reaches, task_state_reaches
from .wire import TaskExecState, TaskResultMessage

log = logging.getLogger(__name__)

#: The original polls every 30 s; we poll at least that often.
MAX_POLL_INTERVAL = 30.0

WATCH_TIMED_OUT = EarlyEnd(
    TaskResultMessage.WatchTimeout, ((TaskExecState.WatchTimeout, TTL_SHORT),)
)

#: Reads the latest announced state of a task from Redis (None when unknown).
StateReader = Callable[[UUID], Awaitable[TaskExecState | None]]


class Watcher:
    """Polls the watched task until it reaches the target, or the deadline passes."""

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        announcer: Announcer,
        polling_interval: float,
        read_state: StateReader | None = None,
    ) -> None:
        self._client = client
        self._announcer = announcer
        self._interval = min(polling_interval, MAX_POLL_INTERVAL)
        self._read_state = read_state

    async def wait(self, task: wire.WorkerTaskResp, deadline: float) -> EarlyEnd | None:
        """None once the watched task reached its target; `WATCH_TIMED_OUT` at the deadline."""
        assert task.spec.watch is not None
        watched, target = task.spec.watch
        ttl = max(TTL_SHORT, int(deadline - trio.current_time()) + TTL_SHORT)
        await self._announcer.announce(task.uuid, TaskExecState.Watch, ttl)
        log.info("task %s: waiting for task %s to reach %s", task.uuid, watched, target.name)
        try:
            with trio.move_on_at(deadline):
                while True:
                    if await self._reached(watched, target):
                        break
                    await trio.sleep(self._interval)
                await self._announcer.announce(task.uuid, TaskExecState.WatchFinished, TTL_SHORT)
                return None
        except trio.Cancelled:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                await self._announcer.announce(task.uuid, TaskExecState.WorkerExited, TTL_SHORT)
            raise
        log.error(
            "task %s: watched task %s did not reach %s in time", task.uuid, watched, target.name
        )
        return WATCH_TIMED_OUT

    async def _reached(self, watched: UUID, target: TaskExecState) -> bool:
        if self._read_state is not None:
            state = await self._read_state(watched)
            if state is not None and exec_state_reaches(state, target):
                return True
        try:
            query = await self._client.query_task(watched)
        except Unauthorized as exc:
            raise CoordinatorStopped(f"the coordinator removed this worker ({exc})") from exc
        except CoordinatorError as exc:
            log.warning("watch: cannot query task %s: %s", watched, exc)
            return False
        return task_state_reaches(query.state, target, query.result)
