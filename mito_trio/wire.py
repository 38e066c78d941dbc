"""Wire types of the coordinator API (PROTOCOL.md §3-§4) and the one converter for them.

Every JSON body the worker sends or reads is an attrs class here, structured and unstructured
by `converter`. Optional fields go out as an explicit `null`, enums with data are externally
tagged (`{"Commit": {...}}`), and missing optional keys read as their defaults.
"""

from __future__ import annotations

import enum
import json
from typing import Any, TypeVar
from uuid import UUID

import attrs
import cattrs

__all__ = [
    "ArtifactContentType",
    "ArtifactRef",
    "AttachmentRef",
    "Commit",
    "LoginReq",
    "LoginResp",
    "RegisterWorkerReq",
    "RegisterWorkerResp",
    "RemoteResource",
    "RemoteResourceDownload",
    "RemoteResourceDownloadResp",
    "ReportOp",
    "ReportTaskReq",
    "ReportTaskResp",
    "SimpleOp",
    "Submit",
    "SubmitTaskReq",
    "TaskExecState",
    "TaskQueryResult",
    "TaskResultMessage",
    "TaskResultSpec",
    "TaskSpec",
    "TaskState",
    "Upload",
    "WireError",
    "WorkerTaskResp",
    "converter",
    "dumps",
    "loads",
]

T = TypeVar("T")


class WireError(ValueError):
    """A JSON body that does not have the shape the protocol promises."""


class ArtifactContentType(enum.Enum):
    """The three artifact kinds; values are the canonical JSON/URL spellings (§4.5)."""

    RESULT = "result"
    EXEC_LOG = "exec-log"
    STD_LOG = "std-log"

    @property
    def archive_name(self) -> str:
        """File name of the archive, also its storage key suffix."""
        return f"{self.value}.tar.gz"


class TaskExecState(enum.IntEnum):
    """Execution states announced through Redis (§4.6); JSON uses the names."""

    WorkerExited = -1
    FetchResource = 1
    FetchResourceFinished = 2
    FetchResourceError = 3
    FetchResourceTimeout = 4
    FetchResourceNotFound = 5
    FetchResourceForbidden = 6
    Watch = 7
    WatchFinished = 8
    WatchTimeout = 9
    ExecPending = 10
    ExecSpawned = 11
    ExecFinished = 12
    ExecTimeout = 13
    UploadResult = 14
    UploadFinishedResult = 15
    UploadCancelledResult = 16
    UploadResultFinished = 17
    UploadResultTimeout = 18
    TaskCommitted = 19
    Unknown = -99

    @classmethod
    def from_number(cls, number: int) -> TaskExecState:
        """Map a Redis number to a state; numbers outside the table are Unknown."""
        try:
            return cls(number)
        except ValueError:
            return cls.Unknown


class TaskState(enum.Enum):
    """Coordinator-side task state (§4.7)."""

    Pending = "Pending"
    Ready = "Ready"
    Running = "Running"
    Finished = "Finished"
    Cancelled = "Cancelled"
    Unknown = "Unknown"


class TaskResultMessage(enum.Enum):
    """The `msg` of a committed result (§4.8)."""

    FetchResourceTimeout = "FetchResourceTimeout"
    ExecTimeout = "ExecTimeout"
    UploadResultTimeout = "UploadResultTimeout"
    ResourceNotFound = "ResourceNotFound"
    ResourceForbidden = "ResourceForbidden"
    WatchTimeout = "WatchTimeout"
    UserCancellation = "UserCancellation"
    SubmitNewTaskFailed = "SubmitNewTaskFailed"


# --- authentication and registration -------------------------------------------------------


@attrs.frozen(repr=False)
class LoginReq:
    """`POST /login` body; the password travels as the 16 bytes of its MD5 digest."""

    username: str
    md5_password: list[int]
    retain: bool

    def __repr__(self) -> str:
        return f"LoginReq(username={self.username!r}, retain={self.retain!r})"


