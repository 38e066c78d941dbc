"""The resource phase (PROTOCOL.md §3.6-§3.8, §6.2, §13 items 1, 11, 12, 15).

Most tests run a whole in-process `Worker` against `LocalCoordinator` over real HTTP, with
real child processes and the real clock; the rest drive `resource_destination` and
`ResourceFetcher` directly where a coordinator cannot produce the situation (pre-made
symlinks, a body that stalls half-way, a slow but steady body).

The respx-based rows of §6.10 in `test_outcomes.py` and `test_reactions.py` already pin the
exact call order; here the point is the same outcomes end to end, plus what only real
transfers show: large files, nested destinations, artifacts of earlier tasks, a clean
resource directory for every task.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from mito_trio import resources, task_runner, wire
from mito_trio.announce import RecordingAnnouncer
from mito_trio.cache import TaskCache
from mito_trio.client import CoordinatorClient, new_http_client
from mito_trio.config import WorkerConfig
from mito_trio.exitcodes import ExitCode
from mito_trio.resources import ResourceFetcher, UnsafePath, resource_destination
from mito_trio.testing import LocalCoordinator
from mito_trio.testing.object_store import ATTACHMENTS, StoredObject
from mito_trio.testing.records import TaskRecord
from mito_trio.wire import TaskExecState as S
from mito_trio.wire import TaskResultMessage as M
from mito_trio.worker import Worker

#: Upper bound on every wait in this file (real seconds); nothing here should come close.
PATIENCE = 15.0
GROUP = "mitosis_admin"
CANCEL = wire.SimpleOp.Cancel
FINISH = wire.SimpleOp.Finish


# =========================================================================================
# harness: LocalCoordinator + in-process Worker, real clock
# =========================================================================================


class Announcements(RecordingAnnouncer):
    """A RecordingAnnouncer that can be waited on."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    async def announce(self, task: UUID, state: S, ttl: int) -> None:
        """Record, then wake waiters."""
        await super().announce(task, state, ttl)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, task: UUID, state: S) -> None:
        """Return once `state` was announced for `task`."""
        while state not in self.states(task):
            await self._changed.wait()

    def ttls(self, task: UUID) -> dict[S, int]:
        """TTL of each state announced for `task`."""
        return {state: ttl for uuid, state, ttl in self.events if uuid == task}


