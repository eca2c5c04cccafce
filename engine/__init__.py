"""lsmvec: an embedded, log-structured, encrypted vector store (sync and async faces)."""
from lsmvec.aio import AsyncClient, AsyncIndex
from lsmvec.client import Client
from lsmvec.disk.crypto import generate_key
from lsmvec.db.iteration import ItemBatch
from lsmvec.index import Index
from lsmvec import errors
from lsmvec.errors import (ClosedError, CorruptionError, DimensionMismatchError, IndexExistsError,
                     IndexLockedError, IndexNotFoundError, InvalidArgumentError, InvalidTypeError,
                     LsmvecError, StorageError, StorageFullError, WrongKeyError)

__all__ = [
    "Client", "AsyncClient", "Index", "AsyncIndex", "ItemBatch", "generate_key", "errors",
    "LsmvecError", "InvalidArgumentError", "InvalidTypeError", "DimensionMismatchError",
    "IndexExistsError", "IndexNotFoundError", "IndexLockedError", "WrongKeyError",
    "ClosedError", "CorruptionError", "StorageError", "StorageFullError",
]
