"""Log files (PROTOCOL.md §11), their level, and that no secret reaches any log output."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import trio

from mito_trio.client import new_http_client
from mito_trio.config import WorkerConfig
from mito_trio.credentials import read_credential
from mito_trio.exitcodes import ExitCode
from mito_trio.logs import (
    FILE_LOG_LEVEL_ENV,
    LOG_LEVEL_ENV,
    DailyFileHandler,
    Redactor,
    add_secret,
    parse_level,
    setup_console_logging,
    start_file_logging,
)
from mito_trio.testing import LocalCoordinator
from mito_trio.worker import Worker

WORKER = UUID("0b6f5a5e-3c1d-4c47-9a0e-8f0f0d7d2f11")
DAY = date(2025, 3, 1)


@pytest.fixture(autouse=True)
def logger_state() -> Iterator[logging.Logger]:
    """Give every test the `mito_trio` logger as it found it."""
    logger = logging.getLogger("mito_trio")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def worker_uuid(worker: Worker) -> UUID:
    assert worker.worker_id is not None
    return worker.worker_id


def file_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)]


# --- where the file goes -----------------------------------------------------------------------


def test_no_file_without_file_log(tmp_path: Path, logger_state: logging.Logger) -> None:
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path, file_log=False, shared_log=True, log_path=None
    )
    assert logs.path is None
    assert file_handlers(logger_state) == []
    logs.close()
    assert list(tmp_path.iterdir()) == []


def test_per_worker_file_in_the_log_dir(tmp_path: Path, logger_state: logging.Logger) -> None:
    level_before = logger_state.level
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path / "worker", file_log=True, shared_log=False,
        log_path=None, environ={},
    )  # fmt: skip
    assert logs.path == tmp_path / "worker" / f"{WORKER}.log"
    logging.getLogger("mito_trio.task_runner").info("task %s: committed", 7)
    logs.close()
    logs.close()  # idempotent
    lines = (tmp_path / "worker" / f"{WORKER}.log").read_text().splitlines()
    assert lines[-1].endswith("INFO    mito_trio.task_runner: task 7: committed")
    assert not lines[-1].startswith("[worker:")
    # Detached at exit, and the logger's level is what it was.
    assert file_handlers(logger_state) == []
    assert logger_state.level == level_before
    logging.getLogger("mito_trio").warning("after close")
    assert "after close" not in (tmp_path / "worker" / f"{WORKER}.log").read_text()


def test_log_path_is_used_exactly_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "mine.log"
    path.parent.mkdir(parents=True)
    path.write_text("an earlier run\n")
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path / "worker", file_log=True, shared_log=False,
        log_path=path, environ={},
    )  # fmt: skip
    assert logs.path == path
    logging.getLogger("mito_trio").info("hello")
    logs.close()
    text = path.read_text()
    assert text.startswith("an earlier run\n") and text.rstrip().endswith("hello")
    assert not (tmp_path / "worker").exists()


def test_log_path_without_file_name_falls_back_to_the_default(tmp_path: Path) -> None:
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path, file_log=True, shared_log=False,
        log_path=Path("/"), environ={},
    )  # fmt: skip
    assert logs.path == tmp_path / f"{WORKER}.log"
    logs.close()


def test_unopenable_log_file_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-directory.log").mkdir()
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path, file_log=True, shared_log=False,
        log_path=tmp_path / "a-directory.log", environ={},
    )  # fmt: skip
    assert logs.path is None
    assert "cannot open the log file" in caplog.text


# --- the shared, rotated log -------------------------------------------------------------------


def test_shared_log_prefixes_every_line_and_is_appended_by_each_worker(tmp_path: Path) -> None:
    other = uuid4()
    for worker, message in ((WORKER, "first"), (other, "second")):
        logs = start_file_logging(
            worker_id=worker, log_dir=tmp_path, file_log=True, shared_log=True,
            log_path=None, environ={}, today=lambda: DAY,
        )  # fmt: skip
        assert logs.path == tmp_path / "workers.log.2025-03-01"
        logging.getLogger("mito_trio.worker").info(message)
        if worker == other:
            try:
                raise RuntimeError("boom\nsecond line")
            except RuntimeError:
                logging.getLogger("mito_trio.worker").exception("it failed")
        logs.close()
    lines = (tmp_path / "workers.log.2025-03-01").read_text().splitlines()
    assert lines, "nothing was written"
    ours = [line for line in lines if line.startswith(f"[worker:{WORKER}] ")]
    theirs = [line for line in lines if line.startswith(f"[worker:{other}] ")]
    assert len(ours) + len(theirs) == len(lines)
    assert any(line.endswith("first") for line in ours)
    assert any(line.endswith("second") for line in theirs)
    # A traceback is several lines; each carries the prefix.
    assert f"[worker:{other}] Traceback (most recent call last):" in lines
    assert f"[worker:{other}] RuntimeError: boom" in lines
    assert f"[worker:{other}] second line" in lines


def test_shared_log_rotates_by_date_and_keeps_three_files(tmp_path: Path) -> None:
    (tmp_path / "workers.log.2025-02-20").write_text("another worker, long ago\n")
    (tmp_path / "workers.log").write_text("not a dated file\n")
    (tmp_path / "notes.txt").write_text("unrelated\n")
    today = [DAY]
    handler = DailyFileHandler(tmp_path, "workers.log", today=lambda: today[0])
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mito_trio.rotation-test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for offset in range(5):
            today[0] = DAY + timedelta(days=offset)
            logger.info("line of day %d", offset)
            logger.info("again on day %d", offset)
    finally:
        logger.removeHandler(handler)
        handler.close()
    dated = sorted(p.name for p in tmp_path.glob("workers.log.*"))
    assert dated == ["workers.log.2025-03-03", "workers.log.2025-03-04", "workers.log.2025-03-05"]
    assert (tmp_path / "workers.log.2025-03-05").read_text() == ("line of day 4\nagain on day 4\n")
    assert (tmp_path / "workers.log").exists() and (tmp_path / "notes.txt").exists()


def test_shared_log_next_to_log_path(tmp_path: Path) -> None:
    logs = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path / "worker", file_log=True, shared_log=True,
        log_path=tmp_path / "logs" / "fleet.log", environ={}, today=lambda: DAY,
    )  # fmt: skip
    assert logs.path == tmp_path / "logs" / "fleet.log.2025-03-01"
    logs.close()


# --- levels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "level"),
    [
        (None, logging.INFO),
        ("", logging.INFO),
        ("DEBUG", logging.DEBUG),
        ("warning", logging.WARNING),
        ("warn", logging.WARNING),
        ("ERROR", logging.ERROR),
        ("trace", logging.DEBUG),
        ("netmito=info", logging.INFO),
        ("netmito=debug", logging.DEBUG),
        ("hyper=warn,netmito=error", logging.ERROR),
        ("warn,netmito::worker=debug", logging.DEBUG),
        ("hyper=debug", logging.INFO),
        ("loud", logging.INFO),
    ],
)
def test_file_log_level_accepts_names_and_tracing_filters(spec: str | None, level: int) -> None:
    assert parse_level(spec) == level


def test_file_level_is_independent_of_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "INFO")
    console = io.StringIO()
    setup_console_logging(stream=console)
    log = logging.getLogger("mito_trio.level-test")

    debug_file = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path / "debug", file_log=True, shared_log=False,
        log_path=None, environ={FILE_LOG_LEVEL_ENV: "netmito=debug"},
    )  # fmt: skip
    log.debug("fine detail")
    log.info("progress")
    debug_file.close()
    quiet_file = start_file_logging(
        worker_id=WORKER, log_dir=tmp_path / "quiet", file_log=True, shared_log=False,
        log_path=None, environ={FILE_LOG_LEVEL_ENV: "WARNING"},
    )  # fmt: skip
    log.info("more progress")
    log.warning("trouble")
    quiet_file.close()

    debug_text = (tmp_path / "debug" / f"{WORKER}.log").read_text()
    quiet_text = (tmp_path / "quiet" / f"{WORKER}.log").read_text()
    assert "fine detail" in debug_text and "progress" in debug_text
    assert "more progress" not in quiet_text and "trouble" in quiet_text
    assert "fine detail" not in console.getvalue()
    assert "progress" in console.getvalue() and "trouble" in console.getvalue()


# --- secrets -----------------------------------------------------------------------------------


def test_redactor_masks_patterns_and_registered_secrets() -> None:
    redactor = Redactor()
    redactor.add("hunter2-is-my-password")
    redactor.add("ab")  # too short to mask by value: it would mask half of every line
    redactor.add(None)
    cases = {
        "Authorization: Bearer eyJhbGciOi.JSUzI1NiJ9+/=": "Authorization: Bearer ***",
        "bearer abc123, then more": "bearer ***, then more",
        "redis://mitosis_worker:s3cr3t@10.0.0.5:6379/?protocol=resp3": (
            "redis://mitosis_worker:***@10.0.0.5:6379/?protocol=resp3"
        ),
        "login with password=swordfish ok": "login with password=*** ok",
        '{"password": "swordfish", "user": "u"}': '{"password": "***", "user": "u"}',
        "passwd: swordfish": "passwd: ***",
        "I typed hunter2-is-my-password again": "I typed *** again",
        "http://127.0.0.1:5000/workers/tasks": "http://127.0.0.1:5000/workers/tasks",
        "a grab bag": "a grab bag",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected


def test_redaction_covers_arguments_and_tracebacks() -> None:
    redactor = Redactor()
    redactor.add("tok-1234567890")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(redactor)
    logger = logging.getLogger("mito_trio.redaction-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sending %s", {"Authorization": "Bearer tok-1234567890"})
        try:
            raise ValueError("the token tok-1234567890 was refused")
        except ValueError:
            logger.exception("failed with %d%%", 100)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "tok-1234567890" not in text
    assert "Bearer ***" in text and "the token *** was refused" in text
    assert "failed with 100%" in text


async def test_no_secret_in_any_log_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole worker run: console and file, every line, at DEBUG."""
    password = "Pa55-w0rd-of-alice"
    redis_password = "redis-pass-0123456789abcdef"
    monkeypatch.setenv(LOG_LEVEL_ENV, "DEBUG")
    monkeypatch.setenv(FILE_LOG_LEVEL_ENV, "netmito=debug")
    console = io.StringIO()
    setup_console_logging(stream=console)
    # Nothing listens there: Redis trouble is logged, with the URL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    redis_url = f"redis://mitosis_worker:{redis_password}@127.0.0.1:{port}/?protocol=resp3"
    coordinator = LocalCoordinator(users={"alice": password}, redis_url=redis_url)
    credentials = tmp_path / "credentials"
    async with coordinator.running():
        config = WorkerConfig(
            coordinator_addr=coordinator.url,
            polling_interval=0.1,
            heartbeat_interval=0.2,
            credential_path=credentials,
            user="alice",
            password=password,
            file_log=True,
        )
        async with new_http_client(request_timeout=10.0) as http:
            worker = Worker(config, http=http, cache_base=tmp_path / "cache", interactive=False)
            codes: list[ExitCode] = []

            async def run() -> None:
                codes.append(await worker.run())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                with trio.fail_after(15):
                    await worker.registered.wait()
                    record = coordinator.workers[worker_uuid(worker)]
                    task = coordinator.submit_task(["sh", "-c", "echo hi"], terminal_output=True)
                    await coordinator.wait_committed(task)
                    await coordinator.wait_for(lambda: record.heartbeats > 0 or None)
                user_token = read_credential(credentials, "alice")
                assert user_token is not None
                worker_token = worker.client.worker_token
                assert worker_token is not None
                # Code that carelessly logs a secret is caught too.
                logging.getLogger("mito_trio.careless").warning(
                    "calling with Bearer %s after login %s as %s, redis %s",
                    worker_token,
                    user_token.token,
                    password,
                    redis_password,
                )
                worker.request_stop("test finished")
    assert codes == [ExitCode.OK]

    log_file = tmp_path / "cache" / "worker" / f"{worker_uuid(worker)}.log"
    file_text = log_file.read_text()
    console_text = console.getvalue()
    # Both outputs saw a whole run...
    assert "logged in as alice" in console_text
    assert "registered as worker" in file_text and "committed" in file_text
    assert "calling with Bearer ***" in file_text
    assert f"Redis at redis://mitosis_worker:***@127.0.0.1:{port}/0" in file_text
    # ...but no login line reached the file (it starts after registration)...
    assert "logged in as" not in file_text
    # ...and no secret reached either.
    for secret in (password, redis_password, user_token.token, worker_token):
        for name, text in (("console", console_text), ("file", file_text)):
            assert secret not in text, f"a secret reached the {name} log"
    assert "Bearer ***" in console_text


def test_add_secret_feeds_the_shared_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    console = io.StringIO()
    setup_console_logging(stream=console)
    add_secret("a-runtime-secret-value")
    logging.getLogger("mito_trio").warning("value: a-runtime-secret-value")
    assert console.getvalue().rstrip().endswith("value: ***")
