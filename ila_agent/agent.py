"""Wiring: config → store → collector thread, record readers, forwarder and heartbeat threads;
the main loop (state file, buffer checks, housekeeping, reload on SIGHUP); shutdown."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog

from collector.collector import Collector
from collector.descriptors import raise_fd_limit
from collector.discovery import FileSource
from collector.spec import ReaderContext
from forwarder.health import SendHealth
from forwarder.heartbeat import Heartbeat
from forwarder.http_sink import HttpSink
from forwarder.loop import SHUTDOWN_GRACE, Forwarder
from forwarder.registrar import AgentInfo, Registrar
from forwarder.retry import RetryPolicy
from forwarder.senders import make_executor
from forwarder.sink import Sink
from forwarder.transport import warn_plain_http
from ila_agent.config import AgentConfig, load_config
from ila_agent.readers import RecordReaders
from ila_agent.reload import RELOADABLE, changed_keys
from ila_agent.state_file import StateFile
from ila_agent.version import __version__
from ila_agent.wiring import agent_info, open_store, resolve_agent_id, transport_for
from ila_core.clock import Clock
from ila_core.counters import Counts, Histogram
from ila_core.errors import BufferWriteError, ConfigError
from ila_core.health import HealthBoard, describe_write_failure
from queue_store.store import QueueStore

log = structlog.get_logger("agent")

CLEANUP_INTERVAL = 60.0
TICK_S = 1.0  # the state file, the buffer file check, a pending reload


class Agent:
    """The running agent; ``run`` returns the exit code."""

    def __init__(self, cfg: AgentConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop_event = stop or threading.Event()
        self.clock = Clock(self.stop_event)
        self.threads: list[threading.Thread] = []
        self.health = HealthBoard()
        self.counts = Counts()
        self.durations = Histogram()
        self.reload_requested = threading.Event()
        self.collector: Collector | None = None
        self.forwarder: Forwarder | None = None
        self.readers: RecordReaders | None = None
        self.crashed = False

    def run(self) -> int:
        store = open_store(self.cfg, clock=self.clock)
        try:
            return self._run(store)
        finally:
            store.close()

    def _run(self, store: QueueStore) -> int:
        cfg = self.cfg
        info = agent_info(cfg, resolve_agent_id(cfg))
        self._announce(store, info)
        collector = self._collect(store)
        registrar = None
        if not cfg.collect_only:
            self.forwarder, registrar = self._forward(store, info)
        metrics = self._serve_metrics(store) if cfg.metrics_listen else None
        log.info("agent_started", sources=len(collector.active))

        state = StateFile(cfg.buffer_db)
        next_cleanup = self.clock.monotonic() + CLEANUP_INTERVAL
        while not self.stop_event.wait(TICK_S):
            self._check_buffer_file(store)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload()
            state.write(self._report())
            if self.clock.monotonic() >= next_cleanup:
                next_cleanup = self.clock.monotonic() + CLEANUP_INTERVAL
                try:
                    store.cleanup()
                except Exception as exc:  # housekeeping must never stop the agent
                    log.error("cleanup_failed", error=str(exc))
        log.info("agent_stopping")
        collector.stop()
        if self.readers is not None:
            self.readers.stop_all()
        store.commit_event.set()
        if registrar is not None:
            registrar.needed.set()
        for t in self.threads:
            # The forwarder settles what is in flight (up to its grace), then gives back the rest.
            t.join(SHUTDOWN_GRACE + 1.0 if t.name == "forwarder" else 3.0)
        if self.forwarder is not None:
            self.forwarder.sink.close()  # the broker connection, the HTTP pool
        if metrics is not None:
            metrics.stop()
        state.close({**self._report(), "running": False})
        log.info("agent_stopped")
        return 1 if self.crashed else 0

    def _announce(self, store: QueueStore, info: AgentInfo) -> None:
        cfg = self.cfg
        migrated = store.migrate_legacy()
        if migrated:
            log.info("legacy_buffer_imported", lines=migrated)
        mode = cfg.redacted()["mode"]
        if not cfg.collect_only and cfg.output is None:
            mode = f"forwarding to {cfg.server_url}"
        log.info("agent_starting", version=__version__, agent_id=info.agent_id, mode=mode,
                 buffer=cfg.buffer_db)  # fmt: skip
        if cfg.collect_only:
            log.warning("collect_only_mode", reason="no server_url: lines are buffered, not sent")
        if cfg.ignored_sources:
            log.info("sources_ignored_on_this_platform", sources=list(cfg.ignored_sources))
        if cfg.unknown_keys:
            log.warning("config_unknown_keys", keys=list(cfg.unknown_keys))
        if store.quarantined_to:
            log.error("buffer_was_corrupt", moved_to=store.quarantined_to)

    # -- collecting ----------------------------------------------------------------------

    def _collect(self, store: QueueStore) -> Collector:
        """Files on the collector thread, the other sources on a thread each."""
        cfg = self.cfg
        # After a quarantine the positions are gone: re-read known files rather than skip.
        first_start = store.get_meta("started_before") is None and not store.quarantined_to
        limits = raise_fd_limit()  # descriptors are a budget: take all the system allows
        if limits is not None:
            log.info("file_descriptors", soft=limits[0], hard=limits[1])
        collector = self.collector = Collector(
            store, cfg.file_sources, health=self.health, batch_size=cfg.batch_size,
            max_line_bytes=cfg.max_line_bytes, partial_line_timeout=cfg.partial_line_timeout,
            start_position=cfg.start_position, poll_interval=cfg.poll_interval,
            clock=self.clock, first_start=first_start, rotate_grace=cfg.rotate_grace,
            max_open_files=cfg.max_open_files, close_inactive=cfg.close_inactive,
            redactor=cfg.redact, counts=self.counts,
        )  # fmt: skip
        collector.start_up()
        # A journal or channel with no saved cursor is "first seen": start_position applies
        # (also when it is added to an agent that ran before), except after a quarantine.
        ctx = ReaderContext(
            store=store, batch_size=cfg.batch_size, start_position=cfg.start_position,
            first_start=not store.quarantined_to, clock=self.clock,
            poll_interval=cfg.poll_interval, health=self.health, redactor=cfg.redact,
            counts=self.counts,
        )  # fmt: skip
        for spec in cfg.sources:  # only network inputs drop; every source shows its 0
            self.counts.add("input_dropped", 0, spec.label())
        self.readers = RecordReaders(ctx, self._spawn)
        self.readers.apply([s for s in cfg.sources if not isinstance(s, FileSource)])
        store.set_meta("started_before", "1")
        self._spawn("collector", collector.run)
        return collector

    def _reload(self) -> None:
        """SIGHUP: sources, their processing and redaction change now; other keys are named
        as needing a restart; an invalid file changes nothing."""
        try:
            new = load_config(self.cfg.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), note="the running config stays")
            return
        restart = changed_keys(self.cfg, new) - RELOADABLE
        if restart:
            log.warning("config_reload_needs_restart", keys=sorted(restart))
        assert self.collector is not None and self.readers is not None
        self.collector.reconfigure(new.file_sources, new.redact)
        self.readers.ctx = dataclasses.replace(self.readers.ctx, redactor=new.redact)
        self.readers.apply([s for s in new.sources if not isinstance(s, FileSource)])
        self.cfg = dataclasses.replace(
            self.cfg, sources=new.sources, redact=new.redact, ignored_sources=new.ignored_sources
        )
        log.info("config_reloaded", sources=len(new.sources))

    # -- forwarding ----------------------------------------------------------------------

    def _forward(self, store: QueueStore, info: AgentInfo) -> tuple[Forwarder, Registrar]:
        """Start sending: heartbeat and registration when there is a server, the forwarder
        through the configured output (the server's HTTP API unless ``output`` says)."""
        cfg = self.cfg
        registrar = Registrar(info)
        health = SendHealth(lambda v: store.set_meta("last_error", v), self.clock.wall)
        if cfg.server_url is not None:
            warn_plain_http(cfg.server_url)
            hb_retry = RetryPolicy(cfg.retry_interval, clock=self.clock.monotonic)
            hb = Heartbeat(
                transport_for(cfg), registrar, interval=cfg.heartbeat_interval,
                buffer_figures=lambda: self._figures(store),
                retry=hb_retry, clock=self.clock, health=health,
                extra=lambda: {"problems": sorted(self.health.problems().values()),
                               "files": self._file_counts()},
            )  # fmt: skip
            self._spawn("heartbeat", hb.run)
        else:
            registrar.registered.set()  # a broker output alone: nobody to register with
        if cfg.output is not None:
            sink: Sink = cfg.output.make_sink(agent_id=info.agent_id, hostname=info.hostname)
            log.info("output", to=cfg.output.label())
        else:
            transport = transport_for(cfg, pool_size=cfg.max_in_flight)
            sink = HttpSink(transport, info, max_body_bytes=cfg.batch_max_bytes)
        forwarder = Forwarder(
            store, sink, registrar, batch_size=cfg.batch_size,
            batch_interval=cfg.batch_interval,
            retry=RetryPolicy(cfg.retry_interval, clock=self.clock.monotonic),
            clock=self.clock, health=health, wake=store.commit_event,
            max_in_flight=cfg.max_in_flight, batch_max_bytes=cfg.batch_max_bytes,
            executor=make_executor(cfg.max_in_flight), health_board=self.health,
            counts=self.counts, durations=self.durations,
        )  # fmt: skip
        self._spawn("forwarder", forwarder.run)
        return forwarder, registrar

    # -- what the agent shows ------------------------------------------------------------

    def _serve_metrics(self, store: QueueStore) -> Any:
        from ila_agent.metrics import AgentView, MetricsServer

        fwd = self.forwarder
        view = AgentView(
            stats=store.stats,
            lags=lambda: self.collector.lags() if self.collector is not None else {},
            counts=self.counts,
            durations=self.durations,
            in_flight=lambda: len(fwd.sending) if fwd is not None else 0,
            concurrency_limit=lambda: fwd.controller.limit if fwd is not None else 0,
            health=self.health,
        )
        assert self.cfg.metrics_listen is not None
        server = MetricsServer(self.cfg.metrics_listen, view)
        server.start()
        return server

    def _file_counts(self) -> dict[str, int]:
        return self.collector.file_counts() if self.collector is not None else {}

    def _check_buffer_file(self, store: QueueStore) -> None:
        """The buffer on disk is still ours (not deleted or replaced under us)."""
        try:
            problem = store.check_file()
        except BufferWriteError as exc:
            self.health.set("buffer:file", describe_write_failure(str(exc)))
            return
        if problem is not None:
            # Restored: said loudly in the log; the problem is over.
            self.health.set("buffer:file", None)

    def _report(self) -> dict[str, Any]:
        """What ``status`` shows of the running agent (``<buffer>.state``)."""
        report: dict[str, Any] = {
            "running": True,
            "pid": os.getpid(),
            "updated_at": round(self.clock.wall(), 3),
            "problems": sorted(self.health.problems().values()),
            "files": self._file_counts(),
        }
        fwd = self.forwarder
        if fwd is not None:
            snap = fwd.controller.snapshot()
            report.update(
                in_flight=len(fwd.sending), waiting_retry=len(fwd.waiting),
                concurrency_limit=snap.limit, concurrency_window=round(snap.window, 4),
                max_in_flight=snap.max_limit,
                sent_lines=fwd.sent_lines,
            )  # fmt: skip
        return report

    def _figures(self, store: QueueStore) -> dict[str, Any]:
        figures = store.stats().heartbeat_json()
        quarantined = store.get_meta("quarantined")
        if quarantined:
            figures["quarantined"] = quarantined
        return figures

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except Exception:
                # A dead thread would silently stop collection or sending: stop loudly instead.
                log.exception("thread_crashed", thread=name)
                self.health.set(f"thread:{name}", f"thread {name} died")
                self.crashed = True
                self.stop_event.set()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def request_reload(self, *_: Any) -> None:
        self.reload_requested.set()


def install_signal_handlers(agent: Agent) -> None:
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, agent.request_reload)
