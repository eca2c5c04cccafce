"""Background work (flushes, merges, train/compact/flush asked for) runs at lowered CPU priority
on Linux, in threads of its own, so it yields the cores to the application's threads."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lsmvec.compaction import compactor
from lsmvec.compaction.compactor import run_in_background_thread
from lsmvec import Client, generate_key
from lsmvec.db import jobs, maintenance

from conftest import random_vectors

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def my_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_run_in_background_thread_lowers_only_its_own_thread(monkeypatch) -> None:
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", "7")
    before = my_nice()
    seen = run_in_background_thread(lambda: (threading.get_ident(), my_nice()))
    assert seen[0] != threading.get_ident()
    assert seen[1] == min(19, before + 7)
    assert my_nice() == before  # the caller's thread keeps its priority


def test_run_in_background_thread_returns_and_raises_like_a_call(monkeypatch) -> None:
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", "5")
    assert run_in_background_thread(lambda: 42) == 42

    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_in_background_thread(fail)


def test_nice_zero_runs_in_the_callers_thread(monkeypatch) -> None:
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", "0")
    assert run_in_background_thread(threading.get_ident) == threading.get_ident()
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", "not a number")
    assert compactor.background_nice() == compactor.DEFAULT_BACKGROUND_NICE


@pytest.mark.parametrize("nice", ["10", "0"])
def test_index_maintenance_runs_at_the_background_priority(tmp_path: Path, monkeypatch,
                                                           nice: str) -> None:
    """flush() and train() from the caller, and the background flusher and merger threads,
    all do their work at caller's nice + LSMVEC_BACKGROUND_NICE."""
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", nice)
    base = my_nice()
    seen: dict[str, set[int]] = {"flush": set(), "merge": set()}
    real_flush, real_merge = jobs.flush_oldest, jobs.merge_segments

    def flush_oldest(core, *args, **kwargs):
        seen["flush"].add(my_nice())
        return real_flush(core, *args, **kwargs)

    def merge_segments(core, *args, **kwargs):
        seen["merge"].add(my_nice())
        return real_merge(core, *args, **kwargs)

    for module in (jobs, maintenance):  # train() merges through jobs, the threads through maintenance
        monkeypatch.setattr(module, "flush_oldest", flush_oldest)
        monkeypatch.setattr(module, "merge_segments", merge_segments)
    rng = np.random.default_rng(1)
    with Client(tmp_path) as client:
        index = client.create_index("p", generate_key(), dimension=8,
                                    memtable_bytes=4096)
        for i in range(40):  # small memtables: the background flusher and merger run
            index.upsert(ids=[f"{i}-{j}" for j in range(20)], vectors=random_vectors(rng, 20, 8))
        index.flush()
        index.train()
        assert index.get_num_vectors() == 800
    want = min(19, base + int(nice))
    assert seen["flush"] == {want} and seen["merge"] == {want}, seen
    assert my_nice() == base


def test_train_trains_on_every_core_and_background_merges_on_one(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The thread count is passed down as an argument: train() (the caller waits) asks for every
    usable core, the background merger's merges for one (they run at lowered priority too)."""
    monkeypatch.setattr(compactor, "usable_cores", lambda: 3)
    seen: list[tuple[bool, int]] = []
    real_merge = jobs.merge_segments

    def merge_segments(core, seg_ids, **kwargs):
        budget = kwargs.get("budget", compactor.BACKGROUND)
        seen.append((seg_ids is None, budget.training_threads))
        assert budget.caller_waits is (seg_ids is None)
        return real_merge(core, seg_ids, **kwargs)

    for module in (jobs, maintenance):
        monkeypatch.setattr(module, "merge_segments", merge_segments)
    rng = np.random.default_rng(2)
    with Client(tmp_path) as client:
        index = client.create_index("t", generate_key(), dimension=8, memtable_bytes=4096)
        for i in range(40):
            index.upsert(ids=[f"{i}-{j}" for j in range(20)], vectors=random_vectors(rng, 20, 8))
        index.flush()
        index.train()
        assert index.get_num_vectors() == 800
    assert (True, 3) in seen  # train(): every segment, every core
    assert {threads for everything, threads in seen if not everything} <= {1}
    assert [s for s in seen if s[0]] == [(True, 3)]


def test_train_searcher_passes_the_thread_count_to_scann(monkeypatch) -> None:
    from lsmvec.compaction import scann_assets
    from lsmvec.compaction.scann_params import choose_params
    seen: list[int] = []

    class Builder:
        def __getattr__(self, name):
            if name == "set_n_training_threads":
                return lambda n: seen.append(n) or self
            if name == "build":
                return lambda: "searcher"
            return lambda *a, **k: self

    monkeypatch.setattr(scann_assets.scann_ops_pybind, "builder", lambda *a, **k: Builder())
    params = choose_params(30_000, 8, "euclidean")
    vectors = np.zeros((30_000, 8), np.float32)
    assert scann_assets.train_searcher(vectors, params, 5) == "searcher"
    assert scann_assets.train_searcher(vectors, params, 1) == "searcher"
    assert seen == [5, 1]
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError):
            scann_assets.train_searcher(vectors, params, bad)
    assert seen == [5, 1]
