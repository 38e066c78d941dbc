"""The real `mito worker` process against LocalCoordinator: tasks, signals, faults, config.

Each test starts the console script of this venv as a subprocess (see conftest.py) and drives
it through the coordinator only, the way a deployment would.
"""

from __future__ import annotations

import gzip
import io
import json
import signal
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest
import trio

from mito_trio import wire
from mito_trio.testing import LocalCoordinator, TaskRecord, WorkerRecord
from mito_trio.wire import ArtifactContentType, TaskResultMessage, TaskState

from .conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST,
    Beacon,
    WorkerLauncher,
    WorkerProcess,
    memory_kib,
    tar_files,
    tar_members,
    wait_group_gone,
    wait_pid_gone,
)

pytestmark = pytest.mark.e2e

RESULT = ArtifactContentType.RESULT
EXEC_LOG = ArtifactContentType.EXEC_LOG
STD_LOG = ArtifactContentType.STD_LOG
#: Longest wait for a short task to be committed.
COMMIT_BOUND = 20.0


def op_names(record: TaskRecord) -> list[str]:
    """The task's reports in arrival order: Finish, Cancel, Upload, Submit, Commit."""
    return [
        op.value if isinstance(op, wire.SimpleOp) else type(op).__name__ for op in record.reports
    ]


def uploads(record: TaskRecord) -> list[wire.Upload]:
    """The Upload reports of a task, in order."""
    return [op for op in record.reports if isinstance(op, wire.Upload)]


async def committed(
    coordinator: LocalCoordinator, uuid: UUID, bound: float = COMMIT_BOUND
) -> TaskRecord:
    """The task's record once committed; fails after `bound` seconds."""
    with trio.fail_after(bound):
        return await coordinator.wait_committed(uuid)


async def stop(worker: WorkerProcess) -> None:
    """SIGTERM the worker and check that it exits 0 with a clean log."""
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0, worker.stderr
    assert "Traceback" not in worker.stderr


async def started(
    coordinator: LocalCoordinator, workers: WorkerLauncher, *extra: str
) -> WorkerProcess:
    """A worker with the default arguments, once it is registered."""
    worker = await workers.start(*extra)
    with trio.fail_after(10):
        await coordinator.wait_for_worker()
    return worker


# --- 1. happy path ----------------------------------------------------------------------------

HAPPY_SCRIPT = """\
echo "hello stdout"
echo "hello stderr" >&2
echo 42 > "$MITO_RESULT_DIR/answer.txt"
mkdir "$MITO_RESULT_DIR/data"
seq 1 100 > "$MITO_RESULT_DIR/data/numbers.txt"
echo "step 1 done" > "$MITO_EXEC_DIR/run.log"
"""


