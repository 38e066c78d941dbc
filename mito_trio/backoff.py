"""Exponential backoff with jitter, and a retry loop for transient failures."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from .errors import Transient

T = TypeVar("T")


@attrs.define
class Backoff:
    """Delays that double from `initial` up to `cap`, each drawn from its upper half.

    Jitter keeps a fleet of workers from retrying in lockstep after a coordinator restart.
    """

    cap: float
    initial: float = 0.5
    factor: float = 2.0
    _attempt: int = attrs.field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.cap, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from `initial` after a success."""
        self._attempt = 0


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    cap: float,
    log: logging.Logger,
) -> T:
    """Await `call()` until it does not raise `Transient`, backing off between attempts.

    Every other exception propagates at once. The loop has no limit of its own: callers bound
    it with a cancel scope (a deadline, or the worker stopping).
    """
    backoff = Backoff(cap=cap)
    while True:
        try:
            return await call()
        except Transient as exc:
            delay = backoff.next_delay()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await trio.sleep(delay)
