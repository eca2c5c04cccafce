"""Every exception lsmvec raises, in one module.

It lives in the bottom layer (``wal``) so that every layer can raise the same types without
importing upward; ``engine.errors`` re-exports it as the public path.

    LsmvecError
    ├── InvalidArgumentError (ValueError)      a caller's value is wrong
    │   ├── DimensionMismatchError             vector length differs from the index dimension
    │   ├── InvalidVectorError                 NaN / inf / zero vector under cosine / bad shape
    │   ├── InvalidIdError                     empty, too long, not str / int
    │   ├── InvalidMetadataError               not a JSON-like dict, too deep, too large
    │   ├── InvalidContentsError               not bytes / str, or bytes where text is needed
    │   ├── InvalidIndexNameError              unsafe or malformed index name
    │   ├── InvalidKeyError                    index_key is not 32 bytes
    │   ├── FilterError                        malformed filter or unknown operator
    │   ├── MissingVectorError                 no vector and nothing to embed it from
    │   ├── ItemNotFoundError (KeyError)       update() names an id the index does not hold
    │   └── InvalidCursorError                 iter_items cursor damaged or from another index
    ├── InvalidTypeError (TypeError)           a caller's value has the wrong type
    ├── IndexNotFoundError (ValueError)        load / delete of an unknown index
    ├── IndexExistsError (ValueError)          create of an existing index
    ├── WrongKeyError (ValueError)             the key does not open this index
    ├── IndexLockedError (RuntimeError)        another process holds the index
    ├── ClosedError (RuntimeError)             use after close()
    ├── ReadOnlyError (RuntimeError)           a write on an index opened read_only=True
    ├── LogGone                                (internal: a reader's log records were flushed
    │                                          and deleted; the reader moves to the new version)
    ├── EmbeddingModelUnavailable (RuntimeError)
    ├── StorageError (OSError)                 the file system failed us
    │   ├── StorageFullError                   ENOSPC / EDQUOT
    │   └── LogPoisonedError                   an fsync failed; writes refused until reopen
    │       └── ApplyFailedError               a logged write failed to apply to memory; writes
    │                                          refused until reopen (replay brings it back)
    └── CorruptionError                        stored bytes are damaged (path + offset)
"""
from __future__ import annotations

import errno

__all__ = [
    "LsmvecError",
    "InvalidArgumentError",
    "DimensionMismatchError",
    "InvalidVectorError",
    "InvalidIdError",
    "InvalidMetadataError",
    "InvalidContentsError",
    "InvalidIndexNameError",
    "InvalidKeyError",
    "FilterError",
    "MissingVectorError",
    "ItemNotFoundError",
    "InvalidCursorError",
    "InvalidTypeError",
    "IndexNotFoundError",
    "IndexExistsError",
    "WrongKeyError",
    "IndexLockedError",
    "ClosedError",
    "ReadOnlyError",
    "LogGone",
    "EmbeddingModelUnavailable",
    "StorageError",
    "StorageFullError",
    "LogPoisonedError",
    "ApplyFailedError",
    "CorruptionError",
    "storage_error_from",
]


class LsmvecError(Exception):
    """Base of every lsmvec error."""


class InvalidArgumentError(LsmvecError, ValueError):
    """A value the caller passed is wrong; nothing was written."""


class DimensionMismatchError(InvalidArgumentError):
    pass


class InvalidVectorError(InvalidArgumentError):
    pass


class InvalidIdError(InvalidArgumentError):
    pass


class InvalidMetadataError(InvalidArgumentError):
    pass


class InvalidContentsError(InvalidArgumentError):
    pass


class InvalidIndexNameError(InvalidArgumentError):
    pass


class InvalidKeyError(InvalidArgumentError):
    pass


class FilterError(InvalidArgumentError):
    pass


class MissingVectorError(InvalidArgumentError):
    pass


class ItemNotFoundError(InvalidArgumentError, KeyError):
    """update() named an id that is not live in the index (never written, or deleted)."""

    __str__ = Exception.__str__  # the message as given, not KeyError's repr of it


class InvalidCursorError(InvalidArgumentError):
    """An iter_items cursor that this index did not issue (damaged, forged, or another index's)."""


class InvalidTypeError(LsmvecError, TypeError):
    """A value the caller passed has the wrong type; nothing was written."""


class IndexNotFoundError(LsmvecError, ValueError):
    pass


class IndexExistsError(LsmvecError, ValueError):
    pass


class WrongKeyError(LsmvecError, ValueError):
    """The supplied index_key does not open this index (checked before any data is read)."""


class IndexLockedError(LsmvecError, RuntimeError):
    """Another process has this index open for writing. ``pid``: that process's id, as it
    wrote it into the LOCK file (None when it could not be read)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ClosedError(LsmvecError, RuntimeError):
    pass


class ReadOnlyError(LsmvecError, RuntimeError):
    """A write (upsert, delete, update, flush, compact, train, ...) on an index opened with
    read_only=True: readers never change a file."""


class LogGone(LsmvecError):
    """A log tail's next records were deleted by the writer (flushed into a segment, its
    checkpoint moved past them). Internal: the reader moves to the newer version."""


class EmbeddingModelUnavailable(LsmvecError, RuntimeError):
    pass


class StorageError(LsmvecError, OSError):
    """The file system refused an operation. The failed call had no visible effect."""


class StorageFullError(StorageError):
    pass


class LogPoisonedError(StorageError):
    """An fsync failed earlier. Retrying fsync can report success for lost pages (fsyncgate),
    so the log refuses every write until the index is reopened and recovered."""


class ApplyFailedError(LogPoisonedError):
    """A write reached the log (durable) but applying it to memory failed, so memory no longer
    matches what replaying the log rebuilds. The index refuses every write (and flush, compact,
    train) until it is reopened; reads go on over the memory as it is. Reopening replays the
    record: the write that raised this is then present."""


class CorruptionError(LsmvecError):
    """Stored bytes are damaged or were tampered with. Carries the file and, where known, the
    byte offset of the damage."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.path = str(path) if path is not None else None
        self.offset = offset
        where = ""
        if self.path is not None:
            where = f" [file {self.path}" + (f", offset {offset}" if offset is not None else "") + "]"
        super().__init__(message + where)


def storage_error_from(exc: OSError, what: str) -> StorageError:
    """Wrap an OSError as the typed error a user can act on (full disk vs anything else)."""
    cls = StorageFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    err = cls(exc.errno or 0, f"{what}: {exc.strerror or exc}")
    err.__cause__ = exc
    return err
