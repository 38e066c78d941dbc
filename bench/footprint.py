"""Memory and CPU footprint of the worker process, ours against the Rust worker.

- idle: after registration and a short settling time, the worker polls an empty queue every
  100 ms for `--idle-seconds` (default 60); VmRSS at the end (and its largest 1 s sample), and
  CPU seconds (utime + stime from /proc/<pid>/stat) over the window. Both workers idle side
  by side, each against its own LocalCoordinator, so one run takes one window.
- peak: VmHWM of the worker process after a task that writes 1 GB to stdout with
  `terminal_output` (captured, archived as std-log and uploaded).
"""

from __future__ import annotations

import argparse
import sys

import trio
from common import (
    MB,
    Metric,
    Worker,
    add_common_args,
    launch_worker,
    new_coordinator,
    ours_below,
    print_table,
    requested_kinds,
    run_order,
    wait_registered,
    wait_until,
    write_results,
)

from mito_trio import wire

NAME = "footprint"
SETTLE_SECONDS = 3.0
LOG_LINE = "2026-11-29T12:00:00.000000Z INFO trainer[4242] step=123 loss=0.123456 acc=0.9876"
IDLE_RSS_TARGET_MB = 60
PEAK_RSS_TARGET_MB = 100


async def idle_run(kind: str, seconds: float, out: dict[str, dict[str, float]]) -> None:
    coord = new_coordinator()
    async with coord.running(), launch_worker(kind, coord) as worker:
        await wait_registered(coord, worker)
        await trio.sleep(SETTLE_SECONDS)
        cpu_start = worker.cpu_seconds()
        fetches_start = len(coord.calls("fetch"))
        largest = worker.rss_bytes()
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            await trio.sleep(min(1.0, end - trio.current_time()))
            _check_alive(worker)
            largest = max(largest, worker.rss_bytes())
        rss = worker.rss_bytes()
        cpu = worker.cpu_seconds() - cpu_start
        fetches = len(coord.calls("fetch")) - fetches_start
    out[kind] = {
        "idle_rss_mb": rss / MB,
        "idle_rss_max_mb": largest / MB,
        "idle_cpu_s": cpu,
        "idle_cpu_ms_per_fetch": cpu * 1000 / max(fetches, 1),
    }


def _check_alive(worker: Worker) -> None:
    if worker.proc.poll() is not None:
        raise RuntimeError(f"{worker.kind} worker exited; log tail:\n{worker.log_tail()}")


async def peak_run(kind: str, stdout_bytes: int) -> dict[str, float]:
    coord = new_coordinator()
    async with coord.running(), launch_worker(kind, coord) as worker:
        await wait_registered(coord, worker)
        start_rss = worker.rss_bytes()
        uuid = coord.submit_task(
            ["sh", "-c", f"yes '{LOG_LINE}' | head -c {stdout_bytes}"],
            terminal_output=True,
            timeout="30m",
        )
        task = coord.task(uuid)
        started = trio.current_time()
        await wait_until(coord, lambda: task.archived, worker, 1200)
        elapsed = trio.current_time() - started
        hwm = worker.hwm_bytes()
        after = worker.rss_bytes()
    artifact = task.artifacts.get(wire.ArtifactContentType.STD_LOG)
    if artifact is None or artifact.stored is None:
        raise RuntimeError(f"{kind}: no std-log artifact was uploaded")
    return {
        "peak_rss_mb": hwm / MB,
        "before_rss_mb": start_rss / MB,
        "after_rss_mb": after / MB,
        "task_s": elapsed,
    }


async def bench(args: argparse.Namespace) -> list[Metric]:
    kinds = requested_kinds(args)
    idle = {
        "idle_rss_mb": Metric(
            "idle RSS (VmRSS at end)",
            "MB",
            target=f"ours <= {IDLE_RSS_TARGET_MB} MB",
            check=ours_below(IDLE_RSS_TARGET_MB, inclusive=True),
        ),
        "idle_rss_max_mb": Metric("idle RSS, largest sample", "MB"),
        "idle_cpu_s": Metric(f"idle CPU over {args.idle_seconds:g} s", "s", digits=3),
        "idle_cpu_ms_per_fetch": Metric("idle CPU per empty fetch", "ms", digits=3),
    }
    peak = {
        "peak_rss_mb": Metric(
            f"peak RSS (VmHWM), {args.stdout_bytes / 1e9:g} GB stdout task",
            "MB",
            target=f"ours < {PEAK_RSS_TARGET_MB} MB",
            check=ours_below(PEAK_RSS_TARGET_MB, inclusive=False),
        ),
        "before_rss_mb": Metric("RSS before that task", "MB"),
        "after_rss_mb": Metric("RSS after that task", "MB"),
        "task_s": Metric("that task, submit->commit", "s", digits=2),
    }
    for run in range(args.runs):
        out: dict[str, dict[str, float]] = {}
        print(f"  idle run {run + 1}/{args.runs}: {args.idle_seconds:g} s ...", flush=True)
        async with trio.open_nursery() as nursery:
            for kind in kinds:
                nursery.start_soon(idle_run, kind, args.idle_seconds, out)
        for kind in kinds:
            for key, value in out[kind].items():
                idle[key].add(kind, value)
            print(
                f"    {kind:4s}: RSS {out[kind]['idle_rss_mb']:.1f} MB,"
                f" CPU {out[kind]['idle_cpu_s']:.3f} s",
                flush=True,
            )
    for run in range(args.runs):
        for kind in run_order(kinds, run):
            figures = await peak_run(kind, args.stdout_bytes)
            for key, value in figures.items():
                peak[key].add(kind, value)
            print(
                f"  peak run {run + 1}/{args.runs} {kind:4s}: VmHWM {figures['peak_rss_mb']:.1f}"
                f" MB, task {figures['task_s']:.1f} s",
                flush=True,
            )
    return [*idle.values(), *peak.values()]


def main(argv: list[str] | None = None) -> list[Metric]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--stdout-bytes", type=int, default=1_000_000_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.idle_seconds, args.stdout_bytes, args.runs = 5.0, 50_000_000, 1
    metrics = trio.run(bench, args)
    print_table("footprint: worker process RSS and CPU", metrics)
    write_results(
        NAME,
        metrics,
        {
            "runs": args.runs,
            "idle_seconds": args.idle_seconds,
            "settle_seconds": SETTLE_SECONDS,
            "stdout_bytes": args.stdout_bytes,
            "polling_interval": "100ms",
            "idle_mode": "both workers side by side, each with its own LocalCoordinator",
        },
        notes=[
            "RSS from /proc/<pid>/status (VmRSS, VmHWM) of the worker process alone;"
            " 1 MB = 10^6 bytes",
            "CPU = utime + stime of the worker process over the idle window",
        ],
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
