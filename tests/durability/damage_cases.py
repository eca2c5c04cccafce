"""Helpers of tests/durability/test_damage_matrix.py (issue 15): the write plan and its oracle, the three
template indexes, the damages, and reading a (damaged) index back.

Also a script, run as a child process (PYTHONPATH=<repo>):
    python tests/durability/damage_cases.py build <template> <root> <key hex>
    python tests/durability/damage_cases.py readback <root> <key hex>     (prints one JSON line)

The plan (index "a", dimension 16, euclidean, wal_roll_bytes=4096, background_compaction=False,
memtable_bytes=1 GiB so nothing is flushed unless asked):
    phase A  3 batches (upserts, a delete)                       -> flush   seg-000001
    phase B  4 batches (upserts, overwrites of A, a delete)      -> flush   seg-000002
             train()  merges seg 1 + 2                                       seg-000003
    phase C  2 batches (upserts, overwrites)                     -> flush   seg-000004
    phase D  7 batches (upserts, overwrites of segment rows, deletes of segment rows, the
             re-upsert of an id deleted in phase A, deleted again by the last batch): only in
             the log, several files (3 for the crashed template, the newest holding 2 records)
Every batch is one upsert / delete call, acknowledged (fsynced, durability="fsync") on return.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NAME = "a"
DIM = 16
OPTIONS = {"wal_roll_bytes": 4096, "background_compaction": False, "memtable_bytes": 1 << 30}
TEMPLATES = ("clean", "clean_kept_log", "crashed")
QUERY_SEED = 99
TOP_K = 10


# ----------------------------------------------------------------------------- plan and oracle

def _item(rng: np.random.Generator, i: int, version: int) -> dict[str, Any]:
    return {"id": f"id{i}", "vector": rng.standard_normal(DIM).astype(np.float32),
            "contents": f"c{i}-v{version}", "metadata": {"n": i, "g": i % 4, "v": version}}


def plan() -> list[tuple]:
    """("upsert", items) / ("delete", ids) batches, with ("flush",) / ("train",) between them."""
    rng = np.random.default_rng(15)

    def up(ids, version=0):
        return ("upsert", [_item(rng, i, version) for i in ids])

    def rng_ids(lo, hi):
        return list(range(lo, hi))

    return [
        # A
        up(rng_ids(0, 40)), up(rng_ids(40, 80)), ("delete", ["id5", "id6", "id7"]),
        ("flush",),
        # B
        up(rng_ids(80, 120)), up(rng_ids(120, 160)), up(rng_ids(0, 10), 1),
        ("delete", ["id45", "id46", "id47"]),
        ("flush",), ("train",),
        # C
        up(rng_ids(160, 200)), up(rng_ids(80, 85), 1),
        ("flush",),
        # D: the log only
        up(rng_ids(200, 230)), up(rng_ids(230, 260)),
        up(rng_ids(10, 20) + rng_ids(160, 165), 1),
        ("delete", ["id20", "id21", "id22", "id170", "id171", "id100"]),
        up(rng_ids(260, 290) + [6], 2),
        up(rng_ids(0, 5) + rng_ids(200, 203), 3),
        ("delete", ["id230", "id231", "id6"]),
    ]


def batches() -> list[tuple]:
    """The acknowledged batches, in order (the plan without its maintenance steps)."""
    return [step for step in plan() if step[0] in ("upsert", "delete")]


def _stored(item: dict[str, Any]) -> tuple[str, str, dict]:
    return (np.asarray(item["vector"], np.float32).tobytes().hex(),
            item["contents"].encode().hex(), item["metadata"])


def prefix_states() -> list[dict[str, tuple]]:
    """states[k]: the oracle after the first k batches (states[-1] is the whole oracle)."""
    state: dict[str, tuple] = {}
    out = [dict(state)]
    for op, arg in batches():
        if op == "upsert":
            for item in arg:
                state[item["id"]] = _stored(item)
        else:
            for i in arg:
                state.pop(i, None)
        out.append(dict(state))
    return out


# ----------------------------------------------------------------------------- templates

def build(template: str, root: Path, key: bytes) -> None:
    """Run the plan; then close (clean), close with the closing flush refused for a full disk
    (clean_kept_log), or leave with os._exit(0) without closing (crashed)."""
    from lsmvec import Client
    client = Client(root)
    index = client.create_index(NAME, key, dimension=DIM, **OPTIONS)
    for step in plan():
        if step[0] == "upsert":
            index.upsert(step[1])
        elif step[0] == "delete":
            index.delete(step[1])
        elif step[0] == "flush":
            index.flush()
        else:
            index.train()
    if template == "crashed":
        os._exit(0)
    if template == "clean_kept_log":
        from lsmvec.wal import failpoints
        failpoints.arm("segment.before_rename", "enospc")
    client.close()
    if template == "clean_kept_log":
        from lsmvec.wal import failpoints
        failpoints.disarm()


def build_in_child(template: str, root: Path, key: bytes) -> None:
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, __file__, "build", template, str(root), key.hex()],
                   check=True, timeout=300, env=env)


def layout(folder: Path) -> dict[str, list[Path]]:
    """The damageable files of an index folder, by kind, in a fixed order."""
    from lsmvec.wal import list_logs
    segs = sorted(p for p in (folder / "segments").iterdir() if p.name.startswith("seg-"))
    return {"logs": [path for _lsn, path in list_logs(folder / "wal")],
            "segments": segs,
            "segment_files": [f for s in segs for f in sorted(s.iterdir()) if f.is_file()]}


# ----------------------------------------------------------------------------- damages

PAGE = 4096
TXNID_AT = 16 + 8 + 8 + 8 + 2 * 48 + 8  # page header, magic+version, address, mapsize, dbs, last_pg
MAIN_ROOT_AT = 16 + 8 + 8 + 8 + 48 + 40  # mm_dbs[MAIN_DBI].md_root: after pad, flags, depth, counts


def _unchanged(changed: bool) -> str:
    return "" if changed else " (no change)"


def _zero(path: Path, offset: int, length: int) -> bool:
    """Zero `length` bytes at `offset` (clamped to the file); whether any byte changed."""
    raw = bytearray(path.read_bytes())
    offset = max(0, min(offset, len(raw)))
    end = min(len(raw), offset + length)
    changed = any(raw[offset:end])
    raw[offset:end] = bytes(end - offset)
    path.write_bytes(bytes(raw))
    return changed


def newest_meta_page(data: Path) -> int:
    raw = data.read_bytes()
    txns = [int.from_bytes(raw[p * PAGE + TXNID_AT:p * PAGE + TXNID_AT + 8], "little")
            for p in (0, 1)]
    assert int.from_bytes(raw[40:44], "little") == PAGE, "LMDB page size is not 4096"
    return int(np.argmax(txns))


def apply_damage(path: Path, damage: str) -> str:
    """Damage one file in place; returns what was done (and whether bytes changed)."""
    size = path.stat().st_size
    if damage == "none":
        return "nothing"
    if damage == "delete":
        path.unlink()
        return f"deleted ({size} bytes)"
    if damage in ("truncate0", "truncate_half"):
        new = 0 if damage == "truncate0" else size // 2
        with open(path, "r+b") as f:
            f.truncate(new)
        return f"{size} -> {new} bytes" + _unchanged(new != size)
    if damage == "zero64":
        at = max(0, size // 2 - 32)
        changed = _zero(path, at, 64)
        return f"zeroed [{at}, {min(size, at + 64)}) of {size}" + _unchanged(changed)
    if damage == "zero4k":
        at = (size // 2) // PAGE * PAGE
        changed = _zero(path, at, PAGE)
        return f"zeroed page {at // PAGE} of {size // PAGE}" + _unchanged(changed)
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        at = len(raw) // 2
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
        return f"flipped byte {at} of {size}"
    if damage in ("meta_txnid0", "meta_zero"):
        page = newest_meta_page(path)
        if damage == "meta_txnid0":
            at, length = page * PAGE + TXNID_AT, 8
        else:
            at, length = page * PAGE, PAGE
        changed = _zero(path, at, length)
        return f"meta page {page}: zeroed [{at}, {at + length})" + _unchanged(changed)
    if damage == "zero_main_root":
        # bonus: the root page of LMDB's main B-tree (it holds the named tables), by the newest
        # meta page -- a live page for sure, unlike the page in the middle of the file
        page = newest_meta_page(path)
        raw = path.read_bytes()
        root = int.from_bytes(raw[page * PAGE + MAIN_ROOT_AT:page * PAGE + MAIN_ROOT_AT + 8],
                              "little")
        assert 2 <= root < size // PAGE, f"main root page {root} of {size // PAGE}"
        changed = _zero(path, root * PAGE, PAGE)
        return f"zeroed main root page {root} of {size // PAGE}" + _unchanged(changed)
    raise AssertionError(f"unknown damage {damage}")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under an index folder and its SHA-256 (LMDB's reader table aside)."""
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


