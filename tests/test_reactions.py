"""How the worker reacts to each outcome of each call: the table of PROTOCOL.md §3.13.

One test (or parametrized case) per cell: 2xx, 401, 403, 404, other status, connect error,
other transport error. "Other status" is split where our worker splits it: 5xx/429 are
transient and retried, other 4xx are final. "Other transport error" likewise: `ReadError`
(a dropped connection) is transient, `TooManyRedirects` is not. Where our worker departs
from the original on purpose (PROTOCOL §13), the test docstring says how.

The coordinator is a respx router (`coord` fixture, see conftest.py); the child is a fake
child runner; time is trio's autojump clock.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mito_trio.exitcodes import ExitCode
from mito_trio.testing.running import run_worker
from mito_trio.wire import TaskExecState as S

pytestmark = pytest.mark.usefixtures("threads_hold_clock")

CONNECT = httpx.ConnectError
#: A transport error worth retrying: the connection dropped mid-request.
DROPPED = httpx.ReadError
#: A transport error retrying will not fix.
REDIRECTS = httpx.TooManyRedirects

REFUSALS_4XX = [
    pytest.param(401, id="401"),
    pytest.param(403, id="403"),
    pytest.param(404, id="404"),
    pytest.param(400, id="400"),
]
RETRIED = [
    pytest.param(500, id="500"),
    pytest.param(429, id="429"),
    pytest.param(CONNECT, id="connect-error"),
    pytest.param(DROPPED, id="read-error"),
]

NEW_TASK = {
    "group_name": "alice",
    "tags": ["gpu"],
    "labels": ["stage2"],
    "timeout": "10m",
    "priority": 5,
    "task_spec": {"args": ["sh", "-c", "echo next"]},
}


def effect(outcome: Any, reply: Any) -> Any:
    """A scripted answer from a status code or an exception class (200: the default)."""
    if outcome == 200:
        return None
    return reply(outcome) if isinstance(outcome, int) else outcome


async def run(worker: Any, *, stop_at: float | None = None) -> ExitCode:
    """Run `worker` to its end (stopping it at `stop_at`), bounded in virtual time."""
    with trio.fail_after(10**6):
        return await run_worker(worker, stop_at=stop_at)


def text(path: Path) -> str:
    """A small file's content (blocking, which is fine for a test's few bytes)."""
    return path.read_text()


def states(announcer: Any, coord: Any) -> list[S]:
    return announcer.states(coord.task_uuid)


# =========================================================================================
# GET /auth
# =========================================================================================


@pytest.fixture
def cached(coord: Any, tmp_path: Path) -> Path:
    """A credential file holding a token the coordinator accepts for alice."""
    path = tmp_path / "credentials"
    path.write_text("alice:cached")
    coord.user_tokens["cached"] = "alice"
    return path


async def test_auth_2xx_same_name_keeps_the_cached_token(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path
) -> None:
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["auth", "register", "fetch", "unregister"]
    assert coord.requests["auth"][0].headers["authorization"] == "Bearer cached"
    assert coord.requests["register"][0].headers["authorization"] == "Bearer cached"
    assert text(cached) == "alice:cached"


async def test_auth_2xx_other_name_logs_in(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path
) -> None:
    coord.script["auth"] = [coord.reply(200, text="bob")]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["auth", "login", "register", "fetch", "unregister"]
    assert coord.requests["register"][0].headers["authorization"] == "Bearer user-1"
    assert text(cached) == "alice:user-1"


@pytest.mark.parametrize("status", REFUSALS_4XX)
async def test_auth_4xx_logs_in(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path, status: int
) -> None:
    coord.script["auth"] = [coord.reply(status)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["auth", "login", "register", "fetch", "unregister"]
    assert coord.requests["register"][0].headers["authorization"] == "Bearer user-1"


@pytest.mark.parametrize("outcome", RETRIED)
async def test_auth_transient_failure_is_retried(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path, outcome: Any
) -> None:
    """The original aborts start-up on 5xx, connect and transport errors; we retry."""
    coord.script["auth"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["auth", "auth", "register", "fetch", "unregister"]


async def test_auth_other_transport_error_logs_in(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path
) -> None:
    """The original aborts; we take a non-transient transport error as "not accepted" and
    log in (which fails on its own if the coordinator is really broken)."""
    coord.script["auth"] = [REDIRECTS]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["auth", "login", "register", "fetch", "unregister"]


async def test_auth_unreachable_exits_unreachable(
    autojump_clock: Any, coord: Any, make_worker: Any, cached: Path
) -> None:
    """The original aborts at once with exit status 0; we retry for the start-up window,
    then exit 4."""
    coord.script["auth"] = [CONNECT] * 1000
    code = await run(make_worker(startup_retry_window=20.0))
    assert code == ExitCode.UNREACHABLE
    assert set(coord.calls()) == {"auth"}
    assert len(coord.calls()) > 3
    assert trio.current_time() == pytest.approx(20.0)


# =========================================================================================
# POST /login
# =========================================================================================


async def test_login_2xx_saves_the_token_and_registers_with_it(
    autojump_clock: Any, coord: Any, make_worker: Any, tmp_path: Path
) -> None:
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["login", "register", "fetch", "unregister"]
    assert coord.bodies("login") == [
        {
            "username": "alice",
            "md5_password": list(hashlib.md5(b"secret").digest()),
            "retain": False,
        }
    ]
    assert "authorization" not in coord.requests["login"][0].headers
    assert coord.requests["register"][0].headers["authorization"] == "Bearer user-1"
    credentials = tmp_path / "credentials"
    assert credentials.read_text() == "alice:user-1"
    assert credentials.stat().st_mode & 0o777 == 0o600


async def test_login_sends_retain_when_configured(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    """The original always sends `retain: false` (§13.17); we honour the setting."""
    assert await run(make_worker(retain=True)) == ExitCode.OK
    assert coord.bodies("login")[0]["retain"] is True


@pytest.mark.parametrize("outcome", [*REFUSALS_4XX, pytest.param(REDIRECTS, id="redirects")])
async def test_login_refused_aborts(
    autojump_clock: Any, coord: Any, make_worker: Any, tmp_path: Path, outcome: Any
) -> None:
    """Abort, as in the original, but with exit code 3 instead of 0 (§13.20)."""
    coord.script["login"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.AUTH_ERROR
    assert coord.calls() == ["login"]
    assert not (tmp_path / "credentials").exists()


@pytest.mark.parametrize("outcome", RETRIED)
async def test_login_transient_failure_is_retried(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """The original aborts; we retry."""
    coord.script["login"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["login", "login", "register", "fetch", "unregister"]


async def test_login_unreachable_exits_unreachable(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    """The original aborts at once (exit 0); we retry for the window, then exit 4."""
    coord.script["login"] = [CONNECT] * 1000
    assert await run(make_worker(startup_retry_window=20.0)) == ExitCode.UNREACHABLE
    assert set(coord.calls()) == {"login"}


# =========================================================================================
# POST /workers
# =========================================================================================


async def test_register_2xx_continues_with_the_worker_token(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    worker = make_worker(
        tags=("gpu", "a100"),
        labels=("rack-3",),
        groups=("team-a", "ops:admin"),
        lifetime=7 * 86400.0,
    )
    assert await run(worker) == ExitCode.OK
    assert coord.calls() == ["login", "register", "fetch", "unregister"]
    assert coord.bodies("register") == [
        {
            "tags": ["gpu", "a100"],
            "labels": ["rack-3"],
            "groups": ["team-a", "ops:admin"],
            "lifetime": "7days",
        }
    ]
    assert coord.requests["register"][0].headers["content-type"] == "application/json"
    assert coord.requests["fetch"][0].headers["authorization"] == "Bearer worker-1"
    assert coord.requests["unregister"][0].headers["authorization"] == "Bearer worker-1"
    assert worker.worker_id == coord.worker_id


async def test_register_sends_null_lifetime_and_empty_sets_by_default(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    assert await run(make_worker()) == ExitCode.OK
    assert coord.bodies("register") == [{"tags": [], "labels": [], "groups": [], "lifetime": None}]


@pytest.mark.parametrize("outcome", [*REFUSALS_4XX, pytest.param(REDIRECTS, id="redirects")])
async def test_register_refused_aborts(
    autojump_clock: Any, coord: Any, make_worker: Any, tmp_path: Path, outcome: Any
) -> None:
    """Abort without unregistering, as in the original, but with exit code 3 (§13.20)."""
    coord.script["register"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.AUTH_ERROR
    assert coord.calls() == ["login", "register"]
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


@pytest.mark.parametrize("outcome", RETRIED)
async def test_register_transient_failure_is_retried(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """The original aborts; we retry, reusing the token just saved (checked by GET /auth)
    rather than logging in again."""
    coord.script["register"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["login", "register", "auth", "register", "fetch", "unregister"]
    assert coord.requests["register"][1].headers["authorization"] == "Bearer user-1"


async def test_register_failing_for_the_whole_window_exits_unreachable(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    coord.script["register"] = [coord.reply(503)] * 1000
    assert await run(make_worker(startup_retry_window=20.0)) == ExitCode.UNREACHABLE
    assert "fetch" not in coord.calls()


# =========================================================================================
# POST /workers/heartbeat
# =========================================================================================


def heartbeat_times(coord: Any) -> list[float]:
    return [t for t, entry in coord.times if entry == "heartbeat"]


async def test_heartbeat_2xx_every_interval_after_a_first_wait(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    coord.no_task_status = 200
    worker = make_worker(heartbeat_interval=10.0, polling_interval=100.0)
    assert await run(worker, stop_at=35.0) == ExitCode.OK
    assert heartbeat_times(coord) == [10.0, 20.0, 30.0]
    request = coord.requests["heartbeat"][0]
    assert request.headers["authorization"] == "Bearer worker-1"
    assert request.content == b""
    assert coord.calls()[-1] == "unregister"


async def test_heartbeat_401_is_a_force_exit(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    coord.no_task_status = 200
    coord.script["heartbeat"] = [coord.reply(401)]
    worker = make_worker(heartbeat_interval=10.0, polling_interval=100.0)
    assert await run(worker, stop_at=1000.0) == ExitCode.OK
    assert coord.calls()[-2:] == ["heartbeat", "unregister"]
    assert coord.time_of("unregister") == 10.0


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(403, id="403"),
        pytest.param(404, id="404"),
        pytest.param(400, id="400"),
        pytest.param(REDIRECTS, id="redirects"),
    ],
)
async def test_heartbeat_refused_stops_the_worker(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """Shutdown as in the original, but exit code 1 instead of 0 (§13.20)."""
    coord.no_task_status = 200
    coord.script["heartbeat"] = [effect(outcome, coord.reply)]
    worker = make_worker(heartbeat_interval=10.0, polling_interval=100.0)
    assert await run(worker, stop_at=1000.0) == ExitCode.INTERNAL_ERROR
    assert coord.calls()[-2:] == ["heartbeat", "unregister"]
    assert coord.time_of("unregister") == 10.0


@pytest.mark.parametrize("outcome", RETRIED)
async def test_heartbeat_transient_failure_is_retried_soon(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """The original shuts down on 5xx and transport errors, and retries connect errors only
    a whole interval later; we retry all three after a short backoff."""
    coord.no_task_status = 200
    coord.script["heartbeat"] = [effect(outcome, coord.reply)]
    worker = make_worker(heartbeat_interval=10.0, polling_interval=100.0)
    assert await run(worker, stop_at=35.0) == ExitCode.OK
    times = heartbeat_times(coord)
    assert len(times) == 4
    assert 10.0 < times[1] <= 10.5
    assert times[2] == pytest.approx(times[1] + 10.0)


# =========================================================================================
# GET /workers/tasks
# =========================================================================================


async def test_fetch_2xx_task_runs_it_then_fetches_at_once(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task())
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == [
        "login",
        "register",
        "fetch",
        "Finish",
        "Commit 0 None",
        "fetch",
        "unregister",
    ]
    assert len(child.calls) == 1
    assert coord.time_of("fetch", 1) == coord.time_of("Commit 0 None") == 1.0


async def test_fetch_2xx_null_sleeps_polling_interval(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    coord.script["fetch"] = [coord.reply(200, None), coord.reply(200, None)]
    assert await run(make_worker(polling_interval=7.0)) == ExitCode.OK
    assert [t for t, e in coord.times if e == "fetch"] == [0.0, 7.0, 14.0]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.Response(200, text="not json"), id="not-json"),
        pytest.param(httpx.Response(200, json={"id": "x"}), id="wrong-shape"),
    ],
)
async def test_fetch_2xx_unparseable_stops_the_worker(
    autojump_clock: Any, coord: Any, make_worker: Any, answer: httpx.Response
) -> None:
    coord.script["fetch"] = [answer]
    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR
    assert coord.calls() == ["login", "register", "fetch", "unregister"]


async def test_fetch_401_is_a_force_exit(autojump_clock: Any, coord: Any, make_worker: Any) -> None:
    coord.script["fetch"] = [coord.reply(200, None), coord.reply(401)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["login", "register", "fetch", "fetch", "unregister"]


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(403, id="403"),
        pytest.param(404, id="404"),
        pytest.param(400, id="400"),
        pytest.param(REDIRECTS, id="redirects"),
    ],
)
async def test_fetch_refused_stops_the_worker(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """Shutdown as in the original, with exit code 1 instead of 0 (§13.20)."""
    coord.script["fetch"] = [effect(outcome, coord.reply)]
    coord.tasks.append(coord.task())
    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR
    assert coord.calls() == ["login", "register", "fetch", "unregister"]


@pytest.mark.parametrize("outcome", RETRIED)
async def test_fetch_transient_failure_is_retried(
    autojump_clock: Any, coord: Any, make_worker: Any, outcome: Any
) -> None:
    """The original shuts down on 5xx and transport errors and retries connect errors after
    `polling_interval`; we retry all three with a backoff capped at `polling_interval`."""
    coord.script["fetch"] = [effect(outcome, coord.reply)]
    coord.tasks.append(coord.task())
    assert await run(make_worker(polling_interval=60.0)) == ExitCode.OK
    assert coord.calls()[2:5] == ["fetch", "fetch", "Finish"]
    assert 0.0 < coord.time_of("fetch", 1) <= 0.5


# =========================================================================================
# Resource locate: GET /workers/tasks/{uuid}/artifacts/{type} and .../attachments/{key}
# =========================================================================================


@pytest.fixture
def resource_task(coord: Any) -> dict[str, Any]:
    """One task with one artifact resource, queued."""
    task = coord.task(resources=[coord.artifact("in/prev.tar.gz")])
    coord.tasks.append(task)
    return task


async def test_locate_artifact_2xx_downloads_it(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, resource_task: Any
) -> None:
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls()[2:6] == [
        "fetch",
        "locate artifact result",
        f"download {coord.artifact_uuid}/result.tar.gz",
        "Finish",
    ]
    locate = coord.requests["locate"][0]
    assert locate.url.path == f"/workers/tasks/{coord.artifact_uuid}/artifacts/result"
    assert locate.headers["authorization"] == "Bearer worker-1"
    assert child.calls[0]["resources"] == {"in/prev.tar.gz": b"artifact"}


async def test_locate_attachment_2xx_downloads_it(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    key = "datasets/mnist v1.tar.gz"
    coord.tasks.append(coord.task(resources=[coord.attachment(key, "mnist.tar.gz")]))
    assert await run(make_worker()) == ExitCode.OK
    locate = coord.requests["locate"][0]
    # The running task's uuid; `/` kept, the space percent-encoded (§1.1, §3.7).
    expected = f"/workers/tasks/{coord.task_uuid}/attachments/datasets/mnist%20v1.tar.gz"
    assert locate.url.raw_path.decode() == expected
    assert child.calls[0]["resources"] == {"mnist.tar.gz": b"attached"}


async def test_locate_401_stops_the_worker_without_reports(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    announcer: Any,
    resource_task: Any,
) -> None:
    """The original announces FetchResourceError and shuts down; we treat a 401 like every
    other 401 with the worker token (the coordinator removed us): stop, exit 0, no
    FetchResourceError (the task goes back to the queue, so it is not a terminal state)."""
    coord.script["locate"] = [coord.reply(401)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls()[2:] == ["fetch", "locate artifact result", "unregister"]
    assert states(announcer, coord) == [S.FetchResource]
    assert child.calls == []


@pytest.mark.parametrize(
    ("status", "msg", "state"),
    [
        pytest.param(403, "ResourceForbidden", S.FetchResourceForbidden, id="403"),
        pytest.param(404, "ResourceNotFound", S.FetchResourceNotFound, id="404"),
    ],
)
async def test_locate_403_404_cancel_and_commit(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    announcer: Any,
    resource_task: Any,
    status: int,
    msg: str,
    state: S,
) -> None:
    coord.script["locate"] = [coord.reply(status)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.reports() == ["Cancel", f"Commit 0 {msg}"]
    assert coord.bodies("Commit")[0] == {
        "id": 4211,
        "op": {"Commit": {"exit_status": 0, "msg": msg}},
    }
    assert states(announcer, coord) == [S.FetchResource, state, S.TaskCommitted]
    assert child.calls == []
    assert coord.calls()[-2:] == ["fetch", "unregister"]


@pytest.mark.parametrize(
    "outcome", [pytest.param(400, id="400"), pytest.param(REDIRECTS, id="redirects")]
)
async def test_locate_other_error_announces_fetch_resource_error_and_stops(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    announcer: Any,
    resource_task: Any,
    outcome: Any,
) -> None:
    """As in the original, but exit code 1 (§13.20)."""
    coord.script["locate"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR
    assert coord.reports() == []
    assert states(announcer, coord) == [S.FetchResource, S.FetchResourceError]
    assert coord.calls()[-1] == "unregister"
    assert child.calls == []


@pytest.mark.parametrize("outcome", RETRIED)
async def test_locate_transient_failure_is_retried(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    resource_task: Any,
    outcome: Any,
) -> None:
    """Connect errors are retried as in the original (with backoff instead of a fixed
    `polling_interval`); 5xx and dropped connections, fatal in the original, too."""
    coord.script["locate"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls()[3:6] == [
        "locate artifact result",
        "locate artifact result",
        f"download {coord.artifact_uuid}/result.tar.gz",
    ]
    assert coord.reports() == ["Finish", "Commit 0 None"]
    assert child.calls[0]["resources"] == {"in/prev.tar.gz": b"artifact"}


# =========================================================================================
# Presigned GET (storage)
# =========================================================================================


async def test_download_2xx_is_saved_without_authorization(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, resource_task: Any
) -> None:
    assert await run(make_worker()) == ExitCode.OK
    request = coord.requests["download"][0]
    assert "authorization" not in request.headers
    assert child.calls[0]["resources"] == {"in/prev.tar.gz": b"artifact"}


@pytest.mark.parametrize("outcome", [*REFUSALS_4XX, pytest.param(REDIRECTS, id="redirects")])
async def test_download_refused_is_resource_forbidden(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    announcer: Any,
    resource_task: Any,
    outcome: Any,
) -> None:
    """As in the original, except that FetchResourceForbidden gets a 60 s TTL instead of
    none (§13.14)."""
    if isinstance(outcome, int):
        outcome = httpx.Response(outcome, text="<Error><Message>Denied</Message></Error>")
    coord.script["download"] = [outcome]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.reports() == ["Cancel", "Commit 0 ResourceForbidden"]
    assert states(announcer, coord) == [
        S.FetchResource,
        S.FetchResourceForbidden,
        S.TaskCommitted,
    ]
    ttls = {state: ttl for _, state, ttl in announcer.events}
    assert ttls[S.FetchResourceForbidden] == 60
    assert child.calls == []


@pytest.mark.parametrize("outcome", RETRIED)
async def test_download_transient_failure_locates_and_downloads_again(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    resource_task: Any,
    outcome: Any,
) -> None:
    """The original commits ResourceForbidden for any download failure (§13.11); we
    retry transient ones with a fresh URL."""
    if isinstance(outcome, int):
        outcome = httpx.Response(outcome)
    coord.script["download"] = [outcome]
    assert await run(make_worker()) == ExitCode.OK
    download = f"download {coord.artifact_uuid}/result.tar.gz"
    assert coord.calls()[3:8] == [
        "locate artifact result",
        download,
        "locate artifact result",
        download,
        "Finish",
    ]
    assert child.calls[0]["resources"] == {"in/prev.tar.gz": b"artifact"}


# =========================================================================================
# GET /workers/tasks/{uuid}: the watch
# =========================================================================================


@pytest.fixture
def watch_task(coord: Any) -> dict[str, Any]:
    """A task waiting for `watched_uuid` to reach ExecFinished, queued."""
    task = coord.task(watch=[str(coord.watched_uuid), "ExecFinished"])
    coord.tasks.append(task)
    return task


RUNNING = {"info": {"state": "Running", "result": None}}


async def test_watch_2xx_reached_runs_the_task(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, announcer: Any, watch_task: Any
) -> None:
    """Without Redis the original ignores the watch; we poll over HTTP (§13.13) and
    announce WatchFinished."""
    assert await run(make_worker()) == ExitCode.OK
    request = coord.requests["query"][0]
    assert request.url.path == f"/workers/tasks/{coord.watched_uuid}"
    assert request.headers["authorization"] == "Bearer worker-1"
    assert coord.calls()[2:5] == ["fetch", "query", "Finish"]
    assert states(announcer, coord)[:4] == [
        S.FetchResource,
        S.Watch,
        S.WatchFinished,
        S.ExecPending,
    ]
    assert len(child.calls) == 1


async def test_watch_2xx_not_reached_polls_again(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, watch_task: Any
) -> None:
    coord.script["query"] = [coord.reply(200, RUNNING), coord.reply(200, RUNNING)]
    assert await run(make_worker(polling_interval=5.0)) == ExitCode.OK
    assert [t for t, e in coord.times if e == "query"] == [0.0, 5.0, 10.0]
    assert child.calls[0]["started"] == 10.0


async def test_watch_401_stops_the_worker(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, watch_task: Any
) -> None:
    """The original only logs it; we stop like on any other 401 with the worker token."""
    coord.script["query"] = [coord.reply(401)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls()[2:] == ["fetch", "query", "unregister"]
    assert child.calls == []


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(403, id="403"),
        pytest.param(404, id="404"),
        pytest.param(400, id="400"),
        pytest.param(500, id="500"),
        pytest.param(CONNECT, id="connect-error"),
        pytest.param(DROPPED, id="read-error"),
        pytest.param(REDIRECTS, id="redirects"),
        pytest.param(httpx.Response(200, text="{"), id="unparseable"),
    ],
)
async def test_watch_errors_are_only_logged(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    watch_task: Any,
    outcome: Any,
) -> None:
    coord.script["query"] = [effect(outcome, coord.reply)]
    assert await run(make_worker(polling_interval=5.0)) == ExitCode.OK
    assert [t for t, e in coord.times if e == "query"] == [0.0, 5.0]
    assert coord.reports() == ["Finish", "Commit 0 None"]
    assert child.calls[0]["started"] == 5.0


# =========================================================================================
# POST /workers/tasks: Finish, Cancel, Commit
# =========================================================================================

#: The reports of the scenario, by the op under test.
BASE_REPORTS = {
    "Finish": ["Finish", "Upload result", "Submit", "Commit 0 None"],
    "Cancel": ["Cancel", "Upload result", "Submit", "Commit 15 ExecTimeout"],
    "Commit": ["Finish", "Upload result", "Submit", "Commit 0 None"],
}

REPORT_OUTCOMES = [
    pytest.param(200, "ok", ExitCode.OK, id="2xx"),
    pytest.param(401, "stop", ExitCode.OK, id="401"),
    pytest.param(403, "stop", ExitCode.INTERNAL_ERROR, id="403"),
    pytest.param(404, "ok", ExitCode.OK, id="404"),
    pytest.param(400, "stop", ExitCode.INTERNAL_ERROR, id="400"),
    pytest.param(500, "retry", ExitCode.OK, id="500"),
    pytest.param(CONNECT, "retry", ExitCode.OK, id="connect-error"),
    pytest.param(DROPPED, "retry", ExitCode.OK, id="read-error"),
    pytest.param(REDIRECTS, "stop", ExitCode.INTERNAL_ERROR, id="redirects"),
]


def report_scenario(coord: Any, child: Any, op: str) -> None:
    """A task that writes a result and a downstream task; it times out for Cancel."""
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    child.new_task = json.dumps(NEW_TASK)
    if op == "Cancel":
        coord.tasks.append(coord.task(timeout="10s"))
        child.mode = "timeout"
    else:
        coord.tasks.append(coord.task())


@pytest.mark.parametrize("op", ["Finish", "Cancel", "Commit"])
@pytest.mark.parametrize(("outcome", "expect", "code"), REPORT_OUTCOMES)
async def test_report(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    op: str,
    outcome: Any,
    expect: str,
    code: ExitCode,
) -> None:
    """2xx and 404: go on (404 = the task is no longer ours, as in the original).
    401: the original carries on as if successful and stops afterwards; we stop at once,
    without the rest of the task. 403, 400, non-transient transport errors: stop, no more
    calls (exit code 1 instead of 0). 5xx, connect and dropped connections: retried (the
    original only retries connect errors)."""
    report_scenario(coord, child, op)
    coord.script[op] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == code
    base = BASE_REPORTS[op]
    index = next(i for i, entry in enumerate(base) if entry.startswith(op))
    if expect == "ok":
        expected = base
    elif expect == "stop":
        expected = base[: index + 1]
    else:
        expected = [*base[: index + 1], base[index], *base[index + 1 :]]
    assert coord.reports() == expected
    # The worker fetches again only after a Commit that went through.
    assert coord.calls().count("fetch") == (2 if expect != "stop" else 1)
    assert coord.calls()[-1] == "unregister"


async def test_report_bodies(autojump_clock: Any, coord: Any, make_worker: Any, child: Any) -> None:
    report_scenario(coord, child, "Finish")
    child.exit_code = 1
    assert await run(make_worker()) == ExitCode.OK
    assert coord.bodies("Finish") == [{"id": 4211, "op": "Finish"}]
    assert coord.bodies("Commit") == [
        {"id": 4211, "op": {"Commit": {"exit_status": 256, "msg": None}}}
    ]
    for kind in ("Finish", "Upload", "Submit", "Commit"):
        request = coord.requests[kind][0]
        assert request.headers["authorization"] == "Bearer worker-1"
        assert request.headers["content-type"] == "application/json"


async def test_cancel_body(autojump_clock: Any, coord: Any, make_worker: Any, child: Any) -> None:
    report_scenario(coord, child, "Cancel")
    assert await run(make_worker()) == ExitCode.OK
    assert coord.bodies("Cancel") == [{"id": 4211, "op": "Cancel"}]


async def test_report_failing_beyond_its_deadline_stops_the_worker(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """Not in the original (a 5xx stops it at once): retries are bounded by
    REPORT_DEADLINE (300 s), then the worker stops with exit code 1."""
    report_scenario(coord, child, "Finish")
    coord.script["Finish"] = [coord.reply(503)] * 1000
    assert await run(make_worker(polling_interval=30.0)) == ExitCode.INTERNAL_ERROR
    assert set(coord.reports()) == {"Finish"}
    assert coord.time_of("unregister") == pytest.approx(1.0 + 300.0)


# =========================================================================================
# POST /workers/tasks: Submit
# =========================================================================================

SUBMIT_OUTCOMES = [
    pytest.param(200, "Commit 0 None", 1, id="2xx"),
    pytest.param(403, "Commit 0 SubmitNewTaskFailed", 1, id="403"),
    pytest.param(404, "Commit 0 SubmitNewTaskFailed", 1, id="404"),
    pytest.param(400, "Commit 0 SubmitNewTaskFailed", 1, id="400"),
    pytest.param(REDIRECTS, "Commit 0 SubmitNewTaskFailed", 1, id="redirects"),
    pytest.param(500, "Commit 0 None", 2, id="500"),
    pytest.param(CONNECT, "Commit 0 None", 2, id="connect-error"),
    pytest.param(DROPPED, "Commit 0 None", 2, id="read-error"),
]


@pytest.mark.parametrize(("outcome", "commit", "submits"), SUBMIT_OUTCOMES)
async def test_submit(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    tmp_path: Path,
    outcome: Any,
    commit: str,
    submits: int,
) -> None:
    """A refused submission marks the Commit SubmitNewTaskFailed, never stops the worker.
    Differences: 404 counts as a failure (the original: success, §13.22); 5xx and dropped
    connections are retried (the original: failure)."""
    report_scenario(coord, child, "Finish")
    coord.script["Submit"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.reports() == ["Finish", "Upload result", *["Submit"] * submits, commit]
    expected_spec = {
        "args": ["sh", "-c", "echo next"],
        "envs": {},
        "resources": [],
        "terminal_output": False,
        "watch": None,
    }
    assert coord.bodies("Submit")[0] == {
        "id": 4211,
        "op": {"Submit": {**NEW_TASK, "task_spec": expected_spec}},
    }
    assert coord.calls()[-2:] == ["fetch", "unregister"]


async def test_submit_401_stops_without_commit(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The original counts a 401 as a successful submission and commits; we stop at once."""
    report_scenario(coord, child, "Finish")
    coord.script["Submit"] = [coord.reply(401)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.reports() == ["Finish", "Upload result", "Submit"]
    assert coord.calls()[-1] == "unregister"


async def test_submit_refused_after_exec_timeout_keeps_exec_timeout(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    report_scenario(coord, child, "Cancel")
    coord.script["Submit"] = [coord.reply(400)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.reports() == ["Cancel", "Upload result", "Submit", "Commit 15 ExecTimeout"]


# =========================================================================================
# POST /workers/tasks: Upload
# =========================================================================================


def upload_scenario(coord: Any, child: Any) -> None:
    """A task that leaves a result and an exec log: two uploads."""
    child.files = {"MITO_RESULT_DIR/out.txt": "42", "MITO_EXEC_DIR/trace.log": "t"}
    coord.tasks.append(coord.task())


FULL_UPLOAD = [
    "Finish",
    "Upload result",
    "put result",
    "Upload exec-log",
    "put exec-log",
    "Commit 0 None",
]


def task_calls(coord: Any) -> list[str]:
    """The calls between the first fetch and the next fetch (or the unregister)."""
    calls = coord.calls()
    start = calls.index("fetch") + 1
    end = next(i for i in range(start, len(calls)) if calls[i] in ("fetch", "unregister"))
    return calls[start:end]


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


async def test_upload_2xx_puts_the_archive(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    upload_scenario(coord, child)
    assert await run(make_worker()) == ExitCode.OK
    assert task_calls(coord) == FULL_UPLOAD
    (result,) = coord.uploads["result"]
    assert coord.bodies("Upload")[0] == {
        "id": 4211,
        "op": {"Upload": {"content_type": "result", "content_length": len(result)}},
    }
    assert members(result) == {"result": b"", "result/out.txt": b"42"}
    assert members(coord.uploads["exec-log"][0])["exec-log/trace.log"] == b"t"


async def test_upload_401_stops_without_commit(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    upload_scenario(coord, child)
    coord.script["Upload"] = [coord.reply(401)]
    assert await run(make_worker()) == ExitCode.OK
    assert task_calls(coord) == ["Finish", "Upload result"]
    assert coord.calls()[-1] == "unregister"
    assert coord.calls().count("fetch") == 1


@pytest.mark.parametrize("status", [403, 404])
async def test_upload_403_404_skips_only_that_archive(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, status: int
) -> None:
    """The original stops uploading all remaining archives (§13.16); we skip this one."""
    upload_scenario(coord, child)
    coord.script["Upload"] = [coord.reply(status)]
    assert await run(make_worker()) == ExitCode.OK
    assert task_calls(coord) == [
        "Finish",
        "Upload result",
        "Upload exec-log",
        "put exec-log",
        "Commit 0 None",
    ]


@pytest.mark.parametrize(
    "outcome", [pytest.param(400, id="400"), pytest.param(REDIRECTS, id="redirects")]
)
async def test_upload_other_error_stops_without_commit(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, outcome: Any
) -> None:
    """As in the original, with exit code 1 (§13.20)."""
    upload_scenario(coord, child)
    coord.script["Upload"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR
    assert task_calls(coord) == ["Finish", "Upload result"]
    assert coord.calls()[-1] == "unregister"


@pytest.mark.parametrize("outcome", RETRIED)
async def test_upload_transient_failure_is_retried(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, outcome: Any
) -> None:
    """The original retries connect errors only; 5xx stops it."""
    upload_scenario(coord, child)
    coord.script["Upload"] = [effect(outcome, coord.reply)]
    assert await run(make_worker()) == ExitCode.OK
    assert task_calls(coord) == ["Finish", "Upload result", *FULL_UPLOAD[1:]]


# =========================================================================================
# Presigned PUT (storage)
# =========================================================================================


async def test_put_2xx_has_length_and_no_authorization(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    upload_scenario(coord, child)
    assert await run(make_worker()) == ExitCode.OK
    request = coord.requests["put"][0]
    assert "authorization" not in request.headers
    assert "content-type" not in request.headers
    assert request.headers["content-length"] == str(len(coord.uploads["result"][0]))


@pytest.mark.parametrize(
    "outcome",
    [
        *REFUSALS_4XX,
        pytest.param(500, id="500"),
        pytest.param(CONNECT, id="connect-error"),
        pytest.param(DROPPED, id="read-error"),
        pytest.param(REDIRECTS, id="redirects"),
    ],
)
async def test_put_failure_asks_for_a_new_url(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, outcome: Any
) -> None:
    """The original stops the worker without Commit on a non-2xx or transport error and
    retries the same URL on connect errors; we ask for a fresh URL and PUT again."""
    upload_scenario(coord, child)
    if isinstance(outcome, int):
        outcome = httpx.Response(outcome, text="<Error><Message>nope</Message></Error>")
    coord.script["put"] = [outcome]
    assert await run(make_worker()) == ExitCode.OK
    assert task_calls(coord) == [
        "Finish",
        "Upload result",
        "put result",
        "Upload result",
        "put result",
        *FULL_UPLOAD[3:],
    ]
    assert len(coord.uploads["result"]) == 1


# =========================================================================================
# DELETE /workers
# =========================================================================================


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(200, id="2xx"),
        *REFUSALS_4XX,
        pytest.param(500, id="500"),
        pytest.param(CONNECT, id="connect-error"),
        pytest.param(DROPPED, id="read-error"),
        pytest.param(REDIRECTS, id="redirects"),
    ],
)
async def test_unregister_outcome_is_ignored(
    autojump_clock: Any, coord: Any, make_worker: Any, tmp_path: Path, outcome: Any
) -> None:
    coord.script["unregister"] = [effect(outcome, coord.reply)]
    coord.script["fetch"] = [coord.reply(200, None)]
    assert await run(make_worker()) == ExitCode.OK
    assert coord.calls() == ["login", "register", "fetch", "fetch", "unregister"]
    assert coord.requests["unregister"][0].headers["authorization"] == "Bearer worker-1"
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


async def test_unregister_gives_up_after_3_seconds(
    autojump_clock: Any, coord: Any, make_worker: Any, tmp_path: Path
) -> None:
    coord.script["unregister"] = [coord.hang]
    assert await run(make_worker()) == ExitCode.OK
    assert trio.current_time() - coord.time_of("unregister") == pytest.approx(3.0)
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


async def test_unregister_keeps_a_fatal_exit_code(
    autojump_clock: Any, coord: Any, make_worker: Any
) -> None:
    coord.script["fetch"] = [coord.reply(400)]
    coord.script["unregister"] = [coord.reply(500)]
    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR
    assert coord.calls()[-1] == "unregister"
