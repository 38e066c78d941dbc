"""Every row of the outcome matrix, PROTOCOL.md §6.10, through a whole Worker run.

Each test asserts the exact order of coordinator calls and announced states after the
fetch (one timeline: `R <state>` entries are announcements), the Commit's `exit_status`
and `msg`, and whether the task cache was cleaned (its files as seen at the next fetch) or
removed with the worker. Deliberate differences from the original (PROTOCOL §13) are named
in the docstrings.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mito_trio import task_runner
from mito_trio.exitcodes import ExitCode
from mito_trio.testing.running import run_worker
from mito_trio.wire import TaskExecState as S

pytestmark = pytest.mark.usefixtures("threads_hold_clock")

NEW_TASK = {
    "group_name": "alice",
    "tags": [],
    "labels": ["stage2"],
    "timeout": "30m",
    "priority": 0,
    "task_spec": {"args": ["sh", "-c", "echo next"], "envs": {"A": "1"}},
}


async def run(worker: Any, *, stop_at: float | None = None) -> ExitCode:
    """Run `worker` to its end (stopping it at `stop_at`), bounded in virtual time."""
    with trio.fail_after(10**6):
        return await run_worker(worker, stop_at=stop_at)


def task_timeline(coord: Any) -> list[str]:
    """Calls and announcements after the first fetch, up to the next fetch or unregister."""
    timeline = coord.timeline
    start = timeline.index("fetch") + 1
    end = next(i for i in range(start, len(timeline)) if timeline[i] in ("fetch", "unregister"))
    return timeline[start:end]


def ends_with_next_fetch(coord: Any) -> bool:
    return coord.calls()[-2:] == ["fetch", "unregister"] and coord.calls().count("fetch") == 2


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def capture_files(coord: Any, seen: list[list[str]]) -> Any:
    """A report answer that records the task cache's files, then answers 200."""

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(coord.cache_files())
        return coord.reply(200, {"url": None})

    return answer


# =========================================================================================
# success
# =========================================================================================


async def test_success(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, announcer: Any
) -> None:
    upstream = coord.watched_uuid
    coord.tasks.append(
        coord.task(
            timeout="1h",
            envs={"FOO": "bar", "MITO_TASK_UUID": "spoofed"},
            resources=[
                coord.artifact("prev/result.tar.gz"),
                coord.attachment("datasets/mnist.tar.gz", "mnist.tar.gz"),
            ],
            terminal_output=True,
            upstream=upstream,
        )
    )
    child.exit_code = 3
    child.run_time = 5.0
    child.files = {"MITO_RESULT_DIR/out.txt": "42", "MITO_EXEC_DIR/trace.log": "t"}
    child.stdout = "hello\n"
    child.stderr = "oops\n"
    child.new_task = json.dumps(NEW_TASK)

    assert await run(make_worker()) == ExitCode.OK

    assert task_timeline(coord) == [
        "R FetchResource",
        "locate artifact result",
        f"download {coord.artifact_uuid}/result.tar.gz",
        "locate attachment datasets/mnist.tar.gz",
        "download datasets/mnist.tar.gz",
        "R ExecPending",
        "R ExecSpawned",
        "R ExecFinished",
        "R UploadResult",
        "R UploadFinishedResult",
        "Finish",
        "Upload result",
        "put result",
        "Upload exec-log",
        "put exec-log",
        "Upload std-log",
        "put std-log",
        "R UploadResultFinished",
        "Submit",
        "Commit 768 None",
        "R TaskCommitted",
    ]
    assert coord.bodies("Commit") == [
        {"id": 4211, "op": {"Commit": {"exit_status": 768, "msg": None}}}
    ]
    assert coord.time_of("Finish") == 5.0
    # TTLs of §8.3; ExecSpawned gets one (timeout + 660) where the original sets none, and
    # FetchResource outlives the 1800 s resource deadline when there is something to fetch.
    assert [(state, ttl) for _, state, ttl in announcer.events] == [
        (S.FetchResource, 1800 + 60),
        (S.ExecPending, 3600 + 60),
        (S.ExecSpawned, 3600 + 660),
        (S.ExecFinished, 660),
        (S.UploadResult, 660),
        (S.UploadFinishedResult, 660),
        (S.UploadResultFinished, 60),
        (S.TaskCommitted, 60),
    ]

    # What the child saw (§6.3), minus the worker's own MITO_* settings (§13.7).
    (call,) = child.calls
    root = coord.cache_root
    assert call["argv"] == ["/usr/bin/env", "python3", "job.py"]
    assert call["env"] == {
        "FOO": "bar",
        "MITO_RESULT_DIR": str(root / "result"),
        "MITO_EXEC_DIR": str(root / "exec"),
        "MITO_RESOURCE_DIR": str(root / "resource"),
        "MITO_TASK_UUID": str(coord.task_uuid),
        "MITO_NEW_TASK": str(root / "new_task.json"),
        "MITO_UPSTREAM_TASK_UUID": str(upstream),
    }
    assert call["resources"] == {"prev/result.tar.gz": b"artifact", "mnist.tar.gz": b"attached"}
    assert call["deadline"] == 3600.0

    assert members(coord.uploads["result"][0]) == {"result": b"", "result/out.txt": b"42"}
    assert members(coord.uploads["std-log"][0]) == {
        "std-log/stdout.log": b"hello\n",
        "std-log/stderr.log": b"oops\n",
    }
    assert coord.bodies("Submit")[0]["op"]["Submit"]["task_spec"] == {
        "args": ["sh", "-c", "echo next"],
        "envs": {"A": "1"},
        "resources": [],
        "terminal_output": False,
        "watch": None,
    }
    # Cleaned: nothing of the task is left when the next task is fetched.
    assert ends_with_next_fetch(coord)
    assert coord.cache_snapshots[-1] == []


