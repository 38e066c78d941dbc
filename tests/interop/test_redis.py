"""With `redis_url` configured: execution states in Redis, and `watch` through pub/sub."""

from __future__ import annotations

from typing import Any

import pytest

from ._mito import Mito, sleep_polls
from ._stack import RespClient, Subscription, wait_until

pytestmark = pytest.mark.interop

#: §8.3, happy path: FetchResource, ExecPending, ExecSpawned, ExecFinished, UploadResult,
#: UploadFinishedResult, UploadResultFinished, TaskCommitted.
HAPPY_STATES = ["1", "10", "11", "12", "14", "15", "17", "19"]
#: §6.2: a resource 404 ends with FetchResourceNotFound, TaskCommitted.
NOT_FOUND_STATES = ["1", "5", "19"]


def client_redis_url(client: Any) -> str:
    """The `mitosis_client` URL the coordinator hands to users."""
    url = client.get_redis_connection_info().url
    assert url is not None, "the coordinator offers no Redis"
    return str(url)


def test_exec_states_in_redis(mito_redis: Mito, impl: str) -> None:
    """The worker publishes §8.3's states on `task:<uuid>`; read back as `mitosis_client`."""
    from pynetmito import RemoteResource, RemoteResourceDownload

    mito = mito_redis
    user, client = mito.new_user()
    url = client_redis_url(client)
    assert "mitosis_client" in url
    happy = mito.submit(client, user, ["sh", "-c", 'echo x > "$MITO_RESULT_DIR/x"'])
    missing = RemoteResourceDownload(
        remote_file=RemoteResource.attachment("absent"), local_path="absent"
    )
    not_found = mito.submit(client, user, ["true"], resources=[missing])
    channels = [f"task:{happy}", f"task:{not_found}"]
    with Subscription(url, channels) as subscription:
        mito.start_worker(impl, groups=[user])
        for uuid in (happy, not_found):
            mito.wait_committed(client, uuid)
        wait_until(
            lambda: all(subscription.payloads(c)[-1:] == ["19"] for c in channels),
            timeout=10,
            what="TaskCommitted on both channels",
        )
    assert subscription.payloads(channels[0]) == HAPPY_STATES
    assert subscription.payloads(channels[1]) == NOT_FOUND_STATES
    reader = RespClient(url)
    try:
        for channel in channels:
            assert reader.command("GET", channel) == "19"
            assert 0 < reader.command("TTL", channel) <= 60
    finally:
        reader.close()


def test_watch_through_redis(mito_redis: Mito, impl: str) -> None:
    """A task watching another one starts once that one reached ExecFinished."""
    mito = mito_redis
    user, client = mito.new_user()
    url = client_redis_url(client)
    done = mito.tmp / "upstream-done"
    upstream = mito.submit(client, user, ["sh", "-c", f"sleep 1; touch {done}"], tags=["upstream"])
    watcher = mito.submit(
        client,
        user,
        ["test", "-e", str(done)],
        tags=["watcher"],
        watch=(upstream, "ExecFinished"),
    )
    with Subscription(url, [f"task:{watcher}"]) as subscription:
        mito.start_worker(impl, groups=[user], tags=["watcher"])
        wait_until(
            lambda: mito.task(client, watcher).info.state != "Ready",
            timeout=30,
            what="the watching task to be fetched",
        )
        sleep_polls(2)
        assert mito.task(client, watcher).info.result is None, "ran without waiting"
        mito.start_worker(impl, groups=[user], tags=["upstream"])
        task = mito.wait_committed(client, watcher, timeout=30)
        wait_until(
            lambda: subscription.payloads(f"task:{watcher}")[-1:] == ["19"],
            timeout=10,
            what="TaskCommitted",
        )
    assert (task.info.state, task.info.result.exit_status) == ("Finished", 0)
    states = subscription.payloads(f"task:{watcher}")
    # Watch (7) before the execution states; ours adds WatchFinished (8), §13.13.
    assert states[:2] == ["1", "7"]
    assert states[2:] in (HAPPY_STATES[1:], ["8", *HAPPY_STATES[1:]])
    if impl == "ours":
        assert states[2] == "8"
