"""Waiting for another task before running (PROTOCOL.md §8.4).

With Redis, the watcher subscribes to `task:<W>` and polls (Redis `GET`, then
`GET /workers/tasks/{W}`), whichever notices first. Better than the original: without Redis
it polls the coordinator instead of ignoring the watch, it unsubscribes when done, and it
announces `WatchFinished` when the wait is over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
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
#: Subscribes to the states published for a task while the block runs (Redis pub/sub).
StateSubscriber = Callable[[UUID], AbstractAsyncContextManager[AsyncIterator[TaskExecState]]]


class Watcher:
    """Waits until the watched task reaches the target, or the deadline passes.

    `read_state` and `subscribe` come from Redis (`RedisAnnouncer.read_state`,
    `RedisAnnouncer.task_states`); without them the watcher polls the coordinator only.
    """

    def __init__(
        self,
        *,
        client: CoordinatorClient,
        announcer: Announcer,
        polling_interval: float,
        read_state: StateReader | None = None,
        subscribe: StateSubscriber | None = None,
    ) -> None:
        self._client = client
        self._announcer = announcer
        self._interval = min(polling_interval, MAX_POLL_INTERVAL)
        self._read_state = read_state
        self._subscribe = subscribe

    async def wait(self, task: wire.WorkerTaskResp, deadline: float) -> EarlyEnd | None:
        """None once the watched task reached its target; `WATCH_TIMED_OUT` at the deadline."""
        assert task.spec.watch is not None
        watched, target = task.spec.watch
        ttl = max(TTL_SHORT, int(deadline - trio.current_time()) + TTL_SHORT)
        await self._announcer.announce(task.uuid, TaskExecState.Watch, ttl)
        log.info("task %s: waiting for task %s to reach %s", task.uuid, watched, target.name)
        try:
            with trio.move_on_at(deadline):
                await self._until_reached(watched, target)
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

    async def _until_reached(self, watched: UUID, target: TaskExecState) -> None:
        if self._subscribe is None:
            await self._poll(watched, target)
            return
        try:
            async with trio.open_nursery() as nursery:
                # Subscribe before the first poll, so that no transition falls in between.
                await nursery.start(self._listen, watched, target, nursery.cancel_scope)
                await self._poll(watched, target)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Callers catch the poll's errors (`CoordinatorStopped`) by type, not in groups.
            raise _main_error(group) from None

    async def _poll(self, watched: UUID, target: TaskExecState) -> None:
        while True:
            if await self._reached(watched, target):
                return
            await trio.sleep(self._interval)

    async def _listen(
        self,
        watched: UUID,
        target: TaskExecState,
        done: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._subscribe is not None
        async with self._subscribe(watched) as states:
            task_status.started()
            async for state in states:
                if exec_state_reaches(state, target):
                    log.info("watch: task %s announced %s", watched, state.name)
                    done.cancel()
                    return

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


def _main_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error of a watch nursery: a real error first, else the `Cancelled`."""
    leaves = list(_leaves(group))
    errors = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(errors) > 1:
        return group
    return errors[0] if errors else leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
