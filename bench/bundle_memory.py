"""Peak memory and time of `ila-agent export` / `import` with N pending entries (default 1M).

    python bench/bundle_memory.py [--entries 1000000]

Fills a buffer through the real QueueStore (chunks of 500 lines, as the collector commits
them), then runs `ila-agent export` and `ila-agent import` as subprocesses and reads each
one's peak RSS from the kernel (os.wait4 → ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from queue_store.records import (  # noqa: E402
    Checkpoint,
    Chunk,
    FileId,
)
from queue_store.store import QueueStore  # noqa: E402


def fill(db: Path, n: int) -> None:
    store = QueueStore(str(db))
    fid = FileId(1, 1, 10, "bench")
    off = 0
    line = "Nov 27 10:00:01 web-01 sshd[812]: Failed password for root from 203.0.113.7 port 22 #"
    for start in range(0, n, 500):
        lines = [f"{line}{i}" for i in range(start, min(n, start + 500))]
        offs = []
        for x in lines:
            offs.append(off)
            off += len(x) + 1
        store.commit(
            [Chunk("/var/log/auth.log", "/var/log/auth.log", fid.key(), time.time(), lines, offs,
                   {}, off - offs[0])],
            Checkpoint(fid, 0, off, "/var/log/auth.log", "/var/log/auth.log"),
        )  # fmt: skip
    store.close()


def run(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    out = p.stdout.read().decode() if p.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {out}")
    return time.monotonic() - t0, usage.ru_maxrss, out.strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ila-bundle-bench-") as tmp:
        t = Path(tmp)
        for host in ("a", "b"):
            (t / host).mkdir()
            (t / host / "config.json").write_text(
                json.dumps({"log_sources": [], "buffer_db": "buffer.db", "batch_size": 500})
            )
        t0 = time.monotonic()
        fill(t / "a" / "buffer.db", args.entries)
        print(f"filled {args.entries} entries in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        exe = [sys.executable, "-m", "ila_agent"]
        bundle = t / "a.bundle"
        e_s, e_kb, e_out = run([*exe, "export", "--config", str(t / "a/config.json"), str(bundle)])
        i_s, i_kb, i_out = run([*exe, "import", "--config", str(t / "b/config.json"), str(bundle)])
        size = bundle.stat().st_size
        print("| step | entries | seconds | entries/s | peak RSS (MB) |")
        print("|---|---|---|---|---|")
        n = args.entries
        for step, secs, kb in (("export", e_s, e_kb), ("import", i_s, i_kb)):
            print(f"| {step} | {n} | {secs:.1f} | {n / secs:,.0f} | {kb / 1024:.0f} |")
        print(f"\nbundle: {size / 1e6:.1f} MB; {e_out}; {i_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
