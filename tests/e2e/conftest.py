"""Fixtures for end-to-end tests: LocalCoordinator in the test's own Trio loop, and real
`mito worker` processes that are always gone (with every task they started) when a test ends.

Everything runs on the real clock. Tests synchronise on coordinator events, on a line in the
worker's log, or on a `Beacon` a task writes to; /proc is polled only to see a pid go away.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path

import pytest
import trio

from mito_trio.testing import LocalCoordinator

#: The console script of this venv, never the Rust `mito` that may be on PATH.
MITO = Path(sys.executable).parent / "mito"
ADMIN = "mitosis_admin"
ADMIN_PASSWORD = "mitosis_admin"
#: Short intervals so that every step of a test takes a fraction of a second.
FAST = ("--polling-interval", "100ms", "--heartbeat-interval", "1s")
#: Longest wait for a worker to exit once it has been asked to.
EXIT_BOUND = 15.0
#: Longest wait for teardown to get rid of a leftover process.
KILL_BOUND = 10.0


# --- /proc ------------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an unreaped zombie is dead for us)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
    return stats


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    return [
        pid
        for pid, fields in _all_stats().items()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X")
    ]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, found through the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for child, fields in _all_stats().items():
        children.setdefault(int(fields[1]), []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/<pid>/status, in KiB (VmRSS, VmHWM, ...)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


async def wait_until(predicate: Callable[[], bool], bound: float, what: str) -> None:
    """Poll `predicate` (for /proc state only) until it holds; fail after `bound` seconds."""
    # /proc has no event to wait on: this is the one place that polls.
    with trio.move_on_after(bound):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: still not the case after {bound}s")


async def wait_pid_gone(pid: int, bound: float = 5.0) -> None:
    """Wait until `pid` is dead (or a zombie)."""
    await wait_until(lambda: not pid_alive(pid), bound, f"pid {pid} alive")


async def wait_group_gone(pgid: int, bound: float = 5.0) -> None:
    """Wait until no live process is left in process group `pgid`."""
    await wait_until(lambda: not group_members(pgid), bound, f"process group {pgid} alive")


# --- archives ---------------------------------------------------------------------------------


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    """The members of a .tar.gz, by name."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def tar_files(data: bytes) -> dict[str, bytes]:
    """The regular files of a .tar.gz and their content, by name."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    return files


# --- a line from a task, without polling --------------------------------------------------------


class Beacon:
    """A FIFO a task writes lines to (`echo $$ > "$BEACON"`): the test awaits them.

    Opened read-write, so a writer never blocks on open and the test never sees EOF.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path, 0o600)
        self._stream = trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        self._buffer = b""

    async def receive_line(self, bound: float = 10.0) -> str:
        """The next line a task wrote; fails after `bound` seconds."""
        with trio.fail_after(bound):
            while b"\n" not in self._buffer:
                self._buffer += await self._stream.receive_some()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def aclose(self) -> None:
        """Close the FIFO."""
        await self._stream.aclose()


@pytest.fixture
async def beacon(tmp_path: Path) -> AsyncIterator[Beacon]:
    """A Beacon at `<tmp>/beacon`."""
    fifo = Beacon(tmp_path / "beacon")
    yield fifo
    await fifo.aclose()


# --- the coordinator and the workers ------------------------------------------------------------


@pytest.fixture
async def coordinator(nursery: trio.Nursery) -> LocalCoordinator:
    """A LocalCoordinator (user mitosis_admin) served in the test's nursery."""
    coordinator = LocalCoordinator()
    await nursery.start(coordinator.serve)
    return coordinator


def _start_time(pid: int) -> str | None:
    fields = proc_stat(pid)
    return None if fields is None else fields[19]


def _identity(pid: int) -> tuple[str | None, int | None]:
    """Start time (to recognise the pid later) and process group of a live process."""
    fields = proc_stat(pid)
    return (None, None) if fields is None else (fields[19], int(fields[2]))


