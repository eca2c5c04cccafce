"""Reads stay correct while writes, flushes and merges run concurrently.

Two reader threads query and get without pause while a writer upserts, overwrites and deletes,
a maintenance thread calls flush()/compact() in a loop, and background compaction (on, with a
tiny memtable) flushes and merges on its own. The readers check, on every call:

- no error of any kind, no id twice in a result;
- every "stable" id (written before the threads start, never touched again) is the top-1 answer
  to its own vector, at distance ~0 (all data is small, so every source is exact), with its
  metadata, and `get` returns its exact vector;
- an id whose delete had returned before the call started is never returned (read-your-writes
  across threads; deleted ids never come back through a flush or a merge).

After the threads stop, and again after reopen, the live set equals the writer's model and the
deleted ids are gone for good.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import assert_matches_oracle, vector_list
from lsmvec import Client, generate_key

DIM = 8
N_STABLE = 200
N_CHURN = 600
RUN_SECONDS = 5.0
METRIC = "euclidean"


class Shared:
    """State the threads share: errors, and the ids whose delete has returned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.gone: set[str] = set()
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self.stop.set()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def gone_now(self) -> frozenset[str]:
        with self.lock:
            return frozenset(self.gone)


def guarded(shared: Shared, name: str, body: Callable[[], None]) -> Callable[[], None]:
    """Run `body` until stop; any exception is recorded (and stops everyone)."""
    def run() -> None:
        try:
            while not shared.stop.is_set():
                body()
        except BaseException as exc:  # noqa: BLE001 - every error is a test failure here
            shared.fail(f"{name}: {exc.__class__.__name__}: {exc}")
    return run


def check_no_duplicates(results: list[dict], where: str) -> None:
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)), f"{where}: duplicate ids {ids}"


def test_queries_stay_correct_under_writes_flushes_and_merges(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Maintenance at normal priority: against three busy threads on two cores, lowered-priority
    # flushes and merges (the default) would run too rarely to interleave with them much.
    monkeypatch.setenv("LSMVEC_BACKGROUND_NICE", "0")
    rng = np.random.default_rng(42)
    stable_ids = [f"stable-{i}" for i in range(N_STABLE)]
    stable_vecs = rng.standard_normal((N_STABLE, DIM)).astype(np.float32)
    churn_ids = [f"churn-{i}" for i in range(N_CHURN)]
    key = generate_key()
    client = Client(tmp_path)
    index = client.create_index("conc", key, dimension=DIM, metric=METRIC,
                                memtable_bytes=20_000, background_compaction=True)
    index.upsert([{"id": i, "vector": v, "metadata": {"stable": n}}
                  for n, (i, v) in enumerate(zip(stable_ids, stable_vecs))])
    model: dict[str, np.ndarray] = dict(zip(stable_ids, stable_vecs))
    shared = Shared()
    writer_rng = random.Random(1)
    vec_rng = np.random.default_rng(2)
    # Ids the writer may still write; a deleted one leaves this list for good.
    writable = list(churn_ids)

    def write_once() -> None:
        roll = writer_rng.random()
        if roll < 0.7 or len(writable) < 50:
            batch = writer_rng.sample(writable, min(len(writable), writer_rng.randint(1, 40)))
            vecs = vec_rng.standard_normal((len(batch), DIM)).astype(np.float32)
            index.upsert([{"id": i, "vector": v, "contents": f"c-{i}"} for i, v in zip(batch, vecs)])
            model.update(zip(batch, vecs))
            shared.count("upserts")
        else:
            victims = writer_rng.sample(writable, writer_rng.randint(1, 5))
            for victim in victims:
                writable.remove(victim)
            index.delete(victims + ["never-existed"])
            for victim in victims:
                model.pop(victim, None)
            with shared.lock:
                shared.gone.update(victims)
            shared.count("deletes")

    def maintain_once() -> None:
        index.flush() if writer_rng.random() < 0.5 else index.compact()
        shared.count("maintenance")

    def read_once(reader_rng: random.Random) -> None:
        gone = shared.gone_now()
        j = reader_rng.randrange(N_STABLE)
        with_meta = reader_rng.random() < 0.3
        top = index.query(stable_vecs[j], top_k=1,
                          include=["distance", "metadata"] if with_meta else ["distance"])
        assert len(top) == 1 and top[0]["id"] == stable_ids[j], (stable_ids[j], top)
        assert top[0]["distance"] <= 1e-5, top
        if with_meta:
            assert top[0]["metadata"] == {"stable": j}, top
        q = np.asarray([reader_rng.gauss(0, 1) for _ in range(DIM)], np.float32)
        results = index.query(q, top_k=reader_rng.randint(1, 30))
        check_no_duplicates(results, "random query")
        assert not gone & {r["id"] for r in results}, ("deleted id returned",
                                                        gone & {r["id"] for r in results})
        assert all(np.diff([r["distance"] for r in results]) >= 0), results
        picks = reader_rng.sample(stable_ids, 3) + reader_rng.sample(sorted(gone), min(3, len(gone)))
        got = index.get(picks)
        assert [g["id"] for g in got] == picks[:3], ([g["id"] for g in got], picks)
        for g in got:
            n = int(g["id"].split("-")[1])
            assert vector_list(g["vector"]) == stable_vecs[n].astype(np.float64).tolist(), g["id"]
        shared.count("reads")

    threads = [
        threading.Thread(target=guarded(shared, "writer", write_once), name="writer"),
        threading.Thread(target=guarded(shared, "maintenance", maintain_once), name="maint"),
        *[threading.Thread(target=guarded(shared, f"reader-{r}",
                                          lambda rr=random.Random(100 + r): read_once(rr)),
                           name=f"reader-{r}") for r in range(2)],
    ]
    try:
        for t in threads:
            t.start()
        shared.stop.wait(RUN_SECONDS)
    finally:
        shared.stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not shared.errors, "\n".join(shared.errors[:5])
    # The run really interleaved: every role made progress.
    assert shared.counts.get("reads", 0) > 10 and shared.counts.get("maintenance", 0) > 2, shared.counts
    assert shared.counts.get("upserts", 0) > 10 and shared.counts.get("deletes", 0) > 2, shared.counts

    def check_final(idx: Any, where: str) -> None:
        assert idx.get_num_vectors() == len(model), where
        assert sorted(idx.list_ids()) == sorted(model), where
        gone = sorted(shared.gone)
        assert idx.get(gone) == [], where
        assert not set(gone) & set(idx.list_ids()), where
        for j in range(0, N_STABLE, 7):
            assert idx.query(stable_vecs[j], top_k=1)[0]["id"] == stable_ids[j], where
        qs = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32)
        for q in qs:
            assert_matches_oracle(idx.query(q, top_k=25), model, q, METRIC, 25, context=where)
        stats = idx.stats()
        assert stats["background_error"] is None, stats["background_error"]
        assert all(s["kind"] == "brute" for s in stats["segments"]), stats["segments"]

    try:
        check_final(index, "after the run")
        index.compact()
        check_final(index, "after a final compact")
    finally:
        client.close()
    client = Client(tmp_path)
    try:
        check_final(client.load_index("conc", key), "after reopen")
    finally:
        client.close()
