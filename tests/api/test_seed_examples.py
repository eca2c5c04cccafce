"""Every example of the seed document (seed/000_a7c836374a5e930b.txt), run unchanged but for the
setup lines, then checked: the items are there with the right vector/contents/metadata (get)
and are found by query. The seed's examples use dimension 3, except "Upsert with items", which
uses dimension 4: that one gets its own index."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import by_id, vector_list


def _assert_vector(item: dict, expected: list[float]) -> None:
    np.testing.assert_allclose(vector_list(item["vector"]),
                               np.asarray(expected, dtype=np.float32), rtol=1e-6, atol=1e-7)


@pytest.fixture
def seed_index_dim3(client, key):
    """Setup: 'Initial configuration already done...' with dimension 3, then the seed's own
    load_index line, verbatim."""
    index_name, index_key = "seed_dim3", key
    client.create_index(index_name, index_key, dimension=3).close()
    # Load Index
    index = client.load_index(index_name=index_name, index_key=index_key)
    return index


@pytest.fixture
def seed_index_dim4(client, key):
    index_name, index_key = "seed_dim4", key
    client.create_index(index_name, index_key, dimension=4).close()
    # Load Index
    index = client.load_index(index_name=index_name, index_key=index_key)
    return index


def test_seed_single_upsert(seed_index_dim3):
    index = seed_index_dim3
    # Single upsert (wrapped in a list)
    index.upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3]}])

    assert index.list_ids() == ["item_1"]
    assert index.get_num_vectors() == 1
    [item] = index.get(["item_1"])
    assert item["id"] == "item_1"
    _assert_vector(item, [0.1, 0.2, 0.3])
    hits = index.query(query_vectors=[0.1, 0.2, 0.3], top_k=1)
    assert [h["id"] for h in hits] == ["item_1"]
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-6)


def test_seed_upsert_with_metadata(seed_index_dim3):
    index = seed_index_dim3
    index.upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3]}])
    # Upsert with metadata
    index.upsert([
      {"id": "item_1",
       "vector": [0.1, 0.2, 0.3],
       "metadata": {"type": "dog", "temperament": "good boy"}
      }
    ])

    assert index.get_num_vectors() == 1  # the same id was overwritten, not added
    [item] = index.get(["item_1"], include=["metadata"])
    assert item["metadata"] == {"type": "dog", "temperament": "good boy"}
    hits = index.query(query_vectors=[0.1, 0.2, 0.3], top_k=5, filters={"type": "dog"},
                       include=["distance", "metadata"])
    assert [h["id"] for h in hits] == ["item_1"]
    assert hits[0]["metadata"] == {"type": "dog", "temperament": "good boy"}
    assert index.query(query_vectors=[0.1, 0.2, 0.3], filters={"type": "cat"}) == []


def test_seed_batch_upsert(seed_index_dim3):
    index = seed_index_dim3
    index.upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3],
                   "metadata": {"type": "dog", "temperament": "good boy"}}])
    # Batch upsert
    index.upsert([
        {"id": "item_1", "vector": [0.1, 0.2, 0.3]},
        {"id": "item_2", "vector": [0.4, 0.5, 0.6]}
    ])

    assert sorted(index.list_ids()) == ["item_1", "item_2"]
    assert index.get_num_vectors() == 2
    items = by_id(index.get(["item_1", "item_2"]))
    _assert_vector(items["item_1"], [0.1, 0.2, 0.3])
    _assert_vector(items["item_2"], [0.4, 0.5, 0.6])
    # An overwrite replaces metadata as a whole: item_1 no longer carries type=dog.
    assert items["item_1"].get("metadata") in (None, {})
    assert index.query(query_vectors=[0.1, 0.2, 0.3], filters={"type": "dog"}) == []
    hits = index.query(query_vectors=[0.4, 0.5, 0.6], top_k=10)
    assert [h["id"] for h in hits] == ["item_2", "item_1"]
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert hits[1]["distance"] == pytest.approx(math.sqrt(3 * 0.3 ** 2), rel=1e-5)


def test_seed_upsert_with_items_contents_dim4(seed_index_dim4):
    index = seed_index_dim4
    # Upsert with items
    index.upsert([
        {"id": "item_1", "vector": [0.1, 0.1, 0.1, 0.1], "contents": b'item_contents_here...'}, # Bytes
        {"id": "item_2", "vector": [0.2, 0.2, 0.2, 0.2], "contents": "item_contents_here..."} # Text
    ])

    items = by_id(index.get(["item_1", "item_2"]))
    assert items["item_1"]["contents"] == b"item_contents_here..."
    assert items["item_2"]["contents"] == b"item_contents_here..."  # str comes back as bytes
    assert isinstance(items["item_2"]["contents"], bytes)
    _assert_vector(items["item_1"], [0.1] * 4)
    _assert_vector(items["item_2"], [0.2] * 4)
    hits = index.query(query_vectors=[0.2, 0.2, 0.2, 0.2], top_k=2, include=["distance", "contents"])
    assert [h["id"] for h in hits] == ["item_2", "item_1"]
    assert hits[1]["distance"] == pytest.approx(0.2, rel=1e-5)
    assert [h["contents"] for h in hits] == [b"item_contents_here..."] * 2


def test_seed_tuple_form(seed_index_dim3):
    """'You can pass the id and vector fields as tuples' (the seed's prose; api.md's example)."""
    index = seed_index_dim3
    index.upsert([("item_1", [0.1, 0.2, 0.3]), ("item_2", [0.4, 0.5, 0.6])])

    items = by_id(index.get(["item_1", "item_2"]))
    _assert_vector(items["item_1"], [0.1, 0.2, 0.3])
    _assert_vector(items["item_2"], [0.4, 0.5, 0.6])
    hits = index.query(query_vectors=[0.1, 0.2, 0.3], top_k=2)
    assert [h["id"] for h in hits] == ["item_1", "item_2"]


def test_seed_numpy_overload(seed_index_dim3):
    index = seed_index_dim3
    # NumPy-based upsert with two arrays
    vectors = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=float)  # 2 vectors of dimension 3
    ids = np.array([101, 102], dtype=int)  # Unique integer IDs for each vector

    index.upsert(vectors=vectors, ids=ids)

    # Integer ids are stored as their decimal string.
    assert sorted(index.list_ids()) == ["101", "102"]
    items = by_id(index.get(["101", "102"]))
    _assert_vector(items["101"], [0.1, 0.2, 0.3])
    _assert_vector(items["102"], [0.4, 0.5, 0.6])
    hits = index.query(query_vectors=np.array([0.4, 0.5, 0.6]), top_k=2)
    assert [h["id"] for h in hits] == ["102", "101"]


def test_seed_numpy_overload_positional(seed_index_dim3):
    """api.md: 'positional (ids, vectors) too'."""
    index = seed_index_dim3
    index.upsert(np.array([101, 102]), np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    assert sorted(index.list_ids()) == ["101", "102"]
    hits = index.query(query_vectors=[0.1, 0.2, 0.3], top_k=1)
    assert [h["id"] for h in hits] == ["101"]


def test_seed_examples_in_sequence(seed_index_dim3):
    """The dimension-3 examples run one after another on one index, as the page reads."""
    index = seed_index_dim3
    index.upsert([{"id": "item_1", "vector": [0.1, 0.2, 0.3]}])
    index.upsert([
      {"id": "item_1",
       "vector": [0.1, 0.2, 0.3],
       "metadata": {"type": "dog", "temperament": "good boy"}
      }
    ])
    index.upsert([
        {"id": "item_1", "vector": [0.1, 0.2, 0.3]},
        {"id": "item_2", "vector": [0.4, 0.5, 0.6]}
    ])
    vectors = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=float)
    ids = np.array([101, 102], dtype=int)
    index.upsert(vectors=vectors, ids=ids)

    assert sorted(index.list_ids()) == ["101", "102", "item_1", "item_2"]
    assert index.get_num_vectors() == 4
    hits = index.query(query_vectors=[0.1, 0.2, 0.3], top_k=4)
    # item_1 and 101 share a vector (distance 0), as do item_2 and 102.
    assert {h["id"] for h in hits[:2]} == {"item_1", "101"}
    assert {h["id"] for h in hits[2:]} == {"item_2", "102"}
    assert [h["distance"] for h in hits[:2]] == pytest.approx([0.0, 0.0], abs=1e-6)
