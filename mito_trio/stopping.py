"""Shielded cleanup that a second signal can still cut short."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class HardStop:
    """Tracks shielded cleanup scopes so that an impatient second signal can cancel them.

    Cleanup (killing a task's process group, the final report, uploads) runs shielded from
    ordinary cancellation with a deadline of its own. A hard stop cancels every such scope at
    once, and any scope opened after the hard stop starts out cancelled.
    """

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self.triggered = False

    @contextmanager
    def shielded(self, timeout: float) -> Iterator[trio.CancelScope]:
        """A scope shielded from outer cancellation, ending after `timeout` seconds at most."""
        scope = trio.CancelScope(shield=True, deadline=trio.current_time() + timeout)
        if self.triggered:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def trigger(self) -> None:
        """Cancel every shielded cleanup now and from now on."""
        self.triggered = True
        for scope in list(self._scopes):
            scope.cancel()
