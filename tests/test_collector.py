"""collector invariants: line splitting, positions, rotation and truncation, on real files."""

from __future__ import annotations

import os
from pathlib import Path

from collector.collector import Collector
from collector.discovery import FileSource
from collector.lines import LineSplitter
from ila_core.clock import Clock
from queue_store.records import event_uid
from queue_store.store import QueueStore
from tests.fakes import FakeClock
from tests.fakes import drain as drain_store


class TestLineSplitter:
    def test_offsets_count_raw_bytes(self) -> None:
        """Each line carries the byte offset it starts at; CRLF and LF are stripped."""
        sp = LineSplitter(100, 1000)
        out = sp.feed("a\r\nbé\nc".encode())
        assert out.texts == ["a", "bé"]
        assert out.offsets == [100, 103]
        assert out.end == 107 and sp.pending_bytes == 1

    def test_line_split_across_feeds_is_one_line(self) -> None:
        """Bytes of one line arriving in several reads make one line at the first offset."""
        sp = LineSplitter(0, 1000)
        assert sp.feed(b"hel").texts == []
        out = sp.feed(b"lo\nnext\n")
        assert (out.texts, out.offsets, out.end) == (["hello", "next"], [0, 6], 11)

    def test_long_line_cut_and_memory_bounded(self) -> None:
        """A line over max_line_bytes is cut and flagged; the splitter holds at most the max."""
        sp = LineSplitter(0, 64)
        for _ in range(1000):
            sp.feed(b"z" * 1000)
            assert len(sp._buf) <= 64
        out = sp.feed(b"zz\nok\n")
        assert out.texts == ["z" * 64, "ok"]
        assert out.extras == {0: {"truncated": True, "original_bytes": 1_000_002}}
        assert out.offsets == [0, 1_000_003]

    def test_cut_inside_a_multibyte_character(self) -> None:
        """A cut that splits a UTF-8 character drops the fragment rather than garbling it."""
        sp = LineSplitter(0, 5)
        out = sp.feed("aaaa€€\n".encode())
        assert out.texts == ["aaaa"]
        assert out.extras[0]["original_bytes"] == 10

    def test_invalid_utf8_line_by_line(self) -> None:
        """Only the invalid line gets raw_b64; its neighbours are decoded normally."""
        sp = LineSplitter(0, 1000)
        out = sp.feed(b"ok\n\xff\xfe\nfine\n")
        assert out.texts == ["ok", "\ufffd\ufffd", "fine"]
        assert out.extras == {1: {"raw_b64": "//4="}}

    def test_flush_emits_pending_partial(self) -> None:
        """flush emits the unterminated tail and moves the position past it."""
        sp = LineSplitter(0, 1000)
        sp.feed(b"done\npart")
        out = sp.flush()
        assert (out.texts, out.offsets, out.end) == (["part"], [5], 9)


def make(
    tmp: Path, sources: list[str], *, first_start: bool, start: str = "end", clock=None
) -> Collector:
    store = QueueStore(str(tmp / "b.db"))
    return Collector(
        store,
        [FileSource(pattern=p) for p in sources],
        batch_size=50,
        max_line_bytes=1000,
        partial_line_timeout=5,
        start_position=start,
        poll_interval=0.0,
        clock=clock or Clock(),
        first_start=first_start,
        use_inotify=False,
    )


def drain(c: Collector) -> list[tuple[str, str]]:
    """Run the collector a few steps, then take (text, uid) of everything it committed."""
    for _ in range(5):
        c.step()
    return [(e.log_text, e.event_uid) for e in drain_store(c.store)]


def shutdown(c: Collector) -> None:
    c.close()
    c.store.close()


