"""Run every side-by-side benchmark (startup, dispatch, footprint, upload) in turn.

`python bench/run_all.py` runs the full set (about 15 minutes on 2 cores); `--quick` runs
each with tiny sizes and one run, as a smoke test. Every benchmark prints its table and
writes bench/results/<name>.json; `--workers ours` skips the Rust worker.
"""

from __future__ import annotations

import argparse
import sys
import time

import dispatch
import footprint
import startup
import upload

BENCHMARKS = {
    "startup": startup.main,
    "dispatch": dispatch.main,
    "footprint": footprint.main,
    "upload": upload.main,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--workers", default="ours,rust", help="ours,rust (default both)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset to run"
    )
    args = parser.parse_args(argv)
    common = ["--workers", args.workers, *(["--quick"] if args.quick else [])]
    started = time.monotonic()
    for name in args.only.split(","):
        print(f"\n##### {name} #####", flush=True)
        BENCHMARKS[name.strip()](common)
    print(f"\nall benchmarks done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
