"""What enters the buffer: multiline entries, include/exclude, redaction, pattern checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from collector.collector import Collector
from collector.discovery import FileSource
from collector.lines import Lines
from collector.multiline import Assembler, Multiline
from collector.processing import Filters, Processing, Redaction, Redactor
from ila_agent.config import load_config
from ila_core.clock import Clock
from ila_core.errors import ConfigError
from queue_store.store import QueueStore
from tests.fakes import FakeClock, OpenBuffer, drain

JAVA = """2026-11-30 10:00:00 ERROR Request failed
java.lang.IllegalStateException: boom
    at com.example.Handler.handle(Handler.java:42)
    at com.example.Server.run(Server.java:7)
Caused by: java.io.IOException: broken pipe
    at com.example.Io.write(Io.java:3)
    ... 12 more
2026-11-30 10:00:01 INFO next request
2026-11-30 10:00:02 WARN slow
  detail on a second line
2026-11-30 10:00:03 INFO last
"""
START = re.compile(r"^\d{4}-\d\d-\d\d ")


def lines_of(texts: list[str], start: int = 0) -> Lines:
    out = Lines(end=start)
    for t in texts:
        out.add(t, out.end, None)
        out.end += len(t) + 1
    return out


def collector_for(
    tmp_path: Path, store: QueueStore, src: FileSource, clock: Clock, **kw: object
) -> Collector:
    return Collector(
        store, [src], batch_size=50, max_line_bytes=4096, partial_line_timeout=5,
        start_position="beginning", poll_interval=0.0, clock=clock, first_start=True,
        use_inotify=False, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


class TestAssembler:
    def test_a_start_line_ends_the_entry_before_it(self) -> None:
        """Lines join the current entry until a line matching start_pattern."""
        a = Assembler(Multiline(START))
        out = a.feed(lines_of(JAVA.splitlines()))
        assert [t.splitlines()[0] for t in out.texts] == [
            "2026-11-30 10:00:00 ERROR Request failed",
            "2026-11-30 10:00:01 INFO next request",
            "2026-11-30 10:00:02 WARN slow",
        ]
        assert out.texts[0].count("\n") == 6  # seven lines, joined with "\n"
        assert a.holding  # the last entry may still grow

    def test_the_position_stops_before_an_entry_being_assembled(self) -> None:
        """``end`` is the first byte of the held entry: a crash re-reads it whole."""
        a = Assembler(Multiline(START))
        out = a.feed(lines_of(["2026-11-30 10:00:00 A", "  more", "2026-11-30 10:00:01 B"]))
        assert out.offsets == [0] and out.end == 29

    def test_max_lines_ends_an_entry(self) -> None:
        """An entry ends at max_lines even without a new start."""
        a = Assembler(Multiline(START, max_lines=3))
        out = a.feed(lines_of(["2026-11-30 10:00:00 A", "1", "2", "3", "4"]))
        assert out.texts == ["2026-11-30 10:00:00 A\n1\n2"]


class TestFilters:
    def test_include_then_exclude(self) -> None:
        """Only lines matching an include are kept, then those matching an exclude go."""
        f = Filters(include=(re.compile("sshd"),), exclude=(re.compile("Accepted"),))
        kept = [t for t in ["sshd Failed", "sshd Accepted", "cron x"] if f.keep(t)]
        assert kept == ["sshd Failed"]

    def test_records_are_filtered_and_counted(self) -> None:
        """For record sources: kept entries (redacted) and the count filtered out."""
        secret = Redaction(re.compile(r"password=\S+"), "password=***")
        p = Processing(Filters(exclude=(re.compile("noise"),)), Redactor((secret,)))
        entries = [{"log_text": "noise"}, {"log_text": "login password=hunter2", "raw_b64": "x"}]
        kept, filtered = p.records(entries)
        assert (kept, filtered) == ([{"log_text": "login password=***"}], 1)


class TestPatterns:
    @pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w*\s?)*x", r"([a-z]+\d)+"])
    def test_a_catastrophic_pattern_is_refused_at_load(self, tmp_path: Path, pattern: str) -> None:
        """A repetition inside a repetition could freeze collection: refused, naming the key."""
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"log_sources": [{"path": "a.log", "exclude": [pattern]}]}))
        with pytest.raises(ConfigError) as err:
            load_config(cfg)
        assert "log_sources[0].exclude[0]" in str(err.value)
        assert "repetition inside a repetition" in str(err.value)

    def test_an_invalid_pattern_names_its_key(self, tmp_path: Path) -> None:
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"log_sources": [], "redact": [{"pattern": "a["}]}))
        with pytest.raises(ConfigError, match=r"redact\[0\]\.pattern: is not a valid"):
            load_config(cfg)


class TestInTheCollector:
    def test_a_java_stack_trace_file_becomes_exactly_these_entries(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """Three entries are complete at once; the last is emitted after max_wait."""
        log = tmp_path / "app.log"
        log.write_text(JAVA)
        clock = FakeClock()
        src = FileSource(pattern=str(log), multiline=Multiline(START, max_wait=2.0))
        c = collector_for(tmp_path, open_buffer(), src, clock)
        c.start_up()
        c.step()
        first = [e.log_text.splitlines()[0] for e in drain(c.store)]
        assert first == [
            "2026-11-30 10:00:00 ERROR Request failed",
            "2026-11-30 10:00:01 INFO next request",
            "2026-11-30 10:00:02 WARN slow",
        ]
        clock.advance(2.5)
        c.step()
        last = drain(c.store)
        assert [e.log_text for e in last] == ["2026-11-30 10:00:03 INFO last"]
        c.close()

    def test_filtered_lines_are_counted_not_sent(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """exclude drops lines before the buffer; ``filtered`` counts exactly those."""
        log = tmp_path / "app.log"
        log.write_text("".join(f"{'DEBUG' if i % 3 == 0 else 'INFO'} {i}\n" for i in range(30)))
        src = FileSource(pattern=str(log), filters=Filters(exclude=(re.compile("^DEBUG"),)))
        store = open_buffer()
        c = collector_for(tmp_path, store, src, FakeClock())
        c.start_up()
        c.step()
        kept = [e.log_text for e in drain(store)]
        assert kept == [f"INFO {i}" for i in range(30) if i % 3]
        assert store.stats().filtered == 10
        c.close()
