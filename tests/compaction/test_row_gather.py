"""Blocked row gathers equal NumPy fancy indexing, across block edges and sources."""
from __future__ import annotations

import numpy as np
import pytest

import lsmvec.compaction.row_gather as row_gather
from lsmvec.compaction.row_gather import concat_rows, gather_rows, fresh_rows


@pytest.mark.parametrize("block_bytes", [1, 40, 4 << 20])
def test_gathers_equal_fancy_indexing(monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    monkeypatch.setattr(row_gather, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(block_bytes)
    a = rng.standard_normal((97, 5)).astype(np.float32)
    b = rng.standard_normal((13, 5)).astype(np.float32)
    ra = rng.integers(0, 97, 60)
    rb = np.array([12, 0, 0, 5])
    np.testing.assert_array_equal(gather_rows(a, ra), a[ra])
    np.testing.assert_array_equal(concat_rows([(a, ra), (b, rb)], 5), np.concatenate([a[ra], b[rb]]))
    assert concat_rows([(a, np.array([], np.int64))], 5).shape == (0, 5)


@pytest.mark.parametrize("bad", [[-1], [97], [0, 1000]])
def test_rows_out_of_range_are_refused(bad: list[int]) -> None:
    with pytest.raises(IndexError):
        gather_rows(np.zeros((97, 3), np.float32), np.array(bad))


@pytest.mark.parametrize("n,dim,dtype", [(10, 384, np.float32), (3000, 384, np.float32),
                                         (5000, 64, np.float16)])
def test_fresh_rows_is_a_writable_array_of_its_own(n: int, dim: int, dtype) -> None:
    """Below and above the plain-pages size: the shape and type asked for, writable, and
    holding what is written, independent of every other such array."""
    a, b = fresh_rows(n, dim, dtype), fresh_rows(n, dim, dtype)
    assert a.shape == (n, dim) and a.dtype == np.dtype(dtype) and a.flags.writeable
    assert a.flags.c_contiguous
    a[:] = 1
    b[:] = 2
    a[-1, -1] = 7
    assert (a[:-1] == 1).all() and a[-1, -1] == 7 and (b == 2).all()
    view = a[5:]
    del a
    assert view[-1, -1] == 7  # a view keeps the mapping alive
