#!/usr/bin/env python3
"""Durable ingest of two source trees, interleaved in one command: is a change slower?

    .venv/bin/python bench/ingest_ab.py BEFORE_TREE AFTER_TREE [--runs 7] [--lines 200000]

Each tree is a checkout (``git archive <commit> | tar -x -C DIR``) with its own
``bench/run_bench.py``; each run calls that tree's ``ingest_ours`` (collector → QueueStore,
batch_size 50, in a fresh process) on the same input file, the trees alternating and the
order flipped every run, so drift of the machine falls on both. Prints the medians, the
ratio after/before with its per-pair spread, and the command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNIPPET = """
import sys
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
import run_bench
run_bench.quiet_structlog()
print(run_bench.ingest_ours(sys.argv[1], int(sys.argv[2]), 50, sys.argv[3], 600.0))
"""


def say(msg: str) -> None:
    print(f"[ingest_ab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def one(tree: Path, log: Path, n: int, work: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET, str(log), str(n), str(work)],
        cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run_bench

    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    rates: dict[str, list[float]] = {"before": [], "after": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ingest-ab-") as tmp:
        log = Path(tmp) / "input.log"
        run_bench.write_lines(str(log), args.lines)
        for run in range(args.runs):
            order = ["before", "after"] if run % 2 == 0 else ["after", "before"]
            got = {}
            for name in order:
                got[name] = one(trees[name], log, args.lines, Path(tmp) / f"w-{name}")
                rates[name].append(got[name])
            ratios.append(got["after"] / got["before"])
            say(f"run {run + 1}: before {got['before']:,.0f}  after {got['after']:,.0f} lines/s")
    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    print(f"Command: `{cmd}`  \nMachine: {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} interleaved runs of "
          f"{args.lines:,} lines, batch_size 50.\n")  # fmt: skip
    print("| tree | durable ingest, lines/s: median (min–max) |\n|---|---|")
    for name in ("before", "after"):
        v = rates[name]
        print(f"| {name} `{trees[name]}` | **{statistics.median(v):,.0f}** "
              f"({min(v):,.0f}–{max(v):,.0f}) |")  # fmt: skip
    print(f"\nafter/before, per pair: median **{statistics.median(ratios):.3f}** "
          f"({min(ratios):.3f}–{max(ratios):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
