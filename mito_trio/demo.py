"""`mito demo`: a coordinator and a worker in one process, one sample task, offline.

Shows what a worker does: registration, the execution states of a task, the Commit, the
artifacts as uploaded, and the downstream task the sample submits through `MITO_NEW_TASK`.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from uuid import UUID

import trio

from .announce import RecordingAnnouncer
from .client import new_http_client
from .config import WorkerConfig
from .exitcodes import ExitCode
from .logs import setup_console_logging
from .testing import LocalCoordinator
from .wire import ArtifactContentType, TaskExecState
from .worker import Worker

DEMO_USER = "demo"

#: The sample task: a result file, stdout and stderr, an exec log, and a downstream task.
SAMPLE_SCRIPT = """\
echo "hello from task $MITO_TASK_UUID"
echo "this line goes to stderr" >&2
echo 42 > "$MITO_RESULT_DIR/answer.txt"
mkdir -p "$MITO_RESULT_DIR/data"
seq 1 1000 > "$MITO_RESULT_DIR/data/numbers.txt"
echo "step 1 done" > "$MITO_EXEC_DIR/run.log"
cat > "$MITO_NEW_TASK" <<'END'
{"group_name": "demo", "tags": [], "labels": ["demo"], "timeout": "1m", "priority": 0,
 "task_spec": {"args": ["sh", "-c", "echo downstream of $MITO_UPSTREAM_TASK_UUID"],
               "terminal_output": true}}
END
"""


class PrintingAnnouncer(RecordingAnnouncer):
    """Prints each execution state as the worker announces it."""

    async def announce(self, task: UUID, state: TaskExecState, ttl: int) -> None:
        """Record and print the announcement."""
        await super().announce(task, state, ttl)
        print(f"  [{str(task)[:8]}] {state.name}")


def _print_artifacts(coordinator: LocalCoordinator, uuid: UUID) -> None:
    for content_type in ArtifactContentType:
        try:
            data = coordinator.artifact(uuid, content_type)
        except KeyError:
            continue
        print(f"  {content_type.archive_name} ({len(data)} bytes):")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                kind = "dir " if member.isdir() else "file"
                print(f"    {kind} {member.name} ({member.size} bytes)")


def _stdout_of(data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        extracted = archive.extractfile("std-log/stdout.log")
        return "" if extracted is None else extracted.read().decode()


async def _run(workdir: Path) -> int:
    coordinator = LocalCoordinator(users={DEMO_USER: "demo-password"})
    announcer = PrintingAnnouncer()
    async with coordinator.running():
        print(f"coordinator: LocalCoordinator at {coordinator.url}")
        config = WorkerConfig(
            coordinator_addr=coordinator.url,
            polling_interval=0.2,
            heartbeat_interval=5.0,
            credential_path=workdir / "credentials",
            user=DEMO_USER,
            password="demo-password",
        )
        async with new_http_client(request_timeout=config.request_timeout) as http:
            worker = Worker(
                config,
                http=http,
                cache_base=workdir / "cache",
                announcer=announcer,
                interactive=False,
            )
            codes: list[ExitCode] = []

            async def run_worker() -> None:
                codes.append(await worker.run())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_worker)
                await worker.registered.wait()
                print(f"worker: registered as {worker.worker_id}")
                upstream = coordinator.submit_task(
                    ["sh", "-c", SAMPLE_SCRIPT], terminal_output=True, timeout="1m"
                )
                print(f"submitted task {upstream}")
                record = await coordinator.wait_committed(upstream)
                print(f"committed: {record.result}")
                _print_artifacts(coordinator, upstream)
                downstream = record.downstream
                if downstream is not None:
                    print(f"downstream task {downstream} became Ready at the commit")
                    down = await coordinator.wait_committed(downstream)
                    print(f"committed: {down.result}")
                    stdout = _stdout_of(
                        coordinator.artifact(downstream, ArtifactContentType.STD_LOG)
                    )
                    print(f"  its stdout: {stdout.strip()}")
                worker.request_stop("demo finished")
            print(f"worker stopped with exit code {int(codes[0])}")
    ok = record.result is not None and record.result.exit_status == 0
    return 0 if ok and downstream is not None and codes[0] is ExitCode.OK else 1


def run_demo() -> int:
    """Entry point of `mito demo`; returns the exit code."""
    setup_console_logging(default_level="WARNING")
    with tempfile.TemporaryDirectory(prefix="mito-demo-") as workdir:
        return trio.run(_run, Path(workdir))
