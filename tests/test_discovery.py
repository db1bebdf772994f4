"""Finding files cheaply with many of them: quiet folders are not listed again, our own opens
and closes wake nothing, and the stat pass keeps to its budget. Real folders, real inotify."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.events import FileSystemEvent

import collector.collector as collector_module
import collector.watcher as watcher_module
from collector.collector import Collector
from collector.discovery import FileSource, Globber
from collector.watcher import Watcher
from ila_core.clock import Clock
from queue_store.store import QueueStore
from tests.fakes import FakeClock, drain


def files(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("a line\n")


def age(folder: Path, seconds: float) -> int:
    """Set the folder's mtime ``seconds`` in the past; return it (ns)."""
    when = time.time_ns() - int(seconds * 1e9)
    os.utime(folder, ns=(when, when))
    return when


class TestQuietFolders:
    def test_a_quiet_folder_is_listed_once_then_again_when_an_entry_is_added(
        self, tmp_path: Path
    ) -> None:
        logs = tmp_path / "logs"
        files(logs, "a.log", "b.log", "c.txt")
        age(logs, 10)
        g = Globber()
        first = g.names(str(logs / "*.log"))
        assert first == [str(logs / "a.log"), str(logs / "b.log")]
        assert g.names(str(logs / "*.log")) is first  # not listed again
        files(logs, "d.log")
        assert g.names(str(logs / "*.log")) == [str(logs / n) for n in ("a.log", "b.log", "d.log")]

    def test_renamed_and_deleted_entries_are_seen(self, tmp_path: Path) -> None:
        logs = tmp_path / "logs"
        files(logs, "a.log", "b.log")
        age(logs, 10)
        g = Globber()
        g.names(str(logs / "*.log"))
        (logs / "a.log").rename(logs / "a.log.1")
        (logs / "b.log").unlink()
        assert g.names(str(logs / "*.log")) == []

    def test_a_change_in_the_same_mtime_tick_as_the_listing_is_not_missed(
        self, tmp_path: Path
    ) -> None:
        logs = tmp_path / "logs"
        files(logs, "a.log")
        tick = age(logs, 0.5)  # changed just before the listing: not to be trusted yet
        g = Globber()
        assert g.names(str(logs / "*.log")) == [str(logs / "a.log")]
        files(logs, "b.log")
        os.utime(logs, ns=(tick, tick))  # a coarse clock: the mtime did not move
        assert g.names(str(logs / "*.log")) == [str(logs / "a.log"), str(logs / "b.log")]

    def test_wildcards_in_folders_are_always_listed(self, tmp_path: Path) -> None:
        files(tmp_path / "h1", "x.log")
        age(tmp_path, 10)
        age(tmp_path / "h1", 10)
        g = Globber()
        pattern = str(tmp_path / "*" / "x.log")
        assert g.names(pattern) == [str(tmp_path / "h1" / "x.log")]
        files(tmp_path / "h1", "y.log")
        files(tmp_path / "h2", "x.log")
        age(tmp_path, 10)
        assert g.names(pattern) == [str(tmp_path / h / "x.log") for h in ("h1", "h2")]

    def test_a_dangling_symlink_is_read_once_its_target_appears(
        self, tmp_path: Path, open_buffer: Callable[..., QueueStore]
    ) -> None:
        logs = tmp_path / "logs"
        files(logs, "a.log")
        (logs / "b.log").symlink_to(tmp_path / "elsewhere.log")
        age(logs, 10)  # a quiet folder: its listing is trusted from now on
        c = make(open_buffer(), [str(logs / "*.log")], poll_interval=0.0, use_inotify=False)
        try:
            c.start_up()
            c.step()
            assert set(c.active) == {str(logs / "a.log")}
            (tmp_path / "elsewhere.log").write_text("at last\n")  # the folder does not move
            c.step()
            assert set(c.active) == {str(logs / "a.log"), str(logs / "b.log")}
        finally:
            c.close()

    def test_a_rotated_path_is_read_again_when_its_first_open_was_refused(
        self, tmp_path: Path, open_buffer: Callable[..., QueueStore]
    ) -> None:
        """logrotate's create in a quiet folder whose listing is cached, no inotify, one
        descriptor: the new a.log cannot be opened while the old one is finished, and no
        event will name it; the next discovery must look again."""
        logs = tmp_path / "logs"
        files(logs, "a.log")
        age(logs, 10)
        store = open_buffer()
        clock = FakeClock()
        c = make(store, [str(logs / "*.log")], poll_interval=5.0, use_inotify=False,
                 clock=clock, max_open_files=1)  # fmt: skip
        try:
            c.start_up()
            c.step()
            (logs / "a.log").rename(logs / "a.log-20261130")
            (logs / "a.log").write_text("new 0\n")
            age(logs, 3)  # the folder is quiet again before the next listing
            for i in range(1, 40):
                clock.advance(5.0)
                with open(logs / "a.log", "a") as f:
                    f.write(f"new {i}\n")
                c.step()
            texts = [e.log_text for e in drain(store)]
        finally:
            c.close()
        assert texts == ["a line", *(f"new {i}" for i in range(40))]

    def test_a_glob_with_files_is_not_reported_as_waiting(
        self, tmp_path: Path, open_buffer: Callable[..., QueueStore]
    ) -> None:
        files(tmp_path / "logs", "a.log")
        c = make(open_buffer(), [str(tmp_path / "logs" / "*.log"), str(tmp_path / "no" / "*.log")])
        with capture_logs() as logs:
            c.start_up()
        c.close()
        waiting = [e["path"] for e in logs if e.get("problem") == "no file matches yet: waiting"]
        assert waiting == [str(tmp_path / "no" / "*.log")]


