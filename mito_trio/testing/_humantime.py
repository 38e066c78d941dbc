"""Humantime parsing and formatting as the coordinator does it (PROTOCOL.md §4.10).

Kept apart from the worker's own parser on purpose: a test double that shares the code under
test would hide its bugs.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_NANOS = {
    **dict.fromkeys(("ns", "nsec", "nanos"), 1),
    **dict.fromkeys(("us", "usec", "µs"), 1_000),
    **dict.fromkeys(("ms", "msec", "millis"), 1_000_000),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 10**9),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60 * 10**9),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600 * 10**9),
    **dict.fromkeys(("d", "day", "days"), 86400 * 10**9),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 604800 * 10**9),
    **dict.fromkeys(("M", "month", "months"), 2_630_016 * 10**9),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 31_557_600 * 10**9),
}
_ITEM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]+)\s*")


def parse_duration(text: str) -> float:
    """Seconds in a humantime string such as `"1h 30m"`; ValueError if it is not one."""
    if text == "0":
        return 0.0
    nanos = 0
    pos = 0
    while pos < len(text):
        match = _ITEM.match(text, pos)
        if match is None or match[2] not in _NANOS:
            raise ValueError(f"invalid duration {text!r}")
        nanos += round(float(match[1]) * _NANOS[match[2]])
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return nanos / 1e9


_PARTS = (
    (31_557_600 * 10**9, "year"),
    (2_630_016 * 10**9, "month"),
    (86400 * 10**9, "day"),
    (3600 * 10**9, "h"),
    (60 * 10**9, "m"),
    (10**9, "s"),
    (10**6, "ms"),
    (10**3, "us"),
    (1, "ns"),
)


def format_duration(seconds: float) -> str:
    """Humantime formatting: 600 → `"10m"`, 604800 → `"7days"`, 0 → `"0s"`."""
    nanos = round(seconds * 1e9)
    if nanos <= 0:
        return "0s"
    out = []
    for size, unit in _PARTS:
        count, nanos = divmod(nanos, size)
        if count:
            plural = "s" if count > 1 and unit in ("year", "month", "day") else ""
            out.append(f"{count}{unit}{plural}")
    return " ".join(out)
