"""Shared helpers for the side-by-side benchmarks of our worker and the Rust worker.

Every benchmark serves a `LocalCoordinator` in its own trio loop and starts the worker as a
real subprocess with a private HOME (XDG directories, credential file and task cache all in a
temporary directory), `NO_COLOR=1` and short polling. Figures are medians over several runs
with min and max; the ratio ours/Rust is computed pair by pair (run i of ours against run i of
Rust, the two always measured back to back, alternating which goes first).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import trio

from mito_trio.testing import LocalCoordinator, RequestRecord

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RUST_BIN = Path.home() / ".cargo" / "bin" / "mito"
KINDS = ("ours", "rust")
USER = "bench"
PASSWORD = "bench-password"
POLLING = "100ms"
HEARTBEAT = "30s"
#: 1 MB = 10^6 bytes throughout (MB/s and RSS).
MB = 1_000_000
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LOAD_AT_START = os.getloadavg()


def ours_bin() -> Path:
    """Our console script: $BENCH_OURS_BIN if set (A/B experiments), else the one next to the
    running interpreter (a nox venv), else the repo venv's."""
    override = os.environ.get("BENCH_OURS_BIN")
    if override:
        return Path(override).absolute()
    for candidate in (Path(sys.prefix) / "bin" / "mito", ROOT / ".venv" / "bin" / "mito"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    raise SystemExit("our `mito` console script was not found; `pip install -e .` first")


def worker_bin(kind: str) -> Path:
    return RUST_BIN if kind == "rust" else ours_bin()


def kinds_to_run(requested: Sequence[str] = KINDS) -> list[str]:
    """The worker kinds to measure; Rust only when its binary is installed (printed note)."""
    kinds = [k for k in KINDS if k in requested]
    if "rust" in kinds and not RUST_BIN.is_file():
        print(f"note: {RUST_BIN} not found; measuring our worker alone (no ratios).")
        kinds.remove("rust")
    return kinds


def run_order(kinds: Sequence[str], run: int) -> list[str]:
    """Alternate which worker goes first, so neither always gets the warmer machine."""
    return list(kinds) if run % 2 == 0 else list(reversed(kinds))


def new_coordinator() -> LocalCoordinator:
    return LocalCoordinator(discard_uploads=True, users={USER: PASSWORD})


# --- the worker process ---------------------------------------------------------------------


class WorkerDied(Exception):
    """The worker process exited while the benchmark was waiting on it."""


@dataclass
class Worker:
    kind: str
    proc: trio.Process
    home: Path
    log_path: Path
    launched_at: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status_kb(self, key: str) -> int:
        """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_bytes(self) -> int:
        return self.status_kb("VmRSS") * 1024

    def hwm_bytes(self) -> int:
        return self.status_kb("VmHWM") * 1024

    def cpu_seconds(self) -> float:
        """utime + stime of the worker process itself, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as stat:
            text = stat.read()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def worker_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MITO_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_RUNTIME_DIR=str(home / "runtime"),
        NO_COLOR="1",
    )
    return env


@contextlib.asynccontextmanager
async def launch_worker(
    kind: str,
    coord: LocalCoordinator,
    *,
    polling: str = POLLING,
    heartbeat: str = HEARTBEAT,
    extra: Sequence[str] = (),
) -> AsyncIterator[Worker]:
    """Start `mito worker` of `kind` against `coord`; SIGINT it (then SIGKILL) on exit."""
    home = Path(tempfile.mkdtemp(prefix=f"mito-bench-{kind}-"))
    for sub in ("config", "cache", "data", "state", "runtime"):
        (home / sub).mkdir(mode=0o700)
    argv = [
        str(worker_bin(kind)),
        "worker",
        "--coordinator",
        coord.url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--credential-path",
        str(home / "credentials"),
        "--polling-interval",
        polling,
        "--heartbeat-interval",
        heartbeat,
        *extra,
    ]
    log_path = home / "worker.log"
    log = _open_log(log_path)
    launched_at = trio.current_time()
    try:
        proc = await trio.lowlevel.open_process(
            argv,
            env=worker_env(home),
            cwd=str(home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    except BaseException:
        log.close()
        shutil.rmtree(home, ignore_errors=True)
        raise
    worker = Worker(kind, proc, home, log_path, launched_at)
    try:
        yield worker
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proc)
            log.close()
            shutil.rmtree(home, ignore_errors=True)


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")  # closed by launch_worker once the worker is gone


async def _stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(15):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def wait_until(
    coord: LocalCoordinator, predicate: Callable[[], T | None], worker: Worker, limit: float
) -> T:
    """`coord.wait_for(predicate)`, failing if the worker exits or `limit` seconds pass."""
    result: list[T] = []
    died = False
    async with trio.open_nursery() as nursery:

        async def watch_process() -> None:
            nonlocal died
            await worker.proc.wait()
            died = True
            nursery.cancel_scope.cancel()

        async def wait() -> None:
            result.append(await coord.wait_for(predicate))
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_process)
        nursery.start_soon(wait)
        nursery.cancel_scope.deadline = trio.current_time() + limit
    if result:
        return result[0]
    why = f"exited with {worker.proc.returncode}" if died else f"took over {limit:.0f}s"
    raise WorkerDied(f"{worker.kind} worker {why}; log tail:\n{worker.log_tail()}")