@pytest.mark.parametrize(
    ("content", "submitted", "msg"),
    [
        pytest.param("{not json", False, "SubmitNewTaskFailed", id="unparseable"),
        pytest.param('{"group_name": "alice"}', False, "SubmitNewTaskFailed", id="incomplete"),
        pytest.param(" \n", False, "None", id="blank"),
        pytest.param(json.dumps(NEW_TASK), True, "None", id="valid"),
    ],
)
async def test_success_new_task_file(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    content: str,
    submitted: bool,
    msg: str,
) -> None:
    """§7: an unreadable file fails the submission without a call; a blank one is nothing."""
    coord.tasks.append(coord.task())
    child.new_task = content
    assert await run(make_worker()) == ExitCode.OK
    expected = ["Finish", *(["Submit"] if submitted else []), f"Commit 0 {msg}"]
    assert coord.reports() == expected
    assert coord.cache_snapshots[-1] == []


async def test_fetch_resource_keeps_the_original_ttl_when_nothing_is_fetched(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, announcer: Any
) -> None:
    """Without resources or watch the phase is instant: FetchResource keeps §8.3's 360 s."""
    coord.tasks.append(coord.task())
    assert await run(make_worker()) == ExitCode.OK
    assert announcer.events[0][1:] == (S.FetchResource, 360)


async def test_stale_new_task_file_is_removed_before_spawning(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task())
    seen: list[bool] = []
    child.on_start = lambda: seen.append((coord.cache_root / "new_task.json").exists())
    worker = make_worker()

    async def plant(request: httpx.Request) -> httpx.Response:
        # Just before the task arrives, leave a new_task.json behind.
        coord.cache_root.joinpath("new_task.json").write_text(json.dumps(NEW_TASK))
        return coord.reply(200, coord.tasks.pop(0))

    coord.script["fetch"] = [plant]
    assert await run(worker) == ExitCode.OK
    assert seen == [False]
    assert coord.reports() == ["Finish", "Commit 0 None"]


# =========================================================================================
# exec timeout
# =========================================================================================


