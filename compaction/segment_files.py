"""The manifest's view of a segment folder: which sealed files it holds, and the checks that
run before anything in the folder is decrypted or handed to ScaNN.

``segment.json`` (sealed) describes the segment itself; its parser lives here too so that every
rule about what a valid segment folder is sits in one module.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from lsmvec.compaction.filenames import (SEGMENT_FILES, SEGMENT_META_FILE, SIDECAR_FILES,
                                         VECTORS_FILE)
from lsmvec.compaction.scann_assets import file_context
from lsmvec.compaction.sealed_file import read_pins, read_sealed
from lsmvec.compaction.scann_params import KIND_BRUTE, KIND_TREE_AH, SearchParams
from lsmvec.wal.errors import CorruptionError, storage_error_from

__all__ = ["SEGMENT_FORMAT", "FileEntry", "SegmentFiles", "expected_entries", "check_listing",
           "encode_meta", "parse_meta", "read_sidecar"]

SEGMENT_FORMAT = 1
"""Version of segment.json; bumped (append-only) when the folder layout changes."""


@dataclass(frozen=True)
class FileEntry:
    """One sealed file of a segment as the manifest records it: name, size, SHA-256 of the
    sealed bytes and (segments built since it was recorded) the salt of the file's header."""

    name: str
    size: int
    sha256: str
    salt: str = ""

    def pins(self) -> dict[str, Any]:
        """How a read makes sure this is the very file the manifest names (sealed_file's
        read_pins: by its salt when recorded, else by its SHA-256)."""
        return read_pins(self.sha256, self.salt)

    @property
    def salt_bytes(self) -> bytes | None:
        """The recorded salt as read_sealed's ``expected_salt`` (None: not recorded)."""
        return bytes.fromhex(self.salt) if self.salt else None

    def as_list(self) -> list:
        """The manifest's form: [name, size, sha256] or [name, size, sha256, salt]."""
        return ([self.name, self.size, self.sha256, self.salt] if self.salt
                else [self.name, self.size, self.sha256])

    @classmethod
    def of(cls, raw: "FileEntry | Iterable[Any]") -> "FileEntry":
        """From the manifest's form (as_list). Raises CorruptionError when malformed."""
        if isinstance(raw, FileEntry):
            return raw
        try:
            name, size, sha, *rest = raw
            salt = str(rest[0]) if rest else ""
            if len(rest) > 1 or (salt and len(bytes.fromhex(salt)) != 16):
                raise ValueError(f"bad file entry {raw!r}")
            return cls(str(name), int(size), str(sha), salt)
        except (TypeError, ValueError) as exc:
            raise CorruptionError(f"malformed segment file entry: {exc!r}") from exc


