"""Configured paths and globs → the files to read now, each with its source name."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any, ClassVar

from collector.multiline import Multiline
from collector.processing import FILTER_KEYS, Filters
from ila_core.settings import SettingsReader


@dataclass(frozen=True, kw_only=True)
class FileSource:
    """A path or glob; ``name`` overrides the ``source`` sent (default: the file's path)."""

    type_name: ClassVar[str] = "file"
    pattern: str
    name: str | None = None
    multiline: Multiline | None = None
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def from_json(cls, r: SettingsReader) -> FileSource:
        r.warn_unknown({"type", "path", "source", "multiline", *FILTER_KEYS})
        path = r.text("path")
        name = r.raw.get("source")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise r.error("source", "must be a non-empty string")
        return cls(
            pattern=r.path("path", path) or path,
            name=name,
            multiline=Multiline.from_json(r, "multiline", r.raw.get("multiline")),
        )

    def label(self) -> str:
        return self.pattern

    def source_of(self, path: str) -> str:
        """The ``source`` its entries carry: the configured name, else the file's path."""
        return self.name or path

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.pattern, "source": self.name}
        if self.multiline is not None:
            out["multiline"] = self.multiline.to_json()
        if self.filters:
            out.update(self.filters.to_json())
        return out

    def runs_on(self, platform: str) -> bool:
        return True


def has_magic(pattern: str) -> bool:
    return glob.has_magic(pattern)


def discover(
    sources: Iterable[FileSource],
    *,
    known: Container[str] = (),
    globber: Globber | None = None,
) -> tuple[dict[str, FileSource], bool]:
    """{path: its source} for every regular file matching a configured path or glob, and
    whether every path a glob listed was one (a dangling symlink may become one without its
    folder changing). Paths in ``known`` (files being read) are taken as they are."""
    found: dict[str, FileSource] = {}
    all_files = True
    glob_of = globber.names if globber is not None else _glob
    for src in sources:
        paths = glob_of(src.pattern) if has_magic(src.pattern) else [src.pattern]
        for path in paths:
            if path in found:
                continue
            if path not in known and not os.path.isfile(path):
                all_files = all_files and not has_magic(src.pattern)
                continue
            found[path] = src
    return found, all_files


def _glob(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))


class Globber:
    """Globs whose folder is fixed (``logs/*.log``) listed again only when the folder's
    mtime moved: an entry added, removed or renamed changes it, so a quiet folder of 10,000
    files costs one stat per pass, not a listing. A folder changed within ``RACY_S`` of
    its listing is listed again next time (a change in the same timestamp tick as the
    listing could leave the mtime as it was). Globs with wildcards in folders are always
    listed. ``wall`` is the filesystem's clock (mtimes are real time), not the agent's."""

    RACY_S = 2.0

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self._listed: dict[str, tuple[tuple[int, int, int], list[str]]] = {}

    def unchanged(self, pattern: str) -> bool:
        """The glob would list what it listed last time (its folder has not moved)."""
        listed = self._listed.get(pattern)
        return listed is not None and listed[0] == _stamp(pattern)

    def names(self, pattern: str) -> list[str]:
        stamp = _stamp(pattern)
        listed = self._listed.pop(pattern, None)
        if stamp is not None and listed is not None and listed[0] == stamp:
            self._listed[pattern] = listed
            return listed[1]
        names = _glob(pattern)
        if stamp is not None and stamp[2] / 1e9 < self.wall() - self.RACY_S:
            self._listed[pattern] = (stamp, names)
        return names


def _stamp(pattern: str) -> tuple[int, int, int] | None:
    """(dev, ino, mtime_ns) of the pattern's folder; None when it has wildcards or is gone."""
    folder = os.path.dirname(pattern) or "."
    if has_magic(folder):
        return None
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def matching(sources: Iterable[FileSource], path: str) -> FileSource | None:
    """The first source whose path or glob names ``path``."""
    for src in sources:
        if path == src.pattern or (has_magic(src.pattern) and fnmatch(path, src.pattern)):
            return src
    return None


def watch_dirs(sources: Iterable[FileSource]) -> set[str]:
    """Folders to watch for events: a pattern's folder, or its deepest fixed folder."""
    dirs = set()
    for src in sources:
        d = os.path.dirname(src.pattern)
        while has_magic(d):
            d = os.path.dirname(d)
        dirs.add(d or ".")
    return dirs
