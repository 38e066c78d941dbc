"""Running an in-process Worker to its end, for tests and tools."""

from __future__ import annotations

import trio

from ..exitcodes import ExitCode
from ..worker import Worker


async def run_worker(worker: Worker, *, stop_at: float | None = None) -> ExitCode:
    """Run `worker` until it ends, asking it to stop at `stop_at` (Trio clock) if given."""

    async def stop_later(when: float) -> None:
        await trio.sleep_until(when)
        worker.request_stop("requested by the caller")

    async with trio.open_nursery() as nursery:
        if stop_at is not None:
            nursery.start_soon(stop_later, stop_at)
        code = await worker.run()
        nursery.cancel_scope.cancel()
    return code
