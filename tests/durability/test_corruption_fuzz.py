"""Planted corruption never crashes the interpreter and is never returned as data.

Two pristine indexes are built once: "small" (three flushed segments with contents and metadata,
dead rows, and a log tail of unflushed upserts and deletes spread over several log files) and
"trained" (the same plus a 20 000-row ScaNN tree + AH segment). Each is copied while open, so its
log holds records a reopen must replay. Then >= 1000 cases each plant one corruption -- flipped
bits at random offsets, a truncation, or a zero-filled range -- in one file: a log file,
store/data.mdb, a segment file or CONFIG (plus, first, the shapes a crash on a non-journaling
file system leaves: files emptied or missing their last byte, the store cut at its meta pages).
The case plan is seeded; the bytes are not (index keys, uuids and nonces are random), so which
byte a given offset hits differs between runs. Cases run in CHILD processes (this module run as a
script), each case on a fresh copy: load_index, list_ids, get (every id of "small"; of
"trained" every id outside the big segment and a sample of it), four queries, verify(). A child
reports one JSON line per case; the parent classifies:

  CorruptionError      raised while opening or reading: detected
  WrongKeyError        accepted for CONFIG damage only (its key check is what was hit)
  ok_identical         the damage was in bytes nothing uses: every read equals the pristine one
  torn_tail_prefix     damage at the end of the last log file of a log that was never closed:
                       indistinguishable from a crash during a write, so dropping it is the
                       documented behaviour -- accepted only if the state equals the pristine
                       one minus a suffix of the unflushed ops
  verify_only          reads equal the pristine ones, verify() reports the damage
  wrong_data           a read returned data that differs from the pristine one (verify() may or
                       may not have flagged it afterwards): corruption returned as data
  other_error:<type>   any other exception
The parent asserts: no child died from a signal (an interpreter crash) or hung, no wrong_data,
no other_error, WrongKeyError only for CONFIG.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crash_worker as cw
import fault_worker as fw

pytestmark = pytest.mark.slow

INDEX = "fz"
DIM = 8
CASES = {"small": 950, "trained": 110}
CHILDREN = 2
CASE_TIMEOUT_S = 60
TRAINED_ROWS = 20_000
SAMPLE_EVERY = 97
"""Of the trained segment's rows ("x<n>"), get() checks every SAMPLE_EVERY-th; verify() reads
all of them (and every other item) in any case."""
CATEGORY_WEIGHTS = {"wal": 0.3, "store": 0.3, "segment": 0.3, "config": 0.1}
QUERIES = np.random.default_rng(42).standard_normal((3, DIM)).astype(np.float32)


# ----------------------------------------------------------------------------- reading an index

def _canonical(vector: Any, contents: Any, metadata: Any) -> list:
    vec = np.asarray(vector, dtype=np.float32).tobytes().hex()
    return [vec, contents.hex() if isinstance(contents, bytes) else contents, metadata or {}]


def _sampled(item_id: str) -> bool:
    return not (item_id.startswith("x") and int(item_id[1:]) % SAMPLE_EVERY)


def observe(index: Any) -> dict[str, Any]:
    """Everything the fuzz compares, JSON-ready: ids, count, (sampled) items, query results."""
    ids = sorted(index.list_ids())
    items = {it["id"]: _canonical(it["vector"], it.get("contents"), it.get("metadata"))
             for it in index.get([i for i in ids if _sampled(i)])}
    queries = [[[r["id"], round(r["distance"], 4)] for r in res]
               for res in index.query(QUERIES, top_k=10)]
    filtered = [[r["id"], round(r["distance"], 4)]
                for r in index.query(QUERIES[0], top_k=5, filters={"tag": "t1"})]
    return json.loads(json.dumps({"ids": ids, "count": index.get_num_vectors(), "items": items,
                                  "queries": queries, "filtered": filtered}))


def _model_snapshot(model: dict[str, fw.Value]) -> dict[str, Any]:
    """observe()'s ids / count / items of an oracle state (no queries)."""
    ids = sorted(model)
    items = {i: _canonical(np.frombuffer(model[i][0], np.float32), model[i][1], model[i][2])
             for i in ids if _sampled(i)}
    return json.loads(json.dumps({"ids": ids, "count": len(ids), "items": items}))


# ----------------------------------------------------------------------------- the pristine indexes

def _tagged(op: cw.Op, salt: int) -> cw.Op:
    """An upsert op with contents and filterable metadata on every item."""
    rng = np.random.default_rng(salt)
    vectors = rng.standard_normal((len(op.ids), DIM)).astype(np.float32)
    contents = tuple(f"text {salt}/{i}" if i % 3 else bytes([salt % 256, i % 256])
                     for i in range(len(op.ids)))
    metadata = tuple({"tag": f"t{(i + salt) % 3}", "i": i, "l": [1, "two"]} for i in range(len(op.ids)))
    return cw.Op("new", op.ids, vectors, contents, metadata, "dicts")


