"""`is_reach`: has a watched task reached the state another task waits for? (§4.6, §4.7)"""

from __future__ import annotations

from .wire import TaskExecState as S
from .wire import TaskResultMessage as M
from .wire import TaskResultSpec, TaskState


def _span(first: int, last: int) -> frozenset[S]:
    return frozenset(S(n) for n in range(first, last + 1))


#: For each target, the latest announced states that count as having reached it (§4.6).
_EXEC_REACHED: dict[S, frozenset[S]] = {
    S.WorkerExited: frozenset(),
    S.FetchResource: _span(1, 19),
    S.FetchResourceFinished: frozenset({S.FetchResourceFinished}) | _span(7, 19),
    S.FetchResourceError: frozenset({S.FetchResourceError}),
    S.FetchResourceTimeout: frozenset({S.FetchResourceTimeout}),
    S.FetchResourceNotFound: frozenset({S.FetchResourceNotFound}),
    S.FetchResourceForbidden: frozenset({S.FetchResourceForbidden}),
    S.Watch: _span(7, 19),
    S.WatchFinished: frozenset({S.WatchFinished}) | _span(10, 19),
    S.WatchTimeout: frozenset({S.WatchTimeout}),
    S.ExecPending: _span(10, 19),
    S.ExecSpawned: _span(11, 19),
    S.ExecFinished: frozenset({S.ExecFinished, S.UploadFinishedResult}),
    S.ExecTimeout: frozenset({S.ExecTimeout, S.UploadCancelledResult}),
    S.UploadResult: _span(14, 19),
    S.UploadFinishedResult: frozenset({S.UploadFinishedResult}),
    S.UploadCancelledResult: frozenset({S.UploadCancelledResult}),
    S.UploadResultFinished: frozenset({S.UploadResultFinished}),
    S.UploadResultTimeout: frozenset({S.UploadResultTimeout}),
    S.TaskCommitted: frozenset({S.TaskCommitted}),
    S.Unknown: frozenset(),
}


def exec_state_reaches(current: S, target: S) -> bool:
    """Whether a task whose latest announced state is `current` has reached `target`."""
    return current in _EXEC_REACHED[target]


_FINISHED_REACHES = frozenset(
    {
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
)
_FINISHED_WITH_RESULT = frozenset({S.UploadResultFinished, S.TaskCommitted})

_ALL_BUT_USER = frozenset(M) - {M.UserCancellation}
#: For a Cancelled task with a result message: the messages that reach each target (§4.7).
_CANCELLED_REACHED: dict[S, frozenset[M]] = {
    S.FetchResource: frozenset({M.SubmitNewTaskFailed}),
    S.FetchResourceFinished: frozenset({M.SubmitNewTaskFailed}),
    S.Watch: frozenset({M.SubmitNewTaskFailed}),
    S.WatchFinished: frozenset({M.SubmitNewTaskFailed}),
    S.ExecPending: frozenset({M.SubmitNewTaskFailed}),
    S.ExecSpawned: frozenset({M.SubmitNewTaskFailed}),
    S.ExecFinished: frozenset({M.SubmitNewTaskFailed}),
    S.FetchResourceTimeout: frozenset({M.FetchResourceTimeout}),
    S.FetchResourceNotFound: frozenset({M.ResourceNotFound}),
    S.FetchResourceForbidden: frozenset({M.ResourceForbidden}),
    S.WatchTimeout: frozenset({M.WatchTimeout}),
    S.ExecTimeout: frozenset({M.ExecTimeout}),
    S.UploadResult: _ALL_BUT_USER,
    S.UploadResultFinished: _ALL_BUT_USER,
    S.UploadCancelledResult: _ALL_BUT_USER - {M.SubmitNewTaskFailed},
    S.UploadResultTimeout: frozenset({M.UploadResultTimeout}),
    S.TaskCommitted: frozenset(M),
}


def task_state_reaches(state: TaskState, target: S, result: TaskResultSpec | None) -> bool:
    """`TaskState.is_reach`: the HTTP view of the same question, from a task query (§4.7)."""
    if state is TaskState.Running:
        return target is S.FetchResource
    if state is TaskState.Finished:
        if target in _FINISHED_REACHES:
            return True
        return target in _FINISHED_WITH_RESULT and result is not None
    if state is TaskState.Cancelled:
        if result is None or result.msg is None:
            return False
        return result.msg in _CANCELLED_REACHED.get(target, frozenset())
    return False
