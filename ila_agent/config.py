"""Configuration: config.json → a frozen AgentConfig, validated key by key.

A config written for the first agent loads unchanged. Relative paths resolve against the
directory of the config file. Every invalid value raises ConfigError naming the file and key.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.discovery import FileSource
from collector.processing import Redactor
from collector.sources import Source, parse_sources
from forwarder.outputs import OutputSpec, parse_output
from ila_agent.metrics import EXTRA_HINT, split_listen
from ila_core.errors import ConfigError
from ila_core.settings import SettingsReader, kind

DEFAULT_CONFIG_PATH = "config.json"
API_KEY_ENV = "ILA_AGENT_API_KEY"

DEFAULT_HEARTBEAT_INTERVAL = 60.0
DEFAULT_BATCH_INTERVAL = 5.0
DEFAULT_BATCH_SIZE = 50
DEFAULT_START_POSITION = "end"
DEFAULT_BUFFER_DB = "log_buffer.db"
DEFAULT_AGENT_LOG_FILE = "agent.log"
DEFAULT_RETRY_INTERVAL = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_MAX_LINE_BYTES = 262_144
DEFAULT_PARTIAL_LINE_TIMEOUT = 5.0
DEFAULT_BUFFER_MAX_BYTES = 1_073_741_824
DEFAULT_BUFFER_FULL_POLICY = "drop_oldest"
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_CLOSE_INACTIVE = 60.0
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_BATCH_MAX_BYTES = 1_048_576
MAX_IN_FLIGHT_CAP = 64
DEFAULT_ROTATE_GRACE = 30.0
DEFAULT_ACKED_RETENTION_HOURS = 24.0
START_POSITIONS = ("end", "beginning")
FULL_POLICIES = ("drop_oldest", "block")
COMPRESSIONS = (None, "gzip")


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The effective configuration. ``api_key`` is kept out of repr."""

    config_path: str
    server_url: str | None
    api_key: str | None = field(default=None, repr=False)
    api_key_origin: str | None = None
    agent_id: str | None = None
    hostname: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    batch_size: int = DEFAULT_BATCH_SIZE
    sources: tuple[Source, ...] = ()
    ignored_sources: tuple[str, ...] = ()
    start_position: str = DEFAULT_START_POSITION
    buffer_db: str = DEFAULT_BUFFER_DB
    agent_log_file: str = DEFAULT_AGENT_LOG_FILE
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    partial_line_timeout: float = DEFAULT_PARTIAL_LINE_TIMEOUT
    buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES
    buffer_full_policy: str = DEFAULT_BUFFER_FULL_POLICY
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_open_files: int | None = None
    close_inactive: float = DEFAULT_CLOSE_INACTIVE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    rotate_grace: float = DEFAULT_ROTATE_GRACE
    acked_retention_hours: float = DEFAULT_ACKED_RETENTION_HOURS
    compression: str | None = None
    tls_ca_file: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    bundle_hmac_key_file: str | None = None
    log_level: str = "info"
    output: OutputSpec | None = None
    redact: Redactor = field(default_factory=Redactor)
    metrics_listen: str | None = None
    unknown_keys: tuple[str, ...] = ()

    @property
    def collect_only(self) -> bool:
        return self.server_url is None and self.output is None

    @property
    def file_sources(self) -> tuple[FileSource, ...]:
        return tuple(s for s in self.sources if isinstance(s, FileSource))

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-ready data, the key replaced."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("unknown_keys", "ignored_sources", "api_key_origin"):
                continue
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = None if value is None else "***redacted***"
            elif f.name == "sources":
                value = [s.to_json() for s in value]
            elif f.name == "output":
                value = None if value is None else value.to_json()
            elif f.name == "redact":
                value = value.to_json()
            out[f.name] = value
        out["api_key_from"] = self.api_key_origin
        out["mode"] = (
            "collect-only (no server_url)"
            if self.collect_only
            else f"forwarding to {self.output.label()}"
            if self.output is not None
            else "forwarding"
        )
        return out