@attrs.define
class Run:
    """A worker running against a LocalCoordinator."""

    coord: LocalCoordinator
    worker: Worker
    states: Announcements
    tmp: Path
    codes: list[ExitCode] = attrs.field(factory=list)
    ended: trio.Event = attrs.field(factory=trio.Event)

    async def committed(self, uuid: UUID) -> TaskRecord:
        """Wait for the task's Commit and its closing TaskCommitted announcement."""
        with trio.fail_after(PATIENCE):
            record = await self.coord.wait_committed(uuid)
            await self.states.wait_for(uuid, S.TaskCommitted)
        return record

    async def exit_code(self) -> ExitCode:
        """Wait for `Worker.run` to return."""
        with trio.fail_after(PATIENCE):
            await self.ended.wait()
        return self.codes[0]

    def result_files(self, uuid: UUID) -> dict[str, bytes]:
        """The files of a task's uploaded `result` artifact, by name inside `result/`."""
        data = self.coord.artifact(uuid, wire.ArtifactContentType.RESULT)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return {
                m.name.removeprefix("result/"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }


@asynccontextmanager
async def running_worker(tmp_path: Path) -> AsyncIterator[Run]:
    """Serve a LocalCoordinator, start a Worker on it, stop it when the block ends."""
    coord = LocalCoordinator()
    states = Announcements()
    async with coord.running(), new_http_client(request_timeout=10.0) as http:
        config = WorkerConfig(
            coordinator_addr=coord.url,
            user="mitosis_admin",
            password="mitosis_admin",
            credential_path=tmp_path / "cred",
            polling_interval=0.05,
            heartbeat_interval=5,
        )
        worker = Worker(
            config,
            http=http,
            cache_base=tmp_path / "cache",
            worker_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            announcer=states,
            interactive=False,
            startup_retry_window=5.0,
        )
        run = Run(coord, worker, states, tmp_path)

        async def main() -> None:
            run.codes.append(await worker.run())
            run.ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(main)
            try:
                with trio.fail_after(PATIENCE):
                    await worker.registered.wait()
                yield run
            finally:
                worker.request_stop("test finished")
                with trio.fail_after(PATIENCE):
                    await run.ended.wait()


def attachment(key: str, local_path: str) -> wire.RemoteResourceDownload:
    return wire.RemoteResourceDownload(wire.AttachmentRef(key), local_path)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


#: Writes `MITO_RESOURCE_DIR`'s existence and entries to `result/seen`.
LIST_RESOURCES = sh(
    'if [ -d "$MITO_RESOURCE_DIR" ]; then echo dir; fi > "$MITO_RESULT_DIR/seen"; '
    'ls -A "$MITO_RESOURCE_DIR" >> "$MITO_RESULT_DIR/seen" 2>/dev/null; true'
)


def entries(directory: Path) -> list[str]:
    """The names in `directory`, sorted."""
    return sorted(p.name for p in directory.iterdir())


def never_runs(marker: Path) -> list[str]:
    """A task that leaves `marker` behind if it ever runs."""
    return ["touch", str(marker)]


# =========================================================================================
# §6.2 outcome table
# =========================================================================================


@pytest.mark.parametrize(
    ("fault", "msg", "state"),
    [
        # A real 404 from the coordinator: the attachment does not exist.
        pytest.param(None, M.ResourceNotFound, S.FetchResourceNotFound, id="locate-404"),
        pytest.param(
            ("locate_attachment", 403),
            M.ResourceForbidden,
            S.FetchResourceForbidden,
            id="locate-403",
        ),
        # Download failures: the original announces FetchResourceForbidden without expiry
        # (§13.11, §13.14); ours expires after 60 s like every other early end.
        pytest.param(
            ("store_get", 403), M.ResourceForbidden, S.FetchResourceForbidden, id="download-403"
        ),
        pytest.param(
            ("store_get", 404), M.ResourceForbidden, S.FetchResourceForbidden, id="download-404"
        ),
    ],
)
async def test_resource_refusal_cancels_and_commits_then_the_next_task_runs(
    tmp_path: Path, fault: tuple[str, int] | None, msg: M, state: S
) -> None:
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        if fault is not None:
            coord.add_attachment(GROUP, "in.bin", b"payload")
            endpoint, status = fault
            injected = coord.inject(endpoint, status=status)
        uuid = coord.submit_task(never_runs(marker), resources=[attachment("in.bin", "in.bin")])

        task = await run.committed(uuid)

        assert task.reports == [CANCEL, wire.Commit(0, msg)]
        assert task.result == wire.TaskResultSpec(exit_status=0, msg=msg)
        assert run.states.states(uuid) == [S.FetchResource, state, S.TaskCommitted]
        assert run.states.ttls(uuid)[state] == 60
        assert run.states.ttls(uuid)[S.TaskCommitted] == 60
        assert not marker.exists()
        if fault is not None:
            assert injected.hits == 1
        # Not retried: one locate, and at most the one refused download.
        assert len(coord.calls("locate_attachment")) == 1
        assert len(coord.calls("store_get")) == (1 if fault and fault[0] == "store_get" else 0)

        # The worker carries on with the next task.
        after = coord.submit_task(["true"])
        assert (await run.committed(after)).reports[-1] == wire.Commit(0, None)
    assert run.codes == [ExitCode.OK]


@pytest.mark.parametrize("endpoint", ["locate_attachment", "store_get"])
async def test_resource_deadline_is_fetch_resource_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """A locate or download still hanging at the resource deadline (1800 s, shortened)."""
    monkeypatch.setattr(task_runner, "RESOURCE_DEADLINE", 0.5)
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", b"payload")
        coord.inject(endpoint, delay=60)
        uuid = coord.submit_task(never_runs(marker), resources=[attachment("in.bin", "in.bin")])

        task = await run.committed(uuid)

        assert task.reports == [CANCEL, wire.Commit(0, M.FetchResourceTimeout)]
        assert run.states.states(uuid) == [
            S.FetchResource,
            S.FetchResourceTimeout,
            S.TaskCommitted,
        ]
        assert run.states.ttls(uuid)[S.FetchResourceTimeout] == 60
        cancel = next(r for r in coord.calls("report") if r.op == "Cancel")
        fetched = coord.calls("fetch")[0].time
        assert 0.5 <= cancel.time - fetched < 5.0
        assert not marker.exists()
    assert run.codes == [ExitCode.OK]


async def test_locate_other_status_announces_fetch_resource_error_and_stops(
    tmp_path: Path,
) -> None:
    """400 on locate: FetchResourceError, no report, the worker stops with exit code 1."""
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", b"payload")
        coord.inject("locate_attachment", status=400)
        uuid = coord.submit_task(never_runs(marker), resources=[attachment("in.bin", "in.bin")])

        assert await run.exit_code() == ExitCode.INTERNAL_ERROR

        task = coord.task(uuid)
        assert task.reports == []
        assert not task.committed
        assert run.states.states(uuid) == [S.FetchResource, S.FetchResourceError]
        assert run.states.ttls(uuid)[S.FetchResourceError] == 60
        assert coord.calls("store_get") == []
        # It unregistered on the way out, so the coordinator hands the task out again.
        assert coord.calls("unregister")[-1].status == 200
        assert task.state is wire.TaskState.Ready
        assert not marker.exists()
        assert not (tmp_path / "cache" / str(run.worker.worker_id)).exists()


async def test_shutdown_during_resources_reports_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", b"payload")
        coord.inject("store_get", delay=60)
        uuid = coord.submit_task(never_runs(marker), resources=[attachment("in.bin", "in.bin")])
        with trio.fail_after(PATIENCE):
            await coord.wait_for(lambda: coord.calls("store_get"))

        run.worker.request_stop("test")
        with trio.fail_after(5):
            assert await run.exit_code() == ExitCode.OK

        task = coord.task(uuid)
        assert task.reports == []
        assert run.states.states(uuid) == [S.FetchResource]
        assert task.state is wire.TaskState.Ready
        assert not marker.exists()


# =========================================================================================
# §13.1: local_path traversal
# =========================================================================================


@pytest.mark.parametrize(
    "local_path",
    [
        # From <tmp>/cache/<worker>/resource, three levels up is <tmp>: outside the cache,
        # so the worker's own cache cleaning could not hide a write there.
        pytest.param("../../../escape", id="dotdot"),
        pytest.param("a/../../../../escape", id="dotdot-inside"),
        pytest.param("ABSOLUTE", id="absolute"),
    ],
)
async def test_traversal_is_refused_before_anything_is_written(
    tmp_path: Path, local_path: str
) -> None:
    """The original writes wherever the path points (§13.1). Ours refuses before locating:
    Cancel, Commit ResourceForbidden, and the task never runs."""
    if local_path == "ABSOLUTE":
        local_path = str(tmp_path / "escape")
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", b"payload")
        uuid = coord.submit_task(never_runs(marker), resources=[attachment("in.bin", local_path)])

        task = await run.committed(uuid)

        assert task.reports == [CANCEL, wire.Commit(0, M.ResourceForbidden)]
        assert run.states.states(uuid) == [
            S.FetchResource,
            S.FetchResourceForbidden,
            S.TaskCommitted,
        ]
        assert coord.calls("locate_attachment") == []
        assert coord.calls("store_get") == []
        assert not (tmp_path / "escape").exists()
        assert not marker.exists()
        assert entries(tmp_path) == ["cache", "cred"]


async def test_symlinked_directory_in_the_resource_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink inside `resource/` (planted here right after the cache reset at task
    start) is not followed: the original would write through it into `outside/`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    original_reset = TaskCache.reset

    def reset_then_plant(self: TaskCache) -> None:
        original_reset(self)
        (self.resource_dir / "link").symlink_to(outside, target_is_directory=True)

    monkeypatch.setattr(TaskCache, "reset", reset_then_plant)
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", b"payload")
        uuid = coord.submit_task(
            never_runs(marker), resources=[attachment("in.bin", "link/data.bin")]
        )

        task = await run.committed(uuid)

        assert task.reports == [CANCEL, wire.Commit(0, M.ResourceForbidden)]
        assert run.states.states(uuid) == [
            S.FetchResource,
            S.FetchResourceForbidden,
            S.TaskCommitted,
        ]
        assert coord.calls("store_get") == []
        assert entries(outside) == []
        assert not marker.exists()
    assert entries(outside) == []


def test_resource_destination_accepts_plain_relative_paths(tmp_path: Path) -> None:
    base = tmp_path / "resource"
    base.mkdir()
    assert resource_destination(base, "data.bin") == base / "data.bin"
    assert resource_destination(base, "a/b/data.bin") == base / "a" / "b" / "data.bin"
    assert resource_destination(base, "./a//b/./c.bin") == base / "a" / "b" / "c.bin"
    assert resource_destination(base, "dir/") == base / "dir"
    # Nothing is created by the check itself.
    assert entries(base) == []


@pytest.mark.parametrize(
    "local_path",
    ["", ".", "./", "..", "../x", "a/../b", "a/b/../../../x", "/etc/passwd", "//x", "a\x00b"],
)
def test_resource_destination_refuses_escapes(tmp_path: Path, local_path: str) -> None:
    base = tmp_path / "resource"
    base.mkdir()
    with pytest.raises(UnsafePath):
        resource_destination(base, local_path)


@pytest.mark.parametrize(
    ("link", "target", "local_path"),
    [
        pytest.param("d", "outside", "d/x.bin", id="directory"),
        pytest.param("a/d", "outside", "a/d/b/x.bin", id="nested-directory"),
        pytest.param("f", "outside/file", "f", id="final-file"),
        pytest.param("f", "outside/missing", "f", id="dangling"),
        pytest.param("d", "resource/real", "d/x.bin", id="pointing-inside"),
    ],
)
def test_resource_destination_refuses_symlinked_components(
    tmp_path: Path, link: str, target: str, local_path: str
) -> None:
    base = tmp_path / "resource"
    (base / "real").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file").write_text("secret")
    (base / link).parent.mkdir(parents=True, exist_ok=True)
    (base / link).symlink_to(tmp_path / target)
    with pytest.raises(UnsafePath, match="symlink"):
        resource_destination(base, local_path)
    assert (tmp_path / "outside" / "file").read_text() == "secret"
    assert entries(tmp_path / "outside") == ["file"]


# =========================================================================================
# real transfers
# =========================================================================================


async def test_large_attachment_lands_in_nested_dirs_intact(tmp_path: Path) -> None:
    """50 MB through the presigned URL; the task itself checks it with sha256sum."""
    data = os.urandom(50 * 1024 * 1024)
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "datasets/big.bin", data)
        uuid = coord.submit_task(
            sh(
                'cd "$MITO_RESOURCE_DIR" && sha256sum a/b/data.bin > "$MITO_RESULT_DIR/sum" '
                '&& find . | sort > "$MITO_RESULT_DIR/files"'
            ),
            resources=[attachment("datasets/big.bin", "a/b/data.bin")],
        )

        task = await run.committed(uuid)

        assert task.reports[0] == FINISH
        assert task.result == wire.TaskResultSpec(exit_status=0, msg=None)
        files = run.result_files(uuid)
        assert files["sum"].decode() == f"{hashlib.sha256(data).hexdigest()}  a/b/data.bin\n"
        # Exactly the file, in the nested directories, and no partial download left over.
        assert files["files"].decode().split() == [".", "./a", "./a/b", "./a/b/data.bin"]
        assert len(coord.calls("store_get")) == 1
        located = coord.calls("locate_attachment")[0]
        assert located.path == f"/workers/tasks/{uuid}/attachments/datasets/big.bin"


