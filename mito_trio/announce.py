"""Execution-state announcements (PROTOCOL.md §8): the seam the Redis announcer plugs into."""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from .wire import TaskExecState

#: TTLs of §8.3, in seconds.
TTL_SHORT = 60
TTL_FETCH = 360
TTL_UPLOAD = 660


class Announcer(Protocol):
    """Publishes a task's execution state. Must never raise: trouble is logged and dropped."""

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Set `task:<uuid>` to the state's number for `ttl` seconds and publish it."""


class NullAnnouncer:
    """Used when the coordinator offers no Redis, or `skip_redis` is set."""

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Do nothing."""


class RecordingAnnouncer:
    """Keeps every announcement in order; for tests and for `mito demo`."""

    def __init__(self) -> None:
        self.events: list[tuple[UUID, TaskExecState, int]] = []

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Record the announcement."""
        self.events.append((task, state, ttl))

    def states(self, task: UUID) -> list[TaskExecState]:
        """The states announced for one task, in order."""
        return [state for uuid, state, _ in self.events if uuid == task]


class TeeAnnouncer:
    """Passes every announcement to several announcers, in order (Redis plus a recorder)."""

    def __init__(self, *announcers: Announcer) -> None:
        self._announcers = announcers

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Announce to each in turn."""
        for announcer in self._announcers:
            await announcer.announce(task, state, ttl)
