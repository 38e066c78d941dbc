"""The task's child process, run for real (real clock: no autojump with subprocesses)."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
import trio

from mito_trio.process import (
    ChildOutcome,
    SpawnError,
    child_environment,
    raw_wait_status,
    run_child,
)
from mito_trio.stopping import HardStop

ENV = "/usr/bin/env"


def sh(script: str) -> list[str]:
    return [ENV, "sh", "-c", script]


async def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: Path | None = None,
    stderr: Path | None = None,
    deadline: float = math.inf,
    hard_stop: HardStop | None = None,
    on_timeout: Callable[[], Awaitable[None]] | None = None,
    grace: float = 10.0,
    cwd: Path | None = None,
) -> ChildOutcome:
    return await run_child(
        argv,
        env=dict(os.environ) if env is None else env,
        stdout=stdout,
        stderr=stderr,
        deadline=deadline,
        hard_stop=HardStop() if hard_stop is None else hard_stop,
        on_timeout=on_timeout,
        grace=grace,
        cwd=cwd,
    )


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll observable state until `predicate()` holds, failing after `seconds`."""
    with trio.fail_after(seconds):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


def is_dead(pid: int) -> bool:
    """Gone, or a zombie (an orphan may wait a while for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def has_pid(path: Path) -> bool:
    return path.exists() and path.read_text().strip().isdigit()


# --- pure functions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "raw"),
    [(0, 0), (1, 256), (127, 32512), (255, 65280), (-9, 9), (-15, 15), (-6, 6)],
)
def test_raw_wait_status(returncode: int, raw: int) -> None:
    assert raw_wait_status(returncode) == raw


def test_child_environment_strips_worker_settings() -> None:
    worker = {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "MITO_PASSWORD": "hunter2",
        "MITO_USER": "alice",
        "mito_coordinator_addr": "http://c",
        "Mito_Token": "t",
        "MITOSIS": "kept: no underscore after MITO",
    }
    tasks = {"MITO_CUSTOM": "from task", "HOME": "/tmp/task", "MITO_RESULT_DIR": "/evil"}
    injected = {"MITO_RESULT_DIR": "/cache/result", "MITO_TASK_UUID": "u"}

    env = child_environment(worker, tasks, injected)

    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/tmp/task",
        "MITOSIS": "kept: no underscore after MITO",
        "MITO_CUSTOM": "from task",
        "MITO_RESULT_DIR": "/cache/result",
        "MITO_TASK_UUID": "u",
    }
    assert worker["MITO_PASSWORD"] == "hunter2"  # input left alone


# --- exit status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "raw"),
    [
        (sh("exit 0"), 0),
        (sh("exit 1"), 256),
        ([ENV, "no-such-program-for-mito-tests"], 32512),
        (sh("kill -KILL $$"), 9),
        (sh("kill -TERM $$"), 15),
    ],
)
async def test_exit_status(argv: list[str], raw: int) -> None:
    assert await run(argv) == ChildOutcome(raw_status=raw, timed_out=False)


def core_pattern() -> str:
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip()


async def test_core_dump_flag(tmp_path: Path) -> None:
    pattern = core_pattern()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core dumps go elsewhere here (core_pattern {pattern!r})")
    outcome = await run(sh("ulimit -c unlimited; kill -SEGV $$"), cwd=tmp_path)
    assert outcome.raw_status == 11 | 0x80


async def test_on_timeout_not_called_before_deadline() -> None:
    calls = 0

    async def on_timeout() -> None:
        nonlocal calls
        calls += 1

    outcome = await run(sh("exit 3"), deadline=trio.current_time() + 60, on_timeout=on_timeout)
    assert outcome == ChildOutcome(raw_status=3 << 8, timed_out=False)
    assert calls == 0


# --- spawning ----------------------------------------------------------------------------


async def test_output_goes_to_files_and_stdin_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    err = tmp_path / "stderr"
    out.write_bytes(b"earlier\n")
    outcome = await run(sh("echo out; echo err >&2; cat; echo after-cat"), stdout=out, stderr=err)
    assert outcome.raw_status == 0
    assert out.read_bytes() == b"earlier\nout\nafter-cat\n"
    assert err.read_bytes() == b"err\n"


async def test_environment_and_working_directory(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    env = child_environment(
        {"PATH": os.environ["PATH"], "MITO_PASSWORD": "hunter2"}, {"GREETING": "hi"}, {}
    )
    await run(sh('echo "$GREETING|${MITO_PASSWORD-unset}"; pwd'), env=env, stdout=out, cwd=tmp_path)
    assert out.read_text().splitlines() == ["hi|unset", str(tmp_path)]


async def test_child_has_its_own_session(tmp_path: Path) -> None:
    out = tmp_path / "ids"
    code = "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"
    await run([ENV, sys.executable, "-c", code], stdout=out)
    pid, pgid, sid = map(int, out.read_text().split())
    assert pid == pgid == sid
    assert pgid != os.getpgrp()


async def test_spawn_failures(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="no-such-env"):
        await run([str(tmp_path / "no-such-env"), "true"])
    with pytest.raises(SpawnError, match="output"):
        await run(sh("true"), stdout=tmp_path / "missing-dir" / "out")
    with pytest.raises(SpawnError, match="empty"):
        await run([])


# --- process group -----------------------------------------------------------------------


async def test_leftover_grandchild_is_killed_after_normal_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    outcome = await run(sh(f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; exit 0"))
    assert outcome == ChildOutcome(raw_status=0, timed_out=False)
    grandchild = read_pid(pidfile)
    await wait_until(lambda: is_dead(grandchild))


async def test_timeout_kills_the_group_after_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    seen_alive_in_on_timeout: list[bool] = []

    async def on_timeout() -> None:
        await wait_until(lambda: has_pid(pidfile))  # the script got as far as `wait`
        seen_alive_in_on_timeout.append(not is_dead(read_pid(pidfile)))

    outcome = await run(
        sh(f"sleep 300 & echo $! > {pidfile}; wait"),
        deadline=trio.current_time() + 0.2,
        on_timeout=on_timeout,
    )

    assert outcome == ChildOutcome(raw_status=15, timed_out=True)
    assert seen_alive_in_on_timeout == [True]
    grandchild = read_pid(pidfile)
    await wait_until(lambda: is_dead(grandchild))


async def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    timeout_done_at = 0.0

    async def on_timeout() -> None:
        nonlocal timeout_done_at
        await wait_until(ready.exists)  # SIGTERM is ignored from here on
        timeout_done_at = trio.current_time()

    outcome = await run(
        sh(f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"),
        deadline=trio.current_time() + 0.1,
        on_timeout=on_timeout,
        grace=0.5,
    )
    took = trio.current_time() - timeout_done_at

    assert outcome == ChildOutcome(raw_status=9, timed_out=True)
    assert 0.5 <= took < 5


async def test_cancellation_terminates_group_and_reraises(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    shpid = tmp_path / "shpid"
    termed = tmp_path / "termed"
    script = (
        f"trap 'echo term > {termed}; exit 3' TERM; echo $$ > {shpid}; "
        f"sleep 300 & echo $! > {pidfile}; wait"
    )
    saw_cancelled = False
    returned = False

    async def child() -> None:
        nonlocal saw_cancelled, returned
        try:
            await run(sh(script), grace=30)
            returned = True
        except trio.Cancelled:
            saw_cancelled = True
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
        await wait_until(lambda: has_pid(pidfile))
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()

    assert saw_cancelled
    assert not returned
    assert trio.current_time() - cancelled_at < 10  # the child left on SIGTERM, well before 30 s
    assert termed.read_text() == "term\n"  # SIGTERM first, and the child got to clean up
    assert is_dead(read_pid(shpid))
    grandchild = read_pid(pidfile)
    await wait_until(lambda: is_dead(grandchild))


async def test_hard_stop_during_grace_kills_at_once(tmp_path: Path) -> None:
    shpid = tmp_path / "shpid"
    termed = tmp_path / "termed"
    # The trap keeps the shell alive through SIGTERM (each `sleep` child dies of it).
    script = f"trap 'echo term >> {termed}' TERM; echo $$ > {shpid}; while :; do sleep 0.05; done"
    hard_stop = HardStop()
    saw_cancelled = False
    child_scope = trio.CancelScope()

    async def child() -> None:
        nonlocal saw_cancelled
        with child_scope:
            try:
                await run(sh(script), grace=60, hard_stop=hard_stop)
            except trio.Cancelled:
                saw_cancelled = True
                raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
        await wait_until(lambda: has_pid(shpid))
        child_scope.cancel()
        await wait_until(termed.exists)  # SIGTERM delivered: we are inside the 60 s grace
        triggered_at = trio.current_time()
        hard_stop.trigger()

    assert saw_cancelled
    assert trio.current_time() - triggered_at < 5
    assert is_dead(read_pid(shpid))


async def test_hard_stop_already_triggered_kills_without_grace(tmp_path: Path) -> None:
    shpid = tmp_path / "shpid"
    hard_stop = HardStop()
    hard_stop.trigger()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run(
                    sh(f"trap '' TERM; echo $$ > {shpid}; while :; do sleep 0.05; done"),
                    grace=60,
                    hard_stop=hard_stop,
                )
            )
            await wait_until(lambda: has_pid(shpid))
            cancelled_at = trio.current_time()
            scope.cancel()
    assert scope.cancelled_caught
    assert trio.current_time() - cancelled_at < 5
    assert is_dead(read_pid(shpid))