async def test_result_artifact_of_an_earlier_task_as_resource(tmp_path: Path) -> None:
    async with running_worker(tmp_path) as run:
        coord = run.coord
        first = coord.submit_task(sh('echo "from the first task" > "$MITO_RESULT_DIR/out.txt"'))
        await run.committed(first)
        archive = coord.artifact(first, wire.ArtifactContentType.RESULT)

        second = coord.submit_task(
            sh(
                'cd "$MITO_RESOURCE_DIR" && sha256sum prev/result.tar.gz > "$MITO_RESULT_DIR/sum" '
                '&& tar -xzf prev/result.tar.gz -O result/out.txt > "$MITO_RESULT_DIR/out.txt"'
            ),
            resources=[
                wire.RemoteResourceDownload(
                    wire.ArtifactRef(first, wire.ArtifactContentType.RESULT),
                    "prev/result.tar.gz",
                )
            ],
        )
        task = await run.committed(second)

        assert task.reports[0] == FINISH
        assert task.result == wire.TaskResultSpec(exit_status=0, msg=None)
        files = run.result_files(second)
        digest = hashlib.sha256(archive).hexdigest()
        assert files["sum"].decode() == f"{digest}  prev/result.tar.gz\n"
        assert files["out.txt"] == b"from the first task\n"
        # §3.6: the artifact's task in the path, not the running one.
        (located,) = coord.calls("locate_artifact")
        assert located.path == f"/workers/tasks/{first}/artifacts/result"


