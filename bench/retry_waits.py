#!/usr/bin/env python3
"""How long a lone agent stays silent after its server comes back: the real ``RetryPolicy``.

One agent fails from t = 0 (its first attempt), waits each drawn delay and tries again, until an
attempt falls at or after the server's return at ``--outage`` seconds; the wait after the return
is that attempt's time minus the return. Repeated ``--draws`` times per outage, under a virtual
clock (nothing sleeps). Prints the median, 90th percentile and longest wait per outage.

    python bench/retry_waits.py                      # outages of 9.5, 30 and 60 s
    python bench/retry_waits.py --outage 9.5 --draws 100000 --seed 2

To compare with an older commit, copy this script into a ``git archive`` of it and run it
there (it uses that tree's RetryPolicy):

    git archive e4706fe | tar -x -C /tmp/old && cp bench/retry_waits.py /tmp/old/bench/
    cd /tmp/old && python bench/retry_waits.py
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from forwarder.retry import RetryPolicy


class _Clock:
    """The virtual time the policy reads; the loop moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_after_return(outage: float, retry_interval: float) -> float:
    """One agent: the seconds from the server's return to its next attempt."""
    clock = _Clock()
    try:
        policy = RetryPolicy(retry_interval, clock=clock)
    except TypeError:  # a tree from before the age bound (f2c77f0): its policy reads no clock
        policy = RetryPolicy(retry_interval)  # type: ignore[call-arg]
    while True:
        clock.now += policy.next_delay()
        if clock.now >= outage:
            return clock.now - outage


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown table for each outage."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outage", type=float, action="append", help="seconds (repeatable)")
    p.add_argument("--draws", type=int, default=20_000)
    p.add_argument("--retry-interval", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    random.seed(args.seed)  # backoff.full_jitter draws from the random module
    print(f"`python bench/retry_waits.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
          .replace(" `", "`"))  # fmt: skip
    print()
    print("| outage (s) | median wait (s) | 90th percentile (s) | longest (s) |")
    print("|---|---|---|---|")
    for outage in args.outage or [9.5, 30.0, 60.0]:
        waits = sorted(wait_after_return(outage, args.retry_interval) for _ in range(args.draws))
        p90 = waits[int(0.9 * len(waits))]
        print(f"| {outage:g} | {statistics.median(waits):.2f} | {p90:.2f} | {waits[-1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
