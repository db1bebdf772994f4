"""Wiring: config → store → collector thread, forwarder thread, heartbeat thread; shutdown."""

from __future__ import annotations

import signal
import threading
from typing import Any

import structlog

from collector.collector import Collector
from collector.discovery import FileSource
from collector.spec import ReaderContext, RecordReader
from forwarder.health import SendHealth
from forwarder.heartbeat import Heartbeat
from forwarder.loop import Forwarder
from forwarder.registrar import Registrar
from forwarder.retry import RetryPolicy
from forwarder.transport import warn_plain_http
from ila_agent.config import AgentConfig
from ila_agent.version import __version__
from ila_agent.wiring import agent_info, open_store, resolve_agent_id, transport_for
from ila_core.clock import Clock
from queue_store.store import QueueStore

log = structlog.get_logger("agent")

SHUTDOWN_GRACE = 5.0  # seconds the batch in flight may take to settle at shutdown
CLEANUP_INTERVAL = 60.0


class Agent:
    """The running agent; ``run`` returns the exit code."""

    def __init__(self, cfg: AgentConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop_event = stop or threading.Event()
        self.clock = Clock(self.stop_event)
        self.threads: list[threading.Thread] = []
        self.crashed = False

    def run(self) -> int:
        cfg = self.cfg
        store = open_store(cfg, clock=self.clock)
        try:
            return self._run(store)
        finally:
            store.close()

    def _run(self, store: QueueStore) -> int:
        cfg = self.cfg
        agent_id = resolve_agent_id(cfg)
        info = agent_info(cfg, agent_id)
        migrated = store.migrate_legacy()
        if migrated:
            log.info("legacy_buffer_imported", lines=migrated)
        log.info(
            "agent_starting",
            version=__version__,
            agent_id=agent_id,
            mode="collect-only" if cfg.collect_only else f"forwarding to {cfg.server_url}",
            buffer=cfg.buffer_db,
        )
        if cfg.collect_only:
            log.warning("collect_only_mode", reason="no server_url: lines are buffered, not sent")
        if cfg.ignored_sources:
            log.info("sources_ignored_on_this_platform", sources=list(cfg.ignored_sources))
        if cfg.unknown_keys:
            log.warning("config_unknown_keys", keys=list(cfg.unknown_keys))
        quarantined = store.get_meta("quarantined")
        if store.quarantined_to:
            log.error("buffer_was_corrupt", moved_to=store.quarantined_to)

        # After a quarantine the positions are gone: re-read known files rather than skip.
        first_start = store.get_meta("started_before") is None and not store.quarantined_to
        collector = Collector(
            store,
            cfg.file_sources,
            batch_size=cfg.batch_size,
            max_line_bytes=cfg.max_line_bytes,
            partial_line_timeout=cfg.partial_line_timeout,
            start_position=cfg.start_position,
            poll_interval=cfg.poll_interval,
            clock=self.clock,
            first_start=first_start,
            rotate_grace=cfg.rotate_grace,
        )
        collector.start_up()
        # A journal or channel with no saved cursor is "first seen": start_position applies
        # (also when it is added to an agent that ran before), except after a quarantine.
        ctx = ReaderContext(
            store=store,
            batch_size=cfg.batch_size,
            start_position=cfg.start_position,
            first_start=not store.quarantined_to,
            clock=self.clock,
            poll_interval=cfg.poll_interval,
        )
        readers: list[RecordReader] = []
        for spec in cfg.sources:
            if not isinstance(spec, FileSource):
                made = spec.reader(ctx)
                if made is not None:
                    readers.append(made)
        store.set_meta("started_before", "1")
        self._spawn("collector", collector.run)
        for reader in readers:
            self._spawn(reader.name, reader.run)

        forwarder: Forwarder | None = None
        registrar: Registrar | None = None
        if not cfg.collect_only:
            warn_plain_http(cfg.server_url or "")
            registrar = Registrar(info)
            health = SendHealth(lambda v: store.set_meta("last_error", v), self.clock.wall)
            hb = Heartbeat(
                transport_for(cfg),
                registrar,
                interval=cfg.heartbeat_interval,
                buffer_figures=lambda: self._figures(store, quarantined),
                retry=RetryPolicy(cfg.retry_interval),
                clock=self.clock,
                health=health,
            )
            forwarder = Forwarder(
                store,
                transport_for(cfg),
                registrar,
                hostname=info.hostname,
                batch_size=cfg.batch_size,
                batch_interval=cfg.batch_interval,
                retry=RetryPolicy(cfg.retry_interval),
                clock=self.clock,
                health=health,
                wake=store.commit_event,
            )
            self._spawn("heartbeat", hb.run)
            self._spawn("forwarder", forwarder.run)
        log.info("agent_started", sources=len(collector.active))

        while not self.stop_event.wait(CLEANUP_INTERVAL):
            try:
                store.cleanup()
            except Exception as exc:  # housekeeping must never stop the agent
                log.error("cleanup_failed", error=str(exc))
        log.info("agent_stopping")
        collector.stop()
        for reader in readers:
            reader.stop()
        store.commit_event.set()
        if registrar is not None:
            registrar.needed.set()
        for t in self.threads:
            t.join(SHUTDOWN_GRACE if t.name == "forwarder" else 3.0)
        if forwarder is not None:
            fwd = next(t for t in self.threads if t.name == "forwarder")
            if not fwd.is_alive():
                forwarder.abandon()
            else:
                log.warning("batch_abandoned_at_shutdown", note="resent after restart")
        log.info("agent_stopped")
        return 1 if self.crashed else 0

    def _figures(self, store: QueueStore, quarantined: str | None) -> dict[str, Any]:
        figures = store.stats().heartbeat_json()
        if quarantined:
            figures["quarantined"] = quarantined
        return figures

    def _spawn(self, name: str, target: Any) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                # A dead thread would silently stop collection or sending: stop loudly instead.
                log.exception("thread_crashed", thread=name)
                self.crashed = True
                self.stop_event.set()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()


def install_signal_handlers(agent: Agent) -> None:
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
