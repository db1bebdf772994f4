"""Telling files apart: device + inode + a fingerprint of the first line."""

from __future__ import annotations

import hashlib
import os

from queue_store.records import FileId

FINGERPRINT_MAX_BYTES = 256


def pread(fd: int, n: int, offset: int) -> bytes:
    """os.pread where it exists (POSIX); seek + read elsewhere (one reader per fd here)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def read_fingerprint(fd: int) -> tuple[int, str]:
    """Hash of the file's first line (at most FINGERPRINT_MAX_BYTES); (0, "") when empty."""
    head = pread(fd, FINGERPRINT_MAX_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    if not head:
        return 0, ""
    return len(head), hashlib.sha256(head).hexdigest()[:24]


def identify(fd: int) -> FileId:
    """The FileId of an open file."""
    st = os.fstat(fd)
    fp_len, fp = read_fingerprint(fd)
    return FileId(st.st_dev, st.st_ino, fp_len, fp)


def matches(fd: int, file_id: FileId) -> bool:
    """True when the open file is still the one ``file_id`` names."""
    st = os.fstat(fd)
    if not file_id.same_inode(st):
        return False
    if file_id.fp_len == 0:
        return True
    head = pread(fd, file_id.fp_len, 0)
    return len(head) == file_id.fp_len and hashlib.sha256(head).hexdigest()[:24] == file_id.fp
