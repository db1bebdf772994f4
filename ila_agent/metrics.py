"""``metrics_listen``: GET /metrics (Prometheus text format) and GET /healthz.

Nothing here runs per line: the collector and the forwarder keep plain counts
(ila_core/counters.py) where they do the work; a scrape reads them, and the buffer's figures,
into prometheus-client metric families. The library is an optional extra
(``pip install 'ila-soc-agent[metrics]'``), imported only when ``metrics_listen`` is set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from ila_core.counters import Counts, Histogram
from ila_core.health import HealthBoard
from queue_store.stats import BufferStats

log = structlog.get_logger("agent")

EXTRA_HINT = "pip install 'ila-soc-agent[metrics]'"


@dataclass
class AgentView:
    """What a scrape reads; each is cheap (a snapshot), called in the scraping thread."""

    stats: Callable[[], BufferStats]
    lags: Callable[[], dict[str, int]]  # source → bytes not read yet
    counts: Counts
    durations: Histogram
    in_flight: Callable[[], int]
    concurrency_limit: Callable[[], int]
    health: HealthBoard


def loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); ValueError when not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _AgentCollector:
    """A prometheus-client collector over the agent's view, read at each scrape."""

    def __init__(self, view: AgentView) -> None:
        self.view = view

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        v = self.view
        st = v.stats()
        counts = v.counts.snapshot()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"ila_agent_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"ila_agent_{name}", doc, value=value)

        def by_label(name: str, doc: str, label: str, values: dict[str, int]) -> Any:
            family = CounterMetricFamily(f"ila_agent_{name}", doc, labels=[label])
            for key, n in sorted(values.items()):
                family.add_metric([key], n)
            return family

        yield gauge("pending_entries", "Entries not yet acked (in flight included).", st.pending)
        yield gauge("pending_bytes", "Bytes of the entries not yet acked.", st.pending_bytes)
        yield gauge("oldest_pending_age_seconds", "Age of the oldest entry not yet acked.",
                    st.oldest_pending_age_s or 0.0)  # fmt: skip
        yield gauge("dead_letter_entries", "Entries the output refused for good, kept.",
                    st.dead_letter)  # fmt: skip
        yield counter("dropped", "Entries dropped by buffer_full_policy drop_oldest.", st.dropped)
        yield counter("filtered", "Entries left out by include/exclude.", st.filtered)
        yield by_label("entries_committed", "Entries committed to the buffer.", "source",
                       counts.get("committed", {}))  # fmt: skip
        yield counter("entries_delivered", "Entries the output confirmed (resent: again).",
                      sum(counts.get("delivered", {}).values()))  # fmt: skip
        yield by_label("send_failures", "Failed sends by kind.", "reason",
                       counts.get("send_failures", {}))  # fmt: skip
        yield by_label("input_dropped", "Messages a network input could not take.", "source",
                       counts.get("input_dropped", {}))  # fmt: skip
        yield gauge("requests_in_flight", "Requests waiting for their answer.", v.in_flight())
        yield gauge("concurrency_limit", "Requests the agent allows itself in flight now.",
                    v.concurrency_limit())  # fmt: skip
        buckets, total = v.durations.snapshot()
        yield HistogramMetricFamily("ila_agent_request_duration_seconds",
                                    "Answer time of each request.", buckets=buckets,
                                    sum_value=total)  # fmt: skip
        lag = GaugeMetricFamily("ila_agent_source_lag_bytes", "Bytes of a file not read yet.",
                                labels=["source"])  # fmt: skip
        for source, n in sorted(v.lags().items()):
            lag.add_metric([source], n)
        yield lag


class MetricsServer:
    """The HTTP endpoint, on its own daemon threads."""

    def __init__(self, listen: str, view: AgentView) -> None:
        # Imported here: http.server costs ~25 ms of every agent's start, metrics or not.
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        host, port = split_listen(listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AgentCollector(view))  # type: ignore[arg-type]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:  # scrapes are not log events
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    problems = sorted(view.health.problems().values())
                    body = (
                        {"status": "failing", "reasons": problems}
                        if problems
                        else {"status": "ok", "pid": os.getpid()}
                    )
                    self._send(503 if problems else 200, json.dumps(body).encode(),
                               "application/json")  # fmt: skip
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)  # fmt: skip
        if not loopback(host):
            note = "no authentication: anyone who can reach it reads the figures"
            log.warning("metrics_not_on_loopback", listen=listen, note=note)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics_listening", port=self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
