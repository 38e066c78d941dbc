"""Fixtures of the interop suite: the real coordinator 0.6.8 and both workers.

Run with `nox -s interop` or `pytest -m interop tests/interop`. Needs PostgreSQL and Redis
on loopback, `~/.cargo/bin/mito` 0.6.8 and the `interop` extra (see docs/interop.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._mito import LOGS, Mito
from ._stack import REDIS_HOST, REDIS_PORT, Coordinator, SeaweedFS, ServiceError, port_open


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without the `interop` extra, skip importing these modules unless they were asked for."""
    if importlib.util.find_spec("pynetmito") is not None:
        return None
    if "interop" in (config.getoption("markexpr") or "") and "not interop" not in (
        config.getoption("markexpr") or ""
    ):
        return None  # asked for: let the ImportError show
    return collection_path.suffix == ".py" and collection_path.name.startswith("test_")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for proc in item.stash.get(LOGS, []):
            report.sections.append((f"log tail: {proc.name} (pid {proc.pid})", proc.tail(60)))
    return report


def _fail_setup(exc: Exception) -> None:
    pytest.fail(f"interop service failed to start: {exc}", pytrace=False)


# --- session services ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    service = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        service.start()
    except ServiceError as exc:
        service.stop()
        _fail_setup(exc)
    yield service
    service.stop()


def _coordinator(root: Path, seaweed: SeaweedFS, redis_url: str | None) -> Iterator[Coordinator]:
    service = Coordinator(root, seaweed.s3_url, redis_url=redis_url)
    try:
        service.start()
    except ServiceError as exc:
        service.stop()
        _fail_setup(exc)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def coordinator(
    tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedFS
) -> Iterator[Coordinator]:
    """The coordinator without Redis."""
    yield from _coordinator(tmp_path_factory.mktemp("coordinator"), seaweed, None)


@pytest.fixture(scope="session")
def redis_coordinator(
    tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedFS
) -> Iterator[Coordinator]:
    """A second coordinator (own database) with `redis_url` set."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        pytest.fail(f"Redis is not listening on {REDIS_HOST}:{REDIS_PORT}", pytrace=False)
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}"
    yield from _coordinator(tmp_path_factory.mktemp("coordinator-redis"), seaweed, redis_url)


# --- per test -----------------------------------------------------------------------------


@pytest.fixture(params=["ours", "rust"])
def impl(request: pytest.FixtureRequest) -> str:
    """Which worker runs the scenario; tests with an expected difference re-parametrize."""
    return str(request.param)


@pytest.fixture
def mito(
    coordinator: Coordinator, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Mito]:
    deployment = Mito(coordinator, tmp_path, request)
    yield deployment
    deployment.stop_all()


@pytest.fixture
def mito_redis(
    redis_coordinator: Coordinator, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Mito]:
    deployment = Mito(redis_coordinator, tmp_path, request)
    yield deployment
    deployment.stop_all()
