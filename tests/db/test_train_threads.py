"""How many threads ScaNN's training gets, recorded where it is asked for (train_searcher): an
explicit train() -- the caller waits -- every usable core; merges the policy picks (the
background merger's, and compact()'s) one."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lsmvec import Client, generate_key
from lsmvec.compaction import compactor, segment_build
from lsmvec.compaction.scann_params import BRUTE_FORCE_MAX_ROWS


def test_train_searcher_gets_every_core_for_train_and_one_for_merges(tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setattr(compactor, "usable_cores", lambda: 3)
    real = segment_build.train_searcher
    seen: list[tuple[int, int]] = []

    def train_searcher(vectors, params, training_threads):
        seen.append((vectors.shape[0], training_threads))
        return real(vectors, params, training_threads)

    monkeypatch.setattr(segment_build, "train_searcher", train_searcher)
    rng = np.random.default_rng(5)
    per_flush = BRUTE_FORCE_MAX_ROWS // 4 + 500  # four of them merge into a trained segment
    dim = 8
    with Client(tmp_path) as client:
        index = client.create_index("t", generate_key(), dimension=dim,
                                    background_compaction=False)
        for batch in range(4):
            rows = rng.standard_normal((per_flush, dim), dtype=np.float32)
            index.upsert(ids=[f"{batch}-{i}" for i in range(per_flush)], vectors=rows)
            index.flush()
        assert seen == []  # flushes are exact: no training
        index.compact()  # the policy's merge of the four: what the background merger runs
        assert seen == [(4 * per_flush, 1)]
        index.upsert(ids=["extra"], vectors=rng.standard_normal((1, dim), dtype=np.float32))
        index.train()
        assert seen == [(4 * per_flush, 1), (4 * per_flush + 1, 3)]
        assert index.get_num_vectors() == 4 * per_flush + 1
