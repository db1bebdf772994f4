"""Configured paths and globs → the files to read now, each with its source name."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from ila_agent.config import FileSource


def has_magic(pattern: str) -> bool:
    return glob.has_magic(pattern)


def discover(sources: Iterable[FileSource]) -> dict[str, str]:
    """{path: source name} for every regular file matching a configured path or glob."""
    found: dict[str, str] = {}
    for src in sources:
        paths = sorted(glob.glob(src.pattern)) if has_magic(src.pattern) else [src.pattern]
        for path in paths:
            if path in found or not os.path.isfile(path):
                continue
            found[path] = src.name or path
    return found


def watch_dirs(sources: Iterable[FileSource]) -> set[str]:
    """Folders to watch for events: a pattern's folder, or its deepest fixed folder."""
    dirs = set()
    for src in sources:
        d = os.path.dirname(src.pattern)
        while has_magic(d):
            d = os.path.dirname(d)
        dirs.add(d or ".")
    return dirs
