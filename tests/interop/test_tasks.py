"""Running tasks: results, artifacts, resources, downstream tasks, timeouts."""

from __future__ import annotations

import json

import pytest

from ._mito import Mito, sleep_polls

pytestmark = pytest.mark.interop


def test_happy_path_and_artifacts(mito: Mito, impl: str) -> None:
    """Finished, the raw wait status as stored, and all three artifacts by content."""
    user, client = mito.new_user()
    worker = mito.start_worker(impl, groups=[user])
    script = (
        'echo "out $MITO_TASK_UUID $GREETING"; echo "err line" >&2; '
        'printf r > "$MITO_RESULT_DIR/r.txt"; mkdir "$MITO_RESULT_DIR/sub"; '
        'printf s > "$MITO_RESULT_DIR/sub/s.txt"; printf e > "$MITO_EXEC_DIR/e.txt"; exit 3'
    )
    uuid = mito.submit(
        client, user, ["sh", "-c", script], envs={"GREETING": "hello"}, terminal_output=True
    )
    # A task killed by a signal is stored with the signal number (raw wait status).
    killed = mito.submit(client, user, ["sh", "-c", "kill -TERM $$"])

    task = mito.wait_committed(client, uuid)
    assert task.info.state == "Finished"
    assert task.info.result.exit_status == 3 << 8
    assert task.info.result.msg is None
    assert str(task.info.reporter_uuid) == worker.worker_id
    assert {a.content_type for a in task.artifacts} == {"result", "exec-log", "std-log"}

    result = mito.artifact(client, uuid, "result")
    assert result["result/r.txt"] == b"r"
    assert result["result/sub/s.txt"] == b"s"
    assert mito.artifact(client, uuid, "exec-log")["exec-log/e.txt"] == b"e"
    std = mito.artifact(client, uuid, "std-log")
    assert std["std-log/stdout.log"] == f"out {uuid} hello\n".encode()
    assert std["std-log/stderr.log"] == b"err line\n"

    other = mito.wait_committed(client, killed)
    assert other.info.state == "Finished"
    assert other.info.result.exit_status == 15
    assert other.artifacts == []  # nothing written, no terminal output: no archive


def test_new_task_chain(mito: Mito, impl: str) -> None:
    """MITO_NEW_TASK: the downstream task is Ready after the commit and sees its upstream."""
    user, client = mito.new_user()
    mito.start_worker(impl, groups=[user])
    downstream = json.dumps(
        {
            "group_name": user,
            "tags": ["stage2"],
            "labels": ["chain"],
            "timeout": "1m",
            "priority": 0,
            "task_spec": {
                "args": ["sh", "-c", 'echo "$MITO_UPSTREAM_TASK_UUID" > "$MITO_RESULT_DIR/up.txt"']
            },
        }
    )
    uuid = mito.submit(
        client,
        user,
        ["sh", "-c", 'printf "%s" "$NEXT" > "$MITO_NEW_TASK"'],
        envs={"NEXT": downstream},
    )
    task = mito.wait_committed(client, uuid)
    assert task.info.state == "Finished"
    assert task.info.result.msg is None
    down = task.info.downstream_task_uuid
    assert down is not None
    # Tag `stage2`: no worker can take it yet, so its state after the commit stays visible.
    child = mito.task(client, str(down))
    assert child.info.state == "Ready"
    assert str(child.info.upstream_task_uuid) == uuid
    assert child.info.labels == ["chain"]

    mito.start_worker(impl, groups=[user], tags=["stage2"])
    child = mito.wait_committed(client, str(down))
    assert child.info.state == "Finished"
    assert mito.artifact(client, str(down), "result")["result/up.txt"] == f"{uuid}\n".encode()


def test_exec_timeout(mito: Mito, impl: str) -> None:
    """The child is stopped at the timeout; Cancelled with ExecTimeout and SIGTERM's status."""
    user, client = mito.new_user()
    mito.start_worker(impl, groups=[user])
    uuid = mito.submit(
        client,
        user,
        ["sh", "-c", 'echo started; echo x > "$MITO_EXEC_DIR/log"; exec sleep 30'],
        timeout=2,
        terminal_output=True,
    )
    task = mito.wait_committed(client, uuid, timeout=40)
    assert task.info.state == "Cancelled"
    assert task.info.result.msg == "ExecTimeout"
    assert task.info.result.exit_status == 15
    assert mito.artifact(client, uuid, "exec-log")["exec-log/log"] == b"x\n"
    std = mito.artifact(client, uuid, "std-log")
    if impl == "ours":
        # PROTOCOL §13.4: ours keeps the output captured before the timeout.
        assert std["std-log/stdout.log"] == b"started\n"
    else:
        # The original drops it and uploads empty logs.
        assert std["std-log/stdout.log"] == b""


def test_resource_not_found(mito: Mito, impl: str) -> None:
    """A missing attachment or artifact: Cancelled, ResourceNotFound, exit_status 0."""
    from pynetmito import ArtifactContentType, RemoteResource, RemoteResourceDownload

    user, client = mito.new_user()
    mito.start_worker(impl, groups=[user])
    missing_attachment = RemoteResourceDownload(
        remote_file=RemoteResource.attachment("no/such.bin"), local_path="a.bin"
    )
    # An artifact of a task that never produced one (this user's own, finished task).
    empty = mito.submit(client, user, ["true"])
    mito.wait_committed(client, empty)
    missing_artifact = RemoteResourceDownload(
        remote_file=RemoteResource.artifact(empty, ArtifactContentType.RESULT), local_path="r.tgz"
    )
    uuids = [
        mito.submit(client, user, ["sh", "-c", "touch $MITO_RESULT_DIR/ran"], resources=[res])
        for res in (missing_attachment, missing_artifact)
    ]
    for uuid in uuids:
        task = mito.wait_committed(client, uuid)
        assert task.info.state == "Cancelled"
        assert task.info.result.msg == "ResourceNotFound"
        assert task.info.result.exit_status == 0
        assert task.artifacts == []