class TestPositions:
    def test_start_position_end_applies_at_first_start_only(self, tmp_path: Path) -> None:
        """First start at "end" skips old lines; a later start resumes at the saved position."""
        log = tmp_path / "a.log"
        log.write_text("old1\nold2\n")
        c = make(tmp_path, [str(log)], first_start=True)
        c.start_up()
        with open(log, "a") as f:
            f.write("new1\n")
        assert [t for t, _ in drain(c)] == ["new1"]
        shutdown(c)
        with open(log, "a") as f:
            f.write("while-stopped\n")
        c = make(tmp_path, [str(log)], first_start=False)
        c.start_up()
        assert [t for t, _ in drain(c)] == ["while-stopped"]
        shutdown(c)

    def test_file_appearing_later_read_from_beginning(self, tmp_path: Path) -> None:
        """A file that appears after the first start is read from its beginning."""
        c = make(tmp_path, [str(tmp_path / "*.log")], first_start=True)
        c.start_up()
        (tmp_path / "later.log").write_text("l1\nl2\n")
        assert [t for t, _ in drain(c)] == ["l1", "l2"]
        shutdown(c)

    def test_identical_lines_have_distinct_uids_and_reread_keeps_them(self, tmp_path: Path) -> None:
        """Same text at two offsets: two uids. A partial line not committed before a crash is
        read again after the restart with the uid its position gives it."""
        log = tmp_path / "a.log"
        log.write_text("same\nsame\npart")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        first = drain(c)
        assert [t for t, _ in first] == ["same", "same"]
        assert len({u for _, u in first}) == 2
        (cp,) = c.store.checkpoints()
        c.close()  # a crash: the partial "part" was never committed
        c.store.close()
        with open(log, "a") as f:
            f.write("ial\n")
        c = make(tmp_path, [str(log)], first_start=False)
        c.start_up()
        (again,) = drain(c)
        assert again == ("partial", event_uid(cp.key, 10))
        shutdown(c)

    def test_a_new_file_on_a_reused_inode_gets_new_uids(self, tmp_path: Path) -> None:
        """Same inode, same first line, but a new file: its uids differ from the old one's."""
        log = tmp_path / "a.log"
        log.write_text("header\nline\n")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        old = drain(c)
        (cp,) = c.store.checkpoints()
        c.store.forget_checkpoint(cp.key)  # as after the old file was let go
        shutdown(c)
        c = make(tmp_path, [str(log)], first_start=False)
        c.start_up()
        new = drain(c)
        assert [t for t, _ in new] == [t for t, _ in old]
        assert not {u for _, u in new} & {u for _, u in old}
        shutdown(c)


