"""What one finished request says about the server's load (the concurrency controller's input).

``BACKPRESSURE``: the server, or the path to it, is overloaded: HTTP 429, 503, 504, 408 and 502
(a gateway whose upstream is down), a read timeout. ``UNREACHABLE``: connection refused or
reset (down, or shedding connections; after a long outage the fleet comes back paced, not
with one request per agent). ``ERROR``: an answer that says nothing about load, neither a cut
nor an RTT sample: other 4xx (400/413/422, 401/403, 404), 500 and other 5xx, a redirect, DNS
and TLS failures (configuration, not load).
"""

from __future__ import annotations

import enum

BACKPRESSURE_STATUSES = frozenset({408, 429, 502, 503, 504})


class Signal(enum.Enum):
    """What one finished request says about the server's load."""

    OK = "ok"  # a 2xx: the RTT is a sample
    BACKPRESSURE = "backpressure"  # 408/429/502/503/504, a timeout
    UNREACHABLE = "unreachable"  # refused/reset: down or shedding connections
    ERROR = "error"  # any other failure: no sample, no cut


def signal_for_status(status: int) -> Signal:
    """The signal an HTTP status carries (the transport maps its exceptions alike)."""
    if 200 <= status < 300:
        return Signal.OK
    if status in BACKPRESSURE_STATUSES:
        return Signal.BACKPRESSURE
    return Signal.ERROR