# pynetmito's upload_file passes the file as `data=`.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_attachment_resource(mito: Mito, impl: str) -> None:
    """An attachment uploaded with pynetmito is downloaded to its local_path."""
    from pynetmito import RemoteResource, RemoteResourceDownload

    user, client = mito.new_user()
    source = mito.tmp / "input.txt"
    source.write_bytes(b"attached data\n" * 1000)
    client.upload_attachment(source, group_name=user, key="datasets/in put.txt")
    mito.start_worker(impl, groups=[user])
    resource = RemoteResourceDownload(
        remote_file=RemoteResource.attachment("datasets/in put.txt"), local_path="sub/in.txt"
    )
    uuid = mito.submit(
        client,
        user,
        ["sh", "-c", 'cp "$MITO_RESOURCE_DIR/sub/in.txt" "$MITO_RESULT_DIR/copy.txt"'],
        resources=[resource],
    )
    task = mito.wait_committed(client, uuid)
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
    assert mito.artifact(client, uuid, "result")["result/copy.txt"] == source.read_bytes()


def test_artifact_resource(mito: Mito, impl: str) -> None:
    """The result of an earlier task, as a resource of a later one."""
    from pynetmito import ArtifactContentType, RemoteResource, RemoteResourceDownload

    user, client = mito.new_user()
    mito.start_worker(impl, groups=[user])
    first = mito.submit(client, user, ["sh", "-c", 'echo 42 > "$MITO_RESULT_DIR/answer"'])
    mito.wait_committed(client, first)
    resource = RemoteResourceDownload(
        remote_file=RemoteResource.artifact(first, ArtifactContentType.RESULT),
        local_path="prev/result.tar.gz",
    )
    script = (
        'cd "$MITO_RESOURCE_DIR/prev" && tar -xzf result.tar.gz && '
        'cp result/answer "$MITO_RESULT_DIR/got"'
    )
    second = mito.submit(client, user, ["sh", "-c", script], resources=[resource])
    task = mito.wait_committed(client, second)
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
    assert mito.artifact(client, second, "result")["result/got"] == b"42\n"


def test_tags_routing(mito: Mito, impl: str) -> None:
    """A task goes to a worker only if the task's tags are a subset of the worker's."""
    user, client = mito.new_user()
    worker = mito.start_worker(impl, groups=[user], tags=["gpu", "a100"])
    runs = [
        mito.submit(client, user, ["true"], tags=tags) for tags in ([], ["gpu"], ["gpu", "a100"])
    ]
    stays = [mito.submit(client, user, ["true"], tags=tags) for tags in (["tpu"], ["gpu", "tpu"])]
    for uuid in runs:
        task = mito.wait_committed(client, uuid)
        assert str(task.info.reporter_uuid) == worker.worker_id
    sleep_polls()
    for uuid in stays:
        assert mito.task(client, uuid).info.state == "Ready"
    # A worker without tags gets only untagged tasks.
    assert worker.proc.stop() == 0
    untagged = mito.start_worker(impl, groups=[user])
    plain = mito.submit(client, user, ["true"])
    tagged = mito.submit(client, user, ["true"], tags=["gpu"])
    assert str(mito.wait_committed(client, plain).info.reporter_uuid) == untagged.worker_id
    sleep_polls()
    assert mito.task(client, tagged).info.state == "Ready"


def test_groups_and_roles(mito: Mito, impl: str) -> None:
    """Two users, two groups; a worker with `team:read` gets no task of `team`."""
    from pynetmito import CreateGroupReq, UpdateUserGroupRoleReq, UserGroupRole

    alice, alice_client = mito.new_user("alice")
    bob, bob_client = mito.new_user("bob")
    team = f"team{alice}"
    alice_client.user_create_group(CreateGroupReq(group_name=team))
    alice_client.update_user_group_roles(
        team, UpdateUserGroupRoleReq(relations={bob: UserGroupRole.WRITE})
    )
    reader = mito.start_worker(impl, groups=[f"{team}:read"])
    alices = mito.start_worker(impl, groups=[alice])

    by_bob = mito.submit(bob_client, team, ["true"])
    by_alice_team = mito.submit(alice_client, team, ["true"])
    by_alice_own = mito.submit(alice_client, alice, ["true"])
    by_bob_own = mito.submit(bob_client, bob, ["true"])

    own = mito.wait_committed(alice_client, by_alice_own)
    assert str(own.info.reporter_uuid) == alices.worker_id
    sleep_polls()
    for uuid in (by_bob, by_alice_team):
        assert mito.task(alice_client, uuid).info.state == "Ready"
    assert mito.task(bob_client, by_bob_own).info.state == "Ready"
    assert reader.proc.alive()

    writer = mito.start_worker(impl, groups=[f"{team}:write"])
    for uuid in (by_bob, by_alice_team):
        task = mito.wait_committed(bob_client, uuid)
        assert str(task.info.reporter_uuid) == writer.worker_id
    sleep_polls(1)
    assert mito.task(bob_client, by_bob_own).info.state == "Ready"
