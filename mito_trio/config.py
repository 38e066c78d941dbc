"""The worker configuration: defaults, TOML files, `MITO_*` variables and flags (PROTOCOL §10).

`load_config` merges the sources in the original's order and validates the winning value of
every key, so a bad value fails with one line naming the key, where it came from and what is
accepted.
"""

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import attrs
import tomli

from mito_trio.durations import DurationError, parse_duration

__all__ = ["ConfigError", "WorkerConfig", "flag_for_key", "load_config", "parse_env_value"]


def _hide_secret(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """The finished `[worker]` configuration; durations are in seconds."""

    coordinator_addr: str = "http://127.0.0.1:5000"
    polling_interval: float = 180.0
    heartbeat_interval: float = 300.0
    #: None means `<CONFIG_DIR>/mitosis/credentials`.
    credential_path: Path | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=_hide_secret)
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    log_path: Path | None = None
    file_log: bool = False
    shared_log: bool = False
    #: Lifetime of the worker token; None lets the coordinator choose.
    lifetime: float | None = None
    retain: bool = False
    skip_redis: bool = False
    #: How long a running task may go on after the first stop signal.
    drain_timeout: float = 0.0
    #: gzip level (0-9) for artifacts.
    artifact_compression: int = 1
    #: Timeout of each HTTP request to the coordinator.
    request_timeout: float = 30.0


class ConfigError(Exception):
    """An invalid or unreadable configuration; `str()` is one line fit for the terminal.

    `key` is the config key (None for problems with a whole file), `value` the offending
    value as written (never shown for the password), `source` where it came from (a file
    path, "environment variable MITO_X" or "flag --x"), `expected` what is accepted.
    """

    def __init__(
        self, expected: str, *, source: str, key: str | None = None, value: str | None = None
    ) -> None:
        self.expected = expected
        self.source = source
        self.key = key
        self.value = value
        super().__init__(_one_line(self._render()))

    def _render(self) -> str:
        if self.key is None:
            return f"{self.source}: {self.expected}"
        shown = "" if self.value is None else f" {self.value}"
        return f"invalid {self.key}{shown} from {self.source}: {self.expected}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


_KEYS: Final[frozenset[str]] = frozenset(field.name for field in attrs.fields(WorkerConfig))
_SECRET_KEYS: Final = frozenset({"password"})
_FLAG_NAMES: Final = {"coordinator_addr": "--coordinator"}


def flag_for_key(key: str) -> str:
    """The `mito worker` flag that sets a config key, e.g. "--coordinator"."""
    return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


@attrs.frozen
class _Origin:
    """Where a raw value came from."""

    source: str
    kind: Literal["default", "file", "env", "flag"]
    #: Relative paths are resolved against this directory.
    base_dir: Path
    #: The text as typed, for environment variables and flags.
    text: str | None = None


_Layer = dict[str, tuple[object, _Origin]]


class _Invalid(Exception):
    def __init__(self, expected: str) -> None:
        self.expected = expected


# --- value checks, one per kind of key --------------------------------------------------------

_DURATION_EXAMPLES: Final = 'expected a duration string such as "30s", "5m", "1h 30m"'


def _duration(value: object, origin: _Origin, *, positive: bool) -> float:
    if not isinstance(value, str):
        hint = ""
        if origin.kind == "file" and isinstance(value, int | float) and not isinstance(value, bool):
            hint = (
                ' (TOML numbers are not durations: write a quoted string with a unit, e.g. "60s")'
            )
        raise _Invalid(_DURATION_EXAMPLES + hint)
    try:
        seconds = parse_duration(value)
    except DurationError as err:
        raise _Invalid(f"{err.reason}; {_DURATION_EXAMPLES}") from None
    if positive and seconds <= 0:
        raise _Invalid(f"must be longer than zero; {_DURATION_EXAMPLES}")
    return seconds


def _text(value: object, origin: _Origin) -> str:
    if isinstance(value, str):
        return value
    # `MITO_USER=123` parses as a number; the original then refuses it and asks for quotes.
    # The text was clearly meant as a string, so take it as typed instead.
    if origin.kind == "env" and origin.text is not None and not isinstance(value, list):
        return origin.text.strip()
    raise _Invalid("expected a string")


