"""Logging: the console, the optional log file (PROTOCOL.md §11), and secret redaction.

Every handler set up here carries `REDACTOR`, a filter that masks `Bearer <token>`,
`password=<value>`, the password in `scheme://user:password@host` URLs, and every secret
registered at run time with `add_secret` (the configured password, the user and worker
tokens, the Redis password). Handlers hang off the `mito_trio` logger.

File logging (`start_file_logging`) begins after registration, so login lines never reach
the file. The shared log rotates by date in its *name* (`workers.log.YYYY-MM-DD`, UTC, like
the original's `tracing-appender`), with no renaming, so several workers can append to the
same file; each line then starts with `[worker:<uuid>] `.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO
from uuid import UUID

__all__ = [
    "FILE_LOG_LEVEL_ENV",
    "FORMAT",
    "LOG_LEVEL_ENV",
    "REDACTOR",
    "DailyFileHandler",
    "FileLogging",
    "Redactor",
    "add_secret",
    "parse_level",
    "setup_console_logging",
    "start_file_logging",
]

#: Environment variable with the console log level (DEBUG, INFO, WARNING, ERROR).
LOG_LEVEL_ENV = "MITO_LOG_LEVEL"
#: Environment variable with the log file's level; `netmito=info` style is accepted too.
FILE_LOG_LEVEL_ENV = "MITO_FILE_LOG_LEVEL"

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: The logger every handler of this module hangs off.
LOGGER = "mito_trio"
#: Shared-log files kept, the current one included (§11).
SHARED_LOG_FILES = 3
#: Base name of the shared log in the default log directory.
SHARED_LOG_NAME = "workers.log"

# --- redaction -------------------------------------------------------------------------------

MASK = "***"
#: Registered secrets shorter than this are not masked by value: they would match everywhere.
MIN_SECRET_LENGTH = 4

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization headers, whatever the token looks like.
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), rf"\g<1>{MASK}"),
    # Credentials in URLs: redis://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@"), rf"\g<1>{MASK}@"),
    # password=..., "password": "...", passwd: ...
    (
        re.compile(r"(?i)\b(pass(?:word|wd)?[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"),
        rf"\g<1>{MASK}",
    ),
]


class Redactor(logging.Filter):
    """Masks secrets in log records: fixed patterns plus the values given to `add`."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._exception_formatter = logging.Formatter()

    def add(self, secret: str | None) -> None:
        """Mask `secret` wherever it appears from now on."""
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `***`."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message, exception text and stack in place; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it
            return True
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


#: The one redaction filter, on every handler this module creates.
REDACTOR = Redactor()


def add_secret(secret: str | None) -> None:
    """Never log `secret` (None and very short values are ignored)."""
    REDACTOR.add(secret)


# --- levels ----------------------------------------------------------------------------------

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
#: Targets whose level in an EnvFilter directive applies to this worker.
_OUR_TARGETS = frozenset({"netmito", "mito_trio", "mito"})


def parse_level(spec: str | None, default: int = logging.INFO) -> int:
    """A logging level from `DEBUG`/`info`/... or a tracing EnvFilter such as `netmito=info`.

    In a directive list (`netmito=debug,hyper=warn`) the one for `netmito` (or `mito_trio`)
    wins, then a bare level; anything unreadable gives `default`.
    """
    if spec is None or not spec.strip():
        return default
    bare: int | None = None
    ours: int | None = None
    for directive in spec.split(","):
        target, equals, level_text = directive.strip().rpartition("=")
        level = _LEVELS.get(level_text.strip().lower())
        if level is None:
            continue
        if not equals:
            bare = level
        elif target.strip().split("::")[0] in _OUR_TARGETS:
            ours = level
    if ours is not None:
        return ours
    return bare if bare is not None else default


# --- the console -----------------------------------------------------------------------------