KNOWN_KEYS = frozenset(
    {
        "server_url", "api_key", "api_key_file", "agent_id", "hostname",
        "heartbeat_interval", "batch_interval", "batch_size", "log_sources",
        "start_position", "buffer_db", "agent_log_file", "retry_interval",
        "connect_timeout", "request_timeout", "max_retries", "max_line_bytes",
        "partial_line_timeout", "buffer_max_bytes", "buffer_full_policy", "poll_interval",
        "max_in_flight", "batch_max_bytes", "output", "max_open_files", "close_inactive",
        "redact", "metrics_listen",
        "rotate_grace",
        "acked_retention_hours", "compression", "tls_ca_file", "tls_client_cert",
        "tls_client_key", "log_level", "bundle_hmac_key_file",
    }
)  # fmt: skip


def load_config(path: str | os.PathLike[str], *, platform: str | None = None) -> AgentConfig:
    """Read and validate ``path``; raises ConfigError naming the file and the key."""
    file = os.path.abspath(str(path))
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file, None, "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(file, None, "permission denied reading the file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, None, f"not UTF-8 text ({exc.reason})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            file, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(file, None, f"must be a JSON object, got {kind(raw)}")
    base = Path(os.path.abspath(file)).parent
    return parse_config(raw, file=os.path.abspath(file), base=base, platform=platform)