def _batch(prefix: str, n: int, salt: int) -> cw.Op:
    return _tagged(cw.Op("new", tuple(f"{prefix}-{i}" for i in range(n))), salt)


def build_pristine(folder: Path, key: bytes, trained: bool) -> dict[str, Any]:
    """Build one pristine index in `folder`/data (copied while open); returns what the
    children need to judge a case: the pristine reads, the states of the log tail's prefixes."""
    from lsmvec import Client
    live = folder / "live"
    with Client(live) as client:
        # space_amplification: no early flush under space pressure (engine/db/space.py) may
        # shorten the log tail the cases damage
        index = client.create_index(INDEX, key, dimension=DIM, memtable_bytes=1 << 20,
                                    background_compaction=False, wal_roll_bytes=4096,
                                    space_amplification=1000.0)
        if trained:
            rng = np.random.default_rng(7)
            index.upsert(ids=[f"x{i}" for i in range(TRAINED_ROWS)],
                         vectors=rng.standard_normal((TRAINED_ROWS, DIM)).astype(np.float32))
            index.train()
            assert index.stats()["segments"][0]["kind"] == "tree_ah"
        for b in range(3):
            cw.apply_op(index, _batch(f"s{b}", 150, b))
            index.flush()
        index.delete([f"s{b}-{i}" for b in range(3) for i in range(0, 150, 11)] + ["x5", "x97"])
        index.flush()
        before_tail = fw.read_state(index)
        tail = [_batch("w0", 40, 10), cw.Op("delete", ("s0-1", "w0-3", "s1-4", "nope")),
                _batch("w1", 30, 11), _tagged(cw.Op("new", ("s2-2", "w0-5", "w1-1")), 12),
                _batch("w2", 35, 13), cw.Op("delete", ("w2-0", "s2-9")), _batch("w3", 20, 14)]
        for op in tail:
            cw.apply_op(index, op)
        wal_dir = live / INDEX / "wal"
        while max(wal_dir.glob("*.log")).stat().st_size == 0:  # the last file must hold records
            tail.append(_batch(f"w{len(tail)}", 3, len(tail)))
            cw.apply_op(index, tail[-1])
        assert index.stats()["wal_files"] >= 3
        shutil.copytree(live, folder / "data")  # what a crash leaves: the tail only in the log
    (folder / "data" / INDEX / "store" / "lock.mdb").unlink()
    states, model = [], dict(before_tail)
    for op in [None, *tail]:
        if op is not None:
            fw.apply_to_model(model, op)
        states.append(_model_snapshot(model))
    probe = folder / "probe"
    shutil.copytree(folder / "data", probe)
    with Client(probe) as client:
        index = client.load_index(INDEX, key)
        expected = observe(index)
        assert index.verify()["ok"]
    shutil.rmtree(probe)
    assert {k: expected[k] for k in ("ids", "count", "items")} == states[-1]
    wal = sorted((folder / "data" / INDEX / "wal").glob("*.log"))
    files = [str(p.relative_to(folder / "data")) for p in sorted((folder / "data" / INDEX).rglob("*"))
             if p.is_file() and p.name not in ("LOCK",)]
    return {"dir": str(folder / "data"), "key": key.hex(), "expected": expected,
            "prefixes": states, "last_wal": str(wal[-1].relative_to(folder / "data")),
            "files": {f: os.path.getsize(folder / "data" / f) for f in files}}


# ----------------------------------------------------------------------------- the cases

def category(rel: str) -> str | None:
    parts = Path(rel).parts
    if parts[-1] == "CONFIG":
        return "config"
    if parts[1] == "wal":
        return "wal"
    if parts[1] == "store":
        return "store" if parts[-1] == "data.mdb" else None
    return "segment" if parts[1] == "segments" else None


