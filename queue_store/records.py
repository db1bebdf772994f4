"""Value types that flow through the buffer: a file's identity, a read position, what is
committed and what is leased."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

FORMAT_VERSION = 2  # 2: event_uids are a hash of the file generation + the offset


@dataclass(frozen=True)
class FileId:
    """A file's identity: inode reuse and rotation give a different FileId."""

    dev: int
    ino: int
    fp_len: int
    fp: str

    def key(self, generation: int = 0) -> str:
        """A stable name for this file's content generation (bumped by copytruncate)."""
        return f"{self.dev}:{self.ino}:{self.fp}:{self.fp_len}:{generation}"

    def same_inode(self, st: os.stat_result) -> bool:
        return st.st_dev == self.dev and st.st_ino == self.ino


@dataclass(frozen=True)
class Checkpoint:
    """Where reading of one file generation stands: raw bytes consumed and committed."""

    file_id: FileId
    generation: int
    offset: int
    path: str
    source: str
    epoch: str = ""  # drawn when the file was first seen: inode reuse never repeats a uid

    @property
    def key(self) -> str:
        return file_key(self.file_id, self.generation, self.epoch)


def file_key(file_id: FileId, generation: int, epoch: str) -> str:
    """The name of one file's content generation: what event_uids are derived from."""
    base = file_id.key(generation)
    return f"{base}~{epoch}" if epoch else base  # no epoch: a position saved before epochs


@dataclass(frozen=True)
class Chunk:
    """Up to batch_size lines of one file generation, committed as one queue item."""

    source: str
    path: str
    file_key: str
    read_at: float
    lines: Sequence[str]
    offsets: Sequence[int]
    extras: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    n_bytes: int = 0

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "src": self.source,
            "path": self.path,
            "fid": self.file_key,
            "ts": self.read_at,
            "lines": list(self.lines),
            "offs": list(self.offsets),
        }
        if self.extras:
            item["x"] = {str(i): dict(x) for i, x in self.extras.items()}
        return item


def event_uid(file_key: str, offset: int) -> str:
    """Deterministic id of the line starting at ``offset`` of the file generation."""
    return event_uids(file_key, (offset,))[0]


def event_uids(file_key: str, offsets: Sequence[int], version: int = FORMAT_VERSION) -> list[str]:
    """``event_uid`` of lines of one file generation, for items of format ``version``.

    Format 2 (what the collector commits now): 96 bits of SHA-256 of the generation's key, then
    the offset in hex (8 digits at least). Distinct offsets give distinct suffixes, so the
    uids of one generation never collide, and the hash is taken once per item, not per line
    (it was a tenth of the send path's CPU). Format 1: SHA-256 of ``key@offset`` per line,
    kept so that items committed by an older agent keep their uids when they are resent.
    """
    if version >= 2:
        base = hashlib.sha256(file_key.encode()).hexdigest()[:24]
        return [f"{base}{off:08x}" for off in offsets]
    prefix = hashlib.sha256(f"{file_key}@".encode())
    out = []
    for off in offsets:
        h = prefix.copy()
        h.update(str(off).encode())
        out.append(h.hexdigest()[:32])
    return out


class Entry(NamedTuple):
    """One log entry leased for sending; ``item_id`` is the queue item it belongs to.

    A NamedTuple rather than a frozen dataclass: hundreds of thousands are made per second on
    the send path, and a tuple is built several times faster.
    """

    item_id: int
    log_text: str
    source: str
    timestamp: str
    event_uid: str
    hostname: str | None = None
    extra: Mapping[str, Any] | None = None

    def to_wire(self, default_hostname: str) -> dict[str, Any]:
        """The entry as the protocol's ``logs[]`` object."""
        out: dict[str, Any] = {
            "log_text": self.log_text,
            "source": self.source,
            "timestamp": self.timestamp,
            "hostname": self.hostname or default_hostname,
            "event_uid": self.event_uid,
        }
        if self.extra:
            out.update(self.extra)
        return out

    @classmethod
    def from_wire(cls, item_id: int, d: Mapping[str, Any]) -> Entry:
        """Back from the protocol form (dead letters, imported bundles)."""
        core = {"log_text", "source", "timestamp", "hostname", "event_uid"}
        extra = {k: v for k, v in d.items() if k not in core}
        return cls(
            item_id=item_id,
            log_text=str(d.get("log_text", "")),
            source=str(d.get("source", "")),
            timestamp=str(d.get("timestamp", "")),
            event_uid=str(d.get("event_uid", "")),
            hostname=d.get("hostname"),
            extra=extra or None,
        )
