"""Compare gzip compressors on artifact-like data: text logs and incompressible bytes.

Prints MB/s and ratio per compressor and writes bench/results/compression.json. zlib-ng is
measured only when installed (`pip install zlib-ng`); it is not a dependency.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from isal import igzip, igzip_threaded

RESULTS = Path(__file__).parent / "results"
LOG_LINE = b"2026-11-29 12:00:00 INFO step=123 loss=0.1234 acc=0.98 epoch=7 lr=3e-4 done\n"

Opener = Callable[[str], BinaryIO]


def _openers() -> dict[str, Opener]:
    openers: dict[str, Opener] = {
        "zlib (stdlib) level 6": lambda p: gzip.open(p, "wb", compresslevel=6),  # noqa: SIM115
        "zlib (stdlib) level 1": lambda p: gzip.open(p, "wb", compresslevel=1),  # noqa: SIM115
        "isal level 1": lambda p: igzip.open(p, "wb", compresslevel=1),
        "isal level 1, threaded (2)": lambda p: igzip_threaded.open(
            p, "wb", compresslevel=1, threads=2
        ),
    }
    try:
        from zlib_ng import gzip_ng
    except ImportError:
        print("note: zlib-ng not installed; skipped")
    else:
        openers["zlib-ng level 1"] = lambda p: gzip_ng.open(p, "wb", compresslevel=1)
    return openers


def _sample(kind: str, size: int) -> bytes:
    if kind == "text":
        return (LOG_LINE * (size // len(LOG_LINE) + 1))[:size]
    return os.urandom(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    size = args.megabytes * 1_000_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.gz")
        for kind in ("text", "random"):
            data = _sample(kind, size)
            for name, opener in _openers().items():
                started = time.perf_counter()
                with opener(out) as stream:
                    for offset in range(0, size, 1 << 20):
                        stream.write(data[offset : offset + (1 << 20)])
                elapsed = time.perf_counter() - started
                ratio = os.path.getsize(out) / size
                rows.append(
                    {"compressor": name, "data": kind, "mb_s": size / elapsed / 1e6, "ratio": ratio}
                )
    print(f"{'compressor':30s} {'data':7s} {'MB/s':>8s} {'ratio':>6s}")
    for row in rows:
        print(f"{row['compressor']:30s} {row['data']:7s} {row['mb_s']:8.1f} {row['ratio']:6.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compression.json").write_text(
        json.dumps({"megabytes": args.megabytes, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
