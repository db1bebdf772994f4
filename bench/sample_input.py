"""The benchmarks' input: N distinct syslog-like lines of ~120 bytes, each with ``seq=%09d``.

One function, so that run_bench.py and vs_syslogng.py measure on exactly the same lines.
"""

from __future__ import annotations

import os


def write_lines(path: str, n: int) -> float:
    """Writes the N lines to ``path``; returns the mean line length in bytes."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        buf: list[str] = []
        for i in range(n):
            buf.append(
                f"2026-11-27T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z"
                f" web-{i % 16:02d} sshd[{1000 + i % 9000}]: Accepted publickey for"
                f" user{i % 997:03d} from 10.{i % 256}.{(i >> 8) % 256}.{(i >> 16) % 256}"
                f" port {20000 + i % 40000} ssh2 seq={i:09d}\n"
            )
            if len(buf) >= 20000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return os.path.getsize(path) / max(1, n)
