"""Rate-limited complaints about Redis: warn once, then at most every `WARN_INTERVAL`."""

from __future__ import annotations

import logging
import math

import trio

__all__ = ["WARN_INTERVAL", "Trouble"]

log = logging.getLogger(__name__)

#: While Redis keeps failing, repeat the warning at most this often.
WARN_INTERVAL = 60.0


class Trouble:
    """Warns when Redis starts failing, then at most every `WARN_INTERVAL`; notes recovery."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None
        self._last_warning = -math.inf
        self._quiet = 0

    def failed(self, detail: str) -> None:
        now = trio.current_time()
        if self._since is None:
            self._since = now
            self._last_warning = now
            log.warning("%s: %s", self._what, detail)
        elif now - self._last_warning >= WARN_INTERVAL:
            log.warning(
                "%s: still failing (%d more times since the last warning): %s",
                self._what,
                self._quiet + 1,
                detail,
            )
            self._last_warning = now
            self._quiet = 0
        else:
            self._quiet += 1
            log.debug("%s: %s", self._what, detail)

    def ok(self) -> None:
        if self._since is not None:
            log.info("%s: works again after %.1fs", self._what, trio.current_time() - self._since)
            self._since = None
            self._quiet = 0
