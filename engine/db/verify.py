"""index.verify(): check every checksum and authentication tag, and cross-check the parts.

Reads everything, changes nothing (the WAL is replayed with repair=False), and reports every
problem it finds instead of stopping at the first (diskcache's check()).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsmvec.compaction.scann_assets import file_context
from lsmvec.compaction.sealed_file import read_sealed
from lsmvec.compaction.segment_files import check_listing, expected_entries
from lsmvec.wal import RecoveryMode, replay

from lsmvec.errors import CorruptionError, LsmvecError
from lsmvec.db.segments import segment_folder

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore


def _problem(exc: BaseException) -> dict[str, Any]:
    return {"error": exc.__class__.__name__, "message": str(exc),
            "path": getattr(exc, "path", None), "offset": getattr(exc, "offset", None)}


def verify_index(core: "IndexCore") -> dict[str, Any]:
    problems: list[dict[str, Any]] = []
    report: dict[str, Any] = {"wal_records": 0, "items": 0, "segments": 0, "segment_files": 0}
    with core.read_lock():
        segments = list(core.segments)
        manifest = core.manifest
    # 1. segment files: exact listing, sizes, SHA-256 and AES-GCM of every chunk
    for source in segments:
        info = source.info
        folder = segment_folder(core.folder, info.id)
        try:
            expected = expected_entries([tuple(f) for f in info.files], folder)
            check_listing(folder, expected)
            context = core.cipher.segment_context(info.id, "")
            for name, entry in expected.items():
                # the deep check: every byte authenticated under the salt the manifest names (and
                # its SHA-256, for files of builds that recorded one)
                read_sealed(folder / name, core.cipher.segment_key, file_context(context, name),
                            expected_size=entry.size, expected_sha256=entry.sha256 or None,
                            expected_salt=entry.salt_bytes)
                report["segment_files"] += 1
            report["segments"] += 1
        except LsmvecError as exc:
            problems.append(_problem(exc))
    # 2. store: every item opens, and its location names a live row holding that id
    rows = {s.id: s for s in segments}
    broken = core.store.walk_in_child()
    try:
        if broken is not None:
            raise CorruptionError(broken, str(core.store.path))
        for item in core.store.iter_items():
            report["items"] += 1
            source = rows.get(item.segment)
            if source is None or item.row >= source.n_rows or source.persisted[item.row] \
                    or not _holds(core, source, item):
                problems.append({"error": "CorruptionError", "path": str(core.store.path),
                                 "offset": None, "message": f"item points at segment "
                                 f"{item.segment} row {item.row}, which does not hold it"
                                 + (" as a bare item" if item.id is None else "")})
    except LsmvecError as exc:
        problems.append(_problem(exc))
    live_rows = sum(int(s.n_rows - s.persisted.sum()) for s in segments)
    if report["items"] != live_rows and broken is None:
        problems.append({"error": "CorruptionError", "path": str(core.store.path), "offset": None,
                         "message": f"the store holds {report['items']} items but the segments "
                                    f"hold {live_rows} live rows (an item is missing or extra)"})
    # 3. the log after the checkpoint: framing, CRCs, authentication
    try:
        records = replay(core.wal_dir, from_lsn=manifest.checkpoint_lsn + 1,
                         mode=RecoveryMode.TOLERATE_TORN_TAIL, repair=False,
                         required_file=manifest.log_head or 0)
        for rec in records:
            core.open_payload(rec.lsn, rec.kind, rec.payload)
            report["wal_records"] += 1
    except CorruptionError as exc:
        problems.append(_problem(exc))
    except LsmvecError as exc:
        problems.append(_problem(exc))
    report["ok"] = not problems
    report["problems"] = problems
    return report


def _holds(core: "IndexCore", source, item) -> bool:
    """Whether segment row item.row holds the stored item: its id, or for a bare value (no
    id of its own) a row marked bare whose id hashes to the item's key."""
    if item.id is not None:
        return source.ids[item.row] == item.id and not source.ids.is_bare(item.row)
    return (source.ids.is_bare(item.row)
            and core.cipher.id_hash(source.ids[item.row]) == item.key)
