"""The damage matrix of issue 15: delete / truncate / zero each kind of file of a cleanly closed
and of a crashed index. Every outcome must be the exact acknowledged state (EXACT), a tolerated
torn tail after a crash (TORN: only the crashed template, only damage to its newest log file,
and the state is the oracle after some prefix of the batches), or a typed lsmvec error (ERROR,
an lsmvec.errors.LsmvecError raised by the open or the read-back). Anything else -- a wrong
vector / contents / metadata, a missing or resurrected id without an error, read paths that
disagree with each other, an untyped exception, a dead child -- fails the case. `lsmvec verify`
runs on a second copy with the same damage: it must exit 4 when the open raised
CorruptionError, must not exit 0 when the open or the read failed, and may exit 0 or 1 for EXACT
and TORN. Damage that changed bytes and that verify calls fine (exit 0) is collected, not
failed: `test_zz_summary` lists it in a warning (and every failing case's message says so too).

Templates (built once per module, by child processes; the plan and its oracle are in
tests/durability/damage_cases.py: dimension 16, ~290 ids, overwrites and deletes across phases,
wal_roll_bytes=4096, background_compaction=False, memtable_bytes=1 GiB; a flushed segment
seg-000004 and a merged one seg-000003 made by train()):
  clean           written and closed. close() always flushes the memtable and removes the log
                  files below the new checkpoint, so a clean close leaves no record only in the
                  log: the log is one file holding just the CLOSE record, and phase D is the
                  flushed segment seg-000005 (3 segments).
  clean_kept_log  written, then closed while the closing flush is refused for a full disk (the
                  failpoint segment.before_rename armed with enospc): close() logs it, keeps the
                  log and ends it with a CLOSE record (engine/core.py close()). This is the
                  cleanly closed index with records only in the log: 3 log files of phase D and
                  one with the CLOSE record; 2 segments.
  crashed         written by a child that leaves with os._exit(0) after its last acknowledged
                  (fsynced) batch: no close, no CLOSE record; 3 log files of phase D (the newest
                  holding 2 records); 2 segments.

Damages: every log file: delete, truncate to 0, truncate to half, zero 64 bytes in the middle;
every file under segments/seg-*: delete, truncate to half, zero 64 bytes in the middle;
store/data.mdb: delete, truncate to half, zero the 4 KiB page in the middle (live or free: the
file's layout differs from run to run, so this case's outcome does too), and (a bonus) zero the
root page of LMDB's main B-tree, named by the newest meta page; the newest LMDB meta page: its
txnid set to 0, the whole page zeroed; CONFIG: delete, truncate to half, flip the middle byte.
Plus one undamaged control per template (must be EXACT with verify exit 0).
The read-back runs in-process, except for store damage: in a child process (LMDB may abort()).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import damage_cases as dc  # noqa: E402

pytestmark = pytest.mark.slow

# The fixed layout of the templates (checked by the fixture: if the engine changes how it rolls
# its log or numbers segments, these numbers need updating, not the test's rules).
LOGS = {"clean": 1, "clean_kept_log": 4, "crashed": 3}
SEGMENTS = {"clean": 3, "clean_kept_log": 2, "crashed": 2}
SEGMENT_FILES = ("segment.json", "vectors.bin", "ids.bin")

LOG_DAMAGES = ("delete", "truncate0", "truncate_half", "zero64")
SEGMENT_DAMAGES = ("delete", "truncate_half", "zero64")
STORE_DAMAGES = ("delete", "truncate_half", "zero4k", "zero_main_root")
META_DAMAGES = ("meta_txnid0", "meta_zero")
CONFIG_DAMAGES = ("delete", "truncate_half", "flip")


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for template in dc.TEMPLATES:
        cases.append((template, "-", "none"))
        n = LOGS[template]
        for i in range(n):
            target = f"log{i}" + ("_newest" if i == n - 1 else "")
            cases += [(template, target, d) for d in LOG_DAMAGES]
        for s in range(SEGMENTS[template]):
            for name in SEGMENT_FILES:
                cases += [(template, f"seg{s}/{name}", d) for d in SEGMENT_DAMAGES]
        cases += [(template, "store/data.mdb", d) for d in STORE_DAMAGES]
        cases += [(template, "store/data.mdb", d) for d in META_DAMAGES]
        cases += [(template, "CONFIG", d) for d in CONFIG_DAMAGES]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> tuple[dict[str, Path], bytes]:
    from lsmvec import generate_key
    key = generate_key()
    base = tmp_path_factory.mktemp("damage_templates")
    folders = {}
    for template in dc.TEMPLATES:
        root = base / template
        dc.build_in_child(template, root, key)
        files = dc.layout(root / dc.NAME)
        assert len(files["logs"]) == LOGS[template], (template, files["logs"])
        assert len(files["segments"]) == SEGMENTS[template], (template, files["segments"])
        for seg in files["segments"]:
            assert sorted(p.name for p in seg.iterdir()) == sorted(SEGMENT_FILES), seg
        assert all(p.stat().st_size > 0 for p in files["logs"]), (template, files["logs"])
        folders[template] = root
    return folders, key


def _resolve(folder: Path, target: str) -> Path:
    files = dc.layout(folder)
    if target.startswith("log"):
        return files["logs"][int(target[3:].split("_")[0])]
    if target.startswith("seg"):
        seg, name = target.split("/")
        return files["segments"][int(seg[3:])] / name
    if target == "-":
        return folder / "CONFIG"
    return folder / target


def _diff(state: dict, oracle: dict) -> str:
    missing = sorted(set(oracle) - set(state))
    extra = sorted(set(state) - set(oracle))
    wrong = sorted(i for i in set(state) & set(oracle) if state[i] != oracle[i])
    return (f"missing {len(missing)} {missing[:8]}, extra {len(extra)} {extra[:8]}, "
            f"wrong values {len(wrong)} {wrong[:8]}")


def _judge(template: str, target: str, res: dict, rc: int) -> tuple[str, list[str], bool]:
    """(outcome, failures, data differs from the oracle)."""
    states = dc.prefix_states()
    oracle = states[-1]
    failures: list[str] = []
    differs = True
    status = res["status"]
    if status == "child_died":
        outcome = f"CHILD DIED rc={res['returncode']}"
        failures.append(f"the reading child died (rc {res['returncode']}): {res['stderr'][-600:]}")
    elif status == "error":
        where = "" if res["phase"] == "open" else f"@{res['phase']}"
        outcome = f"ERROR {res['error']}{where}"
        if not res["typed"]:
            outcome = f"UNTYPED {res['error']}{where}"
            failures.append(f"untyped exception in {res['phase']}: {res['error']}: "
                            f"{res['message']}\n{res['traceback']}")
        elif res["phase"] == "open" and res["error"] == "CorruptionError" and rc != 4:
            failures.append(f"the open raised CorruptionError but verify exited {rc}, not 4")
        elif rc == 0:
            failures.append(f"the {res['phase']} raised {res['error']} but verify exited 0")
    else:
        state = {i: (v[0], v[1], v[2]) for i, v in res["state"].items()}
        if state == oracle:
            outcome, differs = "EXACT", False
        elif template == "crashed" and target.endswith("_newest") and state in states[:-1]:
            outcome = f"TORN k={states.index(state)}/{len(states) - 1}"
        else:
            nearest = min(range(len(states)), key=lambda k: len(_diff_ids(state, states[k])))
            outcome = "WRONG DATA"
            failures.append(f"silent wrong data: vs the oracle: {_diff(state, oracle)}; nearest "
                            f"prefix k={nearest}: {_diff(state, states[nearest])}")
        if res["problems"]:
            failures.append("read paths disagree: " + "; ".join(res["problems"][:6]))
        if outcome in ("EXACT",) or outcome.startswith("TORN"):
            if rc not in (0, 1):
                failures.append(f"the index reads back {outcome} but verify exited {rc}")
        elif rc == 0:
            failures.append("verify exited 0 for data that differs from the oracle")
    if "close_error" in res:
        outcome += f" (close: {res['close_error'][:60]})"
        if not res.get("close_typed"):
            failures.append(f"untyped exception from close(): {res['close_error']}")
    return outcome, failures, differs


def _diff_ids(state: dict, other: dict) -> set:
    return {i for i in set(state) | set(other) if state.get(i) != other.get(i)}


@pytest.mark.parametrize("template,target,damage", CASES,
                         ids=[f"{t}:{f}:{d}" for t, f, d in CASES])
def test_damage(templates, tmp_path, template, target, damage):
    folders, key = templates
    done = None
    for which in ("open", "verify"):
        root = tmp_path / which
        shutil.copytree(folders[template], root)
        done = dc.apply_damage(_resolve(root / dc.NAME, target), damage)
    env = {**os.environ, "LSMVEC_KEY": key.hex(), "PYTHONPATH": str(dc.ROOT)}
    verify = subprocess.Popen([sys.executable, "-m", "lsmvec.tools", "verify",
                               str(tmp_path / "verify" / dc.NAME)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = dc.snapshot(tmp_path / "open" / dc.NAME)
    try:
        if target.startswith("store/"):
            res = dc.read_back_in_child(tmp_path / "open", key)
        else:
            res = dc.read_back(tmp_path / "open", key)
    finally:
        out, err = verify.communicate(timeout=180)
    rc = verify.returncode
    outcome, failures, differs = _judge(template, target, res, rc)
    changed = damage != "none" and "(no change)" not in done
    silent = changed and rc == 0
    if damage == "none" and (outcome != "EXACT" or rc != 0):
        failures.append(f"the undamaged template gives {outcome}, verify exit {rc}")
    # A refused open leaves every file as it found it.
    if res["status"] == "error" and res.get("phase") in ("client", "open"):
        after = dc.snapshot(tmp_path / "open" / dc.NAME)
        changes = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changes:
            failures.append(f"the refused open changed {changes}")
    case = f"{template}:{target}:{damage}"
    verify_tail = (out.strip().splitlines()[-3:] + err.strip().splitlines()[-2:])
    assert not failures, (
        f"{case} ({done}): outcome {outcome}, verify exit {rc}"
        + (" (verify calls the damaged bytes fine)" if silent else "") + "\n  "
        + "\n  ".join(failures) + "\n  verify said: " + " | ".join(verify_tail)[:800])
