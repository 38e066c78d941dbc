"""LocalCoordinator speaks the coordinator side of PROTOCOL.md; driven here with plain httpx."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from mito_trio import wire
from mito_trio.testing import GroupRole, LocalCoordinator, WorkerRecord, WorkerState

ADMIN = "mitosis_admin"
RESULT = wire.ArtifactContentType.RESULT


class FakeClock:
    """A clock the test moves by hand, for token, URL and heartbeat expiry."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Worker:
    """A registered worker's view of the API."""

    client: httpx.AsyncClient
    uuid: UUID
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    async def fetch(self) -> httpx.Response:
        return await self.client.get("/workers/tasks", headers=self.auth)

    async def fetch_task(self) -> wire.WorkerTaskResp:
        response = await self.fetch()
        assert response.status_code == 200, response.text
        return wire.loads(response.content, wire.WorkerTaskResp)

    async def report(self, task_id: int, op: wire.ReportOp) -> httpx.Response:
        body = wire.dumps(wire.ReportTaskReq(id=task_id, op=op))
        headers = {**self.auth, "content-type": "application/json"}
        return await self.client.post("/workers/tasks", content=body, headers=headers)

    async def heartbeat(self) -> httpx.Response:
        return await self.client.post("/workers/heartbeat", headers=self.auth)

    async def unregister(self) -> httpx.Response:
        return await self.client.delete("/workers", headers=self.auth)

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.auth)


async def login(
    client: httpx.AsyncClient, user: str = ADMIN, password: str = ADMIN, *, retain: bool = False
) -> httpx.Response:
    digest = list(hashlib.md5(password.encode()).digest())
    body = wire.dumps(wire.LoginReq(username=user, md5_password=digest, retain=retain))
    return await client.post("/login", content=body, headers={"content-type": "application/json"})


async def user_token(client: httpx.AsyncClient, user: str = ADMIN, password: str = ADMIN) -> str:
    response = await login(client, user, password)
    assert response.status_code == 200, response.text
    return wire.loads(response.content, wire.LoginResp).token


