"""Hostile bytes: forged payloads with huge declared lengths or deep nesting are refused as
CorruptionError quickly and with bounded memory; no pickle is ever loaded."""
from __future__ import annotations

import struct
import tracemalloc

import msgpack
import numpy as np
import pytest

from lsmvec.disk import records
from lsmvec.errors import CorruptionError

_U32 = struct.Struct("<I")


def _huge_array_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)  # msgpack array32 declaring n elements, none present


def _deep(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"  # [[[...[nil]...]]]


HOSTILE_HEADERS = {
    "array declares 4G elements": _huge_array_header(0xFFFFFFFF),
    "map declares 4G pairs": b"\xdf" + struct.pack(">I", 0xFFFFFFFF),
    "bin declares 4 GiB": b"\xc6" + struct.pack(">I", 0xFFFFFFFF),
    "str declares 4 GiB": b"\xdb" + struct.pack(">I", 0xFFFFFFFF),
    "100k levels of nesting": _deep(100_000),
    "ext type (no custom types)": msgpack.packb(msgpack.ExtType(5, b"x")),
    "truncated map": b"\x83\xa3ids",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_forged_upsert_header_is_refused_with_bounded_memory(name: str) -> None:
    head = HOSTILE_HEADERS[name]
    payload = _U32.pack(len(head)) + head
    tracemalloc.start()
    try:
        with pytest.raises(CorruptionError):
            records.decode_upsert(payload, "forged.log", 21)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{name}: {peak} bytes allocated to refuse it"


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_forged_delete_payload_is_refused(name: str) -> None:
    with pytest.raises(CorruptionError):
        records.decode_delete(HOSTILE_HEADERS[name], "forged.log", 21)


def test_header_length_beyond_the_record_is_refused() -> None:
    good = b"".join(records.encode_upsert(["a"], np.ones((1, 4), np.float32), [None], [None]))
    forged = _U32.pack(0x7FFFFFFF) + good[4:]
    with pytest.raises(CorruptionError, match="overruns"):
        records.decode_upsert(forged)


def test_vector_block_that_disagrees_with_the_ids_is_refused() -> None:
    good = b"".join(records.encode_upsert(["a", "b"], np.ones((2, 4), np.float32), [None, None],
                                          [None, None]))
    with pytest.raises(CorruptionError):
        records.decode_upsert(good[:-4])  # one float short
    round_trip = records.decode_upsert(good)
    assert round_trip.ids == ["a", "b"] and round_trip.vectors.shape == (2, 4)


def test_a_planted_pickle_in_the_index_folder_is_never_loaded(tmp_path) -> None:
    """A pickle planted where lsmvec keeps files is ignored or refused, never unpickled."""
    import pickle

    from lsmvec import Client, generate_key

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    key = generate_key()
    with Client(tmp_path) as client:
        ix = client.create_index("p", key, dimension=4)
        ix.upsert([("a", [1.0, 2.0, 3.0, 4.0])])
    for where in ("p/scann_docids.pkl", "p/wal/x.pkl", "p/store/x.pkl", "p/segments/x.pkl"):
        target = tmp_path / where
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pickle.dumps(Boom()))
    with Client(tmp_path) as client:  # would exit the test process if anything unpickled
        assert client.load_index("p", key).get(["a"])[0]["id"] == "a"
