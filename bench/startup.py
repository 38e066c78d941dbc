"""Startup time: process launch -> registration, ours against the Rust worker.

Each run starts from an empty HOME (no cached credential), so the worker logs in
(`POST /login`) and then registers (`POST /workers`); the time is taken when LocalCoordinator
sees the register request arrive. Launch -> first fetch is shown too.
"""

from __future__ import annotations

import argparse
import sys

import trio
from common import (
    Metric,
    add_common_args,
    launch_worker,
    new_coordinator,
    print_table,
    requested_kinds,
    run_order,
    wait_until,
    write_results,
)

NAME = "startup"


async def one_run(kind: str) -> dict[str, float]:
    coord = new_coordinator()
    async with coord.running(), launch_worker(kind, coord) as worker:
        await wait_until(coord, lambda: coord.calls("fetch"), worker, 60)
        launched = worker.launched_at
    login = coord.calls("login")[0].time
    register = coord.calls("register")[0].time
    fetch = coord.calls("fetch")[0].time
    return {
        "register_ms": (register - launched) * 1000,
        "login_ms": (login - launched) * 1000,
        "fetch_ms": (fetch - launched) * 1000,
    }


async def bench(args: argparse.Namespace) -> list[Metric]:
    kinds = requested_kinds(args)
    metrics = {
        "register_ms": Metric("launch -> POST /workers", "ms"),
        "login_ms": Metric("launch -> POST /login", "ms"),
        "fetch_ms": Metric("launch -> first fetch", "ms"),
    }
    for run in range(args.runs):
        for kind in run_order(kinds, run):
            figures = await one_run(kind)
            for key, value in figures.items():
                metrics[key].add(kind, value)
            print(
                f"  run {run + 1}/{args.runs} {kind:4s}: registered after"
                f" {figures['register_ms']:.0f} ms",
                flush=True,
            )
    return list(metrics.values())


def main(argv: list[str] | None = None) -> list[Metric]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, runs=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    metrics = trio.run(bench, args)
    print_table("startup: launch to registration", metrics)
    write_results(
        NAME,
        metrics,
        {"runs": args.runs, "credential": "none cached: every run logs in"},
        notes=["launch = just before the process is spawned; others = request arrival"],
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