# ----------------------------------------------------------------------------- read back

def _brute_check(state: dict[str, tuple], query: np.ndarray, hits: list[dict],
                 allowed: set[str] | None, label: str) -> list[str]:
    """The hits of one query against a float64 brute force over the read-back state."""
    ids = [i for i in state if allowed is None or i in allowed]
    if not ids:
        return [] if not hits else [f"{label}: {len(hits)} hits over an empty state"]
    matrix = np.stack([np.frombuffer(bytes.fromhex(state[i][0]), np.float32) for i in ids])
    d = np.sqrt(((matrix.astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1))
    true = dict(zip(ids, d.tolist()))
    want = np.sort(d)[:TOP_K]
    got_ids = [h["id"] for h in hits]
    problems = []
    if len(got_ids) != len(want):
        problems.append(f"{label}: {len(got_ids)} hits, expected {len(want)}")
    if len(set(got_ids)) != len(got_ids):
        problems.append(f"{label}: duplicate hits {got_ids}")
    unknown = [i for i in got_ids if i not in true]
    if unknown:
        problems.append(f"{label}: hits not in the read-back state {unknown}")
    got_d = np.array([h["distance"] for h in hits], np.float64)
    if not unknown and len(got_d) == len(want):
        if not np.allclose(got_d, want, rtol=1e-5, atol=1e-6):
            problems.append(f"{label}: distances {got_d.tolist()} != brute force {want.tolist()}")
        if not np.allclose(got_d, [true[i] for i in got_ids], rtol=1e-5, atol=1e-6):
            problems.append(f"{label}: a reported distance is not its id's true distance")
    return problems


def read_back(root: Path, key: bytes) -> dict[str, Any]:
    """Open index "a" under `root` and read everything back.

    {"status": "ok", "state": {id: (vector hex, contents hex, metadata)}, "problems": [...]}
    or {"status": "error", "typed": bool, "phase": "client"|"open"|"list_ids"|"get"|"query",
    "error": class, ...}; "close_error" when close() raised after that.
    `problems` are inconsistencies between the read paths (list_ids / get / count / query)."""
    from lsmvec import Client
    from lsmvec.errors import LsmvecError
    phase = "client"
    client = index = None
    try:
        client = Client(root)
        phase = "open"
        index = client.load_index(NAME, key)
        phase = "list_ids"
        ids = index.list_ids()
        count = index.get_num_vectors()
        phase = "get"
        items = index.get(ids, include=["vector", "contents", "metadata"])
        problems = []
        if count != len(ids):
            problems.append(f"get_num_vectors() {count} != len(list_ids()) {len(ids)}")
        if len(set(ids)) != len(ids):
            problems.append("list_ids() has duplicates")
        got = [it["id"] for it in items]
        if got != list(ids):
            missing, extra = sorted(set(ids) - set(got)), sorted(set(got) - set(ids))
            problems.append(f"get(list_ids()) returned other ids: missing {missing[:10]}, "
                            f"extra {extra[:10]}")
        state = {}
        for it in items:
            c = it.get("contents")
            state[it["id"]] = (np.asarray(it["vector"], np.float32).tobytes().hex(),
                               None if c is None else bytes(c).hex(), it.get("metadata"))
        phase = "query"
        rng = np.random.default_rng(QUERY_SEED)
        for q in range(3):
            query = rng.standard_normal(DIM).astype(np.float32)
            hits = index.query(query, top_k=TOP_K, include=["distance"])
            problems += _brute_check(state, query, hits, None, f"query {q}")
        query = rng.standard_normal(DIM).astype(np.float32)
        hits = index.query(query, top_k=TOP_K, include=["distance"], filters={"g": 1})
        allowed = {i for i, v in state.items() if isinstance(v[2], dict) and v[2].get("g") == 1}
        problems += _brute_check(state, query, hits, allowed, "filtered query g=1")
        result = {"status": "ok", "state": state, "problems": problems}
    except BaseException as exc:  # noqa: BLE001 -- every exception is classified by the caller
        result = {"status": "error", "typed": isinstance(exc, LsmvecError), "phase": phase,
                  "error": type(exc).__name__, "message": str(exc)[:500],
                  "traceback": ("" if isinstance(exc, LsmvecError)
                                else traceback.format_exc()[-3000:])}
    finally:
        if client is not None:
            try:
                client.close()
            except BaseException as exc:  # noqa: BLE001
                result.setdefault("close_error", f"{type(exc).__name__}: {exc}"[:500])
                result["close_typed"] = isinstance(exc, LsmvecError)
    return result


def read_back_in_child(root: Path, key: bytes, timeout: float = 120) -> dict[str, Any]:
    """read_back in a child process: an abort() inside LMDB kills only the child."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "readback", str(root), key.hex()],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"status": "child_died", "returncode": done.returncode,
                "stderr": done.stderr[-2000:]}
    return json.loads(lines[-1])


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "build":
        _template, _root, _key = sys.argv[2], Path(sys.argv[3]), bytes.fromhex(sys.argv[4])
        assert _template in TEMPLATES
        shutil.rmtree(_root, ignore_errors=True)
        build(_template, _root, _key)
    elif command == "readback":
        print(json.dumps(read_back(Path(sys.argv[2]), bytes.fromhex(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown command {command}")
