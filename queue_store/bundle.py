"""Bundles: the buffer's entries on removable media, for hosts with no route to the server.

Format ``ila-agent-bundle`` version 1 (see docs/bundle.md): a gzip file whose first line is a
JSON manifest and whose following lines are the entries, one JSON object per line, in the
protocol's ``logs[]`` form plus the ``agent_id`` of the agent that collected them. The
manifest carries the count, time range, per-source counts and the sha256 of the entry lines;
with a shared secret it also carries an HMAC-SHA256 over itself (chain of custody). A bundle
that is truncated, corrupted or tampered with is rejected whole.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ila_core.clock import rfc3339_ms
from ila_core.errors import AgentError
from queue_store.leases import Selection
from queue_store.schema import EXPORTED, READY
from queue_store.store import QueueStore

FORMAT = "ila-agent-bundle"
VERSION = 1
EXPORT_PAGE_LINES = 5000
REQUIRED = {"log_text": str, "source": str, "timestamp": str, "event_uid": str}

Progress = Callable[[int], None]


class BundleError(AgentError):
    """A bundle that cannot be trusted: nothing of it is imported."""


@dataclass(frozen=True)
class ExportResult:
    path: str | None
    count: int
    manifest: dict[str, Any] | None


def _signature(manifest: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def count_exportable(store: QueueStore, include_exported: bool) -> int:
    st = store.stats()
    return st.pending + (st.exported if include_exported else 0)


def export_bundle(
    store: QueueStore,
    path: str,
    *,
    agent_id: str,
    hostname: str,
    include_exported: bool = False,
    hmac_key: bytes | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write pending entries (and, with ``include_exported``, those exported before) to
    ``path``; they stay in the buffer, marked exported. Memory stays bounded."""
    statuses = (READY, EXPORTED) if include_exported else (READY,)
    selection = Selection(statuses=statuses, upto_id=store.max_id())
    content_tmp = f"{path}.content-{os.getpid()}.tmp"
    final_tmp = f"{path}.{os.getpid()}.tmp"
    ids: list[int] = []
    digest = hashlib.sha256()
    sources: Counter[str] = Counter()
    count = 0
    first_ts: str | None = None
    last_ts: str | None = None
    try:
        with gzip.open(content_tmp, "wb", compresslevel=6) as gz:
            while (lease := store.lease(EXPORT_PAGE_LINES, selection)) is not None:
                ids.extend(lease.item_ids)
                for e in lease.entries:
                    wire = e.to_wire(hostname)
                    wire.setdefault("agent_id", agent_id)
                    line = json.dumps(wire, ensure_ascii=False, separators=(",", ":")) + "\n"
                    data = line.encode("utf-8")
                    gz.write(data)
                    digest.update(data)
                    sources[e.source] += 1
                    count += 1
                    first_ts = e.timestamp if first_ts is None else min(first_ts, e.timestamp)
                    last_ts = e.timestamp if last_ts is None else max(last_ts, e.timestamp)
                if progress:
                    progress(count)
        if count == 0:
            os.unlink(content_tmp)
            return ExportResult(None, 0, None)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "agent_id": agent_id,
            "hostname": hostname,
            "created_at": rfc3339_ms(time.time()),
            "count": count,
            "first_timestamp": first_ts,
            "last_timestamp": last_ts,
            "sources": dict(sorted(sources.items())),
            "content_sha256": digest.hexdigest(),
            "signature": None,
        }
        if hmac_key is not None:
            manifest["signature"] = {"alg": "hmac-sha256", "value": _signature(manifest, hmac_key)}
        fd = os.open(final_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(gzip.compress((json.dumps(manifest) + "\n").encode("utf-8")))
            with open(content_tmp, "rb") as content:
                while block := content.read(1 << 20):
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(final_tmp, path)
    except BaseException:
        store.release_ids(ids)  # nothing was exported: everything stays pending
        for tmp in (content_tmp, final_tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    os.unlink(content_tmp)
    store.mark_exported(ids)
    return ExportResult(path, count, manifest)


def read_manifest(path: str, hmac_key: bytes | None) -> dict[str, Any]:
    """The manifest, checked: format, version and (with a key) its signature."""
    try:
        with gzip.open(path, "rb") as gz:
            first = gz.readline(1 << 20)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{path}: not a readable bundle ({exc})") from None
    try:
        manifest = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{path}: the manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an {FORMAT} file")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{path}: bundle version {manifest.get('version')} is not supported")
    for key in ("count", "content_sha256", "agent_id"):
        if key not in manifest:
            raise BundleError(f"{path}: the manifest lacks {key}")
    sig = manifest.get("signature")
    if hmac_key is not None:
        if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
            raise BundleError(f"{path}: the bundle is not signed, and a signature is required")
        if not hmac.compare_digest(sig["value"], _signature(manifest, hmac_key)):
            raise BundleError(f"{path}: the signature does not match (tampered or another key)")
    return manifest


def iter_entries(path: str, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The entries, validated one by one; raises BundleError at the end unless the content
    matches the manifest exactly (count and sha256). Callers must treat the import as one."""
    digest = hashlib.sha256()
    count = 0
    try:
        with gzip.open(path, "rb") as gz:
            gz.readline(1 << 20)
            for raw in gz:
                digest.update(raw)
                count += 1
                try:
                    entry = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise BundleError(f"{path}: entry {count} is not valid JSON") from None
                if not isinstance(entry, dict) or any(
                    not isinstance(entry.get(k), t) for k, t in REQUIRED.items()
                ):
                    raise BundleError(f"{path}: entry {count} lacks a required field")
                yield entry
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{path}: truncated or corrupted ({exc})") from None
    if count != manifest["count"]:
        raise BundleError(f"{path}: holds {count} entries, the manifest says {manifest['count']}")
    if digest.hexdigest() != manifest["content_sha256"]:
        raise BundleError(f"{path}: content does not match its sha256 (corrupted or tampered)")


def import_bundle(
    store: QueueStore,
    path: str,
    *,
    hmac_key: bytes | None = None,
    per_item: int = 50,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], int, int]:
    """Verify and import: all entries or none. Returns (manifest, added, already_there)."""
    manifest = read_manifest(path, hmac_key)

    def counted() -> Iterator[dict[str, Any]]:
        for n, entry in enumerate(iter_entries(path, manifest), 1):
            if progress and n % EXPORT_PAGE_LINES == 0:
                progress(n)
            yield entry

    added, skipped = store.import_entries(counted(), per_item)
    if progress:
        progress(added + skipped)
    return manifest, added, skipped