@attrs.frozen(repr=False)
class LoginResp:
    """`POST /login` answer."""

    token: str

    def __repr__(self) -> str:
        return "LoginResp(token=<hidden>)"


@attrs.frozen
class RegisterWorkerReq:
    """`POST /workers` body (§3.3)."""

    tags: list[str]
    labels: list[str]
    groups: list[str]
    lifetime: str | None = None


@attrs.frozen(repr=False)
class RegisterWorkerResp:
    """`POST /workers` answer: the worker's identity and its own token."""

    worker_id: UUID
    token: str
    redis_url: str | None = None

    def __repr__(self) -> str:
        return f"RegisterWorkerResp(worker_id={self.worker_id}, redis={self.redis_url is not None})"


# --- tasks ---------------------------------------------------------------------------------


@attrs.frozen
class ArtifactRef:
    """An artifact of another task used as a resource."""

    uuid: UUID
    content_type: ArtifactContentType


@attrs.frozen
class AttachmentRef:
    """An attachment of the task's group used as a resource."""

    key: str


RemoteResource = ArtifactRef | AttachmentRef


@attrs.frozen
class RemoteResourceDownload:
    """A file to fetch into `MITO_RESOURCE_DIR/<local_path>` before the task runs."""

    remote_file: RemoteResource
    local_path: str


@attrs.frozen
class TaskSpec:
    """What to run (§4.1); only `args` is required on the wire."""

    args: list[str]
    envs: dict[str, str] = attrs.field(factory=dict)
    resources: list[RemoteResourceDownload] = attrs.field(factory=list)
    terminal_output: bool = False
    watch: tuple[UUID, TaskExecState] | None = None


@attrs.frozen
class WorkerTaskResp:
    """A task handed out by `GET /workers/tasks`."""

    id: int
    uuid: UUID
    timeout: str
    spec: TaskSpec
    upstream_task_uuid: UUID | None = None


@attrs.frozen
class SubmitTaskReq:
    """A downstream task (`MITO_NEW_TASK`, §4.3); all six keys are required."""

    group_name: str
    tags: list[str]
    labels: list[str]
    timeout: str
    priority: int
    task_spec: TaskSpec


@attrs.frozen
class TaskResultSpec:
    """The result stored by Commit."""

    exit_status: int
    msg: TaskResultMessage | None = None


@attrs.frozen
class RemoteResourceDownloadResp:
    """Where to download a resource from."""

    url: str
    size: int


@attrs.frozen
class TaskQueryResult:
    """The two fields of `GET /workers/tasks/{uuid}` that the watch fallback reads."""

    state: TaskState
    result: TaskResultSpec | None


# --- reports -------------------------------------------------------------------------------


class SimpleOp(enum.Enum):
    """Report operations without data."""

    Finish = "Finish"
    Cancel = "Cancel"


@attrs.frozen
class Upload:
    """Ask for a presigned PUT URL for one archive."""

    content_type: ArtifactContentType
    content_length: int


@attrs.frozen
class Commit:
    """Store the task's result and archive it."""

    exit_status: int
    msg: TaskResultMessage | None = None


@attrs.frozen
class Submit:
    """Submit a downstream task on behalf of the running one."""

    request: SubmitTaskReq


ReportOp = SimpleOp | Upload | Commit | Submit


@attrs.frozen
class ReportTaskReq:
    """`POST /workers/tasks` body; `id` is the internal task id."""

    id: int
    op: ReportOp


@attrs.frozen
class ReportTaskResp:
    """Report answer; `url` is set only for Upload."""

    url: str | None = None


# --- the converter -------------------------------------------------------------------------

converter = cattrs.Converter(forbid_extra_keys=False)


def _strict(kind: type[T]) -> Any:
    # serde is strict about JSON types; cattrs would happily turn "false" into True.
    def structure(value: Any, _: Any) -> T:
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise WireError(f"expected {kind.__name__}, got {value!r}")
        return value  # type: ignore[return-value]

    return structure


