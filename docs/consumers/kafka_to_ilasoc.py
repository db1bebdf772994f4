#!/usr/bin/env python3
"""Read ila-agent entries from a Kafka topic and post them to an ILA-SOC server.

    python kafka_to_ilasoc.py --bootstrap-servers k1:9092 --server-url https://soc:5000 \\
        --api-key-file /etc/ila-soc/api_key [--topic ila-logs] [--group ila-soc-bridge]

Needs ``pip install confluent-kafka requests``. An example, not part of the installed agent.

- A consumer group with auto-commit off: offsets are committed only after the server answered
  2xx for the batch, so a crash of this script re-reads, never skips. After a failed post it
  seeks back to the batch's first offsets and tries again.
- Each record is one entry as the agent's ``ingest-batch`` would carry it, plus ``agent_id``
  (its key is ``<agent_id>:<source>``, its header ``event_uid``). Entries are grouped by
  ``agent_id`` and posted as that agent (registered on first sight and again on a 404).
- De-duplication by ``event_uid`` (the agent is at-least-once: a crash or a lost delivery
  report sends an entry again): a SQLite set of uids already posted (``--seen-db``).
- A 400/413/422 for a batch: posted one by one, and an entry the server rejects on its own is
  skipped and reported on stderr; anything else is retried.

On tansu (used by the agent's tests) consumer groups are not reliable; use ``--assign`` there:
every partition from offset 0, no group, nothing committed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from ilasoc_client import Seen, Server, add_server_args, post_group, server_from_args


def consumer_for(args: argparse.Namespace) -> Any:
    """A consumer with auto-commit off: in the group, or (``--assign``) on every partition
    from offset 0, with nothing committed."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    conf: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "security.protocol": args.security_protocol,
    }
    if args.tls_ca_file:
        conf["ssl.ca.location"] = args.tls_ca_file
    if args.sasl_mechanism:
        conf["sasl.mechanism"] = args.sasl_mechanism
        conf["sasl.username"] = args.sasl_username
        with open(args.sasl_password_file, encoding="utf-8") as f:
            conf["sasl.password"] = f.read().strip()
    consumer = Consumer(conf)
    if not args.assign:
        consumer.subscribe([args.topic])
        return consumer
    topic = consumer.list_topics(args.topic, timeout=10).topics.get(args.topic)
    if topic is None or topic.error is not None:
        consumer.close()
        raise SystemExit(f"topic {args.topic}: {topic.error if topic else 'not found'}")
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in topic.partitions])
    return consumer


def run(args: argparse.Namespace, server: Server, seen: Seen) -> None:
    from confluent_kafka import TopicPartition

    consumer = consumer_for(args)
    idle_since = time.monotonic()
    try:
        while True:
            records = [m for m in consumer.consume(args.batch_size, timeout=1) if not m.error()]
            if not records:
                if args.exit_when_idle and time.monotonic() - idle_since > args.exit_when_idle:
                    return
                continue
            idle_since = time.monotonic()
            entries = [json.loads(m.value()) for m in records]
            fresh = seen.new([e["event_uid"] for e in entries])
            groups: dict[str, list[dict[str, Any]]] = {}
            for e in entries:
                if e["event_uid"] in fresh:
                    fresh.discard(e["event_uid"])  # a uid twice in one batch: once
                    groups.setdefault(e.get("agent_id") or "unknown", []).append(e)
            ok = True
            for agent_id, logs in groups.items():
                done = post_group(server, agent_id, logs)
                if done:
                    seen.add([e["event_uid"] for e in logs])
                ok = ok and done
            if ok:
                if not args.assign:
                    consumer.commit(asynchronous=False)
                continue
            # Not posted: read the same records again after a pause (posted ones are skipped
            # by the seen set).
            first: dict[int, int] = {}
            for m in records:
                first.setdefault(m.partition(), m.offset())
            for p, off in first.items():
                consumer.seek(TopicPartition(args.topic, p, off))
            time.sleep(5)
    finally:
        consumer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", default="ila-logs")
    ap.add_argument("--group", default="ila-soc-bridge", help="consumer group id")
    ap.add_argument("--assign", action="store_true",
                    help="no consumer group: every partition from offset 0 (tansu)")  # fmt: skip
    ap.add_argument("--security-protocol", default="PLAINTEXT")
    ap.add_argument("--sasl-mechanism")
    ap.add_argument("--sasl-username")
    ap.add_argument("--sasl-password-file")
    ap.add_argument("--tls-ca-file")
    add_server_args(ap, "kafka_to_ilasoc")
    ap.add_argument("--exit-when-idle", type=float, default=0,
                    help="exit after this many seconds without records (0: never)")  # fmt: skip
    args = ap.parse_args()
    server = server_from_args(ap, args, "kafka-bridge")
    with contextlib.suppress(KeyboardInterrupt):
        run(
            args,
            server,
            Seen(args.seen_db),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