def _url(value: object, origin: _Origin) -> str:
    expected = 'expected an http:// or https:// URL such as "http://127.0.0.1:5000"'
    if not isinstance(value, str):
        raise _Invalid(expected)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise _Invalid(expected) from None
    if parts.scheme.lower() not in {"http", "https"} or not host:
        raise _Invalid(expected)
    return value.strip()


def _path(value: object, origin: _Origin) -> Path:
    text = _text(value, origin)
    if not text:
        raise _Invalid("expected a path")
    return origin.base_dir / text


def _bool(value: object, origin: _Origin) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _string_list(value: object, origin: _Origin) -> tuple[str, ...]:
    expected = "expected a list of strings such as [gpu, a100]"
    if origin.kind == "file":
        expected = 'expected a list of strings such as ["gpu", "a100"]'
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise _Invalid(expected)
    # The original keeps these in sets: drop repeats, keep the first order for readability.
    return tuple(dict.fromkeys(value))


def _compression(value: object, origin: _Origin) -> int:
    expected = "expected a gzip level, an integer from 0 (no compression) to 9"
    level = value
    if isinstance(level, str) and origin.kind == "flag" and re.fullmatch(r"\d+", level.strip()):
        level = int(level)
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 9:
        raise _Invalid(expected)
    return level


def _check(key: str, value: object, origin: _Origin) -> object:
    if key == "coordinator_addr":
        return _url(value, origin)
    if key in {"polling_interval", "heartbeat_interval", "request_timeout", "lifetime"}:
        return _duration(value, origin, positive=True)
    if key == "drain_timeout":
        return _duration(value, origin, positive=False)
    if key in {"credential_path", "log_path"}:
        return _path(value, origin)
    if key in {"user", "password"}:
        return _text(value, origin)
    if key in {"groups", "tags", "labels"}:
        return _string_list(value, origin)
    if key in {"file_log", "shared_log", "retain", "skip_redis"}:
        return _bool(value, origin)
    if key == "artifact_compression":
        return _compression(value, origin)
    raise AssertionError(f"no check for config key {key!r}")  # pragma: no cover