@pytest.mark.parametrize(
    ("endpoint", "fault", "locates", "downloads"),
    [
        pytest.param("store_get", {"status": 503}, 2, 2, id="download-503"),
        pytest.param("store_get", {"drop": True}, 2, 2, id="download-dropped"),
        pytest.param("locate_attachment", {"status": 500}, 2, 1, id="locate-500"),
        pytest.param("locate_attachment", {"drop": True}, 2, 1, id="locate-dropped"),
    ],
)
async def test_transient_failures_are_retried(
    tmp_path: Path, endpoint: str, fault: dict[str, Any], locates: int, downloads: int
) -> None:
    """The original commits ResourceForbidden for any download failure and shuts down on a
    locate 5xx (§13.10, §13.11); we retry, a failed download with a freshly located URL."""
    data = os.urandom(4096)
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "in.bin", data)
        injected = coord.inject(endpoint, **fault)
        uuid = coord.submit_task(
            sh('sha256sum < "$MITO_RESOURCE_DIR/in.bin" > "$MITO_RESULT_DIR/sum"'),
            resources=[attachment("in.bin", "in.bin")],
        )

        task = await run.committed(uuid)

        assert injected.hits == 1
        assert task.reports[0] == FINISH
        assert task.reports[-1] == wire.Commit(0, None)
        assert run.result_files(uuid)["sum"].decode().split()[0] == hashlib.sha256(data).hexdigest()
        assert len(coord.calls("locate_attachment")) == locates
        assert len(coord.calls("store_get")) == downloads
        states = run.states.states(uuid)
        assert S.FetchResourceError not in states
        assert S.FetchResourceForbidden not in states
    assert run.codes == [ExitCode.OK]


