"""Benchmark inputs: .npy and .fvecs files load to the vectors written (oracle: numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from lsmvec.tools.datasets import load_file, read_fvecs


def test_fvecs_round_trip(tmp_path) -> None:
    data = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    rows = np.hstack([np.full((50, 1), 7, np.int32).view(np.float32), data])
    path = tmp_path / "x.fvecs"
    rows.tofile(path)
    assert np.array_equal(read_fvecs(str(path)), data)
    train, queries, metric = load_file(str(path), 10)
    assert np.array_equal(train, data[:40]) and np.array_equal(queries, data[40:]) and metric is None


def test_npy_and_bad_inputs(tmp_path) -> None:
    data = np.arange(60, dtype=np.float64).reshape(20, 3)
    np.save(tmp_path / "x.npy", data)
    train, queries, _ = load_file(str(tmp_path / "x.npy"), 5)
    assert train.dtype == np.float32 and np.array_equal(queries, data[15:].astype(np.float32))
    (tmp_path / "bad.fvecs").write_bytes(np.array([3, 1, 2], np.int32).tobytes())
    with pytest.raises(ValueError):
        read_fvecs(str(tmp_path / "bad.fvecs"))
    with pytest.raises(SystemExit):
        load_file(str(tmp_path / "x.csv"), 5)


def test_ann_benchmarks_hdf5(tmp_path) -> None:
    """An ann-benchmarks file: "train" / "test" sets and a "distance" attribute."""
    import h5py  # in the test extra (lsmvec[bench] brings it for users)
    rng = np.random.default_rng(5)
    train = rng.standard_normal((300, 12)).astype(np.float32)
    test = rng.standard_normal((40, 12)).astype(np.float32)
    for distance, metric in (("angular", "cosine"), ("euclidean", "euclidean"), ("jaccard", None)):
        path = tmp_path / f"glove-{distance}.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("train", data=train.astype(np.float64))
            f.create_dataset("test", data=test)
            f.create_dataset("neighbors", data=np.zeros((40, 10), np.int32))
            f.attrs["distance"] = distance
        data, queries, got = load_file(str(path), 25)
        assert got == metric
        assert data.dtype == np.float32 and queries.dtype == np.float32
        np.testing.assert_array_equal(data, train)
        np.testing.assert_array_equal(queries, test[:25])
