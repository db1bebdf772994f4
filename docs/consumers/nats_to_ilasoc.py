#!/usr/bin/env python3
"""Read ila-agent entries from a NATS JetStream stream and post them to an ILA-SOC server.

    python nats_to_ilasoc.py --nats-url nats://127.0.0.1:4222 --server-url https://soc:5000 \\
        --api-key-file /etc/ila-soc/api_key [--stream ILA_LOGS] [--consumer ila-soc-bridge]

Needs ``pip install 'nats-py[nkeys]' requests``. An example, not part of the installed agent.

- A durable pull consumer (explicit acks): a message is acked only after the server answered
  2xx for the batch holding it, so a crash of this script re-reads, never skips.
- Each message is one entry as the agent's ``ingest-batch`` would carry it, plus ``agent_id``.
  Entries are grouped by ``agent_id`` and posted as that agent (registered on first sight and
  again whenever the server answers 404), like the agent itself would have.
- De-duplication by ``event_uid``: the stream drops re-sends inside its duplicate window; what
  is older (an agent restored from a backup, a very long outage) is dropped here, by a SQLite
  set of uids already posted (``--seen-db``; prune it by age if it grows too large).
- A 400/413/422 for a batch: posted one by one, and an entry the server rejects on its own is
  acked and reported on stderr (it would be rejected forever); anything else is retried.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
from typing import Any

from ilasoc_client import Seen, Server, add_server_args, post_group, server_from_args


async def run(args: argparse.Namespace, server: Server, seen: Seen) -> None:
    import nats
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig

    opts: dict[str, Any] = {}
    if args.tls_ca_file:
        opts["tls"] = ssl.create_default_context(cafile=args.tls_ca_file)
    if args.creds_file:
        opts["user_credentials"] = args.creds_file
    nc = await nats.connect(args.nats_url, name="ila-soc-bridge", **opts)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        args.subject, durable=args.consumer, stream=args.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=120,
                              max_ack_pending=args.batch_size * 4),
    )  # fmt: skip
    idle_since = time.monotonic()
    try:
        while True:
            try:
                msgs = await sub.fetch(args.batch_size, timeout=2)
            except NatsTimeout:
                if args.exit_when_idle and time.monotonic() - idle_since > args.exit_when_idle:
                    return
                continue
            idle_since = time.monotonic()
            entries = [json.loads(m.data) for m in msgs]
            fresh = seen.new([e["event_uid"] for e in entries])
            groups: dict[str, list[dict[str, Any]]] = {}
            for e in entries:
                if e["event_uid"] in fresh:
                    fresh.discard(e["event_uid"])  # a uid twice in one fetch: once
                    groups.setdefault(e.get("agent_id") or "unknown", []).append(e)
            ok = True
            for agent_id, logs in groups.items():
                done = await asyncio.to_thread(post_group, server, agent_id, logs)
                if done:
                    seen.add([e["event_uid"] for e in logs])
                ok = ok and done
            for m in msgs:
                # Unposted messages come back after a delay; posted ones are acked.
                await (m.ack() if ok else m.nak(delay=5))
    finally:
        await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--stream", default="ILA_LOGS")
    ap.add_argument("--subject", default="ila.logs")
    ap.add_argument("--consumer", default="ila-soc-bridge", help="durable consumer name")
    ap.add_argument("--tls-ca-file")
    ap.add_argument("--creds-file")
    add_server_args(ap, "nats_to_ilasoc")
    ap.add_argument("--exit-when-idle", type=float, default=0,
                    help="exit after this many seconds without messages (0: never)")  # fmt: skip
    args = ap.parse_args()
    server = server_from_args(ap, args, "nats-bridge")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args, server, Seen(args.seen_db)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
