"""Building the agent's parts from its configuration: the buffer, the transport, its identity."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import uuid
from pathlib import Path

from forwarder.registrar import AgentInfo
from forwarder.transport import DEFAULT_POOL_SIZE, Transport, TransportSettings
from ila_agent.config import AgentConfig
from ila_agent.version import USER_AGENT, __version__
from ila_core.clock import Clock
from queue_store.store import QueueStore


def agent_id_path(cfg: AgentConfig) -> str:
    return cfg.buffer_db + ".agent-id"


def resolve_agent_id(cfg: AgentConfig) -> str:
    """The configured id, else the one generated at the first start (kept beside the buffer)."""
    if cfg.agent_id:
        return cfg.agent_id
    path = Path(agent_id_path(cfg))
    with contextlib.suppress(FileNotFoundError):
        saved = path.read_text(encoding="utf-8").strip()
        if saved:
            return saved
    new = str(uuid.uuid4())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return new


def open_store(cfg: AgentConfig, *, lock: bool = True, clock: Clock | None = None) -> QueueStore:
    """The configured buffer; ``lock=False`` for tools working beside a running agent."""
    return QueueStore(
        cfg.buffer_db,
        max_bytes=cfg.buffer_max_bytes,
        full_policy=cfg.buffer_full_policy,
        acked_retention_s=cfg.acked_retention_hours * 3600.0,
        lock=lock,
        clock=clock,
    )


def transport_for(
    cfg: AgentConfig, server_url: str | None = None, *, pool_size: int = DEFAULT_POOL_SIZE
) -> Transport:
    assert cfg.api_key is not None
    return Transport(
        TransportSettings(
            server_url=server_url or cfg.server_url or "",
            api_key=cfg.api_key,
            connect_timeout=cfg.connect_timeout,
            request_timeout=cfg.request_timeout,
            tls_ca_file=cfg.tls_ca_file,
            tls_client_cert=cfg.tls_client_cert,
            tls_client_key=cfg.tls_client_key,
            compression=cfg.compression,
            user_agent=USER_AGENT,
        ),
        pool_size=pool_size,
    )


def agent_info(cfg: AgentConfig, agent_id: str) -> AgentInfo:
    return AgentInfo(
        agent_id=agent_id,
        hostname=cfg.hostname or socket.gethostname(),
        os_type=platform.system(),
        os_version=platform.release(),
        agent_version=__version__,
        sources=tuple(s.label() for s in cfg.sources),
    )