async def test_happy_path_uploads_three_archives_and_commits(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    uuid = coordinator.submit_task(["sh", "-c", HAPPY_SCRIPT], terminal_output=True, timeout="1m")
    record = await committed(coordinator, uuid)

    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    assert record.state is TaskState.Finished
    assert op_names(record) == ["Finish", "Upload", "Upload", "Upload", "Commit"]
    assert [op.content_type for op in uploads(record)] == [RESULT, EXEC_LOG, STD_LOG]
    for op in uploads(record):
        assert op.content_length == len(coordinator.artifact(uuid, op.content_type))

    result = coordinator.artifact(uuid, RESULT)
    assert set(tar_members(result)) == {
        "result",
        "result/answer.txt",
        "result/data",
        "result/data/numbers.txt",
    }
    assert tar_members(result)["result/data"].isdir()
    files = tar_files(result)
    assert files["result/answer.txt"] == b"42\n"
    assert files["result/data/numbers.txt"] == "".join(f"{n}\n" for n in range(1, 101)).encode()
    assert tar_files(coordinator.artifact(uuid, EXEC_LOG)) == {"exec-log/run.log": b"step 1 done\n"}
    assert tar_files(coordinator.artifact(uuid, STD_LOG)) == {
        "std-log/stdout.log": b"hello stdout\n",
        "std-log/stderr.log": b"hello stderr\n",
    }

    # The exit code is reported as a raw wait status; nothing to upload gives no Upload.
    failing = coordinator.submit_task(["sh", "-c", "exit 3"], timeout="1m")
    record = await committed(coordinator, failing)
    assert record.result == wire.TaskResultSpec(exit_status=768, msg=None)
    assert op_names(record) == ["Finish", "Commit"]

    assert all(w.fetch_while_holding == 0 for w in coordinator.workers.values())
    await stop(worker)


# --- 2. exec timeout --------------------------------------------------------------------------

TIMEOUT_SCRIPT = """\
echo before-timeout
sleep 300 &
echo $! > "$MITO_RESULT_DIR/gc.pid"
sleep 300
"""


async def test_exec_timeout_kills_the_process_group_and_keeps_output(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    uuid = coordinator.submit_task(["sh", "-c", TIMEOUT_SCRIPT], terminal_output=True, timeout="2s")
    record = await committed(coordinator, uuid)

    assert record.result is not None
    assert record.result.msg is TaskResultMessage.ExecTimeout
    assert record.result.exit_status in (int(signal.SIGTERM), int(signal.SIGKILL))
    assert record.state is TaskState.Cancelled
    names = op_names(record)
    assert names[0] == "Cancel" and names[-1] == "Commit" and "Finish" not in names

    grandchild = int(tar_files(coordinator.artifact(uuid, RESULT))["result/gc.pid"])
    workers.track(grandchild)
    await wait_pid_gone(grandchild)
    # Better than the original: what the task printed before the timeout is kept.
    std = tar_files(coordinator.artifact(uuid, STD_LOG))
    assert std["std-log/stdout.log"] == b"before-timeout\n"
    assert worker.returncode is None
    await stop(worker)


# --- 3. stop signals --------------------------------------------------------------------------

SLEEPER = 'sleep 300 & echo $$ > "$BEACON"; sleep 300'


async def _running_task(
    coordinator: LocalCoordinator, workers: WorkerLauncher, beacon: Beacon, script: str
) -> tuple[UUID, int]:
    uuid = coordinator.submit_task(
        ["sh", "-c", script], envs={"BEACON": str(beacon.path)}, timeout="10m"
    )
    pid = int(await beacon.receive_line())
    workers.track(pid)
    return uuid, pid


async def test_sigterm_stops_the_task_unregisters_and_exits_0(
    coordinator: LocalCoordinator, workers: WorkerLauncher, beacon: Beacon
) -> None:
    worker = await started(coordinator, workers)
    uuid, pid = await _running_task(coordinator, workers, beacon, SLEEPER)

    stopped_at = trio.current_time()
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait(15) == 0, worker.stderr
    assert trio.current_time() - stopped_at < 15
    await wait_group_gone(pid, bound=2)

    record = coordinator.task(uuid)
    assert "Commit" not in op_names(record) and not record.archived
    assert [r.status for r in coordinator.calls("unregister")] == [200]
    assert record.state is TaskState.Ready and record.assigned_worker is None
    assert "Traceback" not in worker.stderr


async def test_sigterm_with_drain_timeout_lets_the_task_finish(
    coordinator: LocalCoordinator, workers: WorkerLauncher, beacon: Beacon
) -> None:
    worker = await started(coordinator, workers, "--drain-timeout", "30s")
    script = 'echo $$ > "$BEACON"; sleep 2; echo done > "$MITO_RESULT_DIR/done.txt"'
    uuid, _ = await _running_task(coordinator, workers, beacon, script)
    waiting = coordinator.submit_task(["true"])

    worker.send_signal(signal.SIGTERM)
    await worker.wait_for_line("stopping (received SIGTERM)")
    assert await worker.wait(20) == 0, worker.stderr

    record = coordinator.task(uuid)
    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    assert tar_files(coordinator.artifact(uuid, RESULT)) == {"result/done.txt": b"done\n"}
    endpoints = [(r.endpoint, r.op) for r in coordinator.requests]
    commit = endpoints.index(("report", "Commit"))
    unregister = endpoints.index(("unregister", None))
    assert commit < unregister
    # No new task after the stop signal: the queued one is still waiting.
    assert ("fetch", None) not in endpoints[commit:]
    assert (
        coordinator.task(waiting).state is TaskState.Ready and coordinator.task(waiting).runs == 0
    )
    assert "Traceback" not in worker.stderr


async def test_second_sigterm_stops_at_once(
    coordinator: LocalCoordinator, workers: WorkerLauncher, beacon: Beacon
) -> None:
    worker = await started(coordinator, workers, "--drain-timeout", "30s")
    uuid, pid = await _running_task(coordinator, workers, beacon, SLEEPER)

    worker.send_signal(signal.SIGTERM)
    await worker.wait_for_line("stopping (received SIGTERM)")
    second_at = trio.current_time()
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait(10) == 0, worker.stderr
    assert trio.current_time() - second_at < 5, "the second signal did not cut the drain short"
    await wait_group_gone(pid, bound=2)

    record = coordinator.task(uuid)
    assert not record.archived and record.state is TaskState.Ready
    assert [r.status for r in coordinator.calls("unregister")] == [200]
    assert "Traceback" not in worker.stderr


# --- 4. memory with a large stdout --------------------------------------------------------------

BIG = 200_000_000
RSS_LIMIT_KIB = 150 * 1024


def _count_stdout(data: bytes) -> tuple[int, bool, int]:
    """Size of stdout.log, whether it is all "a", and the size of stderr.log, streaming."""
    size, only_a, err_size = 0, True, -1
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            if member.name == "std-log/stderr.log":
                err_size = len(extracted.read())
                continue
            assert member.name == "std-log/stdout.log"
            while chunk := extracted.read(1 << 20):
                size += len(chunk)
                only_a = only_a and chunk.count(b"a") == len(chunk)
    return size, only_a, err_size


async def test_200mb_stdout_streams_to_disk_with_flat_memory(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    idle = memory_kib(worker.pid)
    peak_sampled = idle["VmRSS"]

    async def sample(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal peak_sampled
        task_status.started()
        while True:
            peak_sampled = max(peak_sampled, memory_kib(worker.pid)["VmRSS"])
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        await nursery.start(sample)
        uuid = coordinator.submit_task(
            ["sh", "-c", f"head -c {BIG} /dev/zero | tr '\\0' a"],
            terminal_output=True,
            timeout="2m",
        )
        record = await committed(coordinator, uuid, bound=60)
        hwm = memory_kib(worker.pid)["VmHWM"]
        nursery.cancel_scope.cancel()

    print(
        f"\nworker RSS: idle {idle['VmRSS'] / 1024:.1f} MiB, peak sampled "
        f"{peak_sampled / 1024:.1f} MiB, VmHWM {hwm / 1024:.1f} MiB (200 MB stdout task)"
    )
    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    assert hwm < RSS_LIMIT_KIB, f"worker peak RSS {hwm} KiB"
    assert _count_stdout(coordinator.artifact(uuid, STD_LOG)) == (BIG, True, 0)
    await stop(worker)


# --- 5. symlinks are archived as links ----------------------------------------------------------

SYMLINK_SCRIPT = """\
ln -s "$SECRET" "$MITO_RESULT_DIR/stolen"
ln -s / "$MITO_RESULT_DIR/root"
mkfifo "$MITO_RESULT_DIR/pipe"
echo ok > "$MITO_RESULT_DIR/plain.txt"
"""


async def test_symlink_to_a_secret_is_archived_as_a_link(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    secret_path = workers.credential_path
    token = secret_path.read_text().strip().split(":", 1)[1]
    assert len(token) > 16
    uuid = coordinator.submit_task(
        ["sh", "-c", SYMLINK_SCRIPT], envs={"SECRET": str(secret_path)}, timeout="1m"
    )
    record = await committed(coordinator, uuid)
    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)

    data = coordinator.artifact(uuid, RESULT)
    members = tar_members(data)
    # The FIFO is skipped (never opened), the links are stored as links and not followed.
    assert set(members) == {"result", "result/plain.txt", "result/root", "result/stolen"}
    assert members["result/stolen"].issym()
    assert members["result/stolen"].linkname == str(secret_path)
    assert members["result/root"].issym() and members["result/root"].linkname == "/"
    raw = gzip.decompress(data)
    assert token.encode() not in raw
    assert worker.returncode is None
    await stop(worker)


# --- 6. transient coordinator and storage errors ------------------------------------------------


async def test_transient_errors_are_retried(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    fetch_fault = coordinator.inject("fetch", status=503, times=3)
    put_fault = coordinator.inject("store_put", status=500, times=2)
    worker = await started(coordinator, workers)
    uuid = coordinator.submit_task(["sh", "-c", HAPPY_SCRIPT], terminal_output=True, timeout="1m")
    record = await committed(coordinator, uuid)

    assert fetch_fault.hits == 3 and put_fault.hits == 2
    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    # Each refused PUT asked for a fresh URL: 3 artifacts, 2 of them twice.
    assert len(uploads(record)) == 5
    assert {op.content_type for op in uploads(record)} == {RESULT, EXEC_LOG, STD_LOG}
    assert tar_files(coordinator.artifact(uuid, RESULT))["result/answer.txt"] == b"42\n"
    assert tar_files(coordinator.artifact(uuid, EXEC_LOG)) == {"exec-log/run.log": b"step 1 done\n"}
    assert tar_files(coordinator.artifact(uuid, STD_LOG))["std-log/stdout.log"] == b"hello stdout\n"
    assert worker.returncode is None
    await stop(worker)


# --- 7. MITO_NEW_TASK ---------------------------------------------------------------------------

DOWNSTREAM = {
    "group_name": ADMIN,
    "tags": [],
    "labels": ["child"],
    "timeout": "1m",
    "priority": 0,
    "task_spec": {
        "args": ["sh", "-c", 'echo "$MITO_UPSTREAM_TASK_UUID" > "$MITO_RESULT_DIR/upstream.txt"'],
        "terminal_output": False,
    },
}


async def test_new_task_is_submitted_and_runs_after_the_commit(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    script = f"cat > \"$MITO_NEW_TASK\" <<'END'\n{json.dumps(DOWNSTREAM)}\nEND\n"
    upstream = coordinator.submit_task(["sh", "-c", script], timeout="1m")

    up_record = coordinator.task(upstream)
    with trio.fail_after(COMMIT_BOUND):
        downstream = await coordinator.wait_for(lambda: up_record.downstream)
    # Submitted before the Commit: it waits (Pending) until its upstream is committed.
    assert not up_record.archived
    assert coordinator.task(downstream).state is TaskState.Pending
    assert coordinator.task(downstream).runs == 0

    up_record = await committed(coordinator, upstream)
    assert up_record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    assert op_names(up_record) == ["Finish", "Submit", "Commit"]
    down_record = await committed(coordinator, downstream)
    assert down_record.result == wire.TaskResultSpec(exit_status=0, msg=None)
    assert down_record.upstream == upstream and down_record.labels == {"child"}
    files = tar_files(coordinator.artifact(downstream, RESULT))
    assert files == {"result/upstream.txt": f"{upstream}\n".encode()}
    await stop(worker)


async def test_malformed_new_task_commits_submit_new_task_failed(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await started(coordinator, workers)
    script = 'printf \'{"group_name": "mitosis_admin", \' > "$MITO_NEW_TASK"'
    uuid = coordinator.submit_task(["sh", "-c", script], timeout="1m")
    record = await committed(coordinator, uuid)

    assert record.result == wire.TaskResultSpec(
        exit_status=0, msg=TaskResultMessage.SubmitNewTaskFailed
    )
    assert record.downstream is None
    assert op_names(record) == ["Finish", "Commit"]
    assert len(coordinator.tasks) == 1
    assert worker.returncode is None
    await stop(worker)


# --- 8. configuration through the real process --------------------------------------------------


def has_label(label: str) -> Callable[[WorkerRecord], bool]:
    """A `wait_for_worker` predicate: the worker registered with `label`."""
    return lambda record: label in record.labels


async def test_config_precedence_flag_over_env_over_file(
    coordinator: LocalCoordinator, workers: WorkerLauncher, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "config.toml").write_text('[worker]\ntags = ["from-file"]\n')
    env = {"MITO_TAGS": "[from-env]"}
    # Concurrent logins must not rotate each other's user token away: --retain.
    common = ("--retain",)
    flag = await workers.start(*common, "-l", "flag", "-t", "from-flag", env=env, cwd=workdir)
    from_env = await workers.start(*common, "-l", "env", env=env, cwd=workdir)
    from_file = await workers.start(*common, "-l", "file", cwd=workdir)

    expected = {"flag": "from-flag", "env": "from-env", "file": "from-file"}
    with trio.fail_after(15):
        for label, tag in expected.items():
            record = await coordinator.wait_for_worker(has_label(label))
            assert record.tags == {tag}, label
    for worker in (flag, from_env, from_file):
        await stop(worker)


async def test_invalid_config_value_exits_2_with_one_line(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await workers.start(
        "-c",
        coordinator.url,
        "--credential-path",
        str(workers.credential_path),
        defaults=False,
        env={"MITO_POLLING_INTERVAL": "60"},
    )
    assert await worker.wait(10) == 2
    lines = [line for line in worker.lines if line.strip()]
    assert len(lines) == 1, lines
    assert "polling_interval" in lines[0]
    assert "environment variable MITO_POLLING_INTERVAL" in lines[0]
    assert "Traceback" not in worker.stderr
    assert coordinator.requests == []


# --- 9. the cached credential --------------------------------------------------------------------


async def test_credential_is_saved_0600_and_reused(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    first = await started(coordinator, workers)
    assert coordinator.users[ADMIN].login_count == 1
    path = workers.credential_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith(f"{ADMIN}:")
    await stop(first)
    assert coordinator.calls("auth") == []

    second = await workers.start()
    with trio.fail_after(10):
        await coordinator.wait_for_worker()
    assert coordinator.users[ADMIN].login_count == 1
    assert [r.status for r in coordinator.calls("auth")] == [200]
    assert len(coordinator.calls("login")) == 1
    await stop(second)


# --- 10. exit codes ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_coordinator_exits_4(workers: WorkerLauncher) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    worker = await workers.start(
        "-c", url, *FAST, "--credential-path", str(workers.credential_path), "-u", ADMIN,
        "-p", ADMIN_PASSWORD, defaults=False,
    )  # fmt: skip
    # The worker keeps retrying for its 15 s start-up window.
    assert await worker.wait(30) == 4
    assert "cannot reach the coordinator" in worker.stderr
    assert "Traceback" not in worker.stderr


async def test_wrong_password_exits_3(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await workers.start("-u", ADMIN, "-p", "wrong-password", login=False)
    assert await worker.wait(10) == 3
    assert "refused" in worker.stderr and "Traceback" not in worker.stderr
    assert coordinator.users[ADMIN].login_count == 0
    assert not coordinator.workers
    assert not workers.credential_path.exists()


async def test_force_stop_through_the_coordinator_exits_0(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await workers.start()
    with trio.fail_after(10):
        record = await coordinator.wait_for_worker()
    coordinator.stop_worker(record.uuid, force=True)
    assert await worker.wait(10) == 0, worker.stderr
    assert record.removed_reason == "force"
    assert "Traceback" not in worker.stderr


async def test_lifetime_end_stops_and_unregisters(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    worker = await workers.start("--lifetime", "3s")
    with trio.fail_after(10):
        record = await coordinator.wait_for_worker()
    registered_at = trio.current_time()
    assert await worker.wait(15) == 0, worker.stderr
    assert trio.current_time() - registered_at > 2
    assert record.removed_reason == "unregister"
    assert "Traceback" not in worker.stderr


# --- 11. the task's environment ----------------------------------------------------------------


async def test_worker_credentials_do_not_reach_the_task(
    coordinator: LocalCoordinator, workers: WorkerLauncher
) -> None:
    env = {"MITO_USER": ADMIN, "MITO_PASSWORD": ADMIN_PASSWORD}
    worker = await workers.start(login=False, env=env)
    uuid = coordinator.submit_task(
        ["sh", "-c", 'env > "$MITO_RESULT_DIR/env.txt"'], envs={"TASK_VAR": "1"}, timeout="1m"
    )
    record = await committed(coordinator, uuid)
    assert record.result == wire.TaskResultSpec(exit_status=0, msg=None)

    text = tar_files(coordinator.artifact(uuid, RESULT))["result/env.txt"].decode()
    names = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    assert "MITO_USER" not in names and "MITO_PASSWORD" not in names
    assert {name for name in names if name.startswith("MITO_")} == {
        "MITO_RESULT_DIR",
        "MITO_EXEC_DIR",
        "MITO_RESOURCE_DIR",
        "MITO_TASK_UUID",
        "MITO_NEW_TASK",
    }
    assert "TASK_VAR" in names
    assert ADMIN_PASSWORD not in text
    await stop(worker)
