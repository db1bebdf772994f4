"""End to end: files → agent process → reference receiver, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from tests.procs import AgentProc, ReceiverProc, wait_until, write_lines


def _lines(tag: str, n: int) -> list[str]:
    # Same text at different offsets must stay distinct entries: repeat a few on purpose.
    return [f"{tag} seq={i} " + ("dup" if i % 1000 == 0 else f"x{i}") for i in range(n)]


class TestDelivery:
    def test_three_files_all_lines_delivered_exactly(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """3 files × 5,000 lines written while the agent runs arrive exactly as written."""
        files = [tmp_path / f"app{i}.log" for i in range(3)]
        for f in files:
            f.write_text("")
        agent = AgentProc(
            tmp_path,
            server_url=receiver.url,
            log_sources=[str(f) for f in files],
            heartbeat_interval=0.5,
            max_in_flight=1,  # the order promise below holds with one batch in flight
        )
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        expected: dict[str, list[str]] = {}
        writers = []
        for i, f in enumerate(files):
            lines = _lines(f"file{i}", 5000)
            expected[str(f)] = lines

            # Written in slices from three threads, so reads see growing files.
            def write(f: Path = f, lines: list[str] = lines) -> None:
                for k in range(0, len(lines), 250):
                    write_lines(f, lines[k : k + 250])

            writers.append(threading.Thread(target=write))
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        wait_until(lambda: receiver.stats()["events_unique"] >= 15000, 45, what="15000 events")
        events = receiver.events()
        got: dict[str, list[str]] = {}
        for e in events:
            got.setdefault(e["source"], []).append(e["log_text"])
        assert {s: sorted(v) for s, v in got.items()} == {s: sorted(v) for s, v in expected.items()}
        # Per source, in order of writing.
        assert got == expected
        uids = [e["event_uid"] for e in events]
        assert len(set(uids)) == 15000
        for e in events:
            assert e["entry"]["hostname"]
            assert e["timestamp"].endswith("Z") and len(e["timestamp"]) == 24

        reqs = receiver.requests_log()
        first_batch = next(r for r in reqs if r["endpoint"] == "ingest-batch")
        first_register = next(r for r in reqs if r["endpoint"] == "register")
        assert first_register["id"] < first_batch["id"]
        assert first_register["status"] == 200

        def beats() -> list[dict]:
            log = receiver.requests_log()
            return [r for r in log if r["endpoint"] == "heartbeat" and r["status"] == 200]

        wait_until(lambda: len(beats()) >= 6, 10, what="6 heartbeats")
        beats_seen = beats()
        gaps = [b["mono"] - a["mono"] for a, b in itertools.pairwise(beats_seen)]
        # At the interval (0.5 s), on its own schedule: never bunched, never long late.
        assert all(0.3 <= g <= 1.2 for g in gaps), gaps
        hb = receiver.heartbeats()[-1]["body"]
        assert set(hb["buffer"]) >= {"pending", "oldest_pending_age_s", "dead_letter", "dropped"}
        assert agent.terminate() == 0
