"""A syslog listener's configuration: ``{"type": "syslog", "listen": "tcp://0.0.0.0:514"}``.

UDP, TCP or TLS; RFC 3164 and RFC 5424 messages. What the listener does with what it
receives, and its invariants: ``collector.syslog_reader``. The format: ``docs/syslog.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from collector.processing import FILTER_KEYS, Filters
from collector.spec import ReaderContext, RecordReader
from ila_core.settings import SettingsReader

SCHEMES = ("udp", "tcp", "tls")
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
MIN_MESSAGE_BYTES = 480  # RFC 5426 4.1: every receiver must accept 480-byte messages
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1000
MAX_CONNECTIONS_LIMIT = 100_000
# Senders keep TCP connections open for days and reconnect when one is closed; ten silent
# minutes is long enough not to churn real senders and short enough to shed an idle flood.
DEFAULT_IDLE_TIMEOUT = 600.0

KEYS = {
    "type", "listen", "source", "tls_cert_file", "tls_key_file", "tls_client_ca_file",
    "max_message_bytes", "max_connections", "idle_timeout", *FILTER_KEYS,
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SyslogSource:
    """One syslog listener: ``listen`` = ``udp://HOST:PORT``, ``tcp://...`` or ``tls://...``."""

    type_name: ClassVar[str] = "syslog"
    scheme: str
    host: str
    port: int
    source: str | None = None  # None: "syslog:<scheme>:<port>"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # set: clients must present a certificate it signed
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    filters: Filters = field(default_factory=Filters)  # include/exclude (set by parse_source)

    @classmethod
    def from_json(cls, r: SettingsReader) -> SyslogSource:
        r.warn_unknown(KEYS)
        try:
            scheme, host, port = parse_listen(r.text("listen"))
        except ValueError as exc:
            raise r.error("listen", str(exc)) from None
        source = r.string("source", None)
        if source is not None and not source.strip():
            raise r.error("source", "must not be empty")
        tls = {k: r.path(k, None) for k in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")}
        if scheme == "tls":
            for k in ("tls_cert_file", "tls_key_file"):
                if tls[k] is None:
                    raise r.error(k, "is required with a tls:// listener")
            for k, path in tls.items():
                if path is not None and not os.path.isfile(path):
                    raise r.error(k, f"{path} is not a file")
        else:
            for k, path in tls.items():
                if path is not None:
                    raise r.error(k, f"applies only to a tls:// listener, not {scheme}://")
        return cls(
            scheme=scheme,
            host=host,
            port=port,
            source=source,
            tls_cert_file=tls["tls_cert_file"],
            tls_key_file=tls["tls_key_file"],
            tls_client_ca_file=tls["tls_client_ca_file"],
            max_message_bytes=r.integer(
                "max_message_bytes",
                DEFAULT_MAX_MESSAGE_BYTES,
                minimum=MIN_MESSAGE_BYTES,
                maximum=MAX_MESSAGE_BYTES,
            ),
            max_connections=r.integer(
                "max_connections", DEFAULT_MAX_CONNECTIONS, maximum=MAX_CONNECTIONS_LIMIT
            ),
            idle_timeout=r.number("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        )

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def name(self) -> str:
        """The ``source`` its entries carry."""
        return self.source or f"syslog:{self.scheme}:{self.port}"

    def label(self) -> str:
        return f"syslog:{self.listen}"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.filters.to_json(),
            "type": self.type_name,
            "listen": self.listen,
            "source": self.name,
            "tls_cert_file": self.tls_cert_file,
            "tls_key_file": self.tls_key_file,
            "tls_client_ca_file": self.tls_client_ca_file,
            "max_message_bytes": self.max_message_bytes,
            "max_connections": self.max_connections,
            "idle_timeout": self.idle_timeout,
        }

    def runs_on(self, platform: str) -> bool:
        return True

    def reader(self, ctx: ReaderContext) -> RecordReader:
        from collector.syslog_reader import SyslogReader  # the reader imports this module

        return SyslogReader(ctx, self)


def parse_listen(text: str) -> tuple[str, str, int]:
    """``"tcp://0.0.0.0:514"`` → ``("tcp", "0.0.0.0", 514)``; ValueError saying what is wrong."""
    parts = urlsplit(text.strip())
    if parts.scheme not in SCHEMES:
        raise ValueError(f'must be "udp://HOST:PORT", "tcp://HOST:PORT" or "tls://HOST:PORT", '
                         f"got {text!r}")  # fmt: skip
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"needs a host and a port, e.g. {parts.scheme}://0.0.0.0:514")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"must be only {parts.scheme}://HOST:PORT, got {text!r}")
    return parts.scheme, parts.hostname, port
