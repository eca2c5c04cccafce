"""A writer process driven line by line (tests of read_only readers, which must run in another
process than the writer: LMDB allows one environment per file and process).

    python tests/writer_worker.py FOLDER KEY_HEX  < JSON commands, one per line
    {"op": "create", "dimension": 4, "options": {...}}  -> creates index "t" (else loads it)
    {"op": "upsert", "items": [[id, vector, metadata], ...]}
    {"op": "upsert_generated", "prefix": "a", "n": 20000, "seed": 0, "clustered": true}
                                          (rows(...) below: the test computes the same rows)
    {"op": "delete", "ids": [...]}        {"op": "update", "items": [{"id":..., "metadata":...}]}
    {"op": "flush"} {"op": "compact"} {"op": "train"} {"op": "close"}
Each command is answered, once acknowledged, by one JSON line {"ok": true, "last_lsn": N} or
{"ok": false, "error": "ExceptionName: message"}.
"""
from __future__ import annotations

import json
import sys

import numpy as np

DIM = 4


def rows(prefix: str, n: int, seed: int, *, clustered: bool = False
         ) -> list[tuple[str, list[float], dict]]:
    """Deterministic rows (id, vector, metadata). `clustered`: 20 tight clusters, so a trained
    segment stays a ScaNN tree (few leaves reach the target recall), not an exact fallback."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM))
    if clustered:
        centres = np.random.default_rng(99).standard_normal((20, DIM)) * 10
        vectors = centres[np.arange(n) % 20] + 0.05 * vectors
    return [(f"{prefix}{i}", vectors[i].astype(np.float32).tolist(), {"g": i % 3, "p": prefix})
            for i in range(n)]


def main() -> None:
    from lsmvec import Client
    folder, key = sys.argv[1], bytes.fromhex(sys.argv[2])
    client = Client(folder)
    index = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "create":
                index = client.create_index("t", key, dimension=command.get("dimension", 4),
                                            **command.get("options", {}))
            elif index is None:
                index = client.load_index("t", key)
            if op in ("upsert", "upsert_generated"):
                items = command["items"] if op == "upsert" else rows(
                    command["prefix"], command["n"], command["seed"],
                    clustered=command.get("clustered", False))
                index.upsert([{"id": i, "vector": v, "metadata": m} for i, v, m in items])
            elif op == "delete":
                index.delete(command["ids"])
            elif op == "update":
                index.update(command["items"])
            elif op in ("flush", "compact", "train"):
                getattr(index, op)()
            elif op == "close":
                index.close()
                client.close()
                print(json.dumps({"ok": True, "last_lsn": 0}), flush=True)
                return
            reply = {"ok": True, "last_lsn": index.stats()["last_lsn"]}
        except Exception as exc:  # reported to the test, which decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
