"""CONFIG: the per-index settings file, written atomically and authenticated.

Format: one JSON object. ``key_check`` (a one-way fingerprint of the key) lets a wrong key be
refused before anything else is read; ``mac`` (HMAC under a subkey) detects an edited field
(say, a changed metric) once the key is known good. The key itself is never stored.
"""
from __future__ import annotations

import hmac
import json
import os
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsmvec.wal import fsio

from lsmvec.disk import filenames
from lsmvec.disk.crypto import IndexCipher, key_check_value
from lsmvec.errors import CorruptionError, WrongKeyError

FORMAT_VERSION = 2
"""What new indexes are created in. Formats this build reads and writes, each kept for the life
of its index (an older build refuses a newer format by this number, before reading anything):
  1  ids hashed with HMAC-SHA256; every store value sealed
  2  ids hashed with keyed BLAKE2b; an item with neither contents nor metadata stored bare
     (its location alone: disk/item_values.py)"""
FORMATS = {1: "hmac-sha256", 2: "blake2b"}
"""Each readable format's id hash (crypto.ID_HASHES)."""


def bare_values(format_version: int) -> bool:
    """Whether an index of this format stores items without contents and metadata bare."""
    return format_version >= 2


def cipher_of(index_key: bytes, config: "IndexConfig") -> IndexCipher:
    """The index's key material, its id hash that of its format."""
    return IndexCipher(index_key, config.uuid_bytes, FORMATS[config.format])
CONFIG_NAME = filenames.CONFIG
METRICS = ("euclidean", "squared_euclidean", "cosine")


@dataclass
class IndexConfig:
    name: str
    uuid: str
    dimension: int | None
    metric: str
    embedding_model: str | None = None
    options: Any = field(default_factory=dict)
    """The index options, opaque to this layer: as read_config returns them, the JSON object
    CONFIG holds (authenticated, not interpreted); above, the engine's typed, validated
    ``lsmvec.request.options.IndexOptions`` (its ``to_stored()`` is what CONFIG holds)."""
    format: int = FORMAT_VERSION
    key_check: str = ""

    def canonical(self) -> bytes:
        body = asdict(self)
        if hasattr(self.options, "to_stored"):  # typed options -> the JSON object of every option
            body["options"] = self.options.to_stored()
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @property
    def uuid_bytes(self) -> bytes:
        return uuidlib.UUID(self.uuid).bytes


def new_config(name: str, index_key: bytes, *, dimension: int | None, metric: str,
               embedding_model: str | None, options: Any) -> IndexConfig:
    """``options``: validated by the caller (IndexOptions); stored as given."""
    uid = uuidlib.uuid4()
    return IndexConfig(name=name, uuid=str(uid), dimension=dimension, metric=metric,
                       embedding_model=embedding_model, options=options,
                       key_check=key_check_value(index_key, uid.bytes).hex())


def write_config(folder: Path, config: IndexConfig, cipher: IndexCipher) -> None:
    """Atomic replace: temp file, fsync, rename, fsync the folder."""
    body = json.loads(config.canonical())
    body["mac"] = cipher.config_mac(config.canonical()).hex()
    data = (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()
    fsio.atomic_write(folder / CONFIG_NAME, data)


def read_config(folder: Path, index_key: bytes) -> tuple[IndexConfig, IndexCipher]:
    """Raises WrongKeyError for another key (constant-time compare, before any data is read),
    CorruptionError when CONFIG is unreadable or its fields were edited."""
    path = folder / CONFIG_NAME
    try:
        raw = path.read_bytes()
        body = json.loads(raw)
        mac = bytes.fromhex(body.pop("mac"))
        config = IndexConfig(**body)
        uid = config.uuid_bytes
        stored_check = bytes.fromhex(config.key_check)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptionError(f"index config unreadable ({exc.__class__.__name__})", path) from None
    if not hmac.compare_digest(key_check_value(index_key, uid), stored_check):
        raise WrongKeyError(f"wrong index_key for index {config.name!r}: the key does not open it")
    # (an unknown format is refused below, once the MAC says the number is not an edit)
    cipher = IndexCipher(index_key, uid, FORMATS.get(config.format, FORMATS[FORMAT_VERSION]))
    if not hmac.compare_digest(cipher.config_mac(config.canonical()), mac):
        raise CorruptionError("index config fails its authentication (edited or damaged)", path)
    if config.format not in FORMATS or config.metric not in METRICS:
        raise CorruptionError(f"index config has unknown format {config.format} / metric", path)
    return config, cipher


def config_exists(folder: Path) -> bool:
    """True when `folder` is an index (holds CONFIG). Raises CorruptionError when it holds an
    index's files (store/, wal/) but its CONFIG is gone: damage, not an unknown name."""
    if os.path.isfile(folder / CONFIG_NAME):
        return True
    if any(os.path.exists(folder / part) for part in (filenames.STORE_DIR, filenames.WAL_DIR)):
        raise CorruptionError("the index folder holds a store and a log but its CONFIG is missing",
                              str(folder / CONFIG_NAME))
    return False


def stored_dimension(folder: Path) -> int | None:
    """The dimension CONFIG holds now (unauthenticated: only to tell whether a failed rewrite
    took effect before its error)."""
    try:
        return json.loads((folder / CONFIG_NAME).read_bytes()).get("dimension")
    except (OSError, ValueError):
        return None
