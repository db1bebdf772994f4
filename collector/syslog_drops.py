"""What a syslog listener lost, by reason: counted, exported as a metric, said in the log."""

from __future__ import annotations

import os
import socket
import sys

import structlog

from collector.syslog_sockets import kernel_udp_drops
from ila_core.counters import Counts

log = structlog.get_logger("collector")

# Why a message was lost here: over max_message_bytes; a UDP datagram that came while the
# buffer was full; a TCP frame cut short (closed mid-frame, reset, idle); the rest of a read
# from a peer that sent binary data without <PRI>; read but not committed when the agent
# stopped (the buffer was full until then). Plus "kernel": the OS's UDP receive-buffer drops.
DROP_REASONS = ("too_large", "buffer_full", "incomplete", "not_syslog", "stopped")
DROP_LOG_S = 10.0  # drops are said at most this often, with the running totals


class DropCounter:
    """The drops of one listener; ``counts`` gets ``input_dropped`` under ``name``."""

    def __init__(self, counts: Counts, name: str, source: str, listen: str) -> None:
        self._counts = counts
        self._name = name
        self._source = source
        self._listen = listen
        # Every reason is there from the start: the dict never changes size, so another
        # thread may read it while this one counts.
        self._drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._kernel = 0  # the kernel's count for our UDP socket (Linux)
        self._logged = 0
        self._logged_at = -DROP_LOG_S  # the first drops are said at once, then ≤ 1 per 10 s

    def total(self) -> int:
        """Messages lost at this input, every reason (``ila_agent_input_dropped_total``)."""
        return sum(list(self._drops.values())) + self._kernel

    def by_reason(self) -> dict[str, int]:
        """The non-zero counts of DROP_REASONS and ``kernel``."""
        out = {reason: n for reason, n in list(self._drops.items()) if n}
        if self._kernel:
            out["kernel"] = self._kernel
        return out

    def count(self, reason: str, n: int = 1) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + n
        self._counts.add("input_dropped", n, self._name)  # the metric, by listener

    def read_kernel(self, sock: socket.socket | None) -> None:
        """Take in the kernel's receive-buffer drops of the UDP socket ``sock`` (Linux)."""
        if sock is None or not sys.platform.startswith("linux"):
            return
        found = kernel_udp_drops(os.fstat(sock.fileno()).st_ino, sock.family)
        if found is not None and found > self._kernel:
            self._counts.add("input_dropped", found - self._kernel, self._name)
            self._kernel = found

    def maybe_log(self, now: float) -> None:
        """Say new drops, at most every DROP_LOG_S seconds."""
        if now - self._logged_at >= DROP_LOG_S and self.total() != self._logged:
            self._logged_at = now
            self.log()

    def log(self, *, force: bool = False) -> None:
        """Say the running totals if they changed (``force``: if there are any)."""
        total = self.total()
        if total != self._logged or (force and total):
            log.warning(
                "syslog_input_dropped", source=self._source, listen=self._listen,
                new=total - self._logged, total=total, by_reason=self.by_reason(),
            )  # fmt: skip
            self._logged = total