async def test_exec_timeout(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, announcer: Any
) -> None:
    """A refused Submit does not replace ExecTimeout (as in the original, §7)."""
    coord.tasks.append(coord.task(timeout="10m"))
    child.mode = "timeout"
    child.timeout_status = 15
    child.files = {"MITO_RESULT_DIR/partial.txt": "p"}
    child.new_task = json.dumps(NEW_TASK)
    coord.script["Submit"] = [coord.reply(400)]

    assert await run(make_worker()) == ExitCode.OK

    assert task_timeline(coord) == [
        "R FetchResource",
        "R ExecPending",
        "R ExecSpawned",
        "R ExecTimeout",
        "R UploadResult",
        "R UploadCancelledResult",
        "Cancel",
        "Upload result",
        "put result",
        "R UploadResultFinished",
        "Submit",
        "Commit 15 ExecTimeout",
        "R TaskCommitted",
    ]
    assert child.calls[0]["deadline"] == 600.0
    assert coord.time_of("Cancel") == 600.0
    assert dict((s, ttl) for _, s, ttl in announcer.events)[S.ExecTimeout] == 60
    assert ends_with_next_fetch(coord)
    assert coord.cache_snapshots[-1] == []


# =========================================================================================
# resource 404 / 403 / download error
# =========================================================================================


@pytest.mark.parametrize(
    ("script_key", "answer", "failing_call", "msg", "state"),
    [
        pytest.param(
            "locate",
            404,
            "locate attachment missing.bin",
            "ResourceNotFound",
            "FetchResourceNotFound",
            id="resource-404",
        ),
        pytest.param(
            "locate",
            403,
            "locate attachment missing.bin",
            "ResourceForbidden",
            "FetchResourceForbidden",
            id="resource-403",
        ),
        pytest.param(
            "download",
            403,
            "download missing.bin",
            "ResourceForbidden",
            "FetchResourceForbidden",
            id="download-error",
        ),
    ],
)
async def test_resource_failure(
    autojump_clock: Any,
    coord: Any,
    make_worker: Any,
    child: Any,
    announcer: Any,
    script_key: str,
    answer: int,
    failing_call: str,
    msg: str,
    state: str,
) -> None:
    """Reports first, then the announcements (§6.2). The original leaves the first,
    downloaded resource in the cache (§13.15); we clean the cache on early outcomes too,
    and give FetchResourceForbidden a 60 s TTL even after a download error (§13.14)."""
    coord.tasks.append(
        coord.task(
            resources=[
                coord.artifact("first.bin"),
                coord.attachment("missing.bin", "second.bin"),
            ]
        )
    )
    if script_key == "locate":
        coord.script["locate"] = [None, coord.reply(answer)]
    else:
        coord.script["download"] = [None, httpx.Response(answer, text="<Message>no</Message>")]
    at_cancel: list[list[str]] = []
    coord.script["Cancel"] = [capture_files(coord, at_cancel)]

    assert await run(make_worker()) == ExitCode.OK

    expected = [
        "R FetchResource",
        "locate artifact result",
        f"download {coord.artifact_uuid}/result.tar.gz",
        "locate attachment missing.bin",
    ]
    if script_key == "download":
        expected.append("download missing.bin")
    assert expected[-1] == failing_call
    assert task_timeline(coord) == [
        *expected,
        "Cancel",
        f"Commit 0 {msg}",
        f"R {state}",
        "R TaskCommitted",
    ]
    assert [ttl for _, s, ttl in announcer.events if s.name == state] == [60]
    assert child.calls == []
    assert at_cancel == [["resource/first.bin"]]
    assert ends_with_next_fetch(coord)
    assert coord.cache_snapshots[-1] == []


# =========================================================================================
# fetch timeout
# =========================================================================================


