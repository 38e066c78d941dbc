"""How a task that never runs ends."""

from __future__ import annotations

import attrs

from .wire import TaskExecState, TaskResultMessage


@attrs.frozen
class EarlyEnd:
    """A task that ends before it runs: Cancel, Commit `{0, msg}`, then these announcements."""

    msg: TaskResultMessage
    states: tuple[tuple[TaskExecState, int], ...]
