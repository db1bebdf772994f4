"""Reading one file from a position: pread → LineSplitter → Read (lines + checkpoint)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from collector.identity import identify, matches, pread
from collector.lines import Lines, LineSplitter
from collector.multiline import Assembler, Multiline
from collector.processing import Processing
from queue_store.records import Checkpoint, Chunk, FileId, file_key

READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Read:
    """What one read produced: chunks to commit and the checkpoint that goes with them."""

    chunks: tuple[Chunk, ...]
    checkpoint: Checkpoint | None
    n_bytes: int  # raw bytes read from the file (0 at end of file)
    filtered: int = 0  # entries include/exclude dropped (counted when this is committed)

    @property
    def line_bytes(self) -> int:
        """Bytes of lines it holds (what it costs of the buffer's budget)."""
        return sum(c.n_bytes for c in self.chunks)

    def split(self) -> list[Read]:
        """One Read per chunk, each with the position just after it: a read larger than the
        buffer's free budget is committed chunk by chunk, as room is made."""
        if len(self.chunks) <= 1 or self.checkpoint is None:
            return [self]
        parts = [
            Read((c,), replace(self.checkpoint, offset=c.offsets[0] + c.n_bytes), 0)
            for c in self.chunks
        ]
        # The last part ends where the read does (past filtered lines after its last one).
        parts[-1] = Read(parts[-1].chunks, self.checkpoint, 0, self.filtered)
        return parts


class Tailer:
    """A file being read. The in-memory position follows the commit, never leads it.

    It may be closed while quiet (``fd`` -1) and reopened by path later: its position, its
    identity and any partial line it holds stay here meanwhile.
    """

    def __init__(
        self,
        path: str,
        source: str,
        fd: int,
        *,
        offset: int,
        file_id: FileId | None,
        generation: int,
        epoch: str,
        max_line_bytes: int,
        batch_size: int,
        now: float,
        processing: Processing | None = None,
        multiline: Multiline | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.fd = fd
        st = os.fstat(fd)
        self.inode = (st.st_dev, st.st_ino)
        self.seen = (st.st_size, st.st_mtime_ns)  # at the last look: changed since?
        self.file_id = file_id  # None until the file has its first byte
        self.generation = generation
        self.epoch = epoch
        self.committed = offset
        self.batch_size = batch_size
        self.max_line_bytes = max_line_bytes
        self.splitter = LineSplitter(offset, max_line_bytes)
        self.processing = processing or Processing()
        self.multiline = multiline
        self.assembler = Assembler(multiline) if multiline else None
        self.spec: Any = None  # the configured source it was found by (to find its successor)
        self.last_data_at = now
        self.draining_since: float | None = None

    @property
    def key(self) -> str | None:
        if self.file_id is None:
            return None
        return file_key(self.file_id, self.generation, self.epoch)

    def read(self, wall: float, now: float, max_bytes: int = READ_BYTES) -> Read:
        """Read what is new (up to ``max_bytes``) and split it into chunks."""
        data = pread(self.fd, max_bytes, self.splitter.consumed)
        if not data:
            return Read((), None, 0)
        self.last_data_at = now
        if self.file_id is None:
            self.file_id = identify(self.fd)
        lines = self.splitter.feed(data)
        if self.assembler is not None:
            lines = self.assembler.feed(lines)
        return self._package(lines, wall, len(data))

    def flush(self, wall: float) -> Read:
        """Emit what is held: a partial line, an entry being assembled (rotation, deletion,
        truncation, or its time has come)."""
        if self.file_id is None:
            return Read((), None, 0)
        lines = self.splitter.flush()
        if self.assembler is not None:
            self.assembler.feed(lines)
            lines = self.assembler.flush(self.splitter.line_start)
        return self._package(lines, wall, 0)

    @property
    def holding(self) -> bool:
        """A partial line, or an entry being assembled, waits in memory (not committed)."""
        return bool(self.splitter.pending_bytes) or (
            self.assembler is not None and self.assembler.holding
        )

    def due(self, now: float, partial_line_timeout: float) -> bool:
        """What is held has waited long enough to be emitted as it is."""
        quiet = now - self.last_data_at
        if self.splitter.pending_bytes and quiet >= partial_line_timeout:
            return True
        return (
            self.assembler is not None
            and self.assembler.holding
            and quiet >= self.assembler.spec.max_wait
        )

    def flush_due(self, now: float, wall: float, partial_line_timeout: float) -> Read:
        """Emit the held entry whose max_wait passed; the partial line too once its own
        timeout did (a partial line under its timeout may still be completed)."""
        if self.splitter.pending_bytes and now - self.last_data_at >= partial_line_timeout:
            return self.flush(wall)
        assert self.assembler is not None and self.file_id is not None
        return self._package(self.assembler.flush(self.splitter.line_start), wall, 0)

    def _package(self, lines: Lines, wall: float, n_read: int) -> Read:
        assert self.file_id is not None
        lines, filtered = self._process(lines)
        key = file_key(self.file_id, self.generation, self.epoch)
        chunks = []
        n = len(lines.texts)
        size = self.batch_size
        for i in range(0, n, size):
            offs = lines.offsets[i : i + size]
            end = lines.offsets[i + size] if i + size < n else lines.end
            extras = {j - i: x for j, x in lines.extras.items() if i <= j < i + size}
            chunks.append(
                Chunk(
                    source=self.source,
                    path=self.path,
                    file_key=key,
                    read_at=wall,
                    lines=lines.texts[i : i + size],
                    offsets=offs,
                    extras=extras,
                    n_bytes=end - offs[0],
                )
            )
        cp = None
        if lines.end != self.committed:
            cp = Checkpoint(
                self.file_id, self.generation, lines.end, self.path, self.source, self.epoch
            )
        return Read(tuple(chunks), cp, n_read, filtered)

    def _process(self, lines: Lines) -> tuple[Lines, int]:
        """include/exclude, then redaction; how many entries were filtered out."""
        filters, redactor = self.processing.filters, self.processing.redactor
        if not lines.texts or (not filters and not redactor):
            return lines, 0
        out = Lines(end=lines.end)
        for i, (text, off) in enumerate(zip(lines.texts, lines.offsets, strict=True)):
            if filters and not filters.keep(text):
                continue
            extra = lines.extras.get(i)
            if redactor:
                clean = redactor.text(text)
                if extra and "raw_b64" in extra:
                    extra = {k: v for k, v in extra.items() if k != "raw_b64"} or None
                text = clean
            out.add(text, off, extra)
        return out, len(lines.texts) - len(out.texts)

    def mark_committed(self, read: Read) -> None:
        if read.checkpoint is not None:
            self.committed = read.checkpoint.offset

    def was_truncated(self) -> bool:
        """Copytruncate: shorter than what was read, or the first line changed."""
        st = os.fstat(self.fd)
        if st.st_size < self.splitter.consumed:
            return True
        return self.file_id is not None and not matches(self.fd, self.file_id)

    def restart_generation(self) -> None:
        """After truncation: the same inode is a new content generation, read from 0."""
        self.generation += 1
        self.file_id = None
        self.committed = 0
        self.splitter = LineSplitter(0, self.max_line_bytes)
        if self.multiline is not None:
            self.assembler = Assembler(self.multiline)

    @property
    def is_open(self) -> bool:
        return self.fd >= 0

    def unchanged(self, st: os.stat_result) -> bool:
        """Nothing to do: the same size and mtime as at the last look, read to that size,
        nothing held. (A rewrite to the very same size within one mtime tick would pass
        for unchanged; the same rule closed files have always had.)"""
        return (
            (st.st_size, st.st_mtime_ns) == self.seen
            and st.st_size == self.splitter.consumed
            and not self.holding
        )

    def looked(self, st: os.stat_result) -> None:
        self.seen = (st.st_size, st.st_mtime_ns)

    def reopen(self, fd: int) -> bool:
        """Take ``fd`` (the path opened again); False, and ``fd`` closed, when it is another
        file (the path was rotated while this one was closed)."""
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.inode:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def close(self) -> None:
        """Let the descriptor go (quiet, or finished); the state stays for a reopen."""
        if self.fd >= 0:
            try:
                self.looked(os.fstat(self.fd))
            finally:
                os.close(self.fd)
                self.fd = -1