@dataclass(frozen=True)
class SegmentFiles:
    """What ``build_segment`` produced: the manifest's description of a segment folder."""

    files: tuple[FileEntry, ...]
    n: int
    dim: int
    metric: str
    kind: str
    n_lists: int

    @property
    def total_size(self) -> int:
        """Bytes on disk."""
        return sum(entry.size for entry in self.files)

    def as_dict(self) -> dict[str, Any]:
        """msgpack / JSON-ready form (no pickle)."""
        return {"files": [e.as_list() for e in self.files], "n": self.n,
                "dim": self.dim, "metric": self.metric, "kind": self.kind,
                "n_lists": self.n_lists}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentFiles:
        """Inverse of ``as_dict``. Raises CorruptionError when the mapping is malformed."""
        try:
            files = tuple(FileEntry.of(raw) for raw in data["files"])
            return cls(files, int(data["n"]), int(data["dim"]), str(data["metric"]),
                       str(data["kind"]), int(data["n_lists"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptionError(f"malformed segment description: {exc!r}") from exc


def expected_entries(entries: Iterable[FileEntry | tuple[str, int, str]],
                     directory: Path) -> dict[str, FileEntry]:
    """Normalise the manifest's file list. Raises CorruptionError when it names a file a
    segment may not hold (e.g. ``scann_docids.pkl``), repeats one, or lacks a required one."""
    expected: dict[str, FileEntry] = {}
    for entry in entries:
        entry = FileEntry.of(entry)
        if entry.name not in SEGMENT_FILES or entry.name in expected:
            raise CorruptionError(f"manifest names an invalid or repeated segment file "
                                  f"{entry.name!r}", str(directory))
        expected[entry.name] = entry
    for required in (SEGMENT_META_FILE, VECTORS_FILE):
        if required not in expected:
            raise CorruptionError(f"manifest lacks {required}", str(directory))
    return expected


def check_listing(directory: Path, expected: Mapping[str, FileEntry]) -> None:
    """Raises CorruptionError unless the folder holds exactly the expected names, each a
    regular file (no symlink) of the expected size; StorageError when it cannot be listed."""
    try:
        with os.scandir(directory) as scan:
            found = {}
            for entry in scan:
                if not entry.is_file(follow_symlinks=False):
                    raise CorruptionError("segment folder holds an entry that is not a regular "
                                          "file", entry.path)
                found[entry.name] = entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError as exc:
        raise CorruptionError("segment folder is missing", str(directory)) from exc
    except OSError as exc:
        raise storage_error_from(exc, f"list segment folder {directory}") from exc
    extra = sorted(found.keys() - expected.keys())
    if extra:
        raise CorruptionError(f"unexpected file {extra[0]!r} in segment folder",
                              str(directory / extra[0]))
    for name, entry in expected.items():
        if name not in found:
            raise CorruptionError("segment file is missing", str(directory / name))
        if found[name] != entry.size:
            raise CorruptionError(f"segment file is {found[name]} bytes, manifest says "
                                  f"{entry.size}", str(directory / name))


def encode_meta(params: SearchParams, n: int, dim: int, dataset_stored: bool) -> bytes:
    """segment.json's bytes (inverse of ``parse_meta``)."""
    meta = {"format": SEGMENT_FORMAT, "n": n, "dim": dim, "params": params.as_dict(),
            "dataset_stored": dataset_stored}
    return json.dumps(meta, sort_keys=True).encode("utf-8")


def parse_meta(raw: bytes | bytearray, path: str) -> tuple[SearchParams, int, int, bool]:
    """Decode segment.json into (params, n, dim, dataset_stored). Raises CorruptionError."""
    try:
        meta = json.loads(bytes(raw).decode("utf-8"))
        if meta["format"] != SEGMENT_FORMAT:
            raise ValueError(f"unsupported segment format {meta['format']}")
        params = SearchParams.from_dict(meta["params"])
        n, dim, dataset_stored = int(meta["n"]), int(meta["dim"]), bool(meta["dataset_stored"])
        if n < 1 or dim < 1 or params.kind not in (KIND_BRUTE, KIND_TREE_AH):
            raise ValueError(f"bad shape or kind: n={n} dim={dim} kind={params.kind}")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"malformed segment description: {exc}", path) from exc
    return params, n, dim, dataset_stored


def read_sidecar(directory: Path, entries: Iterable[FileEntry | tuple[str, int, str]], name: str,
                 *, key: bytes, context: bytes) -> bytearray | None:
    """The plaintext of sidecar ``name`` (filenames.SIDECAR_FILES) of the segment folder whose
    manifest file list is ``entries``; None when the list has none (a segment without it, e.g.
    written before it existed). Authenticated against the manifest's size and SHA-256 and bound
    to the segment and its name: a damaged, swapped or foreign file raises CorruptionError."""
    if name not in SIDECAR_FILES:
        raise ValueError(f"{name!r} is not a sidecar file")
    for entry in entries:
        entry = FileEntry.of(entry)
        if entry.name == name:
            return read_sealed(directory / name, key, file_context(context, name),
                               expected_size=entry.size, **entry.pins())
    return None