def parse_config(
    raw: dict[str, Any], *, file: str, base: Path, platform: str | None = None
) -> AgentConfig:
    """Validate an already-decoded config object."""
    r = SettingsReader(file, raw, base)
    server_url = _server_url(r)
    api_key, origin = _api_key(r)
    if server_url is not None and not api_key:
        raise r.error(
            "api_key", f"missing: set api_key, api_key_file or the environment {API_KEY_ENV}"
        )
    agent_id = r.string("agent_id", None)
    if agent_id is not None and not agent_id.strip():
        agent_id = None
    sources, ignored = parse_sources(r, platform or sys.platform)
    # Accepted for the first agent's configs, then unused: buffered data is never given up.
    max_retries = raw.get("max_retries")
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int)
    ):
        raise r.error("max_retries", f"must be an integer or null, got {kind(max_retries)}")
    tls = {k: r.path(k, None) for k in ("tls_ca_file", "tls_client_cert", "tls_client_key")}
    if (tls["tls_client_key"] is not None) and tls["tls_client_cert"] is None:
        raise r.error("tls_client_key", "needs tls_client_cert as well")
    log_level = r.choice("log_level", "info", ("debug", "info", "warning", "error"))
    return AgentConfig(
        config_path=file,
        server_url=server_url,
        api_key=api_key,
        api_key_origin=origin,
        agent_id=agent_id,
        hostname=r.string("hostname", None),
        heartbeat_interval=r.number("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL),
        batch_interval=r.number("batch_interval", DEFAULT_BATCH_INTERVAL),
        batch_size=r.integer("batch_size", DEFAULT_BATCH_SIZE),
        sources=sources,
        ignored_sources=ignored,
        start_position=r.choice("start_position", DEFAULT_START_POSITION, START_POSITIONS),
        buffer_db=_service_default(r, "buffer_db", "STATE_DIRECTORY", DEFAULT_BUFFER_DB),
        agent_log_file=_service_default(
            r, "agent_log_file", "LOGS_DIRECTORY", DEFAULT_AGENT_LOG_FILE
        ),
        retry_interval=r.number("retry_interval", DEFAULT_RETRY_INTERVAL),
        connect_timeout=r.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        request_timeout=r.number("request_timeout", DEFAULT_REQUEST_TIMEOUT),
        max_line_bytes=r.integer("max_line_bytes", DEFAULT_MAX_LINE_BYTES, minimum=64),
        partial_line_timeout=r.number("partial_line_timeout", DEFAULT_PARTIAL_LINE_TIMEOUT),
        buffer_max_bytes=r.integer("buffer_max_bytes", DEFAULT_BUFFER_MAX_BYTES, minimum=65536),
        buffer_full_policy=r.choice(
            "buffer_full_policy", DEFAULT_BUFFER_FULL_POLICY, FULL_POLICIES
        ),
        poll_interval=r.number("poll_interval", DEFAULT_POLL_INTERVAL),
        max_open_files=None
        if raw.get("max_open_files") is None
        else r.integer("max_open_files", 0, minimum=1),
        close_inactive=r.number("close_inactive", DEFAULT_CLOSE_INACTIVE),
        max_in_flight=r.integer(
            "max_in_flight", DEFAULT_MAX_IN_FLIGHT, minimum=1, maximum=MAX_IN_FLIGHT_CAP
        ),
        batch_max_bytes=r.integer("batch_max_bytes", DEFAULT_BATCH_MAX_BYTES, minimum=1024),
        rotate_grace=r.number("rotate_grace", DEFAULT_ROTATE_GRACE),
        acked_retention_hours=r.number(
            "acked_retention_hours", DEFAULT_ACKED_RETENTION_HOURS, minimum=-1e-9
        ),
        compression=r.choice("compression", None, COMPRESSIONS),
        bundle_hmac_key_file=r.path("bundle_hmac_key_file", None),
        log_level=log_level,
        output=parse_output(r),
        redact=Redactor.from_json(r),
        metrics_listen=_metrics_listen(r),
        unknown_keys=tuple(sorted(set(raw) - KNOWN_KEYS)) + tuple(r.unknown),
        **tls,
    )


def _service_default(r: SettingsReader, key: str, env: str, default: str) -> str:
    """A path key; left out under systemd, it goes to the unit's StateDirectory/LogsDirectory
    (the config's folder, /etc/ila-agent, is read-only for the service)."""
    if r.raw.get(key) is None and os.environ.get(env):
        return os.path.join(os.environ[env].split(":")[0], default)
    return r.path(key, default) or default


def _metrics_listen(r: SettingsReader) -> str | None:
    """``HOST:PORT`` for /metrics and /healthz; the client library must be installed."""
    listen = r.string("metrics_listen", None)
    if listen is None:
        return None
    try:
        split_listen(listen)
    except ValueError as exc:
        raise r.error("metrics_listen", str(exc)) from None
    try:
        import prometheus_client  # noqa: F401 - only whether it is there
    except ImportError:
        raise r.error(
            "metrics_listen", f"needs prometheus-client, which is not installed: {EXTRA_HINT}"
        ) from None
    return listen


def _server_url(r: SettingsReader) -> str | None:
    url = r.string("server_url", None)
    if url is None or not url.strip():
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise r.error("server_url", f"must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise r.error("server_url", f"has no host name: {url!r}")
    if parts.username or parts.password:
        raise r.error("server_url", "must not carry credentials; use api_key")
    if parts.query or parts.fragment:
        raise r.error("server_url", "must be a base URL without ?query or #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise r.error("server_url", f"has an invalid port: {url!r}") from None
    return url.strip().rstrip("/")


def parse_server_url(url: str, *, origin: str) -> str | None:
    """Validate a server URL given outside the file (``origin`` names where, for errors)."""
    return _server_url(SettingsReader(origin, {"server_url": url}, Path(".")))


def _api_key(r: SettingsReader) -> tuple[str | None, str | None]:
    """The key and where it came from; it must be usable as an HTTP header value."""
    key, origin = _api_key_raw(r)
    if key is not None and any(ord(c) < 0x20 or ord(c) == 0x7F or ord(c) > 0xFF for c in key):
        # Never echo the key: say where it came from and what is wrong with it.
        where = {"config api_key": "api_key"}.get(origin or "", "api_key_file")
        if origin and origin.startswith("environment"):
            raise ConfigError(API_KEY_ENV, None, "the key holds control or non-Latin-1 characters")
        raise r.error(where, "the key holds control or non-Latin-1 characters (a line break?)")
    return key, origin


def _api_key_raw(r: SettingsReader) -> tuple[str | None, str | None]:
    """The key and where it came from: environment, then api_key_file, then api_key."""
    env = os.environ.get(API_KEY_ENV, "").strip()
    if env:
        return env, f"environment {API_KEY_ENV}"
    key_file = r.path("api_key_file", None)
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise r.error("api_key_file", f"cannot read {key_file}: {exc.strerror}") from None
        if not key:
            raise r.error("api_key_file", f"{key_file} is empty")
        return key, f"file {key_file}"
    inline = r.string("api_key", None)
    if inline is not None and inline.strip():
        return inline.strip(), "config api_key"
    return None, None