def plan_cases(flavour: str, files: dict[str, int], n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[str]] = {}
    for rel, size in files.items():
        cat = category(rel)
        if cat is not None and size > 0:
            by_cat.setdefault(cat, []).append(rel)
    cats = sorted(by_cat)
    weights = np.array([CATEGORY_WEIGHTS[c] for c in cats])
    # First the classic shapes a crash on a non-journaling file system leaves: a file emptied,
    # a file missing its last byte, the store cut at its meta pages.
    cases = [{"id": f"{flavour}-edge-{j}", "flavour": flavour, "file": rel, "category": cat,
              "kind": "truncate", "offset": offset}
             for j, (rel, cat, offset) in enumerate(
                 [(rel, "wal", cut) for rel in by_cat["wal"] for cut in (0, files[rel] - 1)]
                 + [(rel, "store", cut) for rel in by_cat["store"] for cut in (0, 4096, 8192)]
                 + [(rel, cat, 0) for cat in ("config", "segment") for rel in by_cat[cat][:3]])]
    for i in range(n - len(cases)):
        cat = cats[int(rng.choice(len(cats), p=weights / weights.sum()))]
        rel = by_cat[cat][int(rng.integers(len(by_cat[cat])))]
        size = files[rel]
        # A third of the offsets in the first 8 KiB: headers, LMDB's meta pages, first records.
        hi = min(size, 8192) if rng.random() < 0.33 else size
        offset = int(rng.integers(0, max(hi, 1)))
        kind = str(rng.choice(["flip", "truncate", "zero"], p=[0.5, 0.2, 0.3]))
        case = {"id": f"{flavour}-{i}", "flavour": flavour, "file": rel, "category": cat,
                "kind": kind, "offset": offset}
        if kind == "flip":  # 1-3 distinct bits within 4 bytes
            bits = {(min(offset + int(rng.integers(0, 4)), size - 1), int(rng.integers(8)))
                    for _ in range(int(rng.integers(1, 4)))}
            case["bits"] = sorted(bits)
        elif kind == "zero":
            case["length"] = int(rng.integers(1, min(4096, size - offset) + 1))
        cases.append(case)
    return cases


def plant(path: Path, case: dict[str, Any]) -> None:
    """Apply one case's damage to `path`, in place."""
    data = bytearray(path.read_bytes())
    if case["kind"] == "truncate":
        data = data[: case["offset"]]
    elif case["kind"] == "zero":
        data[case["offset"]: case["offset"] + case["length"]] = bytes(case["length"])
    else:
        for offset, bit in case["bits"]:
            if offset < len(data):
                data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- the child

def _is_prefix_state(snap: dict[str, Any], pristine: dict[str, Any], case: dict[str, Any]) -> bool:
    if case["file"] != pristine["last_wal"]:
        return False
    seen = {k: snap[k] for k in ("ids", "count", "items")}
    return any(seen == state for state in pristine["prefixes"])


def run_case(case: dict[str, Any], pristine: dict[str, Any], work: Path) -> dict[str, Any]:
    """Copy, corrupt, open, read, verify. Never raises: the outcome says what happened."""
    from lsmvec import Client
    from lsmvec.errors import CorruptionError, WrongKeyError
    dst = work / "case"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(pristine["dir"], dst)
    plant(dst / case["file"], case)
    result: dict[str, Any] = {"id": case["id"], "wrong_data": False}
    stage = "open"
    try:
        with Client(dst) as client:
            index = client.load_index(INDEX, bytes.fromhex(pristine["key"]))
            stage = "read"
            snap = observe(index)
            same = snap == pristine["expected"]
            prefix = not same and _is_prefix_state(snap, pristine, case)
            result["wrong_data"] = not same and not prefix
            stage = "verify"
            report = index.verify()
            stage = "close"
        if result["wrong_data"]:
            result["outcome"] = "wrong_data"
            result["detail"] = "verify flagged it" if not report["ok"] else "verify passed"
        elif not report["ok"]:
            result["outcome"] = "verify_only"
        else:
            result["outcome"] = "ok_identical" if same else "torn_tail_prefix"
    except CorruptionError as exc:
        result["outcome"] = "wrong_data" if result["wrong_data"] else "CorruptionError"
        result["detail"] = f"{stage}: {exc}"[:300]
    except WrongKeyError as exc:
        result["outcome"] = "wrong_data" if result["wrong_data"] else "WrongKeyError"
        result["detail"] = f"{stage}: {exc}"[:300]
    except Exception as exc:  # anything else is a finding: reported, not raised
        result["outcome"] = f"other_error:{type(exc).__name__}"
        result["detail"] = f"{stage}: {exc}"[:300]
    result["stage"] = stage
    return result


def child_main(argv: list[str]) -> int:
    """python test_corruption_fuzz.py PRISTINE_JSON CASES_JSON RESULTS_JSONL WORK_DIR"""
    pristine_file, cases_file, results_file, work = argv
    pristines = json.loads(Path(pristine_file).read_text())
    cases = json.loads(Path(cases_file).read_text())
    with open(results_file, "a", encoding="utf-8") as out:
        for case in cases:
            result = run_case(case, pristines[case["flavour"]], Path(work))
            out.write(json.dumps(result) + "\n")
            out.flush()
    return 0


# ----------------------------------------------------------------------------- the parent

