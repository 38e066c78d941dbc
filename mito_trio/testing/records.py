"""The in-memory state of the local coordinator, open for tests to inspect."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import attrs

from mito_trio import wire

from .object_store import StoredObject

__all__ = [
    "ENDPOINTS",
    "REPORT_OPS",
    "ArtifactRecord",
    "Fault",
    "GroupRole",
    "RejectedPut",
    "RequestRecord",
    "TaskRecord",
    "UserRecord",
    "WorkerRecord",
    "WorkerState",
]

#: Names of the endpoints, as used by `inject` and `RequestRecord.endpoint`.
ENDPOINTS = frozenset(
    {
        "auth",
        "login",
        "register",
        "heartbeat",
        "fetch",
        "report",
        "locate_artifact",
        "locate_attachment",
        "query_task",
        "unregister",
        "store_put",
        "store_get",
    }
)
REPORT_OPS = frozenset({"Finish", "Cancel", "Upload", "Commit", "Submit"})


class GroupRole(enum.Enum):
    """A worker's role in a group; only Write and Admin receive tasks (§4.9)."""

    Read = "Read"
    Write = "Write"
    Admin = "Admin"


class WorkerState(enum.Enum):
    """Coordinator-side worker state (§4.9)."""

    Normal = "Normal"
    GracefulShutdown = "GracefulShutdown"


@attrs.define
class UserRecord:
    """A user; `signature` is embedded in its tokens and rotated by `retain: false`."""

    name: str
    password: str
    signature: int
    active: bool = True
    login_count: int = 0


@attrs.define
class WorkerRecord:
    """A registered worker; kept after removal with `removed` set and the reason why."""

    uuid: UUID
    user: str
    tags: frozenset[str]
    labels: frozenset[str]
    groups: dict[str, GroupRole]
    lifetime: float
    token_expires_at: float
    heartbeat_deadline: float | None
    state: WorkerState = WorkerState.Normal
    assigned_task: UUID | None = None
    heartbeats: int = 0
    fetches: int = 0
    fetch_while_holding: int = 0
    removed: bool = False
    removed_reason: str | None = None

    def can_run(self, task: TaskRecord) -> bool:
        """Whether dispatch may hand `task` to this worker (§12.2)."""
        role = self.groups.get(task.group)
        return role in (GroupRole.Write, GroupRole.Admin) and task.tags <= self.tags


@attrs.define
class ArtifactRecord:
    """An artifact row: created by the Upload report, filled by the PUT that follows."""

    content_type: wire.ArtifactContentType
    size: int
    key: str
    created_at: datetime
    updated_at: datetime
    stored: StoredObject | None = None
    upload_requests: int = 0


@attrs.define
class TaskRecord:
    """A task, active or archived (committed)."""

    uuid: UUID
    id: int
    task_id: int
    creator: str
    group: str
    tags: frozenset[str]
    labels: frozenset[str]
    timeout: float
    priority: int
    spec: wire.TaskSpec
    created_at: datetime
    updated_at: datetime
    touched_at: float
    state: wire.TaskState = wire.TaskState.Ready
    result: wire.TaskResultSpec | None = None
    upstream: UUID | None = None
    downstream: UUID | None = None
    assigned_worker: UUID | None = None
    reporter: UUID | None = None
    archived: bool = False
    queue_seq: int = 0
    reports: list[wire.ReportOp] = attrs.field(factory=list)
    artifacts: dict[wire.ArtifactContentType, ArtifactRecord] = attrs.field(factory=dict)
    runs: int = 0

    @property
    def committed(self) -> bool:
        """The task was committed (archived with a result)."""
        return self.archived


@attrs.define
class Fault:
    """An injected misbehaviour for the next `times` matching requests."""

    endpoint: str
    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    times: int = 1
    op: str | None = None
    body: bytes | None = None
    process: bool = False
    hits: int = 0

    @property
    def remaining(self) -> int:
        """How many more requests this fault will hit."""
        return self.times - self.hits

    def matches(self, endpoint: str, op: str | None) -> bool:
        """Whether a request to `endpoint` (a report with `op`) should hit this fault."""
        return (
            self.remaining > 0 and self.endpoint == endpoint and (self.op is None or self.op == op)
        )


@attrs.define
class RequestRecord:
    """One request as it arrived; `status` is None until answered, and stays None if dropped.

    `time` is when the request head arrived; `answered` is when the answer (or the drop) was
    decided, after the handler read the body, so for a PUT it marks the end of the upload.
    """

    method: str
    path: str
    target: str
    endpoint: str | None
    time: float
    chunked: bool
    content_length: int | None
    status: int | None = None
    dropped: bool = False
    fault: Fault | None = None
    op: str | None = None
    answered: float | None = None


@attrs.define
class RejectedPut:
    """A presigned PUT refused because of its framing or length."""

    path: str
    reason: str
    signed_length: int | None
    content_length: int | None
    chunked: bool
