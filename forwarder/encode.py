"""Entries → the ingest-batch request body, with a batch_id that is the same for the same set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from queue_store.records import Entry


@dataclass(frozen=True)
class EncodedBatch:
    body: bytes
    batch_id: str
    n: int


def batch_id_of(entries: Sequence[Entry]) -> str:
    """Deterministic for the same set of entries (their event_uids, in order)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(e.event_uid.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def encode_batch(entries: Sequence[Entry], *, agent_id: str, hostname: str) -> EncodedBatch:
    """The JSON body of POST /api/agent/ingest-batch (``logs`` is never empty)."""
    if not entries:
        raise ValueError("an ingest batch needs at least one entry")
    bid = batch_id_of(entries)
    body = {
        "agent_id": agent_id,
        "batch_id": bid,
        "logs": [e.to_wire(hostname) for e in entries],
    }
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return EncodedBatch(data, bid, len(entries))
