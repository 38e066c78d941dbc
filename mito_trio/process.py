"""The task's child process: started in a session of its own and stopped as a process group.

Unlike the original worker (PROTOCOL.md §13.5-§13.7), the child does not share the worker's
process group, gets SIGTERM and a grace period before SIGKILL, never outlives its task through
grandchildren left in its group, and does not inherit the worker's `MITO_*` settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from mito_trio.stopping import HardStop

logger = logging.getLogger(__name__)

#: Longest wait for the kernel to release a SIGKILLed child.
REAP_TIMEOUT = 5.0
#: Added to the grace period for the shielded stop on cancellation.
_STOP_MARGIN = 5.0
_CORE_DUMPED = 0x80


class SpawnError(Exception):
    """The child process could not be started."""


@attrs.frozen
class ChildOutcome:
    """How the child ended."""

    #: POSIX wait status of the direct child (PROTOCOL.md §6.5).
    raw_status: int
    #: Whether the exec deadline passed and the child was stopped for it.
    timed_out: bool


def raw_wait_status(returncode: int) -> int:
    """The raw POSIX wait status for a decoded return code (negative: killed by that signal)."""
    if returncode < 0:
        return -returncode
    return (returncode & 0xFF) << 8


def child_environment(
    worker_env: Mapping[str, str], task_envs: Mapping[str, str], injected: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: the worker's without its `MITO_*` settings, then the task's
    variables, then the injected `MITO_RESULT_DIR` and friends on top."""
    env = {name: value for name, value in worker_env.items() if not _is_worker_setting(name)}
    env.update(task_envs)
    env.update(injected)
    return env


def _is_worker_setting(name: str) -> bool:
    # Worker configuration (including MITO_USER / MITO_PASSWORD) is not the task's business.
    return name.upper().startswith("MITO_")


async def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdout: Path | None,
    stderr: Path | None,
    deadline: float,
    hard_stop: HardStop,
    on_timeout: Callable[[], Awaitable[None]] | None = None,
    on_spawn: Callable[[], None] | None = None,
    grace: float = 10.0,
    cwd: Path | None = None,
) -> ChildOutcome:
    """Run `argv` to completion or until `deadline` (Trio clock) and return how it ended.

    The child runs in a new session with stdin on /dev/null and stdout/stderr appended to the
    given files (None: /dev/null). At the deadline `on_timeout()` is awaited, then the process
    group gets SIGTERM and, `grace` seconds later, SIGKILL. If the caller is cancelled, the
    same SIGTERM/grace/SIGKILL sequence runs shielded (cut short by `hard_stop.trigger()`)
    before `Cancelled` propagates. Whatever is left of the group once the child has exited is
    SIGKILLed. Raises `SpawnError` if the child cannot be started; `on_spawn()` is called
    once it has been.
    """
    child = await _Child.spawn(argv, env=env, stdout=stdout, stderr=stderr, cwd=cwd)
    timed_out = False
    try:
        if on_spawn is not None:
            on_spawn()
        with trio.move_on_at(deadline) as waiting:
            await child.wait_exited()
        if waiting.cancelled_caught:
            timed_out = True
            logger.info("child %d passed its deadline; stopping it", child.pid)
            if on_timeout is not None:
                await on_timeout()
            await child.terminate(grace)
    except BaseException:
        with hard_stop.shielded(grace + _STOP_MARGIN):
            await child.terminate(grace)
        raise
    finally:
        raw_status = await child.finish()
    return ChildOutcome(raw_status=raw_status, timed_out=timed_out)


class _Child:
    """The spawned process, its process group (same id) and a pidfd to watch it by."""

    def __init__(self, proc: trio.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        # The pidfd tells us the child exited without reaping it: until it is reaped its
        # pid, and so its process group id, cannot be reused, which makes killpg safe.
        self._pidfd = _open_pidfd(proc.pid)
        self._exited = False
        self._term_sent_at: float | None = None

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdout: Path | None,
        stderr: Path | None,
        cwd: Path | None,
    ) -> _Child:
        if not argv:
            raise SpawnError("cannot start the task: empty command line")
        with contextlib.ExitStack() as files:
            out = _open_output(stdout, files)
            err = _open_output(stderr, files)
            try:
                proc = await trio.lowlevel.open_process(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from exc
        # open_process cannot be cancelled once the process exists, so it is always returned
        # here and stopped by the caller's cleanup.
        return cls(proc)

    async def wait_exited(self) -> None:
        """Until the child has exited (without reaping it when a pidfd is available)."""
        if self._exited:
            await trio.lowlevel.checkpoint()
            return
        if self._pidfd is None:
            await self._proc.wait()
        else:
            await trio.lowlevel.wait_readable(self._pidfd)
        self._exited = True

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group (once) and wait until `grace` seconds after that for the child."""
        if self._term_sent_at is None:
            self._term_sent_at = trio.current_time()
            self._signal_group(signal.SIGTERM)
        with trio.move_on_at(self._term_sent_at + grace) as waiting:
            await self.wait_exited()
        if waiting.cancelled_caught:
            logger.warning("child %d still running %.1f s after SIGTERM", self.pid, grace)

    async def finish(self) -> int:
        """SIGKILL what is left of the group, reap the child and return its raw wait status."""
        core_dumped = self._exited and self._core_dumped()
        self._signal_group(signal.SIGKILL)
        try:
            # Shielded: the child must be reaped even on the way out of a cancelled task.
            reap_by = trio.current_time() + REAP_TIMEOUT
            with trio.CancelScope(shield=True, deadline=reap_by) as reaping:
                returncode = await self._proc.wait()
        finally:
            self._close_pidfd()
        if reaping.cancelled_caught:
            # Stuck in the kernel (uninterruptible sleep); it dies of the SIGKILL eventually.
            logger.error("child %d not reaped %.0f s after SIGKILL", self.pid, REAP_TIMEOUT)
            return int(signal.SIGKILL)
        raw_status = raw_wait_status(returncode)
        if core_dumped and returncode < 0:
            raw_status |= _CORE_DUMPED
        return raw_status

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already
        except PermissionError as exc:
            logger.warning("cannot send %s to process group %d: %s", sig.name, self.pid, exc)

    def _core_dumped(self) -> bool:
        """Whether the exited, not yet reaped child dumped core (lost in the return code)."""
        if self._pidfd is None:
            return False
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is not None and info.si_code == os.CLD_DUMPED

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _open_pidfd(pid: int) -> int | None:
    if sys.platform != "linux":
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        # Old kernel or sandbox: fall back on waiting through the Process (which reaps).
        return None


def _open_output(path: Path | None, files: contextlib.ExitStack) -> int:
    """A descriptor appending to `path` (or /dev/null) for the child; closed with `files`."""
    target = os.devnull if path is None else path
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    if path is not None:
        flags |= os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        raise SpawnError(f"cannot open {target} for the task's output: {exc}") from exc
    files.callback(os.close, fd)
    return fd
