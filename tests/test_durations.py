"""Humantime durations: parsing every accepted form, formatting like the coordinator."""

import math

import pytest

from mito_trio.durations import DurationError, format_duration, parse_duration

MONTH = 2_630_016
YEAR = 31_557_600

UNIT_SECONDS = {
    "ns": 1e-9,
    "nsec": 1e-9,
    "nanos": 1e-9,
    "us": 1e-6,
    "usec": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "millis": 1e-3,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "wk": 604800,
    "wks": 604800,
    "week": 604800,
    "weeks": 604800,
    "M": MONTH,
    "month": MONTH,
    "months": MONTH,
    "y": YEAR,
    "yr": YEAR,
    "yrs": YEAR,
    "year": YEAR,
    "years": YEAR,
}


@pytest.mark.parametrize(("unit", "seconds"), UNIT_SECONDS.items())
def test_every_unit_spelling(unit: str, seconds: float) -> None:
    assert parse_duration(f"3{unit}") == pytest.approx(3 * seconds, rel=1e-12)
    assert parse_duration(f"3 {unit}") == pytest.approx(3 * seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5h", 5400),
        ("0.5s", 0.5),
        ("2.25m", 135),
        ("1.5 days", 129600),
        ("0.001s", 0.001),
        ("1.000000001s", 1.000000001),
    ],
)
def test_decimal_fractions(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h 30m", 5400),
        ("1h30m", 5400),
        ("2 hours", 7200),
        ("  1h   30m  ", 5400),
        ("1hour30min", 5400),
        ("1h 1h", 7200),
        ("1d 1h 1m 1s 1ms", 90061.001),
        ("1w 1d", 691200),
        ("1y 1M", YEAR + MONTH),
        ("5m\t10s", 310),
    ],
)
def test_combined_items(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", ["0", " 0 ", "0s", "0ms", "0 days"])
def test_zero(text: str) -> None:
    assert parse_duration(text) == 0.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (600, "10m"),
        (5400, "1h 30m"),
        (604800, "7days"),
        (86400, "1day"),
        (90061, "1day 1h 1m 1s"),
        (93600, "1day 2h"),
        (1209600, "14days"),
        (YEAR, "1year"),
        (2 * YEAR + 3 * MONTH, "2years 3months"),
        (MONTH + 1, "1month 1s"),
        (1.5, "1s 500ms"),
        (0.000001, "1us"),
        (1e-9, "1ns"),
        (0.001002003, "1ms 2us 3ns"),
        (3661.25, "1h 1m 1s 250ms"),
    ],
)
def test_format_like_the_coordinator(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "text",
    [
        "0s",
        "10m",
        "1h 30m",
        "7days",
        "1day",
        "1day 2h",
        "1day 1h 1m 1s",
        "2years 3months",
        "1year 1month 1day 1h 1m 1s",
        "1s 1ms 1us 1ns",
        "3months 4days",
        "30s",
        "500ms",
    ],
)
def test_coordinator_output_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("seconds", [0.0, 1.0, 59.5, 3600.0, 86399.999, 1e6, 123456789.0])
def test_format_then_parse_gives_the_same_seconds(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no duration given"),
        ("   ", "no duration given"),
        ("30", "missing unit after '30'"),
        ("1h 30", "missing unit after '30'"),
        ("5x", "unknown unit 'x'"),
        ("1H", "unknown unit 'H'"),
        ("1S", "unknown unit 'S'"),
        ("1Ms", "unknown unit 'Ms'"),
        ("1e5s", "unknown unit 'e'"),
        ("1.h", "missing digits after the decimal point"),
        (".5h", "unexpected '.' at position 0"),
        ("-1s", "unexpected '-' at position 0"),
        ("+1s", "unexpected '+' at position 0"),
        ("1h,30m", "unexpected ',' at position 2"),
        ("h", "unexpected 'h' at position 0"),
        ("1.5.5h", "unexpected '.' at position 3"),
        ("1 hour and 5 minutes", "unexpected 'a' at position 7"),
        ("1μs", "unexpected 'μ' at position 1"),  # Greek mu, not the micro sign
    ],
)
def test_invalid_durations(text: str, reason: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert caught.value.reason == reason
    assert caught.value.text == text
    message = str(caught.value)
    assert "expected a duration such as" in message
    assert '"1h 30m"' in message
    assert isinstance(caught.value, ValueError)


def test_too_large() -> None:
    with pytest.raises(DurationError, match="too large"):
        parse_duration("999999999999years")


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_format_rejects_what_is_not_a_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match="cannot format"):
        format_duration(seconds)