class WorkerProcess:
    """One `mito worker` process; its stderr (the log) is collected line by line."""

    def __init__(self, proc: trio.Process, name: str, log_file: Path) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self.log_file = log_file
        self._changed = trio.Event()
        self.stderr_closed = trio.Event()

    @property
    def pid(self) -> int:
        """The worker's pid."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        """Everything the worker logged so far."""
        return "\n".join(self.lines)

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the worker process (only the worker, not its tasks)."""
        self.proc.send_signal(sig)

    async def wait(self, bound: float = EXIT_BOUND) -> int:
        """Wait for the exit code and the end of the log; fails after `bound` seconds."""
        with trio.fail_after(bound):
            code = await self.proc.wait()
            await self.stderr_closed.wait()
        return code

    async def wait_for_line(self, text: str, bound: float = 10.0) -> str:
        """The first log line containing `text`; fails after `bound` seconds."""
        with trio.fail_after(bound):
            while True:
                changed = self._changed
                for line in self.lines:
                    if text in line:
                        return line
                if self.stderr_closed.is_set():
                    raise AssertionError(f"{self.name} exited without logging {text!r}")
                await changed.wait()

    async def pump_stderr(self) -> None:
        """Collect the log until EOF; runs in the fixture's nursery."""
        assert self.proc.stderr is not None
        pending = b""
        try:
            async with self.proc.stderr, await trio.open_file(self.log_file, "wb") as log:
                while chunk := await self.proc.stderr.receive_some():
                    await log.write(chunk)
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    self._add(complete)
                self._add([pending] if pending else [])
        finally:
            self.stderr_closed.set()
            self._notify()

    def _add(self, raw_lines: Iterable[bytes]) -> None:
        for raw in raw_lines:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            # Shown by pytest when the test fails.
            print(f"[{self.name}] {line}", file=sys.stderr)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class WorkerLauncher:
    """Starts real `mito worker` processes; the fixture kills whatever is left at the end."""

    def __init__(
        self, nursery: trio.Nursery, tmp_path: Path, coordinator: LocalCoordinator
    ) -> None:
        self._nursery = nursery
        self._tmp = tmp_path
        self._coord = coordinator
        self.processes: list[WorkerProcess] = []
        #: Task pids a test learnt of, with start time and process group: killed if left over.
        self._tracked: dict[int, tuple[str | None, int | None]] = {}
        self.home = tmp_path / "home"
        self.credential_path = tmp_path / "credentials"
        for sub in ("config", "cache"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)

    def base_env(self) -> dict[str, str]:
        """The environment every worker starts from: no MITO_* or proxy settings of ours,
        and a home, config and cache directory inside the test's tmp_path."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.upper().startswith("MITO_") and not name.lower().endswith("_proxy")
        }
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / "config"),
            XDG_CACHE_HOME=str(self.home / "cache"),
            MITO_LOG_LEVEL="INFO",
        )
        return env

    def default_args(self, *, login: bool = True) -> list[str]:
        """`-c <coordinator> --polling-interval 100ms --heartbeat-interval 1s
        --credential-path <tmp>/credentials [-u mitosis_admin -p mitosis_admin]`."""
        args = ["-c", self._coord.url, *FAST, "--credential-path", str(self.credential_path)]
        if login:
            args += ["-u", ADMIN, "-p", ADMIN_PASSWORD]
        return args

    async def start(
        self,
        *extra: str,
        defaults: bool = True,
        login: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> WorkerProcess:
        """Start `mito worker [default args] EXTRA` (cwd: tmp_path) and collect its log."""
        args = [*(self.default_args(login=login) if defaults else []), *extra]
        name = f"worker{len(self.processes) + 1}"
        full_env = self.base_env()
        full_env.update(env or {})
        # stdout (only a login prompt would go there) to a file, stderr (the log) to us.
        stdout = os.open(self._tmp / f"{name}.stdout", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            proc = await trio.lowlevel.open_process(
                [str(MITO), "worker", *args],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd or self._tmp,
            )
        finally:
            os.close(stdout)
        worker = WorkerProcess(proc, name, self._tmp / f"{name}.log")
        self.processes.append(worker)
        self._nursery.start_soon(worker.pump_stderr)
        return worker

    def track(self, pid: int) -> None:
        """Remember a task's pid: killed (with its group) at teardown if still alive."""
        self._tracked[pid] = _identity(pid)

    async def cleanup(self) -> None:
        """SIGKILL every worker still running with all its descendants, and tracked pids."""
        for worker in self.processes:
            if worker.returncode is None:
                leftovers = descendants(worker.pid)
                for pid in leftovers:
                    self._tracked.setdefault(pid, _identity(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
            with trio.move_on_after(KILL_BOUND):
                await worker.proc.wait()
                await worker.stderr_closed.wait()
        for pid, (started, pgid) in self._tracked.items():
            # What is left of the task's process group, leader or not (never our own group).
            victims = [] if pgid in (None, os.getpgrp()) else group_members(pgid)
            if pid_alive(pid) and started is not None and _start_time(pid) == started:
                victims.append(pid)
            for victim in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(victim, signal.SIGKILL)


@pytest.fixture
async def workers(
    nursery: trio.Nursery, tmp_path: Path, coordinator: LocalCoordinator
) -> AsyncIterator[WorkerLauncher]:
    """Start workers with `await workers.start(...)`; none survives the test."""
    launcher = WorkerLauncher(nursery, tmp_path, coordinator)
    try:
        yield launcher
    finally:
        with trio.CancelScope(shield=True):
            await launcher.cleanup()
