"""Multiline entries: a stack trace or a wrapped message becomes one entry.

A line that matches ``start_pattern`` begins a new entry; the others are joined to the current
one with "\\n". An entry ends at the next start, at ``max_lines``, or ``max_wait`` seconds after
its last line. Its event_uid is its first line's. The position committed never passes the
first line of an entry still being assembled: after a crash it is read and assembled again,
so nothing read lives only in memory past a commit.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from collector.lines import Lines
from collector.processing import compile_pattern
from ila_core.settings import SettingsReader, kind

DEFAULT_MAX_LINES = 500
DEFAULT_MAX_WAIT = 2.0


@dataclass(frozen=True)
class Multiline:
    """How lines are grouped into entries (a file source's ``multiline``)."""

    start: re.Pattern[str]
    max_lines: int = DEFAULT_MAX_LINES
    max_wait: float = DEFAULT_MAX_WAIT

    def to_json(self) -> dict[str, Any]:
        return {"start_pattern": self.start.pattern, "max_lines": self.max_lines,
                "max_wait": self.max_wait}  # fmt: skip

    @classmethod
    def from_json(cls, r: SettingsReader, key: str, raw: Any) -> Multiline | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise r.error(key, f"must be an object with a start_pattern, got {kind(raw)}")
        m = r.nested(key, raw)
        m.warn_unknown({"start_pattern", "max_lines", "max_wait"})
        return cls(
            start=compile_pattern(r, f"{key}.start_pattern", raw.get("start_pattern")),
            max_lines=m.integer("max_lines", DEFAULT_MAX_LINES, minimum=1, maximum=100_000),
            max_wait=m.number("max_wait", DEFAULT_MAX_WAIT),
        )


@dataclass
class Assembler:
    """Lines in, entries out; holds at most one entry being assembled."""

    spec: Multiline
    texts: list[str] = field(default_factory=list)
    start: int | None = None  # file offset of the held entry's first line
    extras: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def holding(self) -> bool:
        return self.start is not None

    def feed(self, lines: Lines) -> Lines:
        """Complete entries from ``lines``; ``end`` stops before a held entry."""
        out = Lines(end=lines.end)
        for i, (text, off) in enumerate(zip(lines.texts, lines.offsets, strict=True)):
            if self.start is not None and self.spec.start.search(text):
                self._emit(out)
            if self.start is None:
                self.start = off
            self.texts.append(text)
            self.extras.append(lines.extras.get(i))
            if len(self.texts) >= self.spec.max_lines:
                self._emit(out)
        if self.start is not None:
            out.end = self.start  # never commit past an entry still being assembled
        return out

    def flush(self, end: int) -> Lines:
        """Emit the held entry (max_wait passed, or the file is rotated or truncated)."""
        out = Lines(end=end)
        if self.start is not None:
            self._emit(out)
        return out

    def _emit(self, out: Lines) -> None:
        assert self.start is not None
        extra: dict[str, Any] = {}
        if any(self.extras):
            if any(x and x.get("truncated") for x in self.extras):
                extra["truncated"] = True
            if any(x and "raw_b64" in x for x in self.extras):
                # The exact bytes of the whole entry: each line's own, joined as in the file.
                raw = b"\n".join(
                    base64.b64decode(x["raw_b64"]) if x and "raw_b64" in x else t.encode()
                    for t, x in zip(self.texts, self.extras, strict=True)
                )
                extra["raw_b64"] = base64.b64encode(raw).decode("ascii")
        out.add("\n".join(self.texts), self.start, extra or None)
        self.texts, self.extras, self.start = [], [], None