async def test_fetch_timeout_while_the_coordinator_is_unreachable(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task(resources=[coord.artifact("in.bin")]))
    coord.script["locate"] = [httpx.ConnectError] * 1000

    assert await run(make_worker(polling_interval=30.0)) == ExitCode.OK

    timeline = task_timeline(coord)
    locates = timeline[1:-4]
    assert timeline[0] == "R FetchResource"
    assert len(locates) > 10
    assert set(locates) == {"locate artifact result"}
    assert timeline[-4:] == [
        "Cancel",
        "Commit 0 FetchResourceTimeout",
        "R FetchResourceTimeout",
        "R TaskCommitted",
    ]
    assert coord.time_of("Cancel") == pytest.approx(1800.0)
    assert child.calls == []
    assert coord.cache_snapshots[-1] == []


async def test_fetch_timeout_with_a_stalled_download(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The original gives up after a fixed 120 s per download (§13.12); we abandon a
    transfer after 120 s without data and locate it again, until the 30-minute deadline."""
    coord.tasks.append(coord.task(resources=[coord.artifact("in.bin")]))
    coord.script["download"] = [coord.hang] * 100

    assert await run(make_worker(polling_interval=30.0)) == ExitCode.OK

    downloads = [t for t, e in coord.times if e.startswith("download")]
    assert 12 <= len(downloads) <= 15
    assert all(b - a > 120.0 for a, b in itertools.pairwise(downloads))
    assert coord.reports() == ["Cancel", "Commit 0 FetchResourceTimeout"]
    assert coord.time_of("Cancel") == pytest.approx(1800.0)
    assert child.calls == []


# =========================================================================================
# watch timeout
# =========================================================================================

RUNNING = {"state": "Running", "result": None}


async def test_watch_timeout(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, announcer: Any
) -> None:
    """Without Redis the original ignores the watch and runs the task; we poll
    `GET /workers/tasks/{uuid}` (§13.13), so the watch can time out."""
    coord.tasks.append(coord.task(watch=[str(coord.watched_uuid), "ExecFinished"]))
    coord.query_info = RUNNING

    assert await run(make_worker(polling_interval=30.0)) == ExitCode.OK

    timeline = task_timeline(coord)
    assert timeline[:2] == ["R FetchResource", "R Watch"]
    assert set(timeline[2:-4]) == {"query"}
    assert len(timeline[2:-4]) == 60
    assert timeline[-4:] == ["Cancel", "Commit 0 WatchTimeout", "R WatchTimeout", "R TaskCommitted"]
    assert coord.time_of("Cancel") == pytest.approx(1800.0)
    assert child.calls == []
    assert coord.cache_snapshots[-1] == []


async def test_watch_timeout_counts_the_resource_phase(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The 30 minutes run from the fetch, resources included (as in the original)."""
    coord.tasks.append(
        coord.task(
            resources=[coord.artifact("in.bin")],
            watch=[str(coord.watched_uuid), "ExecFinished"],
        )
    )
    coord.script["download"] = [coord.hang]
    coord.query_info = RUNNING

    assert await run(make_worker(polling_interval=30.0)) == ExitCode.OK

    assert coord.time_of("query") > 120.0
    assert coord.reports() == ["Cancel", "Commit 0 WatchTimeout"]
    assert coord.time_of("Cancel") == pytest.approx(1800.0)


# =========================================================================================
# upload timeout
# =========================================================================================


async def test_upload_timeout(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The downstream task is still submitted (the original skips it, §13.16)."""
    coord.tasks.append(coord.task())
    child.files = {"MITO_RESULT_DIR/out.txt": "42", "MITO_EXEC_DIR/trace.log": "t"}
    child.exit_code = 2
    child.new_task = json.dumps(NEW_TASK)
    coord.script["put"] = [coord.hang]

    assert await run(make_worker()) == ExitCode.OK

    assert task_timeline(coord) == [
        "R FetchResource",
        "R ExecPending",
        "R ExecSpawned",
        "R ExecFinished",
        "R UploadResult",
        "R UploadFinishedResult",
        "Finish",
        "Upload result",
        "put result",
        "Submit",
        "Commit 512 UploadResultTimeout",
        "R UploadResultTimeout",
        "R TaskCommitted",
    ]
    assert coord.time_of("Commit 512 UploadResultTimeout") == pytest.approx(1.0 + 600.0)
    assert ends_with_next_fetch(coord)
    assert coord.cache_snapshots[-1] == []


async def test_upload_timeout_after_exec_timeout_keeps_exec_timeout(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, monkeypatch: Any
) -> None:
    """The original commits UploadResultTimeout, overwriting ExecTimeout (§13.16)."""
    monkeypatch.setattr(task_runner, "UPLOAD_DEADLINE", 50.0)
    coord.tasks.append(coord.task(timeout="10s"))
    child.mode = "timeout"
    child.timeout_status = 9
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    child.new_task = json.dumps(NEW_TASK)
    coord.script["put"] = [coord.hang]

    assert await run(make_worker()) == ExitCode.OK

    assert task_timeline(coord)[-7:] == [
        "Cancel",
        "Upload result",
        "put result",
        "Submit",
        "Commit 9 ExecTimeout",
        "R UploadResultTimeout",
        "R TaskCommitted",
    ]
    assert coord.time_of("Commit 9 ExecTimeout") == pytest.approx(10.0 + 50.0)
    assert coord.cache_snapshots[-1] == []


# =========================================================================================
# resource locate error (other status)
# =========================================================================================


async def test_resource_locate_error(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, tmp_path: Path
) -> None:
    """As in the original, but the exit code is 1 (§13.20)."""
    coord.tasks.append(coord.task(resources=[coord.artifact("in.bin")]))
    coord.script["locate"] = [coord.reply(400)]

    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR

    assert task_timeline(coord) == [
        "R FetchResource",
        "locate artifact result",
        "R FetchResourceError",
    ]
    assert coord.calls()[-1] == "unregister"
    assert coord.calls().count("fetch") == 1
    assert child.calls == []
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


# =========================================================================================
# spawn failure (§6.1 step 6)
# =========================================================================================


async def test_spawn_failure_stops_the_worker_without_reports(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, tmp_path: Path
) -> None:
    """An execution error: nothing reported, the worker stops (exit code 1, §13.20)."""
    coord.tasks.append(coord.task())
    child.mode = "spawn-error"

    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR

    assert task_timeline(coord) == ["R FetchResource", "R ExecPending"]
    assert coord.calls()[-1] == "unregister"
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


# =========================================================================================
# shutdown mid-task
# =========================================================================================


async def test_shutdown_while_the_child_runs(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, tmp_path: Path
) -> None:
    coord.tasks.append(coord.task())
    child.mode = "forever"

    assert await run(make_worker(), stop_at=5.0) == ExitCode.OK

    assert task_timeline(coord) == [
        "R FetchResource",
        "R ExecPending",
        "R ExecSpawned",
        "R WorkerExited",
    ]
    assert coord.calls()[-1] == "unregister"
    assert coord.time_of("unregister") == 5.0
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


async def test_shutdown_during_resources_announces_nothing(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, tmp_path: Path
) -> None:
    coord.tasks.append(coord.task(resources=[coord.artifact("in.bin")]))
    coord.script["download"] = [coord.hang]

    assert await run(make_worker(), stop_at=5.0) == ExitCode.OK

    assert task_timeline(coord) == [
        "R FetchResource",
        "locate artifact result",
        f"download {coord.artifact_uuid}/result.tar.gz",
    ]
    assert coord.calls()[-1] == "unregister"
    assert child.calls == []
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()


async def test_shutdown_during_watch(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task(watch=[str(coord.watched_uuid), "ExecFinished"]))
    coord.query_info = RUNNING

    assert await run(make_worker(polling_interval=30.0), stop_at=5.0) == ExitCode.OK

    assert task_timeline(coord) == ["R FetchResource", "R Watch", "query", "R WorkerExited"]
    assert coord.calls()[-1] == "unregister"
    assert child.calls == []


async def test_shutdown_after_finish_still_commits(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The original announces WorkerExited and stops without Commit (§6.1 step 10); once
    the child has exited we finish the upload and commit, and fetch nothing more."""
    coord.tasks.append(coord.task())
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    worker = make_worker()

    async def finish_then_stop(request: httpx.Request) -> httpx.Response:
        worker.request_stop("test")
        return coord.reply(200, {"url": None})

    coord.script["Finish"] = [finish_then_stop]

    assert await run(worker) == ExitCode.OK

    assert coord.timeline[-7:] == [
        "Finish",
        "Upload result",
        "put result",
        "R UploadResultFinished",
        "Commit 0 None",
        "R TaskCommitted",
        "unregister",
    ]
    assert coord.calls().count("fetch") == 1


async def test_second_stop_abandons_the_upload(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """A second stop request cuts the (shielded) finalisation short: no Commit."""
    coord.tasks.append(coord.task())
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    worker = make_worker()

    async def finish_then_stop(request: httpx.Request) -> httpx.Response:
        worker.request_stop("first")
        return coord.reply(200, {"url": None})

    async def put_then_stop_again(request: httpx.Request) -> httpx.Response:
        worker.request_stop("second")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    coord.script["Finish"] = [finish_then_stop]
    coord.script["put"] = [put_then_stop_again]

    assert await run(worker) == ExitCode.OK

    assert coord.calls()[-4:] == ["Finish", "Upload result", "put result", "unregister"]
    assert coord.time_of("unregister") == 1.0


async def test_drain_lets_the_running_task_commit(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task())
    child.run_time = 30.0

    assert await run(make_worker(drain_timeout=60.0), stop_at=5.0) == ExitCode.OK

    assert coord.calls()[-3:] == ["Finish", "Commit 0 None", "unregister"]
    assert coord.time_of("unregister") == 30.0


async def test_drain_timeout_stops_the_task(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    coord.tasks.append(coord.task())
    child.mode = "forever"

    assert await run(make_worker(drain_timeout=60.0), stop_at=5.0) == ExitCode.OK

    assert task_timeline(coord)[-1] == "R WorkerExited"
    assert coord.reports() == []
    assert coord.time_of("unregister") == 65.0


# =========================================================================================
# upload PUT non-2xx / Upload other status
# =========================================================================================


async def test_put_failing_until_the_upload_deadline(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any
) -> None:
    """The original stops the worker without Commit on the first non-2xx PUT; we ask for
    a fresh URL and try again until the upload deadline, then commit UploadResultTimeout."""
    coord.tasks.append(coord.task())
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    coord.script["put"] = [httpx.Response(500)] * 1000

    assert await run(make_worker(polling_interval=30.0)) == ExitCode.OK

    timeline = task_timeline(coord)
    start = timeline.index("Finish") + 1
    end = timeline.index("Commit 0 UploadResultTimeout")
    attempts = timeline[start:end]
    assert len(attempts) > 10
    assert attempts == ["Upload result", "put result"] * (len(attempts) // 2)
    assert timeline[end:] == [
        "Commit 0 UploadResultTimeout",
        "R UploadResultTimeout",
        "R TaskCommitted",
    ]
    assert coord.time_of("Commit 0 UploadResultTimeout") == pytest.approx(601.0)
    assert coord.cache_snapshots[-1] == []


async def test_upload_other_status_stops_without_commit(
    autojump_clock: Any, coord: Any, make_worker: Any, child: Any, tmp_path: Path
) -> None:
    """As in the original (Finish already sent, no Commit), with exit code 1."""
    coord.tasks.append(coord.task())
    child.files = {"MITO_RESULT_DIR/out.txt": "42"}
    coord.script["Upload"] = [coord.reply(400)]

    assert await run(make_worker()) == ExitCode.INTERNAL_ERROR

    assert task_timeline(coord)[-3:] == ["R UploadFinishedResult", "Finish", "Upload result"]
    assert coord.calls()[-1] == "unregister"
    assert not (tmp_path / "cache" / str(coord.worker_id)).exists()
