"""`reach.py` against the tables of PROTOCOL.md §4.6 (Redis states) and §4.7 (task states).

The expectations are written out from the spec's tables, independently of the module's own
tables, and every (state, target) pair is checked.
"""

from __future__ import annotations

import pytest

from mito_trio.reach import exec_state_reaches, task_state_reaches
from mito_trio.wire import TaskExecState as S
from mito_trio.wire import TaskResultMessage as M
from mito_trio.wire import TaskResultSpec, TaskState

ALL_STATES = list(S)
ALL_MESSAGES = list(M)


def numbers(*items: int | tuple[int, int]) -> set[S]:
    """States by number: single values and inclusive (first, last) ranges."""
    out: set[S] = set()
    for item in items:
        if isinstance(item, tuple):
            out.update(S(n) for n in range(item[0], item[1] + 1))
        else:
            out.add(S(item))
    return out


#: §4.6 "Reached when current ∈", verbatim.
EXEC_TABLE: dict[S, set[S]] = {
    S.WorkerExited: set(),
    S.FetchResource: numbers((1, 19)),
    S.FetchResourceFinished: numbers(2, (7, 19)),
    S.FetchResourceError: numbers(3),
    S.FetchResourceTimeout: numbers(4),
    S.FetchResourceNotFound: numbers(5),
    S.FetchResourceForbidden: numbers(6),
    S.Watch: numbers((7, 19)),
    S.WatchFinished: numbers(8, (10, 19)),
    S.WatchTimeout: numbers(9),
    S.ExecPending: numbers((10, 19)),
    S.ExecSpawned: numbers((11, 19)),
    S.ExecFinished: numbers(12, 15),
    S.ExecTimeout: numbers(13, 16),
    S.UploadResult: numbers((14, 19)),
    S.UploadFinishedResult: numbers(15),
    S.UploadCancelledResult: numbers(16),
    S.UploadResultFinished: numbers(17),
    S.UploadResultTimeout: numbers(18),
    S.TaskCommitted: numbers(19),
    S.Unknown: set(),
}


def test_exec_table_covers_every_target() -> None:
    assert set(EXEC_TABLE) == set(S)


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_exec_state_reaches_matches_the_table(target: S) -> None:
    reached = {current for current in ALL_STATES if exec_state_reaches(current, target)}
    assert reached == EXEC_TABLE[target]


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_worker_exited_and_unknown_never_reach(target: S) -> None:
    assert not exec_state_reaches(S.WorkerExited, target)
    assert not exec_state_reaches(S.Unknown, target)


def test_unlisted_numbers_map_to_unknown() -> None:
    assert S.from_number(0) is S.Unknown
    assert S.from_number(20) is S.Unknown
    assert S.from_number(-2) is S.Unknown
    assert S.from_number(12) is S.ExecFinished


# --- §4.7 ---------------------------------------------------------------------------------

FINISHED_ALWAYS = {
    S.FetchResource,
    S.FetchResourceFinished,
    S.Watch,
    S.WatchFinished,
    S.ExecPending,
    S.ExecSpawned,
    S.ExecFinished,
    S.UploadResult,
    S.UploadFinishedResult,
}
FINISHED_WITH_RESULT = {S.UploadResultFinished, S.TaskCommitted}

#: §4.7 table for Cancelled with a non-null `msg`.
ALL_BUT_USER = set(M) - {M.UserCancellation}
CANCELLED_TABLE: dict[S, set[M]] = {
    S.WorkerExited: set(),
    S.FetchResourceError: set(),
    S.UploadFinishedResult: set(),
    S.Unknown: set(),
    **{
        target: {M.SubmitNewTaskFailed}
        for target in (
            S.FetchResource,
            S.FetchResourceFinished,
            S.Watch,
            S.WatchFinished,
            S.ExecPending,
            S.ExecSpawned,
            S.ExecFinished,
        )
    },
    S.FetchResourceTimeout: {M.FetchResourceTimeout},
    S.FetchResourceNotFound: {M.ResourceNotFound},
    S.FetchResourceForbidden: {M.ResourceForbidden},
    S.WatchTimeout: {M.WatchTimeout},
    S.ExecTimeout: {M.ExecTimeout},
    S.UploadResult: ALL_BUT_USER,
    S.UploadResultFinished: ALL_BUT_USER,
    S.UploadCancelledResult: ALL_BUT_USER - {M.SubmitNewTaskFailed},
    S.UploadResultTimeout: {M.UploadResultTimeout},
    S.TaskCommitted: set(M),
}

RESULTS: list[TaskResultSpec | None] = [
    None,
    TaskResultSpec(0, None),
    *(TaskResultSpec(0, msg) for msg in ALL_MESSAGES),
]


def test_cancelled_table_covers_every_target() -> None:
    assert set(CANCELLED_TABLE) == set(S)


@pytest.mark.parametrize("state", [TaskState.Pending, TaskState.Ready, TaskState.Unknown])
@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_waiting_and_unknown_tasks_never_reach(state: TaskState, target: S) -> None:
    for result in RESULTS:
        assert not task_state_reaches(state, target, result)


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_running_reaches_only_fetch_resource(target: S) -> None:
    for result in RESULTS:
        assert task_state_reaches(TaskState.Running, target, result) == (target is S.FetchResource)


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_finished(target: S) -> None:
    for result in RESULTS:
        expected = target in FINISHED_ALWAYS or (
            target in FINISHED_WITH_RESULT and result is not None
        )
        assert task_state_reaches(TaskState.Finished, target, result) == expected, result


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_cancelled_without_message_never_reaches(target: S) -> None:
    assert not task_state_reaches(TaskState.Cancelled, target, None)
    assert not task_state_reaches(TaskState.Cancelled, target, TaskResultSpec(0, None))


@pytest.mark.parametrize("target", ALL_STATES, ids=lambda s: s.name)
def test_cancelled_with_message_matches_the_table(target: S) -> None:
    reached = {
        msg
        for msg in ALL_MESSAGES
        if task_state_reaches(TaskState.Cancelled, target, TaskResultSpec(15, msg))
    }
    assert reached == CANCELLED_TABLE[target]