def run_child_until_done(cases: list[dict[str, Any]], pristine_file: Path, lane: Path) -> list[dict]:
    """Run `cases` in children, restarting after a case that killed or hung one (that case is
    reported as interpreter_crash / hang)."""
    results: list[dict] = []
    lane.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while len(results) < len(cases):
        todo = cases[len(results):]
        cases_file, out_file = lane / f"cases{attempt}.json", lane / f"results{attempt}.jsonl"
        cases_file.write_text(json.dumps(todo))
        cmd = [sys.executable, __file__, str(pristine_file), str(cases_file), str(out_file),
               str(lane / "work")]
        with open(lane / f"stderr{attempt}", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            try:
                proc.wait(timeout=CASE_TIMEOUT_S * len(todo))
                hung = False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                hung = True
        done = [json.loads(line) for line in out_file.read_text().splitlines()] \
            if out_file.exists() else []
        results += done
        if len(results) < len(cases):
            culprit = cases[len(results)]
            outcome = "hang" if hung else (f"interpreter_crash:{signal.Signals(-proc.returncode).name}"
                                           if proc.returncode < 0 else f"child_exit:{proc.returncode}")
            tail = (lane / f"stderr{attempt}").read_text(errors="replace")[-500:]
            results.append({"id": culprit["id"], "outcome": outcome, "wrong_data": False,
                            "detail": tail})
        attempt += 1
    return results


@pytest.fixture(scope="module")
def pristine_file(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lsmvec import generate_key
    with fw.scratch(tmp_path_factory.mktemp("fuzz")) as root:
        pristines = {flavour: build_pristine(root / flavour, generate_key(), flavour == "trained")
                     for flavour in CASES}
        path = root / "pristine.json"
        path.write_text(json.dumps(pristines))
        yield path, pristines


def test_planted_corruption_is_detected_never_returned_never_a_crash(pristine_file,
                                                                    record_property: Any) -> None:
    path, pristines = pristine_file
    cases = [c for n, flavour in enumerate(CASES)
             for c in plan_cases(flavour, pristines[flavour]["files"], CASES[flavour], 900 + n)]
    by_id = {c["id"]: c for c in cases}
    lanes = [cases[i::CHILDREN] for i in range(CHILDREN)]
    with ThreadPoolExecutor(CHILDREN) as pool:
        futures = [pool.submit(run_child_until_done, lane, path, path.parent / f"lane{i}")
                   for i, lane in enumerate(lanes)]
        results = [r for f in futures for r in f.result()]
    assert len(results) == len(cases)
    outcomes: dict[str, int] = {}
    by_category: dict[str, dict[str, int]] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        cat = by_id[r["id"]]["category"]
        by_category.setdefault(cat, {})
        by_category[cat][r["outcome"]] = by_category[cat].get(r["outcome"], 0) + 1

    def bad(pred) -> list[str]:
        return [f"{r['id']} {by_id[r['id']]['file']} {by_id[r['id']]['kind']}@"
                f"{by_id[r['id']]['offset']}: {r['outcome']} {r.get('detail', '')[:200]}"
                for r in results if pred(r)]

    # LMDB asserts (SIGABRT) on some damaged B-tree pages while a cursor walks them; only
    # verify() walks the store, and it walks it in a child process first. Printed apart,
    # asserted like every other crash.
    lmdb_abort = bad(lambda r: r["outcome"] == "interpreter_crash:SIGABRT"
                     and by_id[r["id"]]["category"] == "store")
    crashes = bad(lambda r: r["outcome"].startswith(("interpreter_crash", "hang", "child_exit")))
    # LMDB pages carry no checksum, so damage to the B-tree itself can hide a key; reads
    # cross-check the store against the sealed row ids of the segments, so that too must be
    # detected, never returned as a missing item.
    wrong = bad(lambda r: r["outcome"] == "wrong_data")
    other = bad(lambda r: r["outcome"].startswith("other_error"))
    key_misuse = bad(lambda r: r["outcome"] == "WrongKeyError" and by_id[r["id"]]["category"] != "config")
    summary = (f"corruption_fuzz: {len(results)} corruptions planted ({dict(sorted(outcomes.items()))}); "
               f"by file kind {by_category}; interpreter crashes {len(crashes)}, corruptions "
               f"returned as data (undetected) {len(wrong)}, LMDB aborts {len(lmdb_abort)}, "
               f"other errors {len(other)}")
    record_property("corruption_fuzz_summary", summary)
    print(summary)
    for findings in (crashes, lmdb_abort, wrong, other, key_misuse):
        for line in findings[:12]:
            print("  finding:", line)
    assert not crashes, f"{len(crashes)} children crashed or hung: {crashes[:5]}"
    assert not wrong, f"{len(wrong)} corruptions returned as data: {wrong[:5]}"
    assert not other, f"{len(other)} cases raised another error: {other[:5]}"
    assert not key_misuse, f"WrongKeyError outside CONFIG: {key_misuse[:5]}"


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