class TestRotation:
    def test_truncation_rereads_from_zero_with_new_uids(self, tmp_path: Path) -> None:
        """copytruncate: a file shorter than its position is read again from 0, as new lines."""
        log = tmp_path / "a.log"
        log.write_text("one\ntwo\n")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        before = drain(c)
        log.write_text("three\n")
        after = drain(c)
        assert [t for t, _ in after] == ["three"]
        assert after[0][1] not in {u for _, u in before}
        shutdown(c)

    def test_rename_reads_old_to_end_then_new_from_start(self, tmp_path: Path) -> None:
        """rename+create: lines written to the old file after the rename still arrive."""
        log = tmp_path / "a.log"
        log.write_text("a1\n")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        assert [t for t, _ in drain(c)] == ["a1"]
        with open(log, "a") as old:
            os.rename(log, tmp_path / "a.log.1")
            log.write_text("b1\n")
            c.step()
            old.write("a2-late\n")
        texts = [t for t, _ in drain(c)]
        assert sorted(texts) == ["a2-late", "b1"]
        shutdown(c)

    def test_renamed_file_is_read_long_after_the_rename(self, tmp_path: Path) -> None:
        """A daemon that writes to the renamed file 20 s later (before its HUP): still read."""
        clock = FakeClock()
        log = tmp_path / "a.log"
        log.write_text("a1\n")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning", clock=clock)
        c.start_up()
        assert [t for t, _ in drain(c)] == ["a1"]
        with open(log, "a") as old:
            os.rename(log, tmp_path / "a.log.1")
            c.step()
            clock.advance(20)
            c.step()
            old.write("a2-much-later\n")
        assert [t for t, _ in drain(c)] == ["a2-much-later"]
        clock.advance(31)
        c.step()
        assert c.draining == []  # let go once quiet for rotate_grace
        shutdown(c)

    def test_truncated_and_refilled_past_the_offset(self, tmp_path: Path) -> None:
        """Truncated and refilled beyond the old position before the agent looked: the new
        content is read from 0, once."""
        log = tmp_path / "a.log"
        log.write_text("".join(f"old {i}\n" for i in range(5)))
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        assert len(drain(c)) == 5
        new = [f"new line number {i}" for i in range(10)]
        log.write_text("".join(x + "\n" for x in new))
        assert [t for t, _ in drain(c)] == new
        shutdown(c)

    def test_glob_matching_the_rotated_name_reads_each_line_once(self, tmp_path: Path) -> None:
        """*.log matches app.log and its rotated name app-1.log: each line once."""
        log = tmp_path / "app.log"
        log.write_text("one\n")
        c = make(tmp_path, [str(tmp_path / "*.log")], first_start=True, start="beginning")
        c.start_up()
        with open(log, "a") as w:
            os.rename(log, tmp_path / "app-1.log")
            w.write("two\n")
            w.flush()
            log.write_text("three\n")
            for _ in range(3):
                c.step()
            w.write("four\n")
        texts = [t for t, _ in drain(c)]
        assert sorted(texts) == ["four", "one", "three", "two"]
        shutdown(c)

    def test_a_file_rewritten_while_stopped_leaves_no_stale_position(self, tmp_path: Path) -> None:
        """Rewritten (same inode, new content) while the agent was down: read from 0, and
        the old generation's position is forgotten (status shows one row per file)."""
        log = tmp_path / "a.log"
        log.write_text("first version\n")
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        drain(c)
        shutdown(c)
        log.write_text("second\n")
        c = make(tmp_path, [str(log)], first_start=False)
        c.start_up()
        assert [t for t, _ in drain(c)] == ["second"]
        assert [cp.offset for cp in c.store.checkpoints()] == [7]
        shutdown(c)


class TestSplitRead:
    def test_a_read_splits_into_chunks_each_with_the_position_after_it(
        self, tmp_path: Path
    ) -> None:
        """A read too large for the free budget is committed chunk by chunk: each part carries
        the file position just after its own last line, the last one the read's position."""
        log = tmp_path / "a.log"
        log.write_text("".join(f"line {i:03d}\n" for i in range(120)))  # 9 bytes a line
        c = make(tmp_path, [str(log)], first_start=True, start="beginning")
        c.start_up()
        t = c.active[str(log)]
        read = t.read(0.0, 0.0)
        parts = read.split()
        assert [len(p.chunks[0].lines) for p in parts] == [50, 50, 20]
        assert [p.checkpoint.offset for p in parts if p.checkpoint] == [450, 900, 1080]
        assert read.checkpoint is not None and read.checkpoint.offset == 1080
        assert sum(p.line_bytes for p in parts) == read.line_bytes == 1080
        shutdown(c)


class TestWriteFailures:
    def test_a_failing_disk_loses_no_line(self, tmp_path: Path) -> None:
        """Commits that fail (disk full) are retried with the same lines: none skipped."""
        from structlog.testing import capture_logs

        from ila_core.errors import BufferWriteError

        log = tmp_path / "a.log"
        log.write_text("".join(f"line {i}\n" for i in range(10)))
        c = make(tmp_path, [str(log)], first_start=True, start="beginning", clock=FakeClock())
        real_commit = c.store.commit
        failures = [2]

        def flaky(chunks, checkpoint, **kw):  # type: ignore[no-untyped-def]
            if failures[0]:
                failures[0] -= 1
                raise BufferWriteError("database or disk is full")
            return real_commit(chunks, checkpoint, **kw)

        c.store.commit = flaky  # type: ignore[method-assign]
        with capture_logs() as logs:
            c.start_up()
            texts = [t for t, _ in drain(c)]
        assert texts == [f"line {i}" for i in range(10)]
        assert [e["event"] for e in logs if e["event"] == "buffer_write_failed"] == [
            "buffer_write_failed"
        ]
        shutdown(c)
