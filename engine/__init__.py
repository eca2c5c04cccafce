"""lsmvec: an embedded, log-structured, encrypted vector store (sync and async faces)."""
from .aio import AsyncClient, AsyncIndex
from .client import Client
from .crypto import generate_key
from .index import Index
from . import errors
from .errors import (ClosedError, CorruptionError, DimensionMismatchError, IndexExistsError,
                     IndexLockedError, IndexNotFoundError, InvalidArgumentError, InvalidTypeError,
                     LsmvecError, StorageError, StorageFullError, WrongKeyError)

__all__ = [
    "Client", "AsyncClient", "Index", "AsyncIndex", "generate_key", "errors",
    "LsmvecError", "InvalidArgumentError", "InvalidTypeError", "DimensionMismatchError",
    "IndexExistsError", "IndexNotFoundError", "IndexLockedError", "WrongKeyError",
    "ClosedError", "CorruptionError", "StorageError", "StorageFullError",
]
