"""Stopping: through the coordinator (graceful, force), lifetime, kill -9, heartbeat timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ._mito import Mito, sleep_polls
from ._stack import HEARTBEAT_TIMEOUT, wait_until

pytestmark = pytest.mark.interop


def registered_workers(client: Any, group: str) -> set[str]:
    """UUIDs of the workers the coordinator knows in `group`."""
    from pynetmito import WorkersQueryReq

    answer = client.query_workers_by_filter(WorkersQueryReq(group_name=group))
    return {str(worker.worker_id) for worker in answer.workers}


def read_pid(path: Path) -> int:
    text = wait_until(
        lambda: path.exists() and path.read_text().strip(), timeout=30, what=f"{path}"
    )
    return int(text)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers signal 0; it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_graceful_stop(mito: Mito, impl: str) -> None:
    """The running task is committed, then the worker is removed and exits 0."""
    user, client = mito.new_user()
    # The owner may stop a worker when its group holds the Admin role on it.
    worker = mito.start_worker(impl, groups=[f"{user}:admin"])
    uuid = mito.submit(client, user, ["sh", "-c", 'sleep 3; echo done > "$MITO_RESULT_DIR/done"'])
    mito.wait_state(client, uuid, "Running")
    client.cancel_worker_by_uuid(worker.worker_id)  # op=graceful
    queued = mito.submit(client, user, ["true"])

    task = mito.wait_committed(client, uuid)
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
    assert str(task.info.reporter_uuid) == worker.worker_id
    assert mito.artifact(client, uuid, "result")["result/done"] == b"done\n"
    # The next fetch after the commit gets 401: the worker stops (the Rust one always exits 0).
    assert worker.proc.wait(15) == 0
    assert worker.worker_id not in registered_workers(client, user)
    assert mito.task(client, queued).info.state == "Ready"


def test_force_stop(mito: Mito, impl: str) -> None:
    """The task goes back to Ready at once; the worker kills it at its next call and exits."""
    from pynetmito import WorkerShutdownOp, WorkersShutdownByUuidsReq

    user, client = mito.new_user()
    worker = mito.start_worker(impl, groups=[f"{user}:admin"])
    pid_file = mito.tmp / "child.pid"
    uuid = mito.submit(
        client,
        user,
        ["sh", "-c", 'echo $$ > "$PID_FILE"; exec sleep 60'],
        envs={"PID_FILE": str(pid_file)},
    )
    pid = read_pid(pid_file)
    try:
        answer = client.shutdown_workers_by_uuids(
            WorkersShutdownByUuidsReq(uuids=[worker.worker_id], op=WorkerShutdownOp.FORCE)
        )
        assert answer.shutdown_count == 1
        assert mito.task(client, uuid).info.state == "Ready"
        # Its next heartbeat (every 2 s) gets 401.
        assert worker.proc.wait(15) == 0
        wait_until(lambda: process_gone(pid), timeout=5, what="the task's process to be killed")
    finally:
        kill_quietly(pid)
    assert mito.task(client, uuid).info.state == "Ready"


def test_lifetime(mito: Mito, impl: str) -> None:
    """`--lifetime`: ours stops (and unregisters) when it ends; the original does not."""
    user, client = mito.new_user()
    worker = mito.start_worker(impl, groups=[user], lifetime="3s")
    started = time.monotonic()
    if impl == "ours":
        # PROTOCOL §13.21: ours has a timer of its own and unregisters while its token is valid.
        assert worker.proc.wait(15) == 0
        assert worker.worker_id not in registered_workers(client, user)
        uuid = mito.submit(client, user, ["true"])
        sleep_polls(2)
        assert mito.task(client, uuid).info.state == "Ready"
    else:
        # The original only gets a token that expires; the coordinator accepts it for a
        # 60 s leeway more, so the worker keeps serving tasks past its lifetime.
        time.sleep(max(0.0, started + 5 - time.monotonic()))
        uuid = mito.submit(client, user, ["true"])
        task = mito.wait_committed(client, uuid, timeout=15)
        assert str(task.info.reporter_uuid) == worker.worker_id
        assert worker.proc.alive()


def test_kill_9_and_heartbeat_timeout(mito: Mito, impl: str) -> None:
    """A worker killed with SIGKILL: its task is Ready again after the heartbeat timeout."""
    user, client = mito.new_user()
    worker = mito.start_worker(impl, groups=[user])
    pid_file, marker = mito.tmp / "child.pid", mito.tmp / "first-run"
    script = (
        'if [ -e "$MARKER" ]; then echo again > "$MITO_RESULT_DIR/run"; exit 0; fi; '
        'touch "$MARKER"; echo $$ > "$PID_FILE"; exec sleep 60'
    )
    uuid = mito.submit(
        client, user, ["sh", "-c", script], envs={"PID_FILE": str(pid_file), "MARKER": str(marker)}
    )
    pid = read_pid(pid_file)
    worker.proc.signal(signal.SIGKILL)
    assert worker.proc.wait(5) == -signal.SIGKILL
    kill_quietly(pid)  # orphaned by the kill (ours runs it in a session of its own)
    killed_at = time.monotonic()
    assert mito.task(client, uuid).info.state == "Running"

    mito.wait_state(client, uuid, "Ready", timeout=HEARTBEAT_TIMEOUT + 15)
    assert time.monotonic() - killed_at > HEARTBEAT_TIMEOUT / 2
    assert worker.worker_id not in registered_workers(client, user)

    second = mito.start_worker(impl, groups=[user])
    task = mito.wait_committed(client, uuid)
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
    assert str(task.info.reporter_uuid) == second.worker_id
    assert mito.artifact(client, uuid, "result")["result/run"] == b"again\n"


@pytest.mark.parametrize(
    "impl",
    [
        "ours",
        pytest.param(
            "rust",
            marks=pytest.mark.xfail(
                strict=True,
                reason="PROTOCOL §13.13: without Redis the original ignores `watch`",
            ),
        ),
    ],
)
def test_watch_without_redis(mito: Mito, impl: str) -> None:
    """`watch` without Redis: ours polls `GET /workers/tasks/{uuid}` and waits."""
    user, client = mito.new_user()
    done = mito.tmp / "upstream-done"
    upstream = mito.submit(client, user, ["touch", str(done)], tags=["upstream"])
    mito.start_worker(impl, groups=[user])
    watcher = mito.submit(client, user, ["test", "-e", str(done)], watch=(upstream, "ExecFinished"))
    wait_until(
        lambda: mito.task(client, watcher).info.state != "Ready",
        timeout=30,
        what="the watching task to be fetched",
    )
    sleep_polls(2)
    assert mito.task(client, watcher).info.result is None, "ran without waiting"
    mito.start_worker(impl, groups=[user], tags=["upstream"])
    task = mito.wait_committed(client, watcher, timeout=30)
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