async def test_size_mismatch_is_retried_then_resource_forbidden(tmp_path: Path) -> None:
    """The store serves 5 bytes where the locate answer announced 10 (§3.8: the original does
    not check the size at all)."""
    marker = tmp_path / "ran"
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.store.put(ATTACHMENTS, f"{GROUP}/short.bin", StoredObject(10, "", b"12345"))
        uuid = coord.submit_task(
            never_runs(marker), resources=[attachment("short.bin", "short.bin")]
        )

        task = await run.committed(uuid)

        assert task.reports == [CANCEL, wire.Commit(0, M.ResourceForbidden)]
        assert run.states.states(uuid) == [
            S.FetchResource,
            S.FetchResourceForbidden,
            S.TaskCommitted,
        ]
        attempts = resources.SIZE_MISMATCH_ATTEMPTS
        assert len(coord.calls("locate_attachment")) == attempts
        assert len(coord.calls("store_get")) == attempts
        assert not marker.exists()


# =========================================================================================
# §13.15: a clean resource directory for every task
# =========================================================================================


@pytest.mark.parametrize("first_ends", ["committed", "early"])
async def test_resource_dir_is_emptied_between_tasks(tmp_path: Path, first_ends: str) -> None:
    """The original leaks the resources of a task that ended early into the next task, and
    after a normal cleanup `MITO_RESOURCE_DIR` does not exist (§13.15)."""
    async with running_worker(tmp_path) as run:
        coord = run.coord
        coord.add_attachment(GROUP, "keep.bin", b"first task only")
        wanted = [attachment("keep.bin", "keep.bin")]
        if first_ends == "early":
            wanted.append(attachment("missing.bin", "missing.bin"))  # 404 after keep.bin
        first = coord.submit_task(LIST_RESOURCES, resources=wanted)
        first_task = await run.committed(first)
        second = coord.submit_task(LIST_RESOURCES)
        second_task = await run.committed(second)

        if first_ends == "early":
            assert first_task.reports == [CANCEL, wire.Commit(0, M.ResourceNotFound)]
            assert len(coord.calls("store_get")) == 1  # keep.bin was downloaded
        else:
            assert first_task.reports[-1] == wire.Commit(0, None)
            assert run.result_files(first)["seen"] == b"dir\nkeep.bin\n"
        assert second_task.reports[-1] == wire.Commit(0, None)
        assert run.result_files(second)["seen"] == b"dir\n"