def setup_console_logging(default_level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr) at `MITO_LOG_LEVEL` (default `default_level`), redacted."""
    level = parse_level(os.environ.get(LOG_LEVEL_ENV), parse_level(default_level))
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level)
    handler.addFilter(REDACTOR)
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # httpx logs every request at INFO; our own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


# --- files -----------------------------------------------------------------------------------


class _AppendHandler(logging.Handler):
    """Writes each record with one `write(2)` on an O_APPEND descriptor.

    O_APPEND makes concurrent writers (several workers sharing one log) each land whole lines
    at the end of the file instead of overwriting each other.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fd: int | None = None

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._close_fd()
        self._fd = fd

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        data = (text + "\n").encode("utf-8", "replace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file."""
        self.acquire()
        try:
            self._close_fd()
        finally:
            self.release()
        super().close()


class PlainFileHandler(_AppendHandler):
    """One file, never rotated (`<worker_uuid>.log`, or exactly `log_path`)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._open(path)

    def emit(self, record: logging.LogRecord) -> None:
        """Append the formatted record."""
        try:
            self._write(self.format(record))
        except Exception:
            self.handleError(record)


def utc_today() -> date:
    """Today's date in UTC, the rotation clock of the original's `tracing-appender`."""
    return datetime.now(UTC).date()


class DailyFileHandler(_AppendHandler):
    """`<directory>/<base_name>.YYYY-MM-DD`, a new file each day; the newest `keep` stay.

    `today` is the clock (injectable for tests). Old files are pruned when a day's file is
    opened; files deleted meanwhile by another worker are fine.
    """

    def __init__(
        self,
        directory: Path,
        base_name: str,
        *,
        keep: int = SHARED_LOG_FILES,
        today: Callable[[], date] = utc_today,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.base_name = base_name
        self._keep = keep
        self._today = today
        self._day = today()
        self._open(self.path_for(self._day))
        self._prune()

    def path_for(self, day: date) -> Path:
        """The file of one day."""
        return self.directory / f"{self.base_name}.{day:%Y-%m-%d}"

    @property
    def path(self) -> Path:
        """The file written now."""
        return self.path_for(self._day)

    def emit(self, record: logging.LogRecord) -> None:
        """Append the formatted record to today's file, switching files at midnight UTC."""
        try:
            text = self.format(record)
            day = self._today()
            if day != self._day:
                self._day = day
                self._open(self.path_for(day))
                self._prune()
            self._write(text)
        except Exception:
            self.handleError(record)

    def _prune(self) -> None:
        pattern = re.compile(re.escape(self.base_name) + r"\.(\d{4}-\d{2}-\d{2})")
        try:
            names = [
                entry.name
                for entry in os.scandir(self.directory)
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ]
        except OSError:
            return
        # The date suffix sorts like the date.
        for name in sorted(names, reverse=True)[self._keep :]:
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logging.getLogger(__name__).debug("cannot remove old log %s: %s", name, exc)


class _PrefixFormatter(logging.Formatter):
    """Prefixes every non-empty line (tracebacks too) with `[worker:<uuid>] `."""

    def __init__(self, prefix: str) -> None:
        super().__init__(FORMAT)
        self._prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        """The record in `FORMAT`, each line prefixed."""
        text = super().format(record)
        return "\n".join(self._prefix + line if line else line for line in text.split("\n"))


class FileLogging:
    """The log file of one worker run; `close()` detaches and closes it (idempotent)."""

    def __init__(self, handler: _AppendHandler | None, previous_level: int | None) -> None:
        self.handler = handler
        self._previous_level = previous_level

    @property
    def path(self) -> Path | None:
        """The file written now (None without file logging)."""
        if isinstance(self.handler, PlainFileHandler | DailyFileHandler):
            return self.handler.path
        return None

    def close(self) -> None:
        """Detach the handler from the `mito_trio` logger, close it, restore the level."""
        if self.handler is None:
            return
        logger = logging.getLogger(LOGGER)
        logger.removeHandler(self.handler)
        self.handler.close()
        self.handler = None
        if self._previous_level is not None:
            logger.setLevel(self._previous_level)


def start_file_logging(
    *,
    worker_id: UUID,
    log_dir: Path,
    file_log: bool,
    shared_log: bool,
    log_path: Path | None,
    environ: Mapping[str, str] | None = None,
    today: Callable[[], date] = utc_today,
) -> FileLogging:
    """Attach the worker's log file to the `mito_trio` logger (§11); never raises.

    `log_dir` is `<cache_base>/worker`. Without `file_log` nothing happens. A file that
    cannot be opened is reported on the console and the worker goes on without it.
    """
    if not file_log:
        return FileLogging(None, None)
    env = os.environ if environ is None else environ
    level = parse_level(env.get(FILE_LOG_LEVEL_ENV))
    # A path without a file name ("/", "..") falls back to the default location (§11).
    named = log_path if log_path is not None and log_path.name not in ("", "..") else None
    handler: _AppendHandler
    logger = logging.getLogger(LOGGER)
    try:
        if shared_log:
            directory, base = (named.parent, named.name) if named else (log_dir, SHARED_LOG_NAME)
            handler = DailyFileHandler(directory, base, today=today)
            handler.setFormatter(_PrefixFormatter(f"[worker:{worker_id}] "))
        else:
            handler = PlainFileHandler(named or log_dir / f"{worker_id}.log")
            handler.setFormatter(logging.Formatter(FORMAT))
    except OSError as exc:
        logger.error("cannot open the log file: %s; logging to the console only", exc)
        return FileLogging(None, None)
    handler.setLevel(level)
    handler.addFilter(REDACTOR)
    previous = logger.level
    # The logger passes records on to every handler; let through what the file wants too.
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    result = FileLogging(handler, previous)
    logger.info("logging to %s", result.path)
    return result
