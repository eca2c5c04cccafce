"""The index key: subkeys, AEAD sealing, keyed id hashing and the key-check value.

Every subkey is HKDF-SHA256 of the 32-byte index key, salted with the index's random uuid, one
per purpose, so a leak of one (say, the id-hash key through a timing side channel) reveals nothing
of the others, and two indexes under the same key share no subkey. The index key itself is held
only inside this object and is never written, logged or shown in a repr.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lsmvec.errors import CorruptionError, InvalidKeyError, InvalidTypeError

KEY_BYTES = 32
NONCE_BYTES = 12
ID_HASH_BYTES = 16
_INFO = "lsmvec/v1/"


def generate_key() -> bytes:
    """32 random bytes from the OS CSPRNG: a fresh index key."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(index_key: object) -> bytes:
    """Return the key as bytes. Raises InvalidTypeError / InvalidKeyError (never echoing it)."""
    if isinstance(index_key, (bytearray, memoryview)):
        index_key = bytes(index_key)
    if not isinstance(index_key, bytes):
        raise InvalidTypeError(
            f"index_key must be 32 bytes (bytes, bytearray or memoryview), got {type(index_key).__name__}")
    if len(index_key) != KEY_BYTES:
        raise InvalidKeyError(f"index_key must be exactly {KEY_BYTES} bytes, got {len(index_key)} bytes")
    return index_key


def _hkdf(key: bytes, salt: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt,
                info=(_INFO + purpose).encode()).derive(key)


def key_check_value(index_key: bytes, uuid: bytes) -> bytes:
    """A one-way fingerprint of the key, stored in CONFIG so a wrong key is refused up front."""
    return _hkdf(index_key, uuid, "key-check")


_SMALL_SEAL = 64 << 10
"""Below this many bytes, `seal_parts` joins the parts (a copy this small costs less than
setting up a streaming GCM context: 3 vs 8 us for a 15 KB record)."""


class Aead:
    """AES-256-GCM with a random 96-bit nonce in front of each ciphertext.

    Random nonces are safe far past any index's record count (2^32 seals per key keeps the
    collision chance below 2^-32). Associated data binds each ciphertext to its place.
    """

    __slots__ = ("_gcm", "_key", "_where")

    def __init__(self, key: bytes, where: str):
        self._gcm = AESGCM(key)
        self._key = key
        self._where = where

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._gcm.encrypt(nonce, bytes(plaintext), aad)

    def seal_many(self, plaintexts: list[bytes], aads: list[bytes]) -> list[bytes]:
        """`seal` of each plaintext with its associated data; the nonces drawn in one
        os.urandom call (a flush seals one value per item: 1.45 -> 0.96 us a value)."""
        nonces = os.urandom(NONCE_BYTES * len(plaintexts))
        encrypt = self._gcm.encrypt
        out = []
        for i, (plaintext, aad) in enumerate(zip(plaintexts, aads)):
            nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
            out.append(nonce + encrypt(nonce, plaintext, aad))
        return out

    def seal_parts(self, parts: list, aad: bytes) -> bytearray | memoryview:
        """`seal` of the concatenation of `parts` (buffers), without making it: GCM runs over
        each part straight into one output buffer (a 15 MB batch: one copy, not three). A
        streamed seal returns a view of an uninitialised array: a bytearray of that size is
        zero-filled first (a 1.5 MB memset per 1000 x 384 upsert, for bytes GCM overwrites)."""
        nonce = os.urandom(NONCE_BYTES)
        views = [memoryview(part).cast("B") for part in parts]
        total = sum(view.nbytes for view in views)
        if total <= _SMALL_SEAL:  # a one-shot seal of the joined parts is cheaper than a stream
            out = bytearray(nonce)
            out += self._gcm.encrypt(nonce, b"".join(views), aad)
            return out
        target = memoryview(np.empty(NONCE_BYTES + total + 16 + 15, np.uint8))  # +15: update_into's slack
        target[:NONCE_BYTES] = nonce
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        pos = NONCE_BYTES
        for view in views:
            pos += encryptor.update_into(view, target[pos:pos + view.nbytes + 15])
        encryptor.finalize()
        target[pos:pos + 16] = encryptor.tag
        return target[:pos + 16]

    def open(self, sealed: bytes | memoryview, aad: bytes, path: str | None = None,
             offset: int | None = None) -> bytes:
        """Raises CorruptionError (naming `path`) when the bytes were changed, moved or forged."""
        sealed = bytes(sealed)
        if len(sealed) < NONCE_BYTES + 16:
            raise CorruptionError(f"{self._where}: sealed value too short", path, offset)
        try:
            return self._gcm.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CorruptionError(f"{self._where}: authentication failed (damaged or tampered)",
                                  path, offset) from None

    def __repr__(self) -> str:
        return f"<Aead {self._where}>"

    def __reduce__(self):  # never let a key ride along in a pickle
        raise TypeError("key material cannot be pickled")


ID_HASHES = ("hmac-sha256", "blake2b")
"""Keyed id hashes, both truncated / sized to ID_HASH_BYTES: HMAC-SHA256 (indexes of format
1) and keyed BLAKE2b (format 2: a PRF by design, 0.5 against 2.3 us an id here -- a flush
hashes every id it writes, so it was a fifth of a flushed row's cost)."""


class IndexCipher:
    """All key material of one open index, derived once at open. `id_hash`: one of ID_HASHES,
    fixed by the index's format (disk/config.py)."""

    def __init__(self, index_key: bytes, uuid: bytes, id_hash: str = "blake2b"):
        if id_hash not in ID_HASHES:
            raise ValueError(f"unknown id hash {id_hash!r}")
        self.uuid = uuid
        self.wal = Aead(_hkdf(index_key, uuid, "wal"), "wal record")
        self.store = Aead(_hkdf(index_key, uuid, "store"), "store value")
        self.segment_key = _hkdf(index_key, uuid, "segment")
        # keyed once; each id hash copies the keyed state (half the cost of a new one per id)
        id_key = _hkdf(index_key, uuid, "id-hash")
        self._id_mac = (hmac.new(id_key, digestmod=hashlib.sha256) if id_hash == "hmac-sha256"
                        else hashlib.blake2b(key=id_key, digest_size=ID_HASH_BYTES))
        self._config_key = _hkdf(index_key, uuid, "config-mac")
        # iter_items cursors (db/iteration.py): handed to callers, so a subkey of their own
        self.cursor = Aead(_hkdf(index_key, uuid, "cursor"), "iteration cursor")

    def id_hash(self, item_id: str) -> bytes:
        """Keyed hash of an id: the LMDB key, so ids never appear in plain text on disk."""
        mac = self._id_mac.copy()
        mac.update(item_id.encode("utf-8", "surrogatepass"))
        return mac.digest()[:ID_HASH_BYTES]  # (BLAKE2b's is that size already)

    def config_mac(self, canonical: bytes) -> bytes:
        return hmac.new(self._config_key, canonical, hashlib.sha256).digest()

    def segment_context(self, segment_id: int, file_name: str) -> bytes:
        return b"|".join((self.uuid, b"seg", str(segment_id).encode(), file_name.encode()))

    def __repr__(self) -> str:
        return "<IndexCipher>"

    def __reduce__(self):
        raise TypeError("key material cannot be pickled")
