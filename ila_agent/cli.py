"""The command line: run, check-config, status, inspect, replay, export, import, receiver."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ila_agent.config import API_KEY_ENV, DEFAULT_CONFIG_PATH, AgentConfig, load_config
from ila_agent.version import __version__
from ila_core.errors import AgentError, BufferLocked, BufferWriteError, ConfigError, UsageError
from ila_core.health import describe_write_failure

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

EPILOG = """exit codes:
  0  success (run: stopped by SIGTERM/SIGINT; replay: everything it tried was accepted)
  1  runtime failure (buffer owned by another agent, a bundle rejected, a replay that
     left entries unsent or dead-lettered, a thread crashed, ...)
  2  configuration error (the message names the file and the key), or a command line
     that cannot work (a bad option value, a file or folder that is unsafe)

Progress bars appear only when stdout is a terminal; `--json` and `inspect` output stays
machine-readable.
"""


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be from 0.1 to 3600 seconds, got {value:g}")
    return value


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

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=argparse.SUPPRESS, help="config file")
        return sp

    cmd("run", "run the agent in the foreground until SIGTERM/SIGINT")
    cmd("check-config", "validate and print the effective configuration (key redacted)")
    st = cmd("status", "buffer depth, positions, last send; works while the agent runs")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument(
        "--watch", nargs="?", const=2.0, type=_seconds, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; in place on a terminal",
    )  # fmt: skip
    ins = cmd("inspect", "print buffered entries as JSON lines")
    ins.add_argument(
        "--state", choices=("pending", "dead", "acked", "exported", "all"), default="pending"
    )
    ins.add_argument("--source", default=None, help="only this source name")
    ins.add_argument("--since", default=None, help="RFC 3339 time, epoch, or age (2h, 30m)")
    ins.add_argument("--limit", type=_positive, default=None, help="at most N entries")
    rp = cmd("replay", "send what is buffered now, then exit")
    rp.add_argument("--dead-letter", action="store_true", help="the dead letters too")
    rp.add_argument("--acked", action="store_true", help="re-send acked history (with --since)")
    rp.add_argument("--since", default=None, help="only entries committed since (RFC 3339/age)")
    rp.add_argument("--server-url", default=None, help="send to this server instead")
    rp.add_argument("--max-failures", type=int, default=5, help="give up after N failures")
    ex = cmd("export", "write pending entries to a bundle (air-gapped hosts)")
    ex.add_argument("bundle", help="bundle file to write")
    ex.add_argument("--all", action="store_true", help="also entries exported before")
    im = cmd("import", "put a bundle's entries into this agent's buffer")
    im.add_argument("bundle", help="bundle file to read")
    sv = sub.add_parser("service", help="Windows: install/start/stop/remove/status the service")
    sv.add_argument("action", choices=("install", "start", "stop", "remove", "status"))
    sv.add_argument("--config", default=argparse.SUPPRESS, help="config file for the service")
    rc = sub.add_parser("receiver", help="reference ILA-SOC receiver for trying the agent")
    rc.add_argument("--host", default="127.0.0.1")
    rc.add_argument("--port", type=int, default=8787)
    rc.add_argument("--api-key", default=None, help="key to require (default: env or change-me)")
    rc.add_argument("--no-auth", action="store_true", help="accept any or no X-API-Key")
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
        if command == "service":
            return _service(args)
        cfg = load_config(config_path)
        if command != "run":
            from ila_agent.logging_setup import setup_logging

            # Tools keep stdout for their output; only warnings and errors, on stderr.
            setup_logging(None, level="warning", secret=cfg.api_key)
        handler = {
            "run": _run,
            "check-config": _check_config,
            "status": _status,
            "inspect": _inspect,
            "replay": _replay,
            "export": _export,
            "import": _import,
        }[command]
        return handler(cfg, args)
    except ConfigError as exc:
        print(f"ila-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"ila-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BufferWriteError as exc:
        print(f"ila-agent: {describe_write_failure(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except (BufferLocked, AgentError) as exc:
        print(f"ila-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ila-agent: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _run(cfg: AgentConfig, _args: argparse.Namespace) -> int:
    import structlog

    from ila_agent.agent import Agent, install_signal_handlers
    from ila_agent.logging_setup import setup_logging
    from ila_agent.permissions import check_permissions

    os.umask(0o077)  # everything the agent creates is private to its user
    warnings = check_permissions(cfg)
    setup_logging(cfg.agent_log_file, level=cfg.log_level, secret=cfg.api_key)
    for text in warnings:
        structlog.get_logger("agent").warning("config_readable_by_all", detail=text)
    agent = Agent(cfg)
    install_signal_handlers(agent)
    return agent.run()


def _check_config(cfg: AgentConfig, _args: argparse.Namespace) -> int:
    from ila_agent.permissions import check_permissions

    warnings = check_permissions(cfg)
    print(json.dumps(cfg.redacted(), indent=2))
    for text in warnings:
        print(f"warning: {text}")
    if cfg.collect_only:
        print("note: no server_url: collect-only mode (lines are buffered, never sent)")
    if cfg.unknown_keys:
        print(f"warning: unknown keys ignored: {', '.join(cfg.unknown_keys)}")
    if cfg.ignored_sources:
        print(f"note: sources for another platform ignored: {', '.join(cfg.ignored_sources)}")
    print(f"{cfg.config_path}: configuration is valid")
    return EXIT_OK


def _status(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from ila_agent.buffer_tools import format_status, status_report

    if args.watch is not None:
        from ila_agent.watch import watch

        return watch(cfg, interval=args.watch, out=sys.stdout)

    report = status_report(cfg)
    print(json.dumps(report) if args.json else format_status(report))
    return EXIT_OK


def _inspect(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from ila_agent.buffer_tools import inspect, parse_since
    from ila_agent.wiring import agent_info

    since = parse_since(args.since) if args.since else None
    hostname = agent_info(cfg, "").hostname
    inspect(
        cfg, state=args.state, source=args.source, since=since, limit=args.limit,
        out=sys.stdout, hostname=hostname,
    )  # fmt: skip
    return EXIT_OK


def _replay(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from forwarder.http_sink import HttpSink
    from forwarder.replay import replay
    from forwarder.sink import Sink
    from forwarder.transport import Transport
    from ila_agent.buffer_tools import open_tool_store, parse_since
    from ila_agent.config import parse_server_url
    from ila_agent.progress import Progress
    from ila_agent.wiring import agent_info, resolve_agent_id, transport_for
    from ila_core.clock import Clock
    from queue_store.leases import Selection
    from queue_store.schema import ACKED, DEAD, READY

    server_url = cfg.server_url
    if args.server_url:
        server_url = parse_server_url(args.server_url, origin="--server-url")
    # The agent's own output (a broker), unless --server-url asks for the HTTP API.
    use_output = cfg.output is not None and not args.server_url
    if not use_output:
        if server_url is None:
            raise UsageError("replay needs a server: set server_url or pass --server-url")
        if cfg.api_key is None:
            raise ConfigError(cfg.config_path, "api_key", "missing: replay needs the API key")
    if args.acked and not args.since:
        raise UsageError("--acked needs --since (how far back to re-send acked history)")
    since = parse_since(args.since) if args.since else None
    statuses: tuple[int, ...] = (ACKED,) if args.acked else (READY,)
    if args.dead_letter:
        statuses += (DEAD,)
    store = open_tool_store(cfg)
    try:
        selection = Selection(statuses=statuses, upto_id=store.max_id(), since=since)
        total = store.count(selection)
        info = agent_info(cfg, resolve_agent_id(cfg))
        progress = Progress("replaying", total)
        sink: Sink
        transport: Transport | None
        if use_output:
            assert cfg.output is not None
            sink = cfg.output.make_sink(agent_id=info.agent_id, hostname=info.hostname)
            transport = None
        else:
            transport = transport_for(cfg, server_url, pool_size=cfg.max_in_flight)
            sink = HttpSink(transport, info, max_body_bytes=cfg.batch_max_bytes)
        try:
            result = replay(
                store, sink, transport, info,
                selection=selection,
                batch_size=cfg.batch_size, retry_cap=min(cfg.retry_interval, 5.0), clock=Clock(),
                total=total, max_failures=max(1, args.max_failures), progress=progress,
                max_in_flight=cfg.max_in_flight, batch_max_bytes=cfg.batch_max_bytes,
            )  # fmt: skip
        finally:
            sink.close()
        progress.done()
    finally:
        store.close()
    summary = (
        f"replay: {total} selected, {result.accepted} accepted, "
        f"{result.dead_lettered} dead-lettered, {result.left} not sent"
    )
    if result.error:
        summary += f" (last error: {result.error})"
    print(summary, file=sys.stderr if not result.ok else sys.stdout)
    return EXIT_OK if result.ok else EXIT_FAILED


def _export(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from ila_agent.buffer_tools import open_tool_store, read_hmac_key
    from ila_agent.progress import Progress
    from ila_agent.wiring import agent_info, resolve_agent_id
    from queue_store.bundle import count_exportable, export_bundle

    key = read_hmac_key(cfg)
    folder = os.path.dirname(os.path.abspath(args.bundle))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {args.bundle}: the folder {folder} does not exist")
    info = agent_info(cfg, resolve_agent_id(cfg))
    store = open_tool_store(cfg)
    try:
        progress = Progress("exporting", count_exportable(store, args.all))
        result = export_bundle(
            store, args.bundle, agent_id=info.agent_id, hostname=info.hostname,
            include_exported=args.all, hmac_key=key, progress=progress,
        )  # fmt: skip
        progress.done()
    finally:
        store.close()
    if result.count == 0:
        print("export: nothing to export (no pending entries); no bundle written")
        return EXIT_OK
    signed = "signed" if key else "unsigned"
    print(f"export: {result.count} entries written to {result.path} ({signed})")
    return EXIT_OK


def _import(cfg: AgentConfig, args: argparse.Namespace) -> int:
    from ila_agent.buffer_tools import open_tool_store, read_hmac_key
    from ila_agent.progress import Progress
    from queue_store.bundle import import_bundle, read_manifest

    key = read_hmac_key(cfg)
    manifest = read_manifest(args.bundle, key)
    store = open_tool_store(cfg)
    try:
        progress = Progress("importing", int(manifest["count"]))
        manifest, added, skipped = import_bundle(
            store, args.bundle, hmac_key=key, per_item=cfg.batch_size, progress=progress
        )
        progress.done()
    finally:
        store.close()
    print(
        f"import: {added} entries added from agent {manifest['agent_id']}"
        f" ({manifest.get('hostname')}), {skipped} already imported before"
    )
    return EXIT_OK


def _service(args: argparse.Namespace) -> int:
    from ila_agent.winservice import load_pywin32, service_command

    return service_command(args.action, args.config, load_pywin32(), out=sys.stdout)


def _receiver(args: argparse.Namespace) -> int:
    from ila_agent.receiver import serve

    key = None if args.no_auth else (args.api_key or os.environ.get(API_KEY_ENV) or "change-me")
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
