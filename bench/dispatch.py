"""Dispatch throughput: a queue of trivial tasks (`true`), our worker against the Rust worker.

The tasks are queued at once, just after the worker registered; it polls every 100 ms. From
the request log:

- tasks/s            = tasks / (last Commit report - the fetch that handed out the first task)
- fetch->commit      = per task, the fetch that handed it out -> its Commit report
- commit->next fetch = per task, the worker's turnaround before asking for the next one
- worker CPU per task = utime + stime of the worker process over the run / tasks (less
  sensitive to other load on the machine than the wall-clock figures)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import trio
from common import (
    Metric,
    add_common_args,
    launch_worker,
    new_coordinator,
    print_table,
    ratio_at_least,
    requested_kinds,
    run_order,
    wait_registered,
    wait_until,
    write_results,
)

NAME = "dispatch"
SETTLE_SECONDS = 0.5


async def one_run(kind: str, tasks: int) -> dict[str, float]:
    coord = new_coordinator()
    async with coord.running(), launch_worker(kind, coord) as worker:
        await wait_registered(coord, worker)
        await trio.sleep(SETTLE_SECONDS)
        cpu_start = worker.cpu_seconds()
        uuids = [coord.submit_task(["true"], timeout="1m") for _ in range(tasks)]
        records = [coord.task(uuid) for uuid in uuids]
        await wait_until(coord, lambda: all(t.archived for t in records), worker, 60 + tasks * 2.0)
        cpu = worker.cpu_seconds() - cpu_start
    bad = [t.result for t in records if t.result is None or t.result.exit_status != 0]
    if bad:
        raise RuntimeError(f"{kind}: {len(bad)} tasks failed, e.g. {bad[0]}")
    # One task at a time: the last fetch before a Commit is the one that handed that task out.
    overheads, turnarounds = [], []
    start = last_fetch = last_commit = None
    for record in coord.requests:
        if record.endpoint == "fetch":
            if last_commit is not None and last_fetch is not None and last_fetch < last_commit:
                turnarounds.append(record.time - last_commit)
            last_fetch = record.time
        elif record.endpoint == "report" and record.op == "Commit":
            assert last_fetch is not None
            start = last_fetch if start is None else start
            overheads.append(record.time - last_fetch)
            last_commit = record.time
    assert start is not None and last_commit is not None and len(overheads) == tasks
    return {
        "tasks_s": tasks / (last_commit - start),
        "median_ms": statistics.median(overheads) * 1000,
        "min_ms": min(overheads) * 1000,
        "max_ms": max(overheads) * 1000,
        "turnaround_ms": statistics.median(turnarounds) * 1000,
        "cpu_ms": cpu * 1000 / tasks,
    }


async def bench(args: argparse.Namespace) -> list[Metric]:
    kinds = requested_kinds(args)
    metrics = {
        "tasks_s": Metric(
            "throughput", "tasks/s", target="ours/rust >= 0.9", check=ratio_at_least(0.9)
        ),
        "median_ms": Metric("fetch->commit, median of tasks", "ms", digits=2),
        "min_ms": Metric("fetch->commit, fastest task", "ms", digits=2),
        "max_ms": Metric("fetch->commit, slowest task", "ms", digits=2),
        "turnaround_ms": Metric("commit->next fetch, median", "ms", digits=2),
        "cpu_ms": Metric("worker CPU per task (utime+stime)", "ms", digits=2),
    }
    for run in range(args.runs):
        for kind in run_order(kinds, run):
            figures = await one_run(kind, args.tasks)
            for key, value in figures.items():
                metrics[key].add(kind, value)
            print(
                f"  run {run + 1}/{args.runs} {kind:4s}: {figures['tasks_s']:6.1f} tasks/s,"
                f" fetch->commit median {figures['median_ms']:.2f} ms",
                flush=True,
            )
    return list(metrics.values())


def main(argv: list[str] | None = None) -> list[Metric]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--tasks", type=int, default=500, help="queued tasks (default 500)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.runs = 50, 1
    metrics = trio.run(bench, args)
    print_table(f"dispatch: {args.tasks} queued `true` tasks, polling 100 ms", metrics)
    write_results(
        NAME,
        metrics,
        {"tasks": args.tasks, "runs": args.runs, "task": ["true"], "polling_interval": "100ms"},
        notes=[
            "times are request arrivals at LocalCoordinator (RequestRecord.time)",
            "per-task figures: median/min/max over the tasks of one run, then median (min-max)"
            " of those over runs",
        ],
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
