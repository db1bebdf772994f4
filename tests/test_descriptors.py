"""The descriptor budget: a cap on open files, the least recently read closed first."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.descriptors import OpenFiles, file_cap


@dataclass(eq=False)
class File:
    name: str
    draining: bool = False
    closed: list[str] = field(default_factory=list)


def budget(cap: int, log: list[str]) -> OpenFiles[File]:
    return OpenFiles[File](
        cap, close=lambda f: log.append(f.name), closable=lambda f: not f.draining
    )


class TestOpenFiles:
    def test_admit_closes_the_least_recently_read(self) -> None:
        """At the cap, the file read longest ago gives its descriptor back."""
        closed: list[str] = []
        files = budget(2, closed)
        a, b, c = File("a"), File("b"), File("c")
        for f in (a, b):
            assert files.admit()
            files.opened(f)
        files.used(a)  # b is now the oldest
        assert files.admit()
        files.opened(c)
        assert closed == ["b"]
        assert [f.name for f in files] == ["a", "c"]

    def test_a_rotated_file_is_never_closed_to_make_room(self) -> None:
        """Files still being finished after a rotation stay open; with only those open,
        nothing new is admitted (it waits for its turn)."""
        closed: list[str] = []
        files = budget(2, closed)
        for name in ("x", "y"):
            files.opened(File(name, draining=True))
        assert not files.admit()
        assert closed == []

    def test_turns_go_round(self) -> None:
        """Five busy files and room for two: reading each in turn opens every one of them."""
        closed: list[str] = []
        files = budget(2, closed)
        busy = [File(str(i)) for i in range(5)]
        opened: list[str] = []
        for f in busy * 2:
            if f not in list(files):
                assert files.admit(keep=f)
                files.opened(f)
                opened.append(f.name)
            files.used(f)
        assert sorted(set(opened)) == ["0", "1", "2", "3", "4"]
        assert len(files) == 2

    def test_shrink_after_the_system_refused_a_descriptor(self) -> None:
        """EMFILE: the cap comes down to what was open less a margin, and room is made now."""
        closed: list[str] = []
        files = budget(10, closed)
        for i in range(6):
            files.opened(File(str(i)))
        files.shrink(4)
        assert files.cap == 4 and len(files) == 3 and closed == ["0", "1", "2"]

    def test_a_configured_cap_wins(self) -> None:
        """max_open_files, when set, is the cap."""
        assert file_cap(7) == 7
