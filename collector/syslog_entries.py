"""Syslog messages → buffer entries: event_uid and parsed fields, into one pass's batch."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime
from typing import Any

from collector.syslog_format import parse


class UidMinter:
    """``event_uid``s: sha256(listener key, random epoch, counter), 32 hex digits."""

    def __init__(self, key: str) -> None:
        # A fresh random epoch per start: no state to keep, and nothing to collide with when
        # the buffer (with any saved counter) is lost or quarantined.
        self.epoch = os.urandom(16).hex()
        self.count = 0
        self._base = hashlib.sha256(f"{key}\0{self.epoch}\0".encode())

    def next(self) -> str:
        self.count += 1
        h = self._base.copy()
        h.update(self.count.to_bytes(8, "big"))
        return h.hexdigest()[:32]

    @property
    def cursor(self) -> str:
        """Saved with each commit: which run committed how many (for diagnosis only)."""
        return f"{self.epoch}:{self.count}"


class Pass:
    """What one loop pass read: the entries to commit together, and their message bytes."""

    __slots__ = ("entries", "n_bytes", "now_dt", "stamp")

    def __init__(self, stamp: str, now_dt: datetime) -> None:
        self.entries: list[dict[str, Any]] = []
        self.n_bytes = 0
        self.stamp = stamp  # the entries' receive time, RFC 3339
        self.now_dt = now_dt  # the year and zone an RFC 3164 timestamp lacks


class EntryMaker:
    """The entry of each message of one listener: its text, fields, host and ``event_uid``."""

    def __init__(self, source: str, uids: UidMinter) -> None:
        self.source = source
        self.uids = uids

    def add(self, batch: Pass, msg: bytes, peer: str, ip: str) -> bool:
        """The entry of one message, into ``batch``; True when it is binary with no
        ``<PRI>`` (not a syslog sender: the caller closes a TCP connection)."""
        fields = parse(msg, now=batch.now_dt)
        try:
            text = msg.decode("utf-8")
            binary = False
        except UnicodeDecodeError:
            text = msg.decode("utf-8", errors="replace")
            binary = True
        entry: dict[str, Any] = {
            "log_text": text,
            "source": self.source,
            "timestamp": batch.stamp,
            # The entry's host is the one the message is about: the sender's HOSTNAME (a relay
            # keeps the original host's), else the address it came from.
            "hostname": (fields.hostname if fields is not None and fields.hostname else ip),
            "event_uid": self.uids.next(),
            "peer": peer,
        }
        if fields is not None:
            entry["syslog"] = fields.to_json()
        if binary:
            entry["raw_b64"] = base64.b64encode(msg).decode("ascii")
        batch.entries.append(entry)
        batch.n_bytes += len(msg)
        return fields is None and (binary or b"\0" in msg)