async def wait_registered(coord: LocalCoordinator, worker: Worker, limit: float = 60) -> None:
    def registered() -> bool:
        return any(not w.removed for w in coord.workers.values())

    await wait_until(coord, registered, worker, limit)


# --- request-log helpers --------------------------------------------------------------------


def reports(coord: LocalCoordinator, op: str) -> list[RequestRecord]:
    return [r for r in coord.requests if r.endpoint == "report" and r.op == op]


def first(records: Sequence[RequestRecord], after: float = float("-inf")) -> RequestRecord:
    for record in records:
        if record.time >= after:
            return record
    raise LookupError("expected request not found in the log")


# --- statistics and output ------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "runs": list(values),
    }


@dataclass
class Metric:
    """One row: per-run values for each worker kind, plus an optional target."""

    name: str
    unit: str
    values: dict[str, list[float]] = field(default_factory=dict)
    #: Human-readable target, e.g. "ours/rust >= 5" or "ours <= 60 MB".
    target: str | None = None
    #: Decides whether the target is met, from this metric's JSON summary.
    check: Callable[[dict[str, Any]], bool | None] | None = None
    digits: int = 1

    def add(self, kind: str, value: float) -> None:
        self.values.setdefault(kind, []).append(value)

    def ratios(self) -> list[float]:
        ours, rust = self.values.get("ours", []), self.values.get("rust", [])
        return [o / r for o, r in zip(ours, rust, strict=False) if r]

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"unit": self.unit}
        for kind, values in self.values.items():
            data[kind] = summary(values)
        if "ours" in self.values and "rust" in self.values:
            data["ratio_ours_over_rust"] = summary(self.ratios())
        if self.target is not None:
            data["target"] = self.target
            data["target_met"] = self.check(data) if self.check else None
        return data


def ratio_at_least(bound: float) -> Callable[[dict[str, Any]], bool | None]:
    def check(data: dict[str, Any]) -> bool | None:
        ratio = data.get("ratio_ours_over_rust")
        return None if not ratio or not ratio["n"] else bool(ratio["median"] >= bound)

    return check


def ours_below(bound: float, *, inclusive: bool) -> Callable[[dict[str, Any]], bool | None]:
    def check(data: dict[str, Any]) -> bool | None:
        ours = data.get("ours")
        if not ours or not ours["n"]:
            return None
        return bool(ours["max"] <= bound if inclusive else ours["max"] < bound)

    return check


def _fmt(stats: dict[str, Any] | None, digits: int) -> str:
    if not stats or not stats.get("n"):
        return "-"
    med, lo, hi = stats["median"], stats["min"], stats["max"]
    if stats["n"] == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def print_table(title: str, metrics: Sequence[Metric]) -> None:
    """Columns: median (min-max) for ours, Rust and the pairwise ratio, and the target."""
    header = ["metric", "unit", "ours", "rust", "ours/rust", "target"]
    rows = [header]
    for metric in metrics:
        data = metric.as_json()
        target = ""
        if metric.target is not None:
            met = data.get("target_met")
            verdict = "n/a" if met is None else ("MET" if met else "MISSED")
            target = f"{metric.target}: {verdict}"
        rows.append(
            [
                metric.name,
                metric.unit,
                _fmt(data.get("ours"), metric.digits),
                _fmt(data.get("rust"), metric.digits),
                _fmt(data.get("ratio_ours_over_rust"), 2),
                target,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n== {title} ==  (median (min-max) over runs; ratio pair by pair)")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine moves wall-clock figures: note how busy it was.
        "loadavg_at_start": _LOAD_AT_START,
        "loadavg_at_end": os.getloadavg(),
        "ours_bin": str(ours_bin()),
        "rust_bin": str(RUST_BIN) if RUST_BIN.is_file() else None,
    }
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as meminfo:
        info["mem_total_kb"] = int(next(x for x in meminfo if x.startswith("MemTotal")).split()[1])
    for kind in KINDS:
        binary = worker_bin(kind)
        if not binary.is_file():
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            info[f"{kind}_version"] = out.stdout.strip() or out.stderr.strip()
    return info


def write_results(
    name: str, metrics: Sequence[Metric], config: dict[str, Any], notes: Sequence[str] = ()
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "config": config,
        "metrics": {metric.name: metric.as_json() for metric in metrics},
        "notes": list(notes),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {path.relative_to(ROOT)}")
    return path


def add_common_args(parser: Any, runs: int) -> None:
    parser.add_argument("--runs", type=int, default=runs, help=f"runs per worker (default {runs})")
    parser.add_argument(
        "--workers",
        default=",".join(KINDS),
        help="comma-separated worker kinds to measure: ours,rust (default both)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")


def requested_kinds(args: Any) -> list[str]:
    return kinds_to_run([k.strip() for k in args.workers.split(",") if k.strip()])
