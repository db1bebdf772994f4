"""Bytes → lines: terminators stripped, long lines cut, invalid UTF-8 kept exactly.

The splitter holds at most ``max_line_bytes`` of a pending (unterminated) line, so memory
stays bounded even for a 100 MB line with no newline.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any


@dataclass
class Lines:
    """Complete lines from one read, with the byte offset each starts at."""

    texts: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    extras: dict[int, dict[str, Any]] = field(default_factory=dict)
    end: int = 0  # file offset just after the last emitted line (the position to commit)

    def add(self, text: str, offset: int, extra: dict[str, Any] | None) -> None:
        if extra:
            self.extras[len(self.texts)] = extra
        self.texts.append(text)
        self.offsets.append(offset)


class LineSplitter:
    """Feeds raw bytes in file order; yields complete lines and the position after them."""

    def __init__(self, start: int, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.line_start = start  # offset where the pending partial line begins
        self.consumed = start  # offset just after the last byte fed
        self._buf = bytearray()
        self._skipped = 0  # bytes of an over-long pending line beyond max_line_bytes

    @property
    def pending_bytes(self) -> int:
        return self.consumed - self.line_start

    def feed(self, data: bytes) -> Lines:
        """Split ``data`` (the next bytes of the file) into complete lines."""
        out = Lines(end=self.line_start)
        pos = 0
        base = self.consumed
        self.consumed += len(data)
        if self._buf or self._skipped:
            nl = data.find(b"\n")
            if nl < 0:
                self._hold(data)
                return out
            self._hold(data[:nl])
            self._emit_pending(out, base + nl + 1)
            pos = nl + 1
        last = data.rfind(b"\n", pos)
        if last >= 0:
            self._split_block(data[pos : last + 1], base + pos, out)
            pos = last + 1
            self.line_start = base + pos
            out.end = self.line_start
        if pos < len(data):
            self._hold(data[pos:])
        return out

    def flush(self) -> Lines:
        """Emit the pending partial line (timeout, rotation, deletion)."""
        out = Lines(end=self.line_start)
        if self._buf or self._skipped:
            self._emit_pending(out, self.consumed)
        return out

    def _hold(self, data: bytes) -> None:
        room = self.max_line_bytes - len(self._buf)
        if self._skipped or len(data) > room:
            self._buf += data[: max(0, room)]
            self._skipped += len(data) - max(0, room)
        else:
            self._buf += data

    def _emit_pending(self, out: Lines, end: int) -> None:
        raw = bytes(self._buf)
        original = len(raw) + self._skipped
        if not self._skipped and raw.endswith(b"\r"):
            raw = raw[:-1]
            original -= 1
        if self._skipped:
            text, extra = _decode_cut(raw, original)
        else:
            text, extra = _decode(raw)
        out.add(text, self.line_start, extra)
        self._buf.clear()
        self._skipped = 0
        self.line_start = end
        out.end = end

    def _split_block(self, block: bytes, start: int, out: Lines) -> None:
        """Complete lines (``block`` ends with a newline): the hot path."""
        parts = block.split(b"\n")
        parts.pop()
        offsets = list(accumulate((len(p) + 1 for p in parts), initial=start))
        offsets.pop()
        limit = self.max_line_bytes
        if len(block) <= limit or max(map(len, parts)) <= limit:
            try:
                texts = block.decode("utf-8").split("\n")
                texts.pop()
                if b"\r" in block:
                    texts = [t[:-1] if t.endswith("\r") else t for t in texts]
                if not out.texts:
                    out.texts = texts
                    out.offsets = offsets
                else:
                    out.texts.extend(texts)
                    out.offsets.extend(offsets)
                return
            except UnicodeDecodeError:
                pass  # some line is not UTF-8: decode them one by one below
        for p, off in zip(parts, offsets, strict=True):
            if p.endswith(b"\r"):
                p = p[:-1]
            if len(p) > limit:
                text, extra = _decode_cut(p[:limit], len(p))
            else:
                text, extra = _decode(p)
            out.add(text, off, extra)


def _decode(raw: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), {
            "raw_b64": base64.b64encode(raw).decode("ascii")
        }


def _decode_cut(cut: bytes, original: int) -> tuple[str, dict[str, Any] | None]:
    """A line cut at max_line_bytes: a character split by the cut is dropped, not garbled."""
    extra: dict[str, Any] = {"truncated": True, "original_bytes": original}
    for trim in range(4):
        try:
            return cut[: len(cut) - trim].decode("utf-8"), extra
        except UnicodeDecodeError:
            continue
    text, bad = _decode(cut)
    return text, {**extra, **(bad or {})}
