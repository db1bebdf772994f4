"""A progress line on a terminal; silent otherwise, so piped output stays clean."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call with the count done so far; ``done()`` ends the line."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = sys.stdout.isatty() and self.stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, n: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (self.total is None or n < self.total):
            return
        self._last = now
        if self.total:
            width = 30
            filled = min(width, int(width * n / self.total))
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {n}/{self.total} ({100 * n // self.total}%)"
        else:
            text = f"\r{self.label} {n}"
        self.stream.write(text)
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
