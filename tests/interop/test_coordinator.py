"""Coordinator-side facts the worker relies on (PROTOCOL.md §3, §9.6, §12), with raw HTTP.

No worker process here: each test plays the worker's part by hand, so that a change of the
coordinator's behaviour shows up as a failure naming the fact. Where 0.6.8 disagrees with
PROTOCOL.md, the test pins what the coordinator really does and says so (docs/interop.md).
"""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import httpx
import pytest

from ._mito import Mito
from ._stack import ADMIN_PASSWORD, ADMIN_USER, HEARTBEAT_TIMEOUT, md5_list, unique

pytestmark = pytest.mark.interop

COMMIT_OK = {"Commit": {"exit_status": 0, "msg": None}}


class Api:
    """The coordinator's HTTP API, spoken by hand."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def login(self, user: str, password: str, *, retain: bool = False) -> httpx.Response:
        body = {"username": user, "md5_password": md5_list(password), "retain": retain}
        return self.http.post("/login", json=body)

    def token(self, user: str, password: str) -> dict[str, str]:
        response = self.login(user, password, retain=True)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def new_user(self) -> tuple[str, dict[str, str]]:
        name = unique("r")
        admin = self.token(ADMIN_USER, ADMIN_PASSWORD)
        body = {"username": name, "md5_password": md5_list(name), "admin": False}
        assert self.http.post("/admin/users", json=body, headers=admin).status_code == 200
        return name, self.token(name, name)

    def register(self, user: dict[str, str], **fields: Any) -> tuple[str, dict[str, str]]:
        body = {"tags": [], "labels": [], "groups": [], "lifetime": None, **fields}
        response = self.http.post("/workers", json=body, headers=user)
        assert response.status_code == 200, response.text
        answer = response.json()
        return answer["worker_id"], {"Authorization": f"Bearer {answer['token']}"}

    def submit(self, user: dict[str, str], group: str, args: list[str], **fields: Any) -> str:
        body = {
            "group_name": group,
            "tags": [],
            "labels": [],
            "timeout": "90s",
            "priority": 0,
            "task_spec": {"args": args},
            **fields,
        }
        response = self.http.post("/tasks", json=body, headers=user)
        assert response.status_code == 200, response.text
        return str(response.json()["uuid"])

    def fetch(self, worker: dict[str, str]) -> Any:
        response = self.http.get("/workers/tasks", headers=worker)
        assert response.status_code == 200, response.text
        return response.json()

    def report(self, worker: dict[str, str], task_id: int, op: Any) -> httpx.Response:
        return self.http.post("/workers/tasks", json={"id": task_id, "op": op}, headers=worker)

    def info(self, user: dict[str, str], uuid: str) -> Any:
        response = self.http.get(f"/tasks/{uuid}", headers=user)
        assert response.status_code == 200, response.text
        return response.json()["info"]

    def worker_info(self, user: dict[str, str], worker_id: str) -> Any:
        response = self.http.get(f"/workers/{worker_id}", headers=user)
        assert response.status_code == 200, response.text
        return response.json()


def submit_op(group: str, args: list[str]) -> dict[str, Any]:
    spec = {"args": args}
    request = {"group_name": group, "tags": [], "labels": [], "timeout": "1m", "priority": 0}
    return {"Submit": {**request, "task_spec": spec}}


@pytest.fixture
def api(mito: Mito) -> Any:
    client = Api(mito.url)
    yield client
    client.http.close()


def test_login_auth_and_error_bodies(api: Api) -> None:
    """§3.1, §3.2, §1.4: /auth answers the name as text; retain:false rotates the signature."""
    name, _ = api.new_user()
    first = api.login(name, name).json()["token"]
    auth = api.http.get("/auth", headers={"Authorization": f"Bearer {first}"})
    assert (auth.status_code, auth.text) == (200, name)
    assert auth.headers["content-type"].startswith("text/plain")
    second = api.login(name, name, retain=False).json()["token"]
    stale = api.http.get("/auth", headers={"Authorization": f"Bearer {first}"})
    assert stale.status_code == 401 and "msg" in stale.json()
    api.login(name, name, retain=True)
    assert api.http.get("/auth", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    assert api.login(name, "wrong").status_code == 401
    missing = api.http.get("/auth")
    assert missing.status_code == 400 and missing.headers["content-type"].startswith("text/plain")
    garbage = api.http.get("/auth", headers={"Authorization": "Bearer garbage"})
    assert garbage.status_code == 401 and "msg" in garbage.json()


def test_registration_groups_and_idle_calls(api: Api) -> None:
    """§3.3 group parsing, §3.4/§3.5 bodies, §3.12 unregister then 401."""
    name, user = api.new_user()
    other, _ = api.new_user()
    groups = [f"{name}:read", f"{other}:wRite", f"{other}:b:c", "no-such-group", f" {other}"]
    worker_id, worker = api.register(user, tags=["t"], labels=["l"], groups=groups)
    info = api.worker_info(user, worker_id)
    # Own group forced to Admin; unknown role -> Write; three parts dropped; unknown ignored.
    assert info["groups"] == {name: "Admin", other: "Write"}
    assert (info["info"]["tags"], info["info"]["labels"]) == (["t"], ["l"])
    beat = api.http.post("/workers/heartbeat", headers=worker)
    assert (beat.status_code, beat.text) == (200, "null")
    idle = api.http.get("/workers/tasks", headers=worker)
    assert (idle.status_code, idle.text) == (200, "null")
    # A missing `lifetime` key is accepted too (Option); a bare number is not a duration.
    bare = api.http.post("/workers", json={"tags": [], "labels": [], "groups": []}, headers=user)
    assert bare.status_code == 200
    bad = {"tags": [], "labels": [], "groups": [], "lifetime": "90"}
    assert api.http.post("/workers", json=bad, headers=user).status_code == 422
    gone = api.http.delete("/workers", headers=worker)
    assert (gone.status_code, gone.text) == (200, "null")
    assert api.http.post("/workers/heartbeat", headers=worker).status_code == 401
    assert api.http.delete("/workers", headers=worker).status_code == 401


def test_task_shape_and_report_rules(api: Api) -> None:
    """§4.1 WorkerTaskResp, §3.10 report preconditions, §3.9 query, §12.1 fetch-while-holding."""
    name, user = api.new_user()
    worker_id, worker = api.register(user)
    low = api.submit(user, name, ["low"], timeout="1day 2h 3m 4s")
    high = api.submit(user, name, ["high"], priority=5)
    task = api.fetch(worker)
    assert task["uuid"] == high  # higher priority first
    assert task["timeout"] == "1m 30s"
    assert task["spec"] == {
        "args": ["high"],
        "envs": {},
        "resources": [],
        "terminal_output": False,
        "watch": None,
    }
    assert task["upstream_task_uuid"] is None
    tid = task["id"]

    premature = api.report(worker, tid, COMMIT_OK)
    assert premature.status_code == 400
    assert premature.json()["msg"].endswith("Task can not be marked as done")
    assert api.report(worker, tid, submit_op(name, ["x"])).status_code == 400
    unknown = api.report(worker, tid + 10_000, "Finish")
    # PROTOCOL §3.10 says "Task <id> not found"; 0.6.8 says it twice.
    assert (unknown.status_code, unknown.json()["msg"]) == (
        404,
        f"Task {tid + 10_000} not found not found",
    )
    assert api.report(worker, tid, "Finish").json() == {"url": None}
    mismatch = api.report(worker, tid, submit_op(unique("g"), ["x"]))
    assert mismatch.status_code == 400 and "Group name mismatch" in mismatch.json()["msg"]
    upload = api.report(worker, tid, {"Upload": {"content_type": "result", "content_length": 3}})
    url = upload.json()["url"]
    assert "X-Amz-SignedHeaders=content-length%3Bhost" in url
    # The presigned PUT is bound to the announced length (SeaweedFS checks it).
    assert httpx.put(url, content=b"abcd").status_code == 403
    assert httpx.put(url, content=b"abc").status_code == 200

    # Worker-side query of a task (any task): TaskQueryResp, timeout in seconds.
    query = api.http.get(f"/workers/tasks/{low}", headers=worker).json()
    assert (query["info"]["state"], query["info"]["timeout"]) == ("Ready", 93784)

    # §12.1: a fetch while holding a task is not refused and re-points the assignment...
    second = api.fetch(worker)
    assert second["uuid"] == low
    assert api.worker_info(user, worker_id)["info"]["assigned_task_id"] == low
    # ...and (beyond PROTOCOL) committing the first task clears the assignment although it
    # names the second one: unregistering then leaves the second task Running for good.
    assert api.report(worker, tid, COMMIT_OK).json() == {"url": None}
    assert api.worker_info(user, worker_id)["info"]["assigned_task_id"] is None
    api.http.delete("/workers", headers=worker)
    assert api.info(user, low)["state"] == "Running"
    committed = api.info(user, high)
    assert committed["result"] == {"exit_status": 0, "msg": None}
    assert committed["reporter_uuid"] == worker_id


def test_downstream_submission_rules(api: Api) -> None:
    """§3.10 Submit and §7: Pending until the commit; a second Submit replaces the first."""
    name, user = api.new_user()
    _, worker = api.register(user)
    uuid = api.submit(user, name, ["a"])
    tid = api.fetch(worker)["id"]
    api.report(worker, tid, "Finish")
    traversal = submit_op(name, ["x"])
    traversal["Submit"]["task_spec"]["resources"] = [
        {"remote_file": {"Attachment": {"key": "k"}}, "local_path": "../x"}
    ]
    assert api.report(worker, tid, traversal).status_code == 400
    assert api.report(worker, tid, submit_op(name, ["first"])).status_code == 200
    first = api.info(user, uuid)["downstream_task_uuid"]
    assert api.info(user, first)["state"] == "Pending"
    # PROTOCOL: "only one downstream per task". 0.6.8 accepts a second Submit and records
    # that one; the first stays Pending forever.
    assert api.report(worker, tid, submit_op(name, ["second"])).status_code == 200
    second = api.info(user, uuid)["downstream_task_uuid"]
    assert second != first
    # PROTOCOL §12.6: users cancel Ready *or Pending* tasks; 0.6.8 cancels Ready ones only.
    assert api.http.delete(f"/tasks/{second}", headers=user).status_code == 404
    assert api.report(worker, tid, COMMIT_OK).status_code == 200
    assert api.info(user, second)["state"] == "Ready"
    assert api.info(user, second)["upstream_task_uuid"] == uuid
    assert api.info(user, first)["state"] == "Pending"
    assert api.http.delete(f"/tasks/{second}", headers=user).status_code == 200


def test_resource_lookups(api: Api) -> None:
    """§3.6/§3.7/§3.9: lookups are not group-checked; attachments of archived tasks fail."""
    name, user = api.new_user()
    offer = api.http.post(
        f"/groups/{name}/attachments", json={"key": "a/b c", "content_length": 2}, headers=user
    )
    assert httpx.put(offer.json()["url"], content=b"xy").status_code == 200
    _, worker = api.register(user)
    uuid = api.submit(user, name, ["a"])
    task = api.fetch(worker)
    # The key goes in verbatim ('/' kept, space percent-encoded); the task's group is used.
    located = api.http.get(f"/workers/tasks/{uuid}/attachments/a/b c", headers=worker)
    assert located.status_code == 200
    assert (located.json()["size"], httpx.get(located.json()["url"]).content) == (2, b"xy")
    absent = api.http.get(f"/workers/tasks/{uuid}/attachments/nope", headers=worker)
    assert absent.status_code == 404
    api.report(worker, task["id"], "Finish")
    upload = api.report(
        worker, task["id"], {"Upload": {"content_type": "exec-log", "content_length": 2}}
    )
    assert httpx.put(upload.json()["url"], content=b"ab").status_code == 200
    api.report(worker, task["id"], COMMIT_OK)

    _, stranger_user = api.new_user()
    _, stranger = api.register(stranger_user)
    for spelling in ("exec-log", "Exec", "execlog"):  # aliases are accepted on input
        found = api.http.get(f"/workers/tasks/{uuid}/artifacts/{spelling}", headers=stranger)
        assert found.status_code == 200
        assert (found.json()["size"], httpx.get(found.json()["url"]).content) == (2, b"ab")
    missing = api.http.get(f"/workers/tasks/{uuid}/artifacts/result", headers=stranger)
    assert missing.status_code == 404
    query = api.http.get(f"/workers/tasks/{uuid}", headers=stranger)
    assert query.json()["info"]["result"] == {"exit_status": 0, "msg": None}
    # PROTOCOL §3.7 says archived tasks work too; 0.6.8's archived branch fails its SQL
    # ("no column found for name: id") and answers 500, whether the key exists or not.
    for key in ("a/b c", "nope"):
        archived = api.http.get(f"/workers/tasks/{uuid}/attachments/{key}", headers=stranger)
        assert archived.status_code == 500
    unknown = api.http.get(f"/workers/tasks/{uuid4()}/attachments/k", headers=stranger)
    assert unknown.status_code == 404


def test_graceful_shutdown_states(api: Api) -> None:
    """§9.6: graceful with a task keeps the worker until its Commit; idle: removed at once."""
    name, user = api.new_user()
    idle_id, idle = api.register(user)
    assert api.http.delete(f"/workers/{idle_id}", headers=user).status_code == 200
    assert api.http.post("/workers/heartbeat", headers=idle).status_code == 401

    busy_id, busy = api.register(user)
    held = api.submit(user, name, ["a"])
    tid = api.fetch(busy)["id"]
    stop = api.http.delete(f"/workers/{busy_id}", params={"op": "graceful"}, headers=user)
    assert stop.status_code == 200
    assert api.worker_info(user, busy_id)["info"]["state"] == "GracefulShutdown"
    assert api.http.post("/workers/heartbeat", headers=busy).status_code == 200
    assert api.report(busy, tid, "Finish").status_code == 200
    # Beyond PROTOCOL: a worker in GracefulShutdown is still handed tasks when it fetches
    # (a compatible worker never fetches while it holds one, §12.1).
    late = api.submit(user, name, ["b"])
    late_task = api.fetch(busy)
    assert late_task["uuid"] == late
    # The Commit of the task it is assigned deletes the worker in the same transaction...
    assert api.report(busy, late_task["id"], "Finish").status_code == 200
    assert api.report(busy, late_task["id"], COMMIT_OK).status_code == 200
    assert api.http.get("/workers/tasks", headers=busy).status_code == 401
    # ...leaving the task it held before (no longer tracked) Finished but never committed.
    assert (api.info(user, held)["state"], api.info(user, held)["result"]) == ("Finished", None)


def test_heartbeat_timeout_requeues_finished_task(api: Api) -> None:
    """§12.3: fetches do not re-arm the deadline; a Finished, uncommitted task goes back."""
    name, user = api.new_user()
    _, worker = api.register(user)
    uuid = api.submit(user, name, ["a"])
    tid = api.fetch(worker)["id"]
    assert api.report(worker, tid, "Finish").status_code == 200
    deadline = time.monotonic() + HEARTBEAT_TIMEOUT + 15
    while api.http.get("/workers/tasks", headers=worker).status_code == 200:
        assert time.monotonic() < deadline, "the worker was never removed"
        time.sleep(1)
    info = api.info(user, uuid)
    assert (info["state"], info["result"]) == ("Ready", None)
