"""What a scenario uses: users and clients (pynetmito), tasks, artifacts, worker processes."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ._stack import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Coordinator,
    Proc,
    WorkerProc,
    md5_list,
    unique,
    wait_until,
    worker_argv,
    worker_env,
)

#: Processes whose log tails are attached to a failing test's report.
LOGS = pytest.StashKey[list[Proc]]()


class Mito:
    """One test's view of a coordinator: users, clients, tasks and worker processes."""

    def __init__(self, coordinator: Coordinator, tmp: Path, request: pytest.FixtureRequest):
        from pynetmito import CreateUserReq

        self.coordinator = coordinator
        self.url = coordinator.url
        self.tmp = tmp
        self._logs = request.node.stash.setdefault(LOGS, [])
        if coordinator.proc is not None and coordinator.proc not in self._logs:
            self._logs.append(coordinator.proc)
        self.workers: list[WorkerProc] = []
        self.admin = self.client(ADMIN_USER, ADMIN_PASSWORD)
        self._create_user_req = CreateUserReq

    # users and clients

    def client(self, user: str, password: str) -> Any:
        from pynetmito import MitoHttpClient

        client = MitoHttpClient(self.url)
        client.connect(
            credential_path=self.tmp / f"credentials-{user}", user=user, password=password
        )
        return client

    def new_user(self, prefix: str = "u") -> tuple[str, Any]:
        """A fresh user (owning a group of its name) and a client logged in as it."""
        name = unique(prefix)
        self.admin.admin_create_user(
            self._create_user_req(username=name, md5_password=md5_list(name), admin=False)
        )
        return name, self.client(name, name)

    # workers

    def start_worker(
        self,
        impl: str,
        *,
        groups: Sequence[str] = (),
        tags: Sequence[str] = (),
        labels: Sequence[str] = (),
        lifetime: str | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
    ) -> WorkerProc:
        """A worker logged in as a user of its own (a login rotates that user's tokens)."""
        user = unique("w")
        self.admin.admin_create_user(
            self._create_user_req(username=user, md5_password=md5_list(user), admin=False)
        )
        home = self.tmp / f"worker-{user}"
        (home / "run").mkdir(parents=True)
        argv = worker_argv(
            impl,
            coordinator=self.url,
            user=user,
            password=user,
            credential_path=home / "credentials",
            groups=groups,
            tags=tags,
            labels=labels,
            lifetime=lifetime,
            extra=extra,
        )
        proc = Proc.start(
            f"{impl} worker {user}",
            argv,
            log_path=home / "worker.log",
            cwd=home / "run",
            env=worker_env(home),
        )
        worker = WorkerProc(impl, user, proc, home)
        self.workers.append(worker)
        self._logs.append(proc)
        if wait:
            worker.wait_registered()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.proc.stop(term_timeout=10)

    # tasks

    def submit(
        self,
        client: Any,
        group: str,
        args: Sequence[str],
        *,
        timeout: float = 60,
        tags: Sequence[str] = (),
        labels: Sequence[str] = (),
        envs: dict[str, str] | None = None,
        resources: Sequence[Any] = (),
        terminal_output: bool = False,
        watch: tuple[str, str] | None = None,
        priority: int = 0,
    ) -> str:
        """Submit one task through `POST /tasks/submit`; returns its UUID."""
        from pynetmito import SubmitTaskReq
        from pynetmito.schemas import TaskSpec, TasksSubmitReq

        spec = TaskSpec(
            args=list(args),
            envs=envs or {},
            resources=list(resources),
            terminal_output=terminal_output,
            watch=watch,
        )
        request = SubmitTaskReq(
            group_name=group,
            tags=set(tags),
            labels=set(labels),
            timeout=timeout,
            priority=priority,
            task_spec=spec,
        )
        response = client.batch_submit_tasks(TasksSubmitReq(tasks=[request]))
        result = response.results[0]
        assert hasattr(result, "uuid"), f"submission refused: {result}"
        return str(result.uuid)

    def task(self, client: Any, uuid: str) -> Any:
        return client.get_task_by_uuid(uuid)

    def wait_committed(self, client: Any, uuid: str, timeout: float = 60) -> Any:
        """The task once a worker committed it (`result` set)."""

        def committed() -> Any:
            task = client.get_task_by_uuid(uuid)
            return task if task.info.result is not None else None

        return wait_until(committed, timeout=timeout, what=f"the commit of task {uuid}")

    def wait_state(self, client: Any, uuid: str, state: str, timeout: float = 60) -> Any:
        def reached() -> Any:
            task = client.get_task_by_uuid(uuid)
            return task if task.info.state == state else None

        return wait_until(reached, timeout=timeout, what=f"task {uuid} to be {state}")

    def artifact(self, client: Any, uuid: str, content_type: str) -> dict[str, bytes | None]:
        """Download an artifact with pynetmito; member name -> content (None: not a file)."""
        from pynetmito import ArtifactContentType

        path = self.tmp / f"{uuid}-{content_type}.tar.gz"
        client.download_artifact(uuid, ArtifactContentType(content_type), local_path=path)
        members: dict[str, bytes | None] = {}
        with tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:gz") as archive:
            for member in archive.getmembers():
                data = archive.extractfile(member) if member.isfile() else None
                members[member.name] = None if data is None else data.read()
        return members


def sleep_polls(count: int = 3) -> None:
    """Give idle workers `count` polling intervals (1 s each) to pick up a task."""
    time.sleep(count * 1.0 + 0.5)