class TestOwnAccessWakesNothing:
    def test_opening_and_closing_a_file_is_not_asked_of_the_kernel(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        files(tmp_path, "quiet.log", "busy.log")
        dispatched: list[tuple[str, str]] = []
        handler = watcher_module._Collect.on_any_event

        def record(self: watcher_module._Collect, event: FileSystemEvent) -> None:
            dispatched.append((event.event_type, os.fsdecode(event.src_path)))
            handler(self, event)

        monkeypatch.setattr(watcher_module._Collect, "on_any_event", record)
        w = Watcher(threading.Event())
        w.refresh({str(tmp_path)})
        try:
            for _ in range(3):
                with open(tmp_path / "quiet.log", "rb") as f:
                    f.read()
            with open(tmp_path / "busy.log", "a") as f:
                f.write("more\n")
            # inotify keeps order: once busy.log's write is seen, quiet.log's opens were too.
            deadline = time.monotonic() + 10
            busy = str(tmp_path / "busy.log")
            while (("modified", busy) not in dispatched) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ("modified", busy) in dispatched
            assert [e for e in dispatched if e[1] == str(tmp_path / "quiet.log")] == []
        finally:
            w.stop()


class TestStatPassBudget:
    def test_many_files_are_looked_at_no_faster_than_the_rate(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        open_buffer: Callable[..., QueueStore],
    ) -> None:
        files(tmp_path / "logs", *(f"f{i:03d}.log" for i in range(120)))
        monkeypatch.setattr(collector_module, "STAT_RATE", 2.0)  # 120 files: every 60 s
        c = make(open_buffer(), [str(tmp_path / "logs" / "*.log")])
        try:
            c.start_up()
            assert c.watcher is not None and c.watcher.complete
            now = c.clock.monotonic()
            c._last_step = now - 1.0
            assert len(c._stat_slice(now)) == 2  # 120 files / 60 s
            monkeypatch.setattr(collector_module, "STAT_RATE", 1000.0)  # now 30 s governs
            c._last_step = now - 1.0
            assert len(c._stat_slice(now)) == 4
        finally:
            c.close()


def make(
    store: QueueStore,
    patterns: list[str],
    *,
    poll_interval: float = 1.0,
    use_inotify: bool = True,
    clock: Clock | None = None,
    max_open_files: int | None = None,
) -> Collector:
    return Collector(
        store, [FileSource(pattern=p) for p in patterns], batch_size=50, max_line_bytes=1000,
        partial_line_timeout=5, start_position="beginning", poll_interval=poll_interval,
        clock=clock or Clock(), first_start=True, use_inotify=use_inotify,
        max_open_files=max_open_files,
    )  # fmt: skip