# =========================================================================================
# ResourceFetcher on its own: stalls and sizes that a real server cannot easily produce
# =========================================================================================

STORE_URL = "http://store.test/object"


class FakeLocator:
    """Stands in for `CoordinatorClient`: every locate answers the same URL and size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.locates = 0

    async def locate_attachment(self, task_uuid: UUID, key: str) -> wire.RemoteResourceDownloadResp:
        self.locates += 1
        return wire.RemoteResourceDownloadResp(url=STORE_URL, size=self.size)


Body = Callable[[], AsyncIterator[bytes]]


@asynccontextmanager
async def fetcher_for(
    tmp_path: Path, size: int, bodies: list[Body], *, stall_timeout: float = 5.0
) -> AsyncIterator[tuple[ResourceFetcher, FakeLocator, TaskCache, list[int]]]:
    """A ResourceFetcher whose downloads stream `bodies` in turn (the last one repeats)."""
    served: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == STORE_URL
        served.append(len(served))
        body = bodies[min(len(served) - 1, len(bodies) - 1)]
        return httpx.Response(200, content=body())

    locator = FakeLocator(size)
    cache = TaskCache(tmp_path / "cache")
    cache.prepare()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        fetcher = ResourceFetcher(
            client=cast(CoordinatorClient, locator),
            http=http,
            cache=cache,
            announcer=RecordingAnnouncer(),
            polling_interval=0.05,
            stall_timeout=stall_timeout,
        )
        yield fetcher, locator, cache, served


def one_task(local_path: str = "in.bin") -> wire.WorkerTaskResp:
    spec = wire.TaskSpec(args=["true"], resources=[attachment("in.bin", local_path)])
    return wire.WorkerTaskResp(id=1, uuid=uuid4(), timeout="1m", spec=spec)


def whole(data: bytes) -> Body:
    async def body() -> AsyncIterator[bytes]:
        yield data

    return body


def then_hang(data: bytes) -> Body:
    async def body() -> AsyncIterator[bytes]:
        yield data
        await trio.sleep_forever()

    return body


def trickle(data: bytes, pieces: int, pause: float) -> Body:
    async def body() -> AsyncIterator[bytes]:
        step = len(data) // pieces
        for start in range(0, len(data), step):
            await trio.sleep(pause)
            yield data[start : start + step]

    return body


async def test_stalled_download_is_retried_with_a_fresh_locate(tmp_path: Path) -> None:
    """Some bytes, then silence: abandoned after `stall_timeout`, located and fetched again."""
    data = os.urandom(1000)
    bodies = [then_hang(data[:100]), whole(data)]
    async with fetcher_for(tmp_path, len(data), bodies, stall_timeout=0.3) as (
        fetcher,
        locator,
        cache,
        served,
    ):
        with trio.fail_after(PATIENCE):
            early = await fetcher.fetch(one_task(), trio.current_time() + PATIENCE)

        assert early is None
        assert locator.locates == 2
        assert len(served) == 2
        assert (cache.resource_dir / "in.bin").read_bytes() == data
        assert entries(cache.resource_dir) == ["in.bin"]


async def test_slow_but_steady_download_is_not_a_stall(tmp_path: Path) -> None:
    """§13.12: no fixed cap; a transfer that keeps receiving data, however slowly, runs on
    even when it takes several times `stall_timeout` in all."""
    data = os.urandom(4000)
    async with fetcher_for(tmp_path, len(data), [trickle(data, 20, 0.05)], stall_timeout=0.3) as (
        fetcher,
        locator,
        cache,
        served,
    ):
        with trio.fail_after(PATIENCE):
            early = await fetcher.fetch(one_task(), trio.current_time() + PATIENCE)

        assert early is None
        assert locator.locates == 1
        assert len(served) == 1
        assert (cache.resource_dir / "in.bin").read_bytes() == data


async def test_stall_until_the_deadline_is_fetch_resource_timeout(tmp_path: Path) -> None:
    async with fetcher_for(tmp_path, 10, [then_hang(b"12345")], stall_timeout=0.2) as (
        fetcher,
        locator,
        cache,
        _,
    ):
        with trio.fail_after(PATIENCE):
            early = await fetcher.fetch(one_task(), trio.current_time() + 1.0)

        assert early is resources.TIMED_OUT
        assert early.msg is M.FetchResourceTimeout
        assert locator.locates >= 2
        assert entries(cache.resource_dir) == []


@pytest.mark.parametrize(
    ("bodies", "expected", "attempts"),
    [
        pytest.param([whole(b"12345")], resources.FORBIDDEN, 3, id="always-short"),
        pytest.param([whole(b"12345"), whole(b"0123456789")], None, 2, id="short-once"),
        pytest.param([whole(b"0123456789ABCDEF")], resources.FORBIDDEN, 3, id="always-long"),
    ],
)
async def test_size_is_checked_against_the_located_size(
    tmp_path: Path, bodies: list[Body], expected: Any, attempts: int
) -> None:
    async with fetcher_for(tmp_path, 10, bodies) as (fetcher, locator, cache, served):
        with trio.fail_after(PATIENCE):
            early = await fetcher.fetch(one_task(), trio.current_time() + PATIENCE)

        assert early is expected
        assert locator.locates == attempts
        assert len(served) == attempts
        if expected is None:
            assert (cache.resource_dir / "in.bin").read_bytes() == b"0123456789"
        else:
            assert expected.msg is M.ResourceForbidden
            assert entries(cache.resource_dir) == []


async def test_unsafe_path_is_refused_without_locating(tmp_path: Path) -> None:
    async with fetcher_for(tmp_path, 4, [whole(b"data")]) as (fetcher, locator, cache, served):
        early = await fetcher.fetch(one_task("../x"), trio.current_time() + PATIENCE)

        assert early is resources.FORBIDDEN
        assert locator.locates == 0
        assert served == []
        assert not (cache.root / "x").exists()


async def test_a_later_unsafe_path_refuses_the_task_before_any_download(tmp_path: Path) -> None:
    """Every local_path is checked first: with [good, bad], not even the good one is fetched."""
    spec = wire.TaskSpec(
        args=["true"], resources=[attachment("in.bin", "good.bin"), attachment("in.bin", "/x")]
    )
    task = wire.WorkerTaskResp(id=1, uuid=uuid4(), timeout="1m", spec=spec)
    async with fetcher_for(tmp_path, 4, [whole(b"data")]) as (fetcher, locator, cache, served):
        early = await fetcher.fetch(task, trio.current_time() + PATIENCE)

        assert early is resources.FORBIDDEN
        assert locator.locates == 0
        assert served == []
        assert entries(cache.resource_dir) == []


async def test_local_write_error_is_resource_forbidden_at_once(tmp_path: Path) -> None:
    """A path that names a directory cannot be written, now or later: no retry loop."""
    async with fetcher_for(tmp_path, 4, [whole(b"data")]) as (fetcher, locator, cache, served):
        (cache.resource_dir / "in.bin" / "occupied").mkdir(parents=True)
        with trio.fail_after(PATIENCE):
            early = await fetcher.fetch(one_task("in.bin"), trio.current_time() + PATIENCE)

        assert early is resources.FORBIDDEN
        assert locator.locates == 1
        assert len(served) == 1
