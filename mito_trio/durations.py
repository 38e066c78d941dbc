"""Durations in the humantime format the Mitosis coordinator reads and writes (PROTOCOL §4.10).

`parse_duration` accepts everything the original's parser accepts, including the
coordinator's own output ("1day 2h", "7days", "2years 3months"); `format_duration` writes
exactly what the coordinator writes.
"""

import math
from fractions import Fraction
from typing import Final

__all__ = ["ACCEPTED_DURATIONS", "DurationError", "format_duration", "parse_duration"]

_NS_PER_SECOND: Final = 1_000_000_000
_SECONDS_PER_MONTH: Final = 2_630_016  # 30.44 days
_SECONDS_PER_YEAR: Final = 31_557_600  # 365.25 days


def _spellings(nanoseconds: int, *names: str) -> dict[str, int]:
    return dict.fromkeys(names, nanoseconds)


#: Every unit spelling (case-sensitive) and its length in nanoseconds.
_UNIT_NS: Final[dict[str, int]] = {
    **_spellings(1, "ns", "nsec", "nanos"),
    **_spellings(1_000, "us", "usec", "µs"),
    **_spellings(1_000_000, "ms", "msec", "millis"),
    **_spellings(_NS_PER_SECOND, "s", "sec", "secs", "second", "seconds"),
    **_spellings(60 * _NS_PER_SECOND, "m", "min", "mins", "minute", "minutes"),
    **_spellings(3_600 * _NS_PER_SECOND, "h", "hr", "hrs", "hour", "hours"),
    **_spellings(86_400 * _NS_PER_SECOND, "d", "day", "days"),
    **_spellings(604_800 * _NS_PER_SECOND, "w", "wk", "wks", "week", "weeks"),
    **_spellings(_SECONDS_PER_MONTH * _NS_PER_SECOND, "M", "month", "months"),
    **_spellings(_SECONDS_PER_YEAR * _NS_PER_SECOND, "y", "yr", "yrs", "year", "years"),
}

# The original stores a duration as u64 seconds plus nanoseconds; longer ones overflow there.
_MAX_NS: Final = (2**64) * _NS_PER_SECOND - 1

#: What `parse_duration` accepts, for error messages.
ACCEPTED_DURATIONS: Final = (
    'a duration such as "30s", "5m", "1h 30m", "1.5h" or "7days"'
    ' (units ns, us, ms, s, m, h, d, w, M, y and long forms such as "minutes")'
)


class DurationError(ValueError):
    """A string that is not a humantime duration; the message says what is accepted."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        #: What is wrong, without the text itself, e.g. "unknown unit 'x'".
        self.reason = reason
        super().__init__(f"invalid duration {text!r}: {reason}; expected {ACCEPTED_DURATIONS}")


def _is_unit_char(char: str) -> bool:
    return ("a" <= char <= "z") or ("A" <= char <= "Z") or char == "µ"


def parse_duration(text: str) -> float:
    """Parse a humantime duration such as "1h 30m" or "2 hours" into seconds.

    A sequence of `<number><unit>` items, with optional whitespace between and inside
    items; numbers may have a decimal fraction. A bare "0" is zero; any other bare number
    is an error, as is an empty string.
    """
    if text.strip() == "0":
        return 0.0
    total_ns = Fraction(0)
    pos = 0
    end = len(text)
    seen_item = False
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos == end:
            break
        number_start = pos
        while pos < end and text[pos].isdigit() and text[pos].isascii():
            pos += 1
        if pos == number_start:
            raise DurationError(text, f"unexpected {text[pos]!r} at position {pos}")
        if pos < end and text[pos] == ".":
            pos += 1
            fraction_start = pos
            while pos < end and text[pos].isdigit() and text[pos].isascii():
                pos += 1
            if pos == fraction_start:
                raise DurationError(text, "missing digits after the decimal point")
        number = Fraction(text[number_start:pos])
        while pos < end and text[pos].isspace():
            pos += 1
        unit_start = pos
        while pos < end and _is_unit_char(text[pos]):
            pos += 1
        unit = text[unit_start:pos]
        if not unit:
            if pos == end:
                number_text = text[number_start:unit_start].strip()
                raise DurationError(text, f"missing unit after {number_text!r}")
            raise DurationError(text, f"unexpected {text[pos]!r} at position {pos}")
        unit_ns = _UNIT_NS.get(unit)
        if unit_ns is None:
            raise DurationError(text, f"unknown unit {unit!r}")
        total_ns += number * unit_ns
        seen_item = True
    if not seen_item:
        raise DurationError(text, "no duration given")
    if total_ns > _MAX_NS:
        raise DurationError(text, "too large")
    return float(Fraction(round(total_ns), _NS_PER_SECOND))


def format_duration(seconds: float) -> str:
    """Format seconds the way the coordinator does, e.g. 5400 -> "1h 30m", 0 -> "0s".

    Sub-nanosecond remainders are rounded to the nearest nanosecond.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    whole, nanos = divmod(round(Fraction(seconds) * _NS_PER_SECOND), _NS_PER_SECOND)
    if whole == 0 and nanos == 0:
        return "0s"
    years, rest = divmod(whole, _SECONDS_PER_YEAR)
    months, rest = divmod(rest, _SECONDS_PER_MONTH)
    days, rest = divmod(rest, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    millis, rest_ns = divmod(nanos, 1_000_000)
    micros, nanosecs = divmod(rest_ns, 1_000)
    items = (
        (years, "year", True),
        (months, "month", True),
        (days, "day", True),
        (hours, "h", False),
        (minutes, "m", False),
        (secs, "s", False),
        (millis, "ms", False),
        (micros, "us", False),
        (nanosecs, "ns", False),
    )
    return " ".join(
        f"{value}{unit}{'s' if plural and value > 1 else ''}"
        for value, unit, plural in items
        if value
    )
