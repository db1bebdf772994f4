"""The soak (bench/soak.py), short: 10 seeded fault cycles against the real agent and receiver,
with the exact accounting of every written line (method: bench/SOAK.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import soak

SEED = 3  # its 10 cycles: every kind, 2 agent kills, 2 outages, 2 copytruncates


@pytest.mark.slow
def test_ten_fault_cycles_lose_nothing_outside_the_copytruncate_window(tmp_path: Path) -> None:
    """Every written line is delivered or inside a copytruncate window; none is lost outside
    it; duplicates stay within one in-flight window per kill; every fault kind ran."""
    t0 = time.monotonic()
    result = soak.run_soak(
        soak.SoakOptions(cycles=10, seed=SEED, rate=200, workdir=tmp_path, quick=True)
    )
    acc = result.accounting
    report = soak.render_markdown(result)
    assert {f.kind for f in result.faults} == set(soak.FAULT_KINDS), report
    assert acc.kills == 4 and acc.bound == 4 * soak.IN_FLIGHT_WINDOW, report
    assert result.drain_end == "all lines arrived", report
    assert acc.written > 1000, report
    assert acc.closed, report
    assert acc.lost_real == 0, report
    assert acc.delivered + acc.lost_window == acc.written, report
    assert acc.unexpected == acc.dead_letter == acc.still_pending == 0, report
    assert acc.duplicated <= acc.bound, report
    assert sum(c.duplicated for c in acc.by_cause) == acc.duplicated, report
    assert sum(w.allowed for w in acc.windows) == acc.lost_window, report
    assert dict(result.counters)["agent exit code at SIGTERM"] == 0, report
    assert result.passed, report
    assert list(tmp_path.iterdir()) == []  # the soak's temp dir is removed
    assert time.monotonic() - t0 < 80, report
