"""Errors raised at the boundary with the coordinator and the object store.

httpx exceptions and status codes are translated into these in one place (`client.py`,
`storage.py`) so that the rest of the worker reasons about what happened, not how.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Something went wrong talking to the coordinator or the object store."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Unauthorized(CoordinatorError):
    """401: the token is not (or no longer) valid; for a worker token, the coordinator
    removed the worker (admin stop, lifetime end, heartbeat timeout)."""


class Forbidden(CoordinatorError):
    """403: permission denied, inactive account or storage quota exceeded."""


class NotFound(CoordinatorError):
    """404."""


class Transient(CoordinatorError):
    """Worth retrying: timeouts, dropped connections, 5xx and 429."""


class Unreachable(Transient):
    """No connection could be made at all (refused, unreachable, DNS, TLS handshake)."""


class Fatal(CoordinatorError):
    """An answer that retrying will not change (400, 409, 415, a body of the wrong shape)."""


class CoordinatorStopped(Exception):
    """The coordinator no longer knows this worker (401 on a worker call): stop cleanly."""
