"""The demo a new user runs first (``bash ops/demo.sh``), in its short form: through a server
outage and a SIGKILL of the agent, every line written arrives exactly once.

It runs ops/demo.py with this interpreter (the already set-up .venv when run by ops/test.sh)
rather than ops/demo.sh, which would run pip again.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "ops" / "demo.py"
RESULT = re.compile(
    r"^RESULT: (\d+) of (\d+) lines written arrived, each exactly once"
    r" \(the receiver got (\d+) entries; (\d+) were resends it de-duplicated by event_uid\)$",
    re.MULTILINE,
)


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@pytest.mark.slow
def test_the_short_demo_delivers_every_line_exactly_once(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    started = time.monotonic()
    done = subprocess.run(
        [python(), str(DEMO), "--short", "--dir", str(work)],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )  # fmt: skip
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    m = RESULT.search(out)
    assert m, out
    arrived, written, got, resent = map(int, m.groups())
    assert arrived == written > 100  # the sample lines and the burst written during the outage
    assert got == written + resent

    # The story was told, in order: down, killed, restarted, up, drained.
    steps = ["RECEIVER DOWN", "AGENT KILLED with SIGKILL", "agent restarted", "RECEIVER UP again",
             "pending 0: the backlog has drained", "RESULT:"]  # fmt: skip
    where = [out.find(s) for s in steps]
    assert -1 not in where and where == sorted(where), out
    # The backlog was visible while the receiver was down: the burst waited on disk.
    down = out[out.find("RECEIVER DOWN") : out.find("RECEIVER UP again")]
    assert max(int(n) for n in re.findall(r"buffer: pending (\d+)", down)) >= 100, down

    # What the receiver stored, read from its own database: each line once, nothing else.
    written_lines = (work / "auth.log").read_text().splitlines()
    assert len(written_lines) == written
    with sqlite3.connect(work / "received.db") as db:
        stored = [row[0] for row in db.execute("SELECT log_text FROM events")]
    assert sorted(stored) == sorted(written_lines)
    assert took < 90, f"the short demo took {took:.0f} s"


def test_too_short_a_demo_is_refused() -> None:
    done = subprocess.run(
        [python(), str(DEMO), "--seconds", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--seconds must be at least" in done.stderr


def test_demo_sh_sets_up_the_venv_and_runs_the_demo() -> None:
    """ops/demo.sh is the README's first command: valid bash that creates .venv when missing
    and hands its arguments (--short, --seconds N) to ops/demo.py."""
    script = (ROOT / "ops" / "demo.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "ops" / "demo.sh")], check=True, timeout=30)
    assert "-m venv .venv" in script
    assert 'exec .venv/bin/python ops/demo.py "$@"' in script
    readme = (ROOT / "README.md").read_text()
    assert "bash ops/demo.sh" in readme
