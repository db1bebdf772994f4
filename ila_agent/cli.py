"""The command line: run, check-config, status, receiver (see ../docs and `ila-agent --help`)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from ila_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config
from ila_agent.errors import AgentError, BufferLocked, ConfigError
from ila_agent.version import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

EPILOG = """exit codes:
  0  success (run: stopped by SIGTERM/SIGINT)
  1  runtime failure (buffer owned by another process, a thread crashed, ...)
  2  configuration error (the message names the file and the key)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ila-agent",
        description="ILA-SOC log shipping agent: durable store-and-forward of log lines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ila-agent {__version__}")
    p.add_argument("--config", default=None, help=f"config file (default ./{DEFAULT_CONFIG_PATH})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", default=argparse.SUPPRESS, help="config file")
        return sp

    with_config(sub.add_parser("run", help="run the agent in the foreground"))
    with_config(sub.add_parser("check-config", help="validate and print the configuration"))
    st = with_config(sub.add_parser("status", help="buffer depth, positions, last send"))
    st.add_argument("--json", action="store_true", help="one JSON object")
    rc = sub.add_parser("receiver", help="reference ILA-SOC receiver for trying the agent")
    rc.add_argument("--host", default="127.0.0.1")
    rc.add_argument("--port", type=int, default=8787)
    rc.add_argument("--api-key", default=None, help="key to require (default: env or change-me)")
    rc.add_argument("--db", default=None, help="SQLite file for received events (default: memory)")
    rc.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    rc.add_argument("--tls-key", default=None, help="private key of --tls-cert (PEM)")
    rc.add_argument("--tls-client-ca", default=None, help="require client certs from this CA")
    rc.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    config_path = args.config or DEFAULT_CONFIG_PATH
    try:
        if command == "receiver":
            return _receiver(args)
        cfg = load_config(config_path)
        if command == "run":
            return _run(cfg)
        if command == "check-config":
            return _check_config(cfg)
        if command == "status":
            return _status(cfg, as_json=args.json)
    except ConfigError as exc:
        print(f"ila-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BufferLocked as exc:
        print(f"ila-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except AgentError as exc:
        print(f"ila-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ila-agent: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    print(f"ila-agent: unknown command {command}", file=sys.stderr)
    return EXIT_CONFIG


def _run(cfg: AgentConfig) -> int:
    from ila_agent.agent import Agent, install_signal_handlers
    from ila_agent.logging_setup import setup_logging

    os.umask(0o077)  # everything the agent creates is private to its user
    setup_logging(cfg.agent_log_file, level=cfg.log_level, secret=cfg.api_key)
    agent = Agent(cfg)
    install_signal_handlers(agent)
    return agent.run()


def _check_config(cfg: AgentConfig) -> int:
    print(json.dumps(cfg.redacted(), indent=2))
    if cfg.collect_only:
        print("note: no server_url: collect-only mode (lines are buffered, never sent)")
    if cfg.unknown_keys:
        print(f"warning: unknown keys ignored: {', '.join(cfg.unknown_keys)}")
    if cfg.ignored_sources:
        print(f"note: sources for another platform ignored: {', '.join(cfg.ignored_sources)}")
    print(f"{cfg.config_path}: configuration is valid")
    return EXIT_OK


def status_report(cfg: AgentConfig) -> dict[str, Any]:
    """The status object (read-only: never blocks the running agent)."""
    from queue_store.store import open_readonly, read_stats

    report: dict[str, Any] = {
        "buffer_db": cfg.buffer_db,
        "mode": "collect-only" if cfg.collect_only else "forwarding",
        "server_url": cfg.server_url,
    }
    try:
        con = open_readonly(cfg.buffer_db)
    except FileNotFoundError:
        con = None
    checkpoints: list[tuple[str, str, int]] = []
    if con is None:
        report.update(
            pending=0, pending_bytes=0, oldest_pending_age_s=None, dead_letter=0, dropped=0,
            exported=0, last_send_ok_at=None, last_error=None, quarantined=None,
        )  # fmt: skip
    else:
        try:
            stats = read_stats(con)
            checkpoints = con.execute(
                "SELECT source, path, offset FROM checkpoints ORDER BY updated_at"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise AgentError(f"cannot read the buffer {cfg.buffer_db}: {exc}") from exc
        finally:
            con.close()
        report.update(
            pending=stats.pending,
            pending_bytes=stats.pending_bytes,
            oldest_pending_age_s=stats.oldest_pending_age_s,
            dead_letter=stats.dead_letter,
            dropped=stats.dropped,
            exported=0,
            last_send_ok_at=stats.last_send_ok_at,
            last_error=stats.last_error,
            quarantined=stats.quarantined,
        )
    sources = []
    for source, path, offset in checkpoints:
        try:
            size: int | None = os.stat(path).st_size
        except OSError:
            size = None
        lag = None if size is None else max(0, size - offset)
        sources.append(
            {"source": source, "path": path, "position": offset, "size": size, "lag_bytes": lag}
        )
    report["sources"] = sources
    return report


def _status(cfg: AgentConfig, *, as_json: bool) -> int:
    report = status_report(cfg)
    if as_json:
        print(json.dumps(report))
        return EXIT_OK
    age = report["oldest_pending_age_s"]
    lines = [
        f"mode:            {report['mode']}" + (f" → {cfg.server_url}" if cfg.server_url else ""),
        f"buffer:          {report['buffer_db']}",
        f"pending:         {report['pending']} entries ({report['pending_bytes']} bytes)",
        f"oldest pending:  {'-' if age is None else f'{age:.1f} s'}",
        f"dead letters:    {report['dead_letter']}",
        f"dropped:         {report['dropped']}",
        f"last send ok:    {report['last_send_ok_at'] or '-'}",
        f"last error:      {report['last_error'] or '-'}",
    ]
    if report.get("quarantined"):
        lines.append(f"QUARANTINED:     {report['quarantined']}")
    lines.append("")
    lines.append(f"{'SOURCE':<40} {'POSITION':>12} {'SIZE':>12} {'LAG':>10}")
    for s in report["sources"]:
        size = "-" if s["size"] is None else str(s["size"])
        lag = "-" if s["lag_bytes"] is None else str(s["lag_bytes"])
        lines.append(f"{s['source'][:40]:<40} {s['position']:>12} {size:>12} {lag:>10}")
    print("\n".join(lines))
    return EXIT_OK


def _receiver(args: argparse.Namespace) -> int:
    from ila_agent.receiver import serve

    key = args.api_key or os.environ.get("ILA_AGENT_API_KEY") or "change-me"
    return serve(
        args.host,
        args.port,
        key,
        args.db,
        ready_file=args.ready_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )
