"""queue_store invariants, on real SQLite files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import queue_store.store
from ila_core.errors import BufferFull, BufferLocked, BufferWriteError
from queue_store.codec import decode_item
from queue_store.records import Checkpoint, Chunk, Entry, FileId, event_uid, event_uids
from queue_store.schema import DEAD, TABLE, UNACK
from queue_store.store import Selection
from tests.fakes import FakeClock, LogFeed, OpenBuffer, drain, lines

FID = FileId(1, 2, 10, "abc")


def chunk(lines: list[str], start: int = 0, key: str = "k:0") -> Chunk:
    offs, pos = [], start
    for line in lines:
        offs.append(pos)
        pos += len(line) + 1
    return Chunk("src", "/p", key, 1.0, lines, offs, {}, pos - start)


def cp(offset: int) -> Checkpoint:
    return Checkpoint(FID, 0, offset, "/p", "src")


class TestCommit:
    def test_lines_and_position_committed_together(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """After a commit, a reopened store has both the lines and the position."""
        s = open_buffer()
        s.commit([chunk(["a", "b"]), chunk(["c"], 4)], cp(6))
        s.close()
        s = open_buffer()
        assert s.stats().pending == 3
        assert [c.offset for c in s.checkpoints()] == [6]

    def test_items_are_json_not_pickle(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """The data column holds JSON text."""
        s = open_buffer()
        s.commit([chunk(["x"])], cp(2))
        s.close()
        con = sqlite3.connect(tmp_path / "b.db")
        (data,) = con.execute(f"SELECT data FROM {TABLE}").fetchone()
        assert json.loads(data)["lines"] == ["x"]

    def test_tampered_pickle_item_never_runs(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """A pickle payload planted in the buffer is not executed; it is set aside."""
        s = open_buffer()
        s.commit([chunk(["good"])], cp(5))
        s.close()
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        con = sqlite3.connect(tmp_path / "b.db")
        con.execute(
            f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes) VALUES (?,?,1,1,1)",
            (pickle.dumps(Evil()), 2.0),
        )
        con.commit()
        con.close()
        s = open_buffer()
        lease = s.lease(50)
        assert lease is not None and [e.log_text for e in lease.entries] == ["good"]
        assert not marker.exists()
        assert s.stats().dead_letter == 1
        s.close()


class TestLease:
    def test_unacked_items_are_ready_again_after_a_crash(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """Items leased by a process that died are pending again at the next open."""
        db = tmp_path / "b.db"
        s = open_buffer()
        s.commit([chunk(["a", "b", "c"])], cp(6))
        s.close()
        code = (
            "import os; from queue_store.store import QueueStore;"
            f"s = QueueStore({str(db)!r}); l = s.lease(50); assert len(l.entries) == 3;"
            "os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
        s = open_buffer()
        assert s.stats().pending == 3
        lease = s.lease(50)
        assert lease is not None and len(lease.entries) == 3

    def test_several_leases_in_one_go(self, open_buffer: OpenBuffer) -> None:
        """``lease_several``: full leases in id order, up to n; a partial one only when it is
        due, and then last; nothing taken twice."""
        s = open_buffer()
        for k in range(5):
            s.commit([chunk([f"{k}a", f"{k}b"], start=10 * k)], cp(10 * k + 6))
        # committed_by=0: a partial lease is not due (every item is younger than that)
        got, _ = s.lease_several(4, 3, committed_by=0.0)  # 2 items of 2 lines: a full lease
        assert [[e.log_text for e in lease.entries] for lease in got] == [
            ["0a", "0b", "1a", "1b"],
            ["2a", "2b", "3a", "3b"],
        ]  # the third would be item 4 alone: partial, and not due
        later, head = s.lease_several(4, 3, committed_by=0.0)
        assert later == [] and len(head.ids) == 1 and not head.full
        (last,), _ = s.lease_several(4, 3)  # due (the default)
        assert [e.log_text for e in last.entries] == ["4a", "4b"]
        assert s.lease_several(4, 3, committed_by=float("inf"))[0] == []

    def test_a_failure_while_decoding_gives_every_lease_back(
        self, tmp_path: Path, open_buffer: OpenBuffer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected error while decoding the third of three leases taken together (a
        bug, injected here): the caller gets the error and none of the leases, so all their
        items go back to the buffer at once, not at the next restart."""
        s = open_buffer()
        for k in range(6):
            s.commit([chunk([f"{k}a", f"{k}b"], start=10 * k)], cp(10 * k + 6))
        real = queue_store.store.decode_item

        def fails_on_the_fifth(item_id: int, data: bytes | str) -> Any:
            if item_id == 5:
                raise RuntimeError("a bug")
            return real(item_id, data)

        monkeypatch.setattr(queue_store.store, "decode_item", fails_on_the_fifth)
        with pytest.raises(RuntimeError):
            s.lease_several(4, 3)
        with sqlite3.connect(tmp_path / "b.db") as con:
            leased = con.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE status = ?", (UNACK,))
            assert leased.fetchone() == (0,)
        monkeypatch.setattr(queue_store.store, "decode_item", real)
        got, _ = s.lease_several(4, 3)
        assert [len(lease.entries) for lease in got] == [4, 4, 4]

    def test_ack_only_when_every_entry_settled(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """A lease is acked when all entries are delivered or dead; dead ones are kept."""
        s = open_buffer()
        s.commit([chunk(["a", "b", "c"])], cp(6))
        lease = s.lease(50)
        assert lease is not None
        lease.settled(lease.entries[:2], dead=False)
        assert s.stats().pending == 3
        lease.settled(lease.entries[2:], dead=True)
        st = s.stats()
        assert (st.pending, st.dead_letter) == (0, 1)
        assert st.last_send_ok_at is not None
        dead = Selection(statuses=(DEAD,))  # what replay --dead-letter leases
        assert s.count(dead) == 1
        again = s.lease(50, dead)
        assert again is not None and [e.log_text for e in again.entries] == ["c"]
        assert again.entries[0].event_uid == event_uid("k:0", 4)

    def test_an_ack_does_not_copy_the_item(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """Acking a 60 KB item writes a few pages to the WAL, not the item again: the ack
        changes no column's size, so SQLite updates the row in place."""
        s = open_buffer()
        s.commit([chunk([f"{i:05d} " + "x" * 114 for i in range(500)])], cp(60_000))
        lease = s.lease(500)
        assert lease is not None and len(lease.entries) == 500
        wal = Path(f"{s.path}-wal")
        other = sqlite3.connect(s.path)
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        other.close()
        assert wal.stat().st_size == 0
        lease.settled(lease.entries, dead=False)
        assert s.stats().pending == 0
        # A few pages (the record's, the index's, the meta row's): a copy would be 60 KB more.
        assert 0 < wal.stat().st_size < 40_000
        s.close()

    def test_lease_respects_max_lines_and_order(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """Leases take whole items in commit order, up to max_lines."""
        s = open_buffer()
        for i in range(5):
            s.commit([chunk([f"{i}a", f"{i}b"], i * 10)], None)
        lease = s.lease(5)
        assert lease is not None
        assert [e.log_text for e in lease.entries] == ["0a", "0b", "1a", "1b"]
        s.close()


class TestEventUid:
    """Format 2 (hash of the generation, then the offset) for new items; format 1 (a hash per
    line) for items an older agent committed, so that a resend keeps their uids."""

    def test_format_2_is_the_generation_hash_then_the_offset(self) -> None:
        base = hashlib.sha256(b"7:9:ab:10:0~e1").hexdigest()[:24]
        assert event_uid("7:9:ab:10:0~e1", 0) == base + "00000000"
        assert event_uid("7:9:ab:10:0~e1", 4096) == base + "00001000"
        assert event_uid("7:9:ab:10:0~e1", 2**40) == base + "10000000000"  # past 4 GiB
        assert event_uids("7:9:ab:10:0~e1", [0, 4096]) == [base + "00000000", base + "00001000"]

    def test_unique_per_offset_and_generation(self) -> None:
        """No two offsets of one generation share a uid (offsets of different lengths in hex
        included), and another generation (here: the copytruncate count) has other uids."""
        offs = [*range(0, 5000), *range(2**32 - 2500, 2**32 + 2500), 2**36, 2**44]
        uids = event_uids("1:2:fp:10:0~e", offs)
        assert len(set(uids)) == len(offs)
        assert not set(uids) & set(event_uids("1:2:fp:10:1~e", offs))
        assert all(len(u) >= 32 and int(u, 16) >= 0 for u in uids)

    def test_an_older_item_keeps_its_per_line_hash(self) -> None:
        """An item of format 1, or without a version, decodes to the uids an older agent sent."""
        old = {
            "src": "s",
            "path": "/p",
            "fid": "k:0",
            "ts": 1.0,
            "lines": ["a", "b"],
            "offs": [0, 2],
        }
        want = [hashlib.sha256(f"k:0@{off}".encode()).hexdigest()[:32] for off in (0, 2)]
        for item in (old, {**old, "v": 1}):
            got = list(decode_item(5, json.dumps(item).encode()))
            assert [e.event_uid for e in got] == want
        new = list(decode_item(5, json.dumps({**old, "v": 2}).encode()))
        assert [e.event_uid for e in new] == event_uids("k:0", [0, 2])

    def test_committed_items_are_format_2_and_decode_to_whole_entries(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """What the collector commits now carries version 2, and the entries leased from it
        are real ``Entry`` tuples with every field (the decoder builds them directly)."""
        s = open_buffer()
        s.commit([chunk(["a", "bb"])], cp(5))
        with sqlite3.connect(tmp_path / "b.db") as con:
            (data,) = con.execute(f"SELECT data FROM {TABLE}").fetchone()
        assert json.loads(data)["v"] == 2
        lease = s.lease(50)
        assert lease is not None
        ts = lease.entries[0].timestamp
        uids = event_uids("k:0", [0, 2])
        assert [type(e) for e in lease.entries] == [Entry, Entry]
        assert list(lease.entries) == [
            Entry(lease.entries[0].item_id, "a", "src", ts, uids[0], None, None),
            Entry(lease.entries[0].item_id, "bb", "src", ts, uids[1], None, None),
        ]
        assert lease.entries[1].extra is None and lease.entries[1].hostname is None


class TestRetention:
    """Acked history is kept ``acked_retention_s`` and then forgotten by ``cleanup``, which
    skips its pass over the history while nothing can have expired."""

    def test_acked_items_are_kept_for_the_window_then_forgotten(
        self, open_buffer: OpenBuffer
    ) -> None:
        clock = FakeClock()
        s = open_buffer(acked_retention_s=100.0, clock=clock)
        feed = LogFeed(s)
        feed.commit(lines(3, "first"))
        drain(s)
        s.cleanup()  # nothing is old enough yet
        assert s.stats().acked_kept == 3
        clock.advance(60)
        feed.commit(lines(2, "second"))
        drain(s)
        clock.advance(50)  # the first three are 110 s old, the other two 50 s
        s.cleanup()
        assert (s.stats().acked_kept, s.stats().pending) == (2, 0)
        clock.advance(60)
        s.cleanup()
        assert s.stats().acked_kept == 0

    def test_items_acked_after_an_empty_pass_still_expire(self, open_buffer: OpenBuffer) -> None:
        clock = FakeClock()
        s = open_buffer(acked_retention_s=10.0, clock=clock)
        s.cleanup()  # no history at all
        clock.advance(5)
        LogFeed(s).commit(lines(4))
        drain(s)
        clock.advance(9)
        s.cleanup()
        assert s.stats().acked_kept == 4
        clock.advance(2)
        s.cleanup()
        assert s.stats().acked_kept == 0

    def test_a_clock_stepped_back_does_not_stop_the_cleanup(self, open_buffer: OpenBuffer) -> None:
        clock = FakeClock()
        s = open_buffer(acked_retention_s=3600.0, clock=clock)
        real = clock.wall()
        clock.set_wall(real + 30 * 86400)  # a clock 30 days ahead at boot: a pass runs
        s.cleanup()
        clock.set_wall(real)  # then NTP steps it back
        LogFeed(s).commit(lines(5))
        drain(s)
        clock.advance(2 * 3600)
        s.cleanup()
        assert s.stats().acked_kept == 0

    def test_the_byte_count_is_resynced_when_nothing_expires(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        clock = FakeClock()
        s = open_buffer(
            acked_retention_s=86400.0, clock=clock, full_policy="block", max_bytes=10**6
        )
        s.cleanup()
        LogFeed(s).commit(lines(50))
        lease = s.lease(1000)
        assert lease is not None
        lease.settle((), lease.entries)  # every entry refused: dead letters, written by ack
        clock.advance(3600)
        s.cleanup()  # nothing can have expired: no pass over the history, but a recount
        with sqlite3.connect(tmp_path / "b.db") as db:
            (actual,) = db.execute(f"SELECT SUM(n_bytes) FROM {TABLE}").fetchone()
        assert s.fits(10**6 - actual) and not s.fits(10**6 - actual + 1)


class TestBudget:
    def test_drop_oldest_counts_every_drop(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """Past buffer_max_bytes, the oldest pending lines are dropped and counted."""
        s = open_buffer(max_bytes=100_000)
        line = "x" * 999
        for i in range(200):
            s.commit([chunk([line], i * 1000)], None)
        st = s.stats()
        assert st.dropped > 0
        assert st.pending + st.dropped == 200
        assert st.pending_bytes <= 100_000
        lease = s.lease(1)
        assert lease is not None
        assert lease.entries[0].event_uid == event_uid("k:0", st.dropped * 1000)

    def test_block_policy_refuses_until_room(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """Policy block: a commit past the budget raises BufferFull; an ack makes room."""
        s = open_buffer(max_bytes=70_000, full_policy="block")
        line = "y" * 9_999
        for i in range(7):
            s.commit([chunk([line], i * 10_000)], None)
        with pytest.raises(BufferFull):
            s.commit([chunk([line], 70_000)], None)
        assert s.stats().pending == 7 and s.stats().dropped == 0
        lease = s.lease(1)
        assert lease is not None
        lease.settled(lease.entries, dead=False)
        s.commit([chunk([line], 70_000)], None)
        assert s.stats().pending == 7
        s.close()

    def test_a_commit_larger_than_the_free_budget_is_admitted_when_nothing_can_free_room(
        self, open_buffer: OpenBuffer
    ) -> None:
        """Policy block, an empty buffer, one chunk larger than the whole budget: it goes in
        (waiting for an ack that can never come would wedge the collector); the next commit
        waits for room as usual."""
        s = open_buffer(max_bytes=65_536, full_policy="block")
        big = ["z" * 999] * 100  # 100,000 bytes
        s.commit([chunk(big, 0)], None)
        assert s.stats().pending == 100
        with pytest.raises(BufferFull):
            s.commit([chunk(["after"], 100_000)], None)

    def test_dead_letters_do_not_wedge_a_blocked_buffer(self, open_buffer: OpenBuffer) -> None:
        """Policy block with the budget taken by dead letters only (no ack will ever free it):
        a new commit is admitted rather than wait forever."""
        s = open_buffer(max_bytes=65_536, full_policy="block")
        s.commit([chunk(["d" * 999] * 70, 0)], None)
        lease = s.lease(100)
        assert lease is not None
        for e in lease.entries:
            lease.settled([e], dead=True)
        assert s.stats().dead_letter == 70
        s.commit([chunk(["new"], 70_000)], None)
        assert s.stats().pending == 1


class TestOwnership:
    def test_second_owner_is_refused(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """A second QueueStore on the same buffer raises BufferLocked naming the file."""
        s = open_buffer()
        with pytest.raises(BufferLocked, match="already owns the buffer"):
            open_buffer()
        s.close()
        open_buffer().close()

    def test_close_twice_is_fine(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """Closing twice does nothing the second time."""
        s = open_buffer()
        s.close()
        s.close()

    def test_first_agent_buffer_is_imported(self, tmp_path: Path, open_buffer: OpenBuffer) -> None:
        """Lines the first agent left in its log_buffer table are sent by this agent."""
        db = tmp_path / "log_buffer.db"
        con = sqlite3.connect(db)
        con.execute(
            "CREATE TABLE log_buffer (id INTEGER PRIMARY KEY AUTOINCREMENT, log_text TEXT,"
            " source TEXT, timestamp TEXT, created_at REAL)"
        )
        con.executemany(
            "INSERT INTO log_buffer (log_text, source, timestamp, created_at) VALUES (?,?,?,?)",
            [(f"old {i}", "auth.log", "2026-01-01T00:00:00", 1.0) for i in range(3)],
        )
        con.commit()
        con.close()
        s = open_buffer("log_buffer.db")
        assert s.migrate_legacy() == 3
        assert s.migrate_legacy() == 0
        lease = s.lease(50)
        assert lease is not None
        assert [e.log_text for e in lease.entries] == ["old 0", "old 1", "old 2"]
        assert len({e.event_uid for e in lease.entries}) == 3


class TestNothingLostAtTheEdges:
    """Crashed owners, racing processes, import stage edges, a full budget, a failed ack."""

    def test_leases_of_a_dead_process_with_our_pid_are_resumed(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """A crashed agent whose pid the new one reuses (a container's pid 1): its in-flight
        items are sent again, not stuck."""
        s = open_buffer(lock=False)
        for i in range(10):
            s.commit([chunk([f"l{i}"], i * 10)], None)
        assert s.lease(5) is not None  # leased under our pid, then "crash": no close
        again = open_buffer(lock=False)
        assert again.stats().pending == 10
        lease = again.lease(50)
        assert lease is not None and len(lease.entries) == 10
        again.close()

    def test_two_processes_never_lease_the_same_item(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """The agent and a tool leasing at the same time: every item goes to exactly one."""
        db = tmp_path / "b.db"
        s = open_buffer()
        for i in range(3000):
            s.commit([chunk([f"l{i}"], i * 10)], None)
        code = (
            "import json, sys; from queue_store.store import QueueStore, Selection;"
            " from queue_store.schema import READY;"
            f"s = QueueStore({str(db)!r}, lock=False); got = [];\n"
            "print('go', flush=True)\n"
            "while s.count(Selection()) > 0:\n"
            "    l = s.lease(20, Selection(statuses=(READY,)))\n"
            "    got.extend(e.log_text for e in l.entries) if l else None\n"
            "print(json.dumps(got)); import os; os._exit(0)"
        )
        tool = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent
        )
        assert tool.stdout is not None
        assert tool.stdout.readline().strip() == b"go"  # both lease from here on
        mine: list[str] = []
        while s.count(Selection()) > 0:
            lease = s.lease(20)  # None when the tool won every candidate: look again
            if lease is not None:
                mine.extend(e.log_text for e in lease.entries)
        out, _ = tool.communicate(timeout=60)
        theirs = json.loads(out)
        assert not set(mine) & set(theirs)  # no entry sent by both
        assert sorted(mine + theirs) == sorted(f"l{i}" for i in range(3000))
        s.close()

    def test_import_with_a_batch_size_not_dividing_the_stage(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """12,000 entries in items of 30: all 12,000 imported, none lost at stage edges."""
        s = open_buffer()
        entries = [
            {"log_text": f"e{i}", "source": "s", "timestamp": "t", "event_uid": f"u{i}"}
            for i in range(12000)
        ]
        assert s.import_entries(iter(entries), per_item=30) == (12000, 0)
        assert s.import_entries(iter(entries), per_item=30) == (0, 12000)
        assert s.stats().pending == 12000

    def test_exported_history_goes_before_unexported_lines(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """Over budget after an export: exported entries are forgotten, no pending one dropped."""
        s = open_buffer(max_bytes=100_000)
        line = "x" * 999
        for i in range(90):
            s.commit([chunk([line], i * 1000)], None)
        lease = s.lease(90)
        assert lease is not None
        s.mark_exported(lease.item_ids)
        for i in range(90, 180):
            s.commit([chunk([line], i * 1000)], None)
        st = s.stats()
        assert (st.pending, st.dropped) == (90, 0)
        assert st.exported < 90

    def test_a_dead_owner_whose_pid_is_now_another_process_is_released(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """Liveness is asked of the owner's lock, not its pid: a reused pid (here a live
        `sleep`) does not keep a crashed process's leases stuck."""
        s = open_buffer()
        s.commit([chunk(["a"])], None)
        s.close()
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            con = sqlite3.connect(tmp_path / "b.db")
            con.execute(
                f"UPDATE {TABLE} SET status = 2, owner = ?, leased_from = 1", (sleeper.pid,)
            )
            con.commit()
            con.close()
            s = open_buffer()
            lease = s.lease(10)
            assert lease is not None and [e.log_text for e in lease.entries] == ["a"]
            s.close()
        finally:
            sleeper.kill()
            sleeper.wait()

    def test_a_failed_ack_leaves_the_lease_to_be_released(
        self, tmp_path: Path, open_buffer: OpenBuffer
    ) -> None:
        """If writing the ack fails, the lease is not finished: it can be given back and sent
        again (a duplicate at worst, never a loss)."""
        s = open_buffer()
        s.commit([chunk(["a", "b"])], None)
        lease = s.lease(10)
        assert lease is not None
        real_ack = s.ack

        def failing(_lease):  # type: ignore[no-untyped-def]
            raise BufferWriteError("database or disk is full")

        s.ack = failing  # type: ignore[method-assign]
        with pytest.raises(BufferWriteError):
            lease.settled(lease.entries, dead=False)
        assert not lease.finished
        s.ack = real_ack  # type: ignore[method-assign]
        s.release(lease)
        again = s.lease(10)
        assert again is not None and [e.log_text for e in again.entries] == ["a", "b"]
