"""Windows Event Log reading, on a fake of the pywin32 Evt* boundary (tests/fake_evt.py).

This is the only place the event log reader runs here: it has not yet run on a real Windows
host. The store is real (SQLite on disk); "restart" means a new reader on a reopened store.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.eventlog import EventLogReader, EventLogSource, render
from collector.spec import ReaderContext
from ila_core.clock import Clock
from queue_store.store import QueueStore
from tests.fake_evt import EvtError, FakeWin32EvtLog
from tests.fakes import OpenBuffer, drain

MSG = "An account failed to log on."


def reader(store: QueueStore, evt: FakeWin32EvtLog, channel: str = "Security", **kw):
    opts = {"batch_size": 50, "start_position": "beginning", "first_start": True, "clock": Clock()}
    opts.update(kw)
    query = opts.pop("query", None)
    ctx = ReaderContext(store=store, poll_interval=opts.pop("poll_interval", 1.0), **opts)
    return EventLogReader(ctx, EventLogSource(channel=channel, query=query), evt=evt)


def committed(store: QueueStore) -> list[dict]:
    """Every entry in the buffer, in commit order, as the forwarder would send it."""
    return [e.to_wire("agent-host") for e in drain(store)]


@pytest.fixture
def evt() -> FakeWin32EvtLog:
    fake = FakeWin32EvtLog()
    fake.add_channel("Security")
    return fake


class TestRendering:
    def test_fields_and_log_text_as_the_first_agent(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """log_text is "[Provider] EventID:N - message"; the protocol's fields are set."""
        ev = evt.write("Security", 4625, MSG, data={"TargetUserName": "admin"})
        store = open_buffer()
        reader(store, evt).step()
        (entry,) = committed(store)
        assert entry["log_text"] == f"[Microsoft-Windows-Security-Auditing] EventID:4625 - {MSG}"
        assert entry["source"] == "Windows-Security"
        assert {k: entry[k] for k in ("event_id", "channel", "provider", "record_number",
                                      "level", "computer", "hostname", "event_time")} == {
            "event_id": 4625, "channel": "Security",
            "provider": "Microsoft-Windows-Security-Auditing", "record_number": ev.record,
            "level": 0, "computer": "WIN-01", "hostname": "WIN-01", "event_time": ev.time,
        }  # fmt: skip

    def test_message_falls_back_to_event_data(self) -> None:
        """No message table for the provider: the event's data values stand in."""
        xml = FakeWin32EvtLog().write("System", 7036, None, provider="Svc", data={"a": "x"}).xml()
        assert render(xml, None, 0.0)["log_text"] == "[Svc] EventID:7036 - x"