async def auth(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth", headers={"authorization": f"Bearer {token}"})


async def register(
    client: httpx.AsyncClient,
    *,
    tags: list[str] | None = None,
    groups: list[str] | None = None,
    lifetime: str | None = None,
    token: str | None = None,
) -> Worker:
    token = token or await user_token(client)
    req = wire.RegisterWorkerReq(tags=tags or [], labels=[], groups=groups or [], lifetime=lifetime)
    response = await client.post(
        "/workers",
        content=wire.dumps(req),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    resp = wire.loads(response.content, wire.RegisterWorkerResp)
    return Worker(client, resp.worker_id, resp.token)


async def start(nursery: trio.Nursery, **kwargs: Any) -> LocalCoordinator:
    coordinator: LocalCoordinator = await nursery.start(LocalCoordinator(**kwargs).serve)
    return coordinator


@pytest.fixture
async def coord(nursery: trio.Nursery) -> AsyncIterator[LocalCoordinator]:
    coordinator = await start(nursery)
    yield coordinator
    assert coordinator.internal_errors == []


@pytest.fixture
async def client(coord: LocalCoordinator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=coord.url) as http:
        yield http


async def run_to_finished(worker: Worker) -> wire.WorkerTaskResp:
    task = await worker.fetch_task()
    assert (await worker.report(task.id, wire.SimpleOp.Finish)).status_code == 200
    return task


COMMIT_OK = wire.Commit(exit_status=0)


# --- login and auth ----------------------------------------------------------------------------


async def test_login_then_auth_returns_username(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    token = await user_token(client)
    response = await auth(client, token)
    assert response.status_code == 200
    assert response.text == ADMIN
    assert response.headers["content-type"].startswith("text/plain")
    assert ":" not in token
    assert coord.users[ADMIN].login_count == 1


async def test_wrong_password_and_unknown_user_are_401(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    for user, password in [(ADMIN, "nope"), ("ghost", ADMIN)]:
        response = await login(client, user, password)
        assert response.status_code == 401
        assert "msg" in response.json()
    assert coord.users[ADMIN].login_count == 0


async def test_login_without_retain_rotates_signature(client: httpx.AsyncClient) -> None:
    first = await user_token(client)
    second = await user_token(client)  # retain=false: `first` is now invalid
    assert (await auth(client, first)).status_code == 401
    assert (await auth(client, second)).status_code == 200
    response = await login(client, retain=True)
    third = response.json()["token"]
    assert (await auth(client, second)).status_code == 200
    assert (await auth(client, third)).status_code == 200


async def test_auth_header_problems(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    missing = await client.get("/auth")
    assert missing.status_code == 400
    assert missing.headers["content-type"].startswith("text/plain")
    assert (await auth(client, "bm90LWEtdG9rZW4=")).status_code == 401
    token = await user_token(client)
    worker = await register(client, token=token)
    assert (await auth(client, worker.token)).status_code == 401  # a worker token is no user token
    coord.users[ADMIN].active = False
    assert (await auth(client, token)).status_code == 403
    assert (await login(client)).status_code == 403


# --- registration ------------------------------------------------------------------------------


async def test_register_parses_group_roles(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    groups = [
        "team-a",
        "team-b:write",
        "auditors:read",
        "ops:ADMIN",
        "odd:wRite",
        "empty:",
        "a:b:c",
        " g2",
        f"{ADMIN}:read",
    ]
    worker = await register(client, tags=["gpu", "gpu"], groups=groups, lifetime="1h 30m")
    record = coord.workers[worker.uuid]
    assert record.groups == {
        "team-a": GroupRole.Write,
        "team-b": GroupRole.Write,
        "auditors": GroupRole.Read,
        "ops": GroupRole.Admin,
        "odd": GroupRole.Write,
        "empty": GroupRole.Write,
        " g2": GroupRole.Write,
        ADMIN: GroupRole.Admin,
    }
    assert record.tags == {"gpu"}
    assert record.lifetime == 5400
    assert record.user == ADMIN


async def test_register_answers_redis_url(nursery: trio.Nursery) -> None:
    coord = await start(nursery, redis_url="redis://r:6379/?protocol=resp3")
    async with httpx.AsyncClient(base_url=coord.url) as client:
        token = await user_token(client)
        response = await client.post(
            "/workers",
            json={"tags": [], "labels": [], "groups": [], "lifetime": None},
            headers={"authorization": f"Bearer {token}"},
        )
        assert response.json()["redis_url"] == "redis://r:6379/?protocol=resp3"


async def test_register_body_rejections(client: httpx.AsyncClient) -> None:
    headers = {"authorization": f"Bearer {await user_token(client)}"}
    body = b'{"tags": [], "labels": [], "groups": []}'
    no_type = await client.post("/workers", content=body, headers=headers)
    assert no_type.status_code == 415
    json_headers = {**headers, "content-type": "application/json"}
    garbled = await client.post("/workers", content=b"{", headers=json_headers)
    assert garbled.status_code == 400
    missing_key = await client.post("/workers", content=b'{"tags": []}', headers=json_headers)
    assert missing_key.status_code == 422
    bad_lifetime = await client.post(
        "/workers",
        content=b'{"tags": [], "labels": [], "groups": [], "lifetime": "30"}',
        headers=json_headers,
    )
    assert bad_lifetime.status_code == 422


# --- dispatch ----------------------------------------------------------------------------------


async def test_dispatch_by_group_role_tags_and_priority(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    low_1 = coord.submit_task(["low1"], group="team")
    needs_gpu = coord.submit_task(["gpu"], group="team", tags=["gpu"], priority=9)
    high = coord.submit_task(["high"], group="team", priority=5)
    low_2 = coord.submit_task(["low2"], group="team")
    readonly = coord.submit_task(["ro"], group="auditors", priority=10)
    elsewhere = coord.submit_task(["x"], group="other", priority=10)

    cpu = await register(client, tags=["cpu"], groups=["team", "auditors:read"])
    order = []
    for _ in range(3):
        task = await cpu.fetch_task()
        order.append(task.uuid)
        await cpu.report(task.id, wire.SimpleOp.Finish)
        await cpu.report(task.id, COMMIT_OK)
    assert order == [high, low_1, low_2]
    assert (await cpu.fetch()).json() is None

    gpu = await register(client, tags=["gpu", "cpu"], groups=["team"])
    assert (await gpu.fetch_task()).uuid == needs_gpu
    assert coord.task(readonly).state is wire.TaskState.Ready
    assert coord.task(elsewhere).state is wire.TaskState.Ready


async def test_fetch_response_shape(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    watched = uuid4()
    resources = [
        wire.RemoteResourceDownload(wire.AttachmentRef("data/set.tar"), "set.tar"),
        wire.RemoteResourceDownload(wire.ArtifactRef(watched, RESULT), "prev/result.tar.gz"),
    ]
    uuid = coord.submit_task(
        ["sh", "-c", "true"],
        envs={"A": "1"},
        resources=resources,
        terminal_output=True,
        watch=(watched, wire.TaskExecState.ExecFinished),
        timeout=5400,
    )
    worker = await register(client)
    task = await worker.fetch_task()
    assert task.uuid == uuid
    assert task.timeout == "1h 30m"
    assert task.spec.resources == resources
    assert task.spec.watch == (watched, wire.TaskExecState.ExecFinished)
    record = coord.task(uuid)
    assert record.state is wire.TaskState.Running
    assert record.assigned_worker == worker.uuid
    assert coord.workers[worker.uuid].assigned_task == uuid


async def test_fetch_while_holding_is_counted(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    first = coord.submit_task(["a"])
    second = coord.submit_task(["b"])
    worker = await register(client)
    await worker.fetch_task()
    assert coord.workers[worker.uuid].fetch_while_holding == 0
    assert (await worker.fetch_task()).uuid == second
    record = coord.workers[worker.uuid]
    assert record.fetch_while_holding == 1
    assert record.assigned_task == second
    assert coord.task(first).assigned_worker == worker.uuid  # orphaned, like the original


# --- reports -----------------------------------------------------------------------------------


async def test_report_state_machine(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    uuid = coord.submit_task(["a"])
    worker = await register(client)
    other = await register(client)
    task = await worker.fetch_task()

    assert (await worker.report(task.id + 100, wire.SimpleOp.Finish)).status_code == 404
    stranger = await other.report(task.id, wire.SimpleOp.Finish)
    assert stranger.status_code == 404
    assert stranger.json() == {"msg": f"Task {task.id} not found"}

    early = await worker.report(task.id, COMMIT_OK)
    assert early.status_code == 400
    assert early.json()["msg"] == "Task can not be marked as done"

    assert (await worker.report(task.id, wire.SimpleOp.Finish)).json() == {"url": None}
    assert coord.task(uuid).state is wire.TaskState.Finished
    assert (await worker.report(task.id, wire.SimpleOp.Cancel)).status_code == 200
    assert coord.task(uuid).state is wire.TaskState.Cancelled
    commit = wire.Commit(exit_status=15, msg=wire.TaskResultMessage.ExecTimeout)
    assert (await worker.report(task.id, commit)).status_code == 200

    record = await coord.wait_committed(uuid)
    assert record.result == wire.TaskResultSpec(15, wire.TaskResultMessage.ExecTimeout)
    assert record.reporter == worker.uuid
    assert record.reports == [COMMIT_OK, wire.SimpleOp.Finish, wire.SimpleOp.Cancel, commit]
    assert coord.workers[worker.uuid].assigned_task is None
    assert (await worker.report(task.id, wire.SimpleOp.Finish)).status_code == 404


async def test_report_body_must_be_a_report(client: httpx.AsyncClient) -> None:
    worker = await register(client)
    headers = {**worker.auth, "content-type": "application/json"}
    bad_op = await client.post("/workers/tasks", content=b'{"id": 1, "op": "Fly"}', headers=headers)
    assert bad_op.status_code == 422


async def test_query_task(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    uuid = coord.submit_task(["a"], labels=["exp1"], timeout="10m")
    worker = await register(client)
    assert (await worker.get(f"/workers/tasks/{uuid4()}")).status_code == 404
    response = await worker.get(f"/workers/tasks/{uuid}")
    info = response.json()["info"]
    assert info["state"] == "Ready"
    assert info["timeout"] == 600
    assert info["labels"] == ["exp1"]
    assert info["result"] is None
    assert wire.loads(response.content, wire.TaskQueryResult).state is wire.TaskState.Ready

    result = wire.TaskResultSpec(0, wire.TaskResultMessage.UserCancellation)
    coord.set_task_state(uuid, wire.TaskState.Cancelled, result)
    query = wire.loads((await worker.get(f"/workers/tasks/{uuid}")).content, wire.TaskQueryResult)
    assert query == wire.TaskQueryResult(wire.TaskState.Cancelled, result)


# --- uploads and downloads ---------------------------------------------------------------------


async def upload_url(worker: Worker, task_id: int, length: int) -> str:
    response = await worker.report(task_id, wire.Upload(RESULT, length))
    assert response.status_code == 200, response.text
    url = wire.loads(response.content, wire.ReportTaskResp).url
    assert url is not None
    return url


async def test_upload_put_then_download(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    uuid = coord.submit_task(["a"])
    worker = await register(client)
    task = await run_to_finished(worker)
    payload = b"archive bytes" * 1000
    url = await upload_url(worker, task.id, len(payload))
    assert f"/store/artifacts/{uuid}/result.tar.gz?" in url

    put = await client.put(url, content=payload)
    assert put.status_code == 200
    assert put.request.headers.get("authorization") is None
    assert coord.artifact(uuid, RESULT) == payload
    assert (await worker.report(task.id, COMMIT_OK)).status_code == 200

    located = await worker.get(f"/workers/tasks/{uuid}/artifacts/result")
    found = wire.loads(located.content, wire.RemoteResourceDownloadResp)
    assert found.size == len(payload)
    download = await client.get(found.url)
    assert download.content == payload
    assert download.headers["content-length"] == str(len(payload))
    alias = await worker.get(f"/workers/tasks/{uuid}/artifacts/Result")
    assert alias.status_code == 200
    missing = await worker.get(f"/workers/tasks/{uuid}/artifacts/exec-log")
    assert missing.status_code == 404

    info = (await worker.get(f"/workers/tasks/{uuid}")).json()
    assert [a["content_type"] for a in info["artifacts"]] == ["result"]


async def test_large_upload_is_streamed_and_connection_reused(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    coord.submit_task(["a"])
    worker = await register(client)
    task = await run_to_finished(worker)
    payload = bytes(range(256)) * 12_289  # a bit over 3 MiB: takes the raw-body path
    url = await upload_url(worker, task.id, len(payload))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    headers = {"content-length": str(len(payload))}
    assert (await client.put(url, content=pieces(), headers=headers)).status_code == 200
    assert coord.artifact(task.uuid, RESULT) == payload
    # the same keep-alive connection carries on after a raw body
    assert (await worker.report(task.id, COMMIT_OK)).status_code == 200
    assert coord.requests[-1].endpoint == "report"


async def test_put_with_wrong_length_or_chunked_is_rejected(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    coord.submit_task(["a"])
    worker = await register(client)
    task = await run_to_finished(worker)
    url = await upload_url(worker, task.id, 10)

    short = await client.put(url, content=b"123456789")
    assert short.status_code == 403
    assert b"SignatureDoesNotMatch" in short.content

    async def chunks() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    chunked = await client.put(url, content=chunks())
    assert chunked.status_code == 403
    assert coord.calls("store_put")[-1].chunked

    tampered = await client.put(url.replace("len=10", "len=9"), content=b"123456789")
    assert tampered.status_code == 403
    assert [p.chunked for p in coord.rejected_puts] == [False, True]
    assert coord.task(task.uuid).artifacts[RESULT].stored is None
    assert (await client.put(url, content=b"1234567890")).status_code == 200


async def test_presigned_urls_expire(nursery: trio.Nursery) -> None:
    clock = FakeClock()
    coord = await start(nursery, clock=clock)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        coord.submit_task(["a"])
        worker = await register(client)
        task = await run_to_finished(worker)
        url = await upload_url(worker, task.id, 3)
        clock.now += 3601
        expired = await client.put(url, content=b"abc")
        assert expired.status_code == 403
        assert b"expired" in expired.content


async def test_discarded_uploads_keep_size_and_hash(nursery: trio.Nursery) -> None:
    coord = await start(nursery, discard_uploads=True)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        coord.submit_task(["a"])
        worker = await register(client)
        task = await run_to_finished(worker)
        payload = b"z" * (2 * 1024 * 1024 + 7)
        url = await upload_url(worker, task.id, len(payload))
        assert (await client.put(url, content=payload)).status_code == 200
        stored = coord.task(task.uuid).artifacts[RESULT].stored
        assert stored is not None
        assert stored.data is None
        assert stored.size == len(payload)
        assert stored.sha256 == hashlib.sha256(payload).hexdigest()
        located = await worker.get(f"/workers/tasks/{task.uuid}/artifacts/result")
        assert (await client.get(located.json()["url"])).status_code == 404


async def test_locate_attachment(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    coord.add_attachment("team", "data sets/mnist.tar.gz", b"mnist")
    uuid = coord.submit_task(["a"], group="team")
    worker = await register(client, groups=["team"])
    await worker.fetch_task()
    response = await worker.get(f"/workers/tasks/{uuid}/attachments/data%20sets/mnist.tar.gz")
    assert response.status_code == 200, response.text
    found = wire.loads(response.content, wire.RemoteResourceDownloadResp)
    assert found.size == 5
    assert (await client.get(found.url)).content == b"mnist"
    missing = await worker.get(f"/workers/tasks/{uuid}/attachments/data/other")
    assert missing.status_code == 404
    unknown_task = await worker.get(f"/workers/tasks/{uuid4()}/attachments/data/other")
    assert unknown_task.status_code == 404


# --- downstream tasks --------------------------------------------------------------------------


def submit_req(group: str, **spec: Any) -> wire.Submit:
    return wire.Submit(
        wire.SubmitTaskReq(
            group_name=group,
            tags=[],
            labels=["stage2"],
            timeout="30m",
            priority=3,
            task_spec=wire.TaskSpec(args=["next"], **spec),
        )
    )


async def test_submit_then_commit_promotes_downstream(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    uuid = coord.submit_task(["first"])
    worker = await register(client)
    task = await worker.fetch_task()

    early = await worker.report(task.id, submit_req(ADMIN))
    assert early.status_code == 400
    await worker.report(task.id, wire.SimpleOp.Finish)
    mismatch = await worker.report(task.id, submit_req("other"))
    assert mismatch.status_code == 400
    assert "Group name mismatch" in mismatch.json()["msg"]
    escape = wire.RemoteResourceDownload(wire.AttachmentRef("k"), "../x")
    assert (await worker.report(task.id, submit_req(ADMIN, resources=[escape]))).status_code == 400

    assert (await worker.report(task.id, submit_req(ADMIN))).status_code == 200
    downstream = coord.task(uuid).downstream
    assert downstream is not None
    child = coord.task(downstream)
    assert child.state is wire.TaskState.Pending
    assert child.upstream == uuid
    assert child.timeout == 1800
    assert (await worker.report(task.id, submit_req(ADMIN))).status_code == 400  # only one

    assert (await worker.report(task.id, COMMIT_OK)).status_code == 200
    assert coord.task(downstream).state is wire.TaskState.Ready
    nxt = await worker.fetch_task()
    assert nxt.uuid == downstream
    assert nxt.upstream_task_uuid == uuid
    ops = [
        op.value if isinstance(op, wire.SimpleOp) else type(op).__name__
        for op in coord.task(uuid).reports
    ]
    assert ops == ["Submit", "Finish", "Submit", "Submit", "Submit", "Submit", "Commit"]


# --- removal of workers ------------------------------------------------------------------------


async def test_unregister_requeues_even_a_finished_task(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    uuid = coord.submit_task(["a"])
    first = await register(client)
    await run_to_finished(first)
    assert (await first.unregister()).json() is None
    record = coord.workers[first.uuid]
    assert record.removed
    assert record.removed_reason == "unregister"
    assert coord.task(uuid).state is wire.TaskState.Ready
    assert (await first.heartbeat()).status_code == 401

    second = await register(client)
    again = await second.fetch_task()
    assert again.uuid == uuid
    assert coord.task(uuid).runs == 2


async def test_graceful_stop_removes_worker_at_commit(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    uuid = coord.submit_task(["a"])
    busy = await register(client)
    idle = await register(client)
    task = await run_to_finished(busy)

    coord.stop_worker(idle.uuid, force=False)
    assert coord.workers[idle.uuid].removed
    assert (await idle.fetch()).status_code == 401

    coord.stop_worker(busy.uuid, force=False)
    assert coord.workers[busy.uuid].state is WorkerState.GracefulShutdown
    assert (await busy.heartbeat()).status_code == 200
    assert (await busy.report(task.id, COMMIT_OK)).status_code == 200
    assert coord.workers[busy.uuid].removed
    assert coord.task(uuid).committed
    assert (await busy.fetch()).status_code == 401


async def test_force_stop_requeues(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    uuid = coord.submit_task(["a"])
    worker = await register(client)
    task = await worker.fetch_task()
    coord.stop_worker(worker.uuid, force=True)
    assert coord.task(uuid).state is wire.TaskState.Ready
    assert (await worker.report(task.id, wire.SimpleOp.Finish)).status_code == 401


async def test_worker_token_expires_after_lifetime(nursery: trio.Nursery) -> None:
    clock = FakeClock()
    coord = await start(nursery, clock=clock)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        worker = await register(client, lifetime="1m")
        assert coord.workers[worker.uuid].token_expires_at == clock.now + 60
        clock.now += 59
        assert (await worker.heartbeat()).status_code == 200
        clock.now += 2
        assert (await worker.heartbeat()).status_code == 401
        assert (await worker.fetch()).status_code == 401
        assert (await worker.unregister()).status_code == 401


async def test_heartbeat_deadline_removes_worker(nursery: trio.Nursery) -> None:
    clock = FakeClock()
    coord = await start(nursery, clock=clock, heartbeat_timeout=600)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        uuid = coord.submit_task(["a"])
        worker = await register(client)
        await worker.fetch_task()
        clock.now += 500
        assert (await worker.heartbeat()).status_code == 200
        clock.now += 500
        assert coord.reap_expired() == []
        clock.now += 101
        assert [w.uuid for w in coord.reap_expired()] == [worker.uuid]
        assert coord.workers[worker.uuid].removed_reason == "heartbeat_timeout"
        assert coord.task(uuid).state is wire.TaskState.Ready
        assert (await worker.heartbeat()).status_code == 401


async def test_heartbeat_deadline_reaper_runs_in_background(nursery: trio.Nursery) -> None:
    coord = await start(nursery, heartbeat_timeout=0.2)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        worker = await register(client)
        with trio.fail_after(5):
            record = coord.workers[worker.uuid]
            await coord.wait_for(lambda: record.removed)
        assert (await worker.fetch()).status_code == 401


async def test_task_overrun_evicts_worker_on_heartbeat(nursery: trio.Nursery) -> None:
    clock = FakeClock()
    coord = await start(nursery, clock=clock)
    async with httpx.AsyncClient(base_url=coord.url) as client:
        uuid = coord.submit_task(["a"], timeout="10m")
        worker = await register(client)
        await worker.fetch_task()
        clock.now += 600 + 61
        assert (await worker.heartbeat()).status_code == 200
        assert coord.workers[worker.uuid].removed_reason == "task_timeout"
        assert coord.task(uuid).state is wire.TaskState.Ready
        assert (await worker.fetch()).status_code == 401


# --- fault injection ---------------------------------------------------------------------------


async def test_injected_status_is_consumed_in_order(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    worker = await register(client)
    coord.inject("heartbeat", status=503, times=2)
    coord.inject("heartbeat", status=500, body=b"plain")
    statuses = [(await worker.heartbeat()).status_code for _ in range(4)]
    assert statuses == [503, 503, 500, 200]
    assert coord.workers[worker.uuid].heartbeats == 1
    assert [r.status for r in coord.calls("heartbeat")] == statuses


async def test_injected_drop_closes_without_answer(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    coord.submit_task(["a"])
    worker = await register(client)
    fault = coord.inject("fetch", drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await worker.fetch()
    assert fault.remaining == 0
    assert coord.calls("fetch")[0].dropped
    assert (await worker.fetch()).status_code == 200


async def test_report_fault_filtered_by_op_and_lost_answer(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    uuid = coord.submit_task(["a"])
    worker = await register(client)
    task = await worker.fetch_task()
    coord.inject("report", op="Commit", status=500, process=True)
    assert (await worker.report(task.id, wire.SimpleOp.Finish)).status_code == 200
    assert (await worker.report(task.id, COMMIT_OK)).status_code == 500
    assert coord.task(uuid).committed  # processed, only the answer was lost
    assert (await worker.report(task.id, COMMIT_OK)).status_code == 404


async def test_injected_delay(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    worker = await register(client)
    coord.inject("heartbeat", delay=0.2)
    began = trio.current_time()
    assert (await worker.heartbeat()).status_code == 200
    assert trio.current_time() - began >= 0.2


async def test_store_fault(coord: LocalCoordinator, client: httpx.AsyncClient) -> None:
    coord.submit_task(["a"])
    worker = await register(client)
    task = await run_to_finished(worker)
    url = await upload_url(worker, task.id, 3)
    coord.inject("store_put", status=503)
    failed = await client.put(url, content=b"abc")
    assert failed.status_code == 503
    assert b"<Message>" in failed.content
    assert (await client.put(url, content=b"abc")).status_code == 200


def test_inject_validates_arguments() -> None:
    coord = LocalCoordinator()
    with pytest.raises(ValueError):
        coord.inject("nope", status=500)
    with pytest.raises(ValueError):
        coord.inject("fetch", op="Commit", status=500)
    with pytest.raises(ValueError):
        coord.inject("report")


# --- serving -----------------------------------------------------------------------------------


async def test_concurrent_connections_and_request_log(
    coord: LocalCoordinator, client: httpx.AsyncClient
) -> None:
    worker = await register(client)
    coord.inject("heartbeat", delay=0.3)

    async def beat() -> None:
        async with httpx.AsyncClient(base_url=coord.url) as own:
            assert (await own.post("/workers/heartbeat", headers=worker.auth)).status_code == 200

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(beat)
    assert coord.workers[worker.uuid].heartbeats == 10
    assert [r.endpoint for r in coord.requests[:2]] == ["login", "register"]
    assert coord.internal_errors == []


async def test_unknown_paths_and_methods(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).status_code == 404
    assert (await client.put("/workers/heartbeat")).status_code == 405


async def test_running_context_and_waiting() -> None:
    async with (
        LocalCoordinator().running() as coord,
        httpx.AsyncClient(base_url=coord.url) as client,
    ):
        async with trio.open_nursery() as nursery:
            found: list[WorkerRecord] = []

            async def waiter() -> None:
                found.append(await coord.wait_for_worker())

            nursery.start_soon(waiter)
            worker = await register(client)
        assert found[0].uuid == worker.uuid