for _kind in (bool, int, str, float):
    converter.register_structure_hook(_kind, _strict(_kind))

converter.register_structure_hook(UUID, lambda value, _: UUID(_expect_str(value, "UUID")))
converter.register_unstructure_hook(UUID, str)
converter.register_structure_hook(
    TaskExecState, lambda value, _: TaskExecState[_expect_str(value, "TaskExecState")]
)
converter.register_unstructure_hook(TaskExecState, lambda state: state.name)


def _expect_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string, got {value!r}")
    return value


def _structure_remote_resource(value: Any, _: Any) -> RemoteResource:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "Artifact":
            return converter.structure(body, ArtifactRef)
        if tag == "Attachment":
            return converter.structure(body, AttachmentRef)
    raise WireError(f"not a RemoteResource: {value!r}")


def _unstructure_remote_resource(value: RemoteResource) -> dict[str, Any]:
    tag = "Artifact" if isinstance(value, ArtifactRef) else "Attachment"
    return {tag: converter.unstructure(value)}


converter.register_structure_hook(RemoteResource, _structure_remote_resource)
converter.register_unstructure_hook(
    ArtifactRef, lambda ref: {"uuid": str(ref.uuid), "content_type": ref.content_type.value}
)
converter.register_unstructure_hook(AttachmentRef, lambda ref: {"key": ref.key})


def _structure_watch(value: Any, _: Any) -> tuple[UUID, TaskExecState] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        return converter.structure(value[0], UUID), converter.structure(value[1], TaskExecState)
    raise WireError(f"watch must be [uuid, state] or null, got {value!r}")


converter.register_structure_hook(tuple[UUID, TaskExecState] | None, _structure_watch)


def _unstructure_op(op: ReportOp) -> Any:
    if isinstance(op, SimpleOp):
        return op.value
    if isinstance(op, Submit):
        return {"Submit": converter.unstructure(op.request)}
    return {type(op).__name__: converter.unstructure(op)}


def _unstructure_report(req: ReportTaskReq) -> dict[str, Any]:
    return {"id": req.id, "op": _unstructure_op(req.op)}


converter.register_unstructure_hook(ReportTaskReq, _unstructure_report)


def _structure_op(value: Any, _: Any) -> ReportOp:
    if isinstance(value, str):
        return SimpleOp(value)
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "Upload":
            return converter.structure(body, Upload)
        if tag == "Commit":
            return converter.structure(body, Commit)
        if tag == "Submit":
            return Submit(converter.structure(body, SubmitTaskReq))
    raise WireError(f"not a report op: {value!r}")


converter.register_structure_hook(ReportOp, _structure_op)
converter.register_unstructure_hook(
    RemoteResourceDownload,
    lambda download: {
        "remote_file": _unstructure_remote_resource(download.remote_file),
        "local_path": download.local_path,
    },
)


def _structure_query(value: Any, _: Any) -> TaskQueryResult:
    info = value.get("info") if isinstance(value, dict) else None
    if not isinstance(info, dict):
        raise WireError("task query answer has no `info` object")
    result = info.get("result")
    return TaskQueryResult(
        state=converter.structure(info.get("state"), TaskState),
        result=None if result is None else converter.structure(result, TaskResultSpec),
    )


converter.register_structure_hook(TaskQueryResult, _structure_query)


def loads(data: bytes | str, cls: type[T]) -> T:
    """Parse a JSON body into `cls`, raising `WireError` when it does not fit."""
    try:
        return converter.structure(json.loads(data), cls)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError, cattrs.BaseValidationError) as exc:
        raise WireError(f"cannot read {cls.__name__}: {_describe(exc)}") from exc


def dumps(value: object) -> bytes:
    """Serialise a wire object to compact JSON."""
    return json.dumps(converter.unstructure(value), separators=(",", ":")).encode()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    return str(exc) or type(exc).__name__