class TestBookmarks:
    def test_every_event_once_across_a_restart(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """250 events, a restart, 10 more: 260 entries, each once, in record order."""
        for i in range(250):
            evt.write("Security", 4624, f"logon {i}")
        store = open_buffer()
        assert reader(store, evt).step() == 250
        store.close()
        for i in range(10):
            evt.write("Security", 4624, f"later {i}")
        store = open_buffer()
        r = reader(store, evt, first_start=False)
        assert r.step() == 10
        assert r.step() == 0
        got = committed(store)
        assert [e["record_number"] for e in got] == list(range(1, 261))
        assert len({e["event_uid"] for e in got}) == 260

    def test_kill_during_a_read_chunk_loses_nothing(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """A failure inside a chunk: what was committed stays, the rest is read after restart."""
        for i in range(250):
            evt.write("Security", 4624, f"logon {i}")
        evt.explode_after = 150  # in the middle of the second chunk of 100
        store = open_buffer()
        with pytest.raises(EvtError):
            reader(store, evt).step()
        store.close()
        store = open_buffer()
        assert reader(store, evt, first_start=False).step() == 150
        got = committed(store)
        assert [e["record_number"] for e in got] == list(range(1, 251))

    def test_wrapped_log_resumes_at_oldest_and_reports_the_gap(
        self, tmp_path, evt, open_buffer: OpenBuffer
    ) -> None:
        """Events overwritten before they were read: resume at the oldest left, say so."""
        for i in range(100):
            evt.write("Security", 4624, f"a {i}")
        store = open_buffer()
        r = reader(store, evt)
        r.step()
        for i in range(100):
            evt.write("Security", 4624, f"b {i}")
        evt.wrap("Security", keep=50)  # records 101..150 are gone unread
        with capture_logs() as logs:
            assert r.step() == 50
        gaps = [e for e in logs if e["event"] == "eventlog_gap"]
        assert len(gaps) == 1 and gaps[0]["after_record"] == 100
        records = [e["record_number"] for e in committed(store)]
        assert records == list(range(1, 101)) + list(range(151, 201))

    def test_cleared_log_goes_on_with_new_events(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """After a clear, the next events are read (the bookmark's event no longer exists)."""
        evt.write("Security", 4624, "before")
        store = open_buffer()
        r = reader(store, evt)
        r.step()
        evt.clear("Security")
        evt.write("Security", 1102, "The audit log was cleared.", provider="Eventlog")
        assert r.step() == 1
        assert [e["event_id"] for e in committed(store)] == [4624, 1102]

    def test_start_position_end_skips_history_at_first_start(
        self, tmp_path, evt, open_buffer: OpenBuffer
    ) -> None:
        """First start at "end": nothing old is sent; what comes after is."""
        for i in range(30):
            evt.write("Security", 4624, f"old {i}")
        store = open_buffer()
        r = reader(store, evt, start_position="end")
        assert r.step() == 0
        evt.write("Security", 4625, "new")
        assert r.step() == 1
        assert [e["record_number"] for e in committed(store)] == [31]

    def test_xpath_filter(self, tmp_path: Path, evt, open_buffer: OpenBuffer) -> None:
        """The channel's XPath query is passed to EvtQuery."""
        for eid in (4624, 4625, 4624, 4625):
            evt.write("Security", eid, "x")
        store = open_buffer()
        reader(store, evt, query="*[System[(EventID=4625)]]").step()
        assert [e["event_id"] for e in committed(store)] == [4625, 4625]
        store.close()


class TestProblems:
    def test_access_denied_said_once_clearly(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """Security without privileges: one clear message however many polls; no crash."""
        evt.denied.add("Security")
        store = open_buffer()
        stop = threading.Event()
        r = reader(store, evt, clock=Clock(stop), poll_interval=0.01)
        with capture_logs() as logs:
            t = threading.Thread(target=r.run)
            t.start()
            waited = threading.Event()
            for _ in range(100):
                if evt.calls.count("EvtQuery") >= 2:
                    break
                waited.wait(0.05)
            stop.set()
            t.join(10)
        problems = [e for e in logs if e["event"] == "eventlog_problem"]
        assert len(problems) == 1
        assert "access denied to the Security channel" in problems[0]["problem"]
        assert "Event Log Readers" in problems[0]["problem"]
        store.close()


class TestQuietPolls:
    def test_idle_polls_read_nothing_and_report_no_gap(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """Polling with nothing new sends nothing again and warns of no gap."""
        for i in range(5):
            evt.write("Security", 4624, f"x{i}")
        store = open_buffer()
        r = reader(store, evt)
        assert r.step() == 5
        with capture_logs() as logs:
            assert [r.step(), r.step()] == [0, 0]
            evt.write("Security", 4624, "new")
            assert r.step() == 1
        assert [e for e in logs if e["event"] == "eventlog_gap"] == []
        assert len(committed(store)) == 6

    def test_a_filtered_query_is_not_mistaken_for_a_gap(
        self, tmp_path: Path, evt, open_buffer: OpenBuffer
    ) -> None:
        """Filtered record numbers are not consecutive; that is not lost data."""
        store = open_buffer()
        r = reader(store, evt, query="*[System[(EventID=4625)]]")
        evt.write("Security", 4625, "a")
        r.step()
        evt.write("Security", 4624, "skipped by the filter")
        evt.write("Security", 4625, "b")
        with capture_logs() as logs:
            assert r.step() == 1
        assert [e for e in logs if e["event"] == "eventlog_gap"] == []
