"""The agent's own log: JSON lines to agent_log_file (size-rotated), readable text on stderr."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


class Redactor:
    """Replaces the API key wherever it might appear in an event, as a last line of defence."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if self.secret is None:
            return event
        for k, v in list(event.items()):
            if isinstance(v, str) and self.secret in v:
                event[k] = v.replace(self.secret, "***")
        return event


def setup_logging(
    log_file: str | None,
    *,
    level: str = "info",
    secret: str | None = None,
    console: bool = True,
) -> None:
    """Configure structlog over stdlib logging; safe to call again (handlers are replaced)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        Redactor(secret),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        fh = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(), foreign_pre_chain=shared
            )
        )
        root.addHandler(fh)
    if console:
        tty = sys.stderr.isatty()
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.dev.ConsoleRenderer(colors=tty), foreign_pre_chain=shared
            )
        )
        root.addHandler(ch)
    # Libraries speak only when something is wrong.
    for noisy in ("urllib3", "watchdog", "persistqueue", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
