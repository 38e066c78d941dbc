"""Archive + upload of a task's result directory, our worker against the Rust worker.

A result tree (30% text logs, 70% incompressible bytes) is prepared once in a temp dir; the
task hardlinks it into MITO_RESULT_DIR (`cp -al`, outside the timing). From the coordinator's
request log:

- archive+upload MB/s = raw tree bytes / (Commit report - Finish report)
- archive time        = Finish report -> Upload report of `result` (the archive is complete)
- upload time         = Upload report -> end of the PUT body (store side, `answered`)

LocalCoordinator keeps only the size and sha256 of uploads (`discard_uploads=True`), and it
runs in this process: the PUT sink shares the machine's cores with the worker.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

import trio
from common import (
    MB,
    Metric,
    add_common_args,
    first,
    launch_worker,
    new_coordinator,
    print_table,
    ratio_at_least,
    reports,
    requested_kinds,
    run_order,
    wait_registered,
    wait_until,
    write_results,
)

from mito_trio import wire

NAME = "upload"
TEXT_FRACTION = 0.3
TEXT_FILE_MAX = 16 * 1024 * 1024
DATA_FILE_MAX = 32 * 1024 * 1024
SMALL_FILES = 64
SMALL_FILE_SIZE = 4096
#: Hardlink the tree into the result dir (copy if they are on different filesystems).
TASK_SCRIPT = (
    'cp -al "$SRC"/. "$MITO_RESULT_DIR"/ 2>/dev/null || cp -r "$SRC"/. "$MITO_RESULT_DIR"/'
)
COMMIT_TIMEOUT = 900.0
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 100MB, 1GiB)")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def _log_pool(rng: random.Random, lines: int = 60_000) -> bytes:
    words = ["ok", "retry", "sync", "flush", "epoch", "ckpt", "eval", "warmup", "io", "gc"]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN"]
    out = []
    for i in range(lines):
        out.append(
            f"2026-11-29T12:{i // 3600 % 60:02d}:{i // 60 % 60:02d}.{rng.randrange(10**6):06d}Z "
            f"{rng.choice(levels):5s} trainer[{rng.randrange(4000, 4100)}] step={i} "
            f"loss={rng.random() * 4:.6f} acc={rng.random():.4f} lr={rng.random() * 1e-3:.3e} "
            f"host=node-{rng.randrange(64):03d} {rng.choice(words)} {rng.choice(words)}\n"
        )
    return "".join(out).encode()


def _write_text(path: Path, size: int, pool: bytes, rng: random.Random) -> None:
    doubled = pool + pool
    with open(path, "wb") as out:
        left = size
        while left:
            start = rng.randrange(len(pool))
            piece = doubled[start : start + min(left, len(pool))]
            out.write(piece)
            left -= len(piece)


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            piece = os.urandom(min(left, 8 * 1024 * 1024))
            out.write(piece)
            left -= len(piece)


def _split(total: int, largest: int) -> list[int]:
    count = max(1, -(-total // largest))
    sizes = [total // count] * count
    sizes[-1] += total - sum(sizes)
    return sizes


def make_tree(root: Path, total: int) -> Path:
    """A result tree of exactly `total` bytes: text logs (30%) and random data files."""
    src = root / f"tree-{total}"
    rng = random.Random(total)
    pool = _log_pool(rng)
    (src / "logs" / "small").mkdir(parents=True)
    (src / "data" / "shards").mkdir(parents=True)
    text_total = int(total * TEXT_FRACTION)
    small = min(SMALL_FILES, text_total // (2 * SMALL_FILE_SIZE))
    for i in range(small):
        _write_text(src / "logs" / "small" / f"rank-{i:03d}.log", SMALL_FILE_SIZE, pool, rng)
    for i, size in enumerate(_split(text_total - small * SMALL_FILE_SIZE, TEXT_FILE_MAX)):
        _write_text(src / "logs" / f"train-{i:03d}.log", size, pool, rng)
    for i, size in enumerate(_split(total - text_total, DATA_FILE_MAX)):
        _write_random(src / "data" / "shards" / f"shard-{i:04d}.bin", size)
    assert tree_bytes(src) == total
    return src


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def label_of(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("GB", 10**9), ("MB", 10**6)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size / MB:.1f} MB"


async def one_run(kind: str, src: Path, raw: int) -> dict[str, float]:
    coord = new_coordinator()
    async with coord.running(), launch_worker(kind, coord) as worker:
        await wait_registered(coord, worker)
        uuid = coord.submit_task(["sh", "-c", TASK_SCRIPT], envs={"SRC": str(src)}, timeout="30m")
        task = coord.task(uuid)
        await wait_until(coord, lambda: task.archived, worker, COMMIT_TIMEOUT)
    if task.result is None or task.result.exit_status != 0:
        raise RuntimeError(f"{kind}: the copy task failed: {task.result}")
    artifact = task.artifacts.get(wire.ArtifactContentType.RESULT)
    if artifact is None or artifact.stored is None or artifact.stored.size != artifact.size:
        raise RuntimeError(f"{kind}: the result archive was not (fully) uploaded")
    finish = first(reports(coord, "Finish"))
    upload = first(reports(coord, "Upload"), finish.time)
    put = first(
        [
            r
            for r in coord.calls("store_put")
            if r.path.endswith("/result.tar.gz") and r.status == 200
        ],
        upload.time,
    )
    commit = first(reports(coord, "Commit"), put.time)
    assert put.answered is not None
    total_s = commit.time - finish.time
    archive_s = upload.time - finish.time
    upload_s = put.answered - upload.time
    return {
        "mb_s": raw / total_s / MB,
        "total_s": total_s,
        "archive_s": archive_s,
        "archive_mb_s": raw / archive_s / MB,
        "upload_s": upload_s,
        "upload_mb_s": artifact.size / upload_s / MB,
        "compressed_mb": artifact.size / MB,
    }


def metrics_for(label: str) -> dict[str, Metric]:
    return {
        "mb_s": Metric(
            f"{label}: archive+upload",
            "MB/s",
            target="ours/rust >= 5",
            check=ratio_at_least(5),
        ),
        "total_s": Metric(f"{label}: Finish->Commit", "s", digits=2),
        "archive_s": Metric(f"{label}: archive (Finish->Upload)", "s", digits=2),
        "archive_mb_s": Metric(f"{label}: archive rate (raw)", "MB/s"),
        "upload_s": Metric(f"{label}: upload (Upload->PUT done)", "s", digits=2),
        "upload_mb_s": Metric(f"{label}: upload rate (compressed)", "MB/s"),
        "compressed_mb": Metric(f"{label}: archive size", "MB"),
    }


async def bench(args: argparse.Namespace) -> list[Metric]:
    kinds = requested_kinds(args)
    all_metrics: list[Metric] = []
    with tempfile.TemporaryDirectory(prefix="mito-bench-upload-") as tmp:
        for size in args.sizes:
            label = label_of(size)
            print(f"preparing a {label} result tree ...", flush=True)
            src = await trio.to_thread.run_sync(make_tree, Path(tmp), size)
            runs = args.runs if args.runs else (3 if size >= 2**30 else 5)
            metrics = metrics_for(label)
            for run in range(runs):
                for kind in run_order(kinds, run):
                    figures = await one_run(kind, src, size)
                    for key, value in figures.items():
                        metrics[key].add(kind, value)
                    print(
                        f"  {label} run {run + 1}/{runs} {kind:4s}: {figures['mb_s']:7.1f} MB/s"
                        f" (archive {figures['archive_s']:.2f}s,"
                        f" upload {figures['upload_s']:.2f}s)",
                        flush=True,
                    )
            await trio.to_thread.run_sync(shutil.rmtree, src)
            all_metrics += metrics.values()
    return all_metrics


def main(argv: list[str] | None = None) -> list[Metric]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, runs=0)
    parser.add_argument(
        "--sizes",
        type=lambda text: [parse_size(part) for part in text.split(",")],
        default=[100 * MB, 2**30],
        help="comma-separated tree sizes (default 100MB,1GiB)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.runs = [10 * MB], 1
    metrics = trio.run(bench, args)
    print_table("upload: archive + upload of MITO_RESULT_DIR", metrics)
    write_results(
        NAME,
        metrics,
        {
            "sizes": args.sizes,
            "runs": args.runs or "5 (3 for >= 1 GiB)",
            "tree": f"{TEXT_FRACTION:.0%} text logs, {1 - TEXT_FRACTION:.0%} random bytes",
            "worker_args": "--polling-interval 100ms, default artifact compression",
            "sink": "LocalCoordinator(discard_uploads=True) in the bench process",
        },
        notes=[
            "archive+upload MB/s = raw tree bytes / (Commit report time - Finish report time)",
            "archive = Finish report -> Upload report of result; "
            "upload = Upload report -> PUT body fully received",
            "Rust worker: async-compression GzipEncoder at its default level; "
            "ours: ISA-L level 1 unless --artifact-compression",
        ],
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
