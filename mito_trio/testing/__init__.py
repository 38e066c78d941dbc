"""Test and demo tools: an in-process coordinator that speaks the worker protocol."""

from .local_coordinator import LocalCoordinator
from .object_store import StoredObject
from .records import (
    ENDPOINTS,
    ArtifactRecord,
    Fault,
    GroupRole,
    RejectedPut,
    RequestRecord,
    TaskRecord,
    UserRecord,
    WorkerRecord,
    WorkerState,
)

__all__ = [
    "ENDPOINTS",
    "ArtifactRecord",
    "Fault",
    "GroupRole",
    "LocalCoordinator",
    "RejectedPut",
    "RequestRecord",
    "StoredObject",
    "TaskRecord",
    "UserRecord",
    "WorkerRecord",
    "WorkerState",
]
