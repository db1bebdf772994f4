"""A small buffer budget under policy ``block``, with real processes."""

from __future__ import annotations

from pathlib import Path

from tests.procs import AgentProc, ReceiverProc, wait_until, write_lines


class TestBlockPolicy:
    def test_a_read_larger_than_the_free_budget_never_wedges_the_collector(
        self, tmp_path: Path, agents: list[AgentProc]
    ) -> None:
        """The reported stall: a 512 KiB budget, batch_size 200, server down, 12,000 lines of
        about 90 bytes (twice the budget). The agent blocks, then, once the server is up,
        delivers every line exactly once: none is left behind in the file."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        lines = [f"Nov 30 10:00:00 fw-01 kernel: DROP IN=eth0 SRC=10.0.{i % 250}.1 n={i:06d}"
                 for i in range(12_000)]  # fmt: skip
        log.write_text("")
        agent = AgentProc(
            tmp_path, server_url=receiver.url, log_sources=[str(log)], batch_size=200,
            buffer_max_bytes=524_288, buffer_full_policy="block",
        )  # fmt: skip
        agents.append(agent)
        agent.start()
        write_lines(log, lines)
        wait_until(lambda: "buffer_full_blocking" in agent.log_text(), 30, what="blocking")
        status = agent.status()
        assert status["pending_bytes"] <= 524_288 + 200 * 100  # over by at most one chunk
        lag = status["sources"][0]["lag_bytes"]
        assert lag > 0, "blocked: the rest of the file waits in the file, not in memory"
        receiver.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] == 12_000, 60, what="all lines")
            assert sorted(e["log_text"] for e in receiver.events()) == sorted(lines)
            wait_until(lambda: agent.status()["sources"][0]["lag_bytes"] == 0, 20, what="lag 0")
            assert agent.terminate() == 0
        finally:
            receiver.stop()
