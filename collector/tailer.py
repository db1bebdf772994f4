"""Reading one file from a position: pread → LineSplitter → Read (lines + checkpoint)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from collector.identity import identify, matches, pread
from collector.lines import Lines, LineSplitter
from queue_store.records import Checkpoint, Chunk, FileId, file_key

READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Read:
    """What one read produced: chunks to commit and the checkpoint that goes with them."""

    chunks: tuple[Chunk, ...]
    checkpoint: Checkpoint | None
    n_bytes: int  # raw bytes read from the file (0 at end of file)


class Tailer:
    """An open file being read. The in-memory position follows the commit, never leads it."""

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
    ) -> None:
        self.path = path
        self.source = source
        self.fd = fd
        self.file_id = file_id  # None until the file has its first byte
        self.generation = generation
        self.epoch = epoch
        self.committed = offset
        self.batch_size = batch_size
        self.max_line_bytes = max_line_bytes
        self.splitter = LineSplitter(offset, max_line_bytes)
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
        return self._package(lines, wall, len(data))

    def flush(self, wall: float) -> Read:
        """Emit a pending partial line (timeout, rotation or deletion)."""
        if self.file_id is None:
            return Read((), None, 0)
        return self._package(self.splitter.flush(), wall, 0)

    def _package(self, lines: Lines, wall: float, n_read: int) -> Read:
        assert self.file_id is not None
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
        return Read(tuple(chunks), cp, n_read)

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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