def _show(value: object) -> str:
    """Render a TOML value roughly as written, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _shown_value(key: str, value: object, origin: _Origin) -> str | None:
    if key in _SECRET_KEYS:
        return None
    shown = json.dumps(origin.text, ensure_ascii=False) if origin.text is not None else _show(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


# --- environment ------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ARRAY_ITEM = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^",\[\]]*?)\s*(,|\Z)')
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


def _split_array(body: str) -> list[str] | None:
    """Split the inside of `[a, "b", c]` at top-level commas; None if it is malformed."""
    parts: list[str] = []
    pos = 0
    while True:
        match = _ARRAY_ITEM.match(body, pos)
        if match is None:
            return None
        parts.append(match.group(1))
        pos = match.end()
        if not match.group(2):
            break
    if parts[-1] == "":
        parts.pop()  # "[]" or a trailing comma
    if "" in parts:
        return None
    return [_unquote(part[1:-1]) if part.startswith('"') else part for part in parts]


def parse_env_value(text: str) -> object:
    """Parse a `MITO_*` value TOML-like (§10.3): bool, number, `[a, b]` array, `"quoted"`,
    else the plain (stripped) string.

    Array items are always strings: quoted ones are unquoted, bare ones taken as typed.
    """
    stripped = text.strip()
    if stripped in {"true", "false"}:
        return stripped == "true"
    if _INT.fullmatch(stripped):
        return int(stripped)
    if _FLOAT.fullmatch(stripped):
        return float(stripped)
    if stripped.startswith("[") and stripped.endswith("]"):
        items = _split_array(stripped[1:-1])
        if items is not None:
            return items
    quoted = _QUOTED.fullmatch(stripped)
    if quoted:
        return _unquote(quoted.group(1))
    return stripped


def _env_layer(env: Mapping[str, str], cwd: Path) -> _Layer:
    layer: _Layer = {}
    for name in sorted(env):
        if name[:5].upper() != "MITO_":
            continue
        key = name[5:].lower()
        if key not in _KEYS:
            continue  # e.g. MITO_FILE_LOG_LEVEL, or the task variables a child sees
        text = env[name]
        origin = _Origin(f"environment variable {name}", "env", cwd, text)
        layer[key] = (parse_env_value(text), origin)
    return layer


# --- files ------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read the file: {err.strerror or err}", source=str(path)
        ) from None
    try:
        return tomli.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", source=str(path)) from None
    except tomli.TOMLDecodeError as err:
        raise ConfigError(
            f"invalid TOML at line {err.lineno}, column {err.colno}: {err.msg}",
            source=str(path),
        ) from None


def _profiles(path: Path) -> dict[str, _Layer]:
    """The `[default]`, `[worker]` and `[global]` tables of one file, as layers."""
    document = _read_toml(path)
    layers: dict[str, _Layer] = {}
    for table in ("default", "worker", "global"):
        content = document.get(table, {})
        if not isinstance(content, dict):
            raise ConfigError(f"[{table}] must be a table", source=str(path))
        source = str(path) if table == "worker" else f"{path} [{table}]"
        origin = _Origin(source, "file", path.parent)
        layers[table] = {key: (value, origin) for key, value in content.items() if key in _KEYS}
    return layers


def _find_upward(name: Path, cwd: Path) -> Path | None:
    if name.is_absolute():
        return name if name.is_file() else None
    for directory in (cwd, *cwd.parents):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _config_files(config_file: str | None, cwd: Path, user_config_dir: Path) -> list[Path]:
    files = []
    user_file = user_config_dir / "mitosis" / "config.toml"
    if user_file.is_file():
        files.append(user_file)
    name = Path(config_file or "config.toml").expanduser()
    found = _find_upward(name, cwd)
    if found is not None:
        files.append(found)
    elif config_file is not None:
        # The original silently ignores a missing `--config` file; a typo there would run the
        # worker with the wrong settings, so we refuse instead.
        where = "" if name.is_absolute() else f" in {cwd} or its parent directories"
        raise ConfigError(
            f"no such file{where}",
            source=f"flag {flag_for_key('config')}",
            key="config",
            value=json.dumps(config_file, ensure_ascii=False),
        )
    return files


# --- merging ----------------------------------------------------------------------------------


def _flag_layer(cli: Mapping[str, object], cwd: Path) -> _Layer:
    layer: _Layer = {}
    for key, value in cli.items():
        if key not in _KEYS:
            raise ValueError(f"unknown config key {key!r} in the flags mapping")
        text = value if isinstance(value, str) else None
        if isinstance(value, Iterable) and not isinstance(value, str):
            value = list(value)
        layer[key] = (value, _Origin(f"flag {flag_for_key(key)}", "flag", cwd, text))
    return layer


def _defaults_layer() -> _Layer:
    defaults = WorkerConfig()
    origin = _Origin("built-in default", "default", Path())
    return {key: (getattr(defaults, key), origin) for key in _KEYS}


def _merge(layers: Sequence[_Layer]) -> _Layer:
    merged: _Layer = {}
    for layer in layers:
        merged.update(layer)
    return merged


def load_config(
    *,
    cli: Mapping[str, object],
    config_file: str | None,
    env: Mapping[str, str],
    cwd: Path,
    user_config_dir: Path,
) -> WorkerConfig:
    """Build the worker configuration from every source; later sources win (§10.1).

    `cli` holds only the flags the user gave, keyed by config key: strings as typed, lists
    of strings, and True for switches. `config_file` is the `--config` value, if given.
    `user_config_dir` is the platform config directory (`~/.config` on Linux).

    Order: `[default]` tables < built-in defaults < `<user_config_dir>/mitosis/config.toml`
    `[worker]` < the `--config` file or the nearest `config.toml` `[worker]` < `MITO_*`
    variables < flags < `[global]` tables. As in the original, the built-in defaults cover
    every key, so `[default]` never takes effect for the worker.

    Raises ConfigError for an unreadable file, a missing `--config` file, or an invalid value.
    """
    files = [_profiles(path) for path in _config_files(config_file, cwd, user_config_dir)]
    merged = _merge(
        [
            *(profiles["default"] for profiles in files),
            _defaults_layer(),
            *(profiles["worker"] for profiles in files),
            _env_layer(env, cwd),
            _flag_layer(cli, cwd),
            *(profiles["global"] for profiles in files),
        ]
    )
    values: dict[str, object] = {}
    for key, (value, origin) in merged.items():
        if origin.kind == "default":
            values[key] = value
            continue
        try:
            values[key] = _check(key, value, origin)
        except _Invalid as invalid:
            raise ConfigError(
                invalid.expected,
                source=origin.source,
                key=key,
                value=_shown_value(key, value, origin),
            ) from None
    return WorkerConfig(**cast(dict[str, Any], values))
