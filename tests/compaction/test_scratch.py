"""ScaNN's decrypted scratch must not outlive the process (issue 15, defect 2).

- kill -9 of a process loading a trained index at varied moments (blocked inside ScaNN's
  loader, as the scratch folder appears, at random delays), and of one whose forked serialize
  child has just written the assets: no file under /dev/shm or the index folder may then hold
  a stored vector's plaintext, nor a leftover scratch folder any data; the next open sweeps;
- the sweep removes the scratch of dead processes only;
- while in use, the scratch folder is 0700, named after its process, and holds only links.

This file is also the child process of the crash tests: ``python test_scratch.py MODE ...``.
"""
from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # as a child script: import this tree's engine / compaction
    sys.path.insert(0, str(ROOT))

from lsmvec.compaction import scann_assets  # noqa: E402
from lsmvec.compaction.filenames import (  # noqa: E402
    SCANN_ASSET_FILES, SCANN_DATASET_FILE, SCRATCH_PREFIX, parse_scratch_dir_name,
    scratch_dir_prefix)

INDEX_NAME = "scratchy"
KEY_ENV = "LSMVEC_SCRATCH_KEY"
PARENT_ENV = "LSMVEC_TEST_SCRATCH_PARENT"
"""A child given this makes its scratch folders there instead of /dev/shm: a folder no other
test process sweeps (every build or load sweeps the dead pids' folders of /dev/shm, and under
pytest -n 2 one swept a killed child's folder before the test could look at it)."""
ROWS, DIM = 20_000, 32  # 20k rows: above the brute-force limit, so train() makes a ScaNN tree
EXTRA_ROWS = 500  # upserted by the train child, so train() has a new segment to build
SHM = Path("/dev/shm")
MARKER_TIMEOUT_S = 60.0
TOTAL_BUDGET_S = 240.0


# ----------------------------------------------------------------------------- shared data

def vectors(seed: int, extra: bool = False) -> np.ndarray:
    """The index's rows (or the train child's extra rows), random per test run."""
    n = EXTRA_ROWS if extra else ROWS
    return np.random.default_rng([seed, extra]).standard_normal((n, DIM)).astype(np.float32)


def needles(seed: int) -> list[bytes]:
    """The float32 bytes of a few stored rows (128 bytes each: no false positives)."""
    base, extra = vectors(seed), vectors(seed, extra=True)
    return [base[i].tobytes() for i in (0, 1, 4321, ROWS // 2, ROWS - 1)] + \
        [extra[i].tobytes() for i in (0, EXTRA_ROWS - 1)]


# ----------------------------------------------------------------------------- the child

def _mark(marker: Path, line: str) -> None:
    with open(marker, "ab", buffering=0) as f:  # one write on an O_APPEND descriptor
        f.write((line + "\n").encode())


def child_main(argv: list[str]) -> int:
    """create FOLDER SEED | load FOLDER SEED MARKER block|go|exit | train FOLDER SEED MARKER"""
    mode, folder, seed = argv[0], Path(argv[1]), int(argv[2])
    if os.environ.get(PARENT_ENV):
        scann_assets.SHM_DIR = Path(os.environ[PARENT_ENV])
    from lsmvec import Client
    from scann.scann_ops.py import scann_ops_pybind
    key = bytes.fromhex(os.environ[KEY_ENV])
    if mode == "create":
        with Client(folder) as client:
            index = client.create_index(INDEX_NAME, key, dimension=DIM, metric="euclidean")
            index.upsert(ids=[f"b{i}" for i in range(ROWS)], vectors=vectors(seed))
            index.train()
            kinds = [s["kind"] for s in index.stats()["segments"]]
            assert index.is_trained() and kinds == ["tree_ah"], kinds
        return 0
    marker, how = Path(argv[3]), (argv[4] if len(argv) > 4 else "go")
    if mode == "load":
        original = scann_ops_pybind.load_searcher

        def hooked_load(path: str, *args: Any, **kwargs: Any) -> Any:
            _mark(marker, f"loading {path}")
            if how == "block":
                sys.stdin.buffer.read()  # blocks: the parent holds the pipe
            return original(path, *args, **kwargs)

        scann_ops_pybind.load_searcher = hooked_load
        _mark(marker, "opening")
        with Client(folder) as client:
            client.load_index(INDEX_NAME, key)
            _mark(marker, "loaded")
            if how != "exit":
                sys.stdin.buffer.read()  # blocks: the parent holds the pipe
        return 0
    if mode == "train":
        original_serialize = scann_ops_pybind.ScannSearcher.serialize

        def hooked_serialize(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            result = original_serialize(self, path, *args, **kwargs)
            _mark(marker, f"serialized {os.getpid()} {path}")  # in the forked child
            sys.stdin.buffer.read()  # blocks: the parent holds the pipe
            return result

        scann_ops_pybind.ScannSearcher.serialize = hooked_serialize
        with Client(folder) as client:
            index = client.load_index(INDEX_NAME, key)
            index.upsert(ids=[f"e{i}" for i in range(EXTRA_ROWS)],
                         vectors=vectors(seed, extra=True))
            _mark(marker, "training")
            index.train()
            sys.stdin.buffer.read()  # blocks: the parent holds the pipe
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------- the parent's tools

def spawn(args: list[str], key: bytes, err: Path) -> subprocess.Popen:
    """This file as a child, on this tree's code, stdin a pipe it may block on."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **{KEY_ENV: key.hex(), "PYTHONPATH": path})
    with open(err, "ab") as f:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=f)


def wait_for(condition: Any, what: str, proc: subprocess.Popen | None, err: Path | None,
             timeout: float = MARKER_TIMEOUT_S, poll: float = 0.0005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = err.read_text(errors="replace")[-3000:] if err else ""
            pytest.fail(f"the child exited ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def marker_lines(marker: Path) -> list[str]:
    data = marker.read_bytes() if marker.exists() else b""
    return data.decode(errors="replace").split("\n")[:-1]


def scratch_names(parent: Path) -> set[str]:
    try:
        return {n for n in os.listdir(parent) if n.startswith(SCRATCH_PREFIX)}
    except OSError:
        return set()


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the child and reap it. Its stdin pipe stays open (a blocked grandchild keeps
    blocking) until ``release``."""
    was_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if was_running:
        assert proc.returncode == -signal.SIGKILL, f"child ended by itself ({proc.returncode})"


def release(proc: subprocess.Popen) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps counts as dead: an orphan's reaper may be slow)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except ProcessLookupError:
        return False
    except (OSError, IndexError):  # PermissionError: another user's; no /proc
        return True
    return state not in ("Z", "X")


def files_with_plaintext(roots: list[Path], patterns: list[bytes]) -> list[str]:
    """Every regular file under ``roots`` (links not followed) holding one of ``patterns``."""
    found = []
    overlap = max(len(p) for p in patterns)
    for root in roots:
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            for path in (Path(dirpath, name) for name in files):
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    with open(path, "rb") as f:
                        tail = b""
                        while chunk := f.read(1 << 22):
                            if any(p in tail + chunk for p in patterns):
                                found.append(str(path))
                                break
                            tail = chunk[-overlap:]
                except OSError:  # another user's, or gone meanwhile
                    continue
    return found


def data_in_scratch(folder: Path) -> list[str]:
    """Entries of a leftover scratch folder that hold or reach any data."""
    bad = []
    for entry in os.scandir(folder):
        try:
            if entry.is_symlink():
                if os.stat(entry.path).st_size:  # a link that still reaches a file with data
                    bad.append(f"{entry.name} -> {os.readlink(entry.path)}")
            elif entry.stat(follow_symlinks=False).st_size or entry.is_dir(follow_symlinks=False):
                bad.append(entry.name)
        except FileNotFoundError:
            continue  # dangling: what a dead process leaves
    return bad


@pytest.fixture(scope="module")
def trained_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, int]:
    """A trained index, built by a child process through the public API."""
    from lsmvec import generate_key
    base = tmp_path_factory.mktemp("scratch-crash")
    folder, key, seed = base / "data", generate_key(), secrets.randbelow(1 << 30)
    proc = spawn(["create", str(folder), str(seed)], key, base / "create.err")
    release(proc)
    assert proc.wait(timeout=600) == 0, (base / "create.err").read_text(errors="replace")[-3000:]
    return folder, key, seed


def _check_after_kill(folder: Path, seed: int, pid: int,
                      before: dict[Path, set[str]]) -> list[Path]:
    """No plaintext anywhere, no data in the scratch the killed child left. Returns the
    leftover scratch folders of that child."""
    roots = [p for p in (_private_parent(), SHM) if p is not None and p.is_dir()] + [folder]
    leaked = files_with_plaintext(roots, needles(seed))
    assert not leaked, f"plaintext vectors left after kill -9 of {pid}: {leaked}"
    leftovers = []
    for parent, old in before.items():
        for name in sorted(scratch_names(parent) - old):
            owner = parse_scratch_dir_name(name)
            if owner is None or owner[0] == pid:  # unnamed (old format) ones may be its too
                leftovers.append(parent / name)
    for left in leftovers:
        if left.exists():
            assert not data_in_scratch(left), f"{left} holds data: {data_in_scratch(left)}"
    return leftovers


def _private_parent() -> Path | None:
    return Path(os.environ[PARENT_ENV]) if os.environ.get(PARENT_ENV) else None


def _scratch_parents(folder: Path) -> list[Path]:
    return [p for p in (_private_parent(), SHM, folder / INDEX_NAME / "segments")
            if p is not None and p.is_dir()]


# ----------------------------------------------------------------------------- 1. crash tests

LOAD_PLAN = ["block", "scratch", "loader", "opening", "block", "scratch", "loader", "opening"]


@pytest.mark.slow
def test_kill9_during_load_leaves_no_plaintext_scratch(trained_index: tuple[Path, bytes, int],
                                                       tmp_path: Path, monkeypatch) -> None:
    folder, key, seed = trained_index
    private = tmp_path / "scratch-parent"
    private.mkdir(mode=0o700)
    monkeypatch.setenv(PARENT_ENV, str(private))  # the children's scratch: swept by no one else
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    killed: list[int] = []
    landed: list[str] = []
    for trial, moment in enumerate(LOAD_PLAN):
        if time.monotonic() - started > TOTAL_BUDGET_S:
            break
        marker, err = tmp_path / f"load{trial}.marker", tmp_path / f"load{trial}.err"
        before = {p: scratch_names(p) for p in _scratch_parents(folder)}
        how = "block" if moment == "block" else "go"
        proc = spawn(["load", str(folder), str(seed), str(marker), how], key, err)
        try:
            if moment in ("block", "loader"):
                wait_for(lambda: any(l.startswith("loading ") for l in marker_lines(marker)),
                         "ScaNN's loader", proc, err)
                delay = 0.0 if moment == "block" else float(rng.uniform(0, 0.02))
            elif moment == "scratch":
                wait_for(lambda: any(scratch_names(p) - old for p, old in before.items()),
                         "a scratch folder", proc, err, poll=0.0001)
                delay = float(rng.uniform(0, 0.003))
            else:
                wait_for(lambda: "opening" in marker_lines(marker), "the open", proc, err)
                delay = float(rng.uniform(0, 0.05))
            deadline = time.monotonic() + delay
            wait_for(lambda: time.monotonic() >= deadline, "the kill moment", proc, err)
        finally:
            kill9(proc)
        try:
            killed.append(proc.pid)
            lines = marker_lines(marker)
            landed.append("after load" if "loaded" in lines else
                          "in ScaNN's loader" if any(l.startswith("loading") for l in lines)
                          else "before ScaNN's loader")
            leftovers = _check_after_kill(folder, seed, proc.pid, before)
            if moment == "block":  # the kill certainly landed with the scratch full
                assert [p for p in leftovers if p.exists()], "the blocked load left no scratch"
        finally:
            release(proc)
    print(f"kills landed: {landed}")
    assert len(killed) >= 4, "too few trials ran in the time budget"

    # The next open sweeps what the killed children left, and the index still loads.
    marker, err = tmp_path / "final.marker", tmp_path / "final.err"
    proc = spawn(["load", str(folder), str(seed), str(marker), "exit"], key, err)
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0, err.read_text(errors="replace")[-3000:]
    for parent in _scratch_parents(folder):
        for name in scratch_names(parent):
            owner = parse_scratch_dir_name(name)
            if owner is not None and owner[0] in killed and not _alive(owner[0]):
                pytest.fail(f"{parent / name} of killed child {owner[0]} was not swept")


@pytest.mark.slow
def test_kill9_while_the_serialize_child_holds_the_assets(trained_index: tuple[Path, bytes, int],
                                                          tmp_path: Path) -> None:
    """A train whose forked serialize child has written every asset (and waits): kill -9 of
    the index process. The child must die with it, and nothing readable may remain."""
    from lsmvec.compaction.scann_serialize import fork_usable
    if not fork_usable():
        pytest.skip("serialize runs in-process here")
    folder, key, seed = trained_index
    marker, err = tmp_path / "train.marker", tmp_path / "train.err"
    before = {p: scratch_names(p) for p in _scratch_parents(folder)}
    proc = spawn(["train", str(folder), str(seed), str(marker)], key, err)
    serializer = 0
    try:
        line = wait_for(lambda: next((l for l in marker_lines(marker)
                                      if l.startswith("serialized ")), None),
                        "the serialize child", proc, err, timeout=300)
        serializer = int(line.split()[1])
        assert serializer != proc.pid
    finally:
        kill9(proc)  # the serialize child still blocks on the stdin pipe we hold
    try:
        wait_for(lambda: not _alive(serializer), "the serialize child to die with its parent",
                 None, None, timeout=10)
        _check_after_kill(folder, seed, proc.pid, before)
    finally:
        release(proc)  # lets a serialize child that survived its parent go on and exit
        if serializer and _alive(serializer):
            wait_for(lambda: not _alive(serializer), "the serialize child to finish", None, None,
                     timeout=60)


# ----------------------------------------------------------------------------- 2. the sweep

def _fake_scratch(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(mode=0o700)
    (path / SCANN_DATASET_FILE).write_bytes(b"plaintext rows")
    os.symlink("/proc/999999999/fd/3", path / "scann_config.pb")
    return path


def _a_dead_pid() -> int:
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        if not _alive(proc.pid):
            return proc.pid
    pytest.skip("could not find a dead pid")


def test_the_sweep_removes_dead_processes_scratch_and_keeps_live_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = scann_assets._pid_namespace()
    dead = _a_dead_pid()
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE) as live_child:
        try:  # a live pid: our own, and a child's
            dead_dir = _fake_scratch(tmp_path, scratch_dir_prefix(dead, ns) + "a1b2c3d4")
            mine = _fake_scratch(tmp_path, scratch_dir_prefix(os.getpid(), ns) + "e5f6g7h8")
            live = _fake_scratch(tmp_path, scratch_dir_prefix(live_child.pid, ns) + "i9j0k1l2")
            foreign = _fake_scratch(tmp_path, scratch_dir_prefix(dead, ns + 1) + "m3n4o5p6")
            legacy_old = _fake_scratch(tmp_path, SCRATCH_PREFIX + "q7r8s9t0")
            legacy_new = _fake_scratch(tmp_path, SCRATCH_PREFIX + "u1v2w3x4")
            hour_ago = time.time() - scann_assets.LEGACY_SCRATCH_MAX_AGE_S - 60
            os.utime(legacy_old, (hour_ago, hour_ago))
            unrelated = tmp_path / (SCRATCH_PREFIX + "notes")
            unrelated.write_text("not a folder")
            removed = scann_assets.sweep_stale_scratch([tmp_path])
            assert sorted(removed) == sorted([dead_dir, legacy_old])
            assert not dead_dir.exists() and not legacy_old.exists()
            for kept in (mine, live, foreign, legacy_new):
                assert (kept / SCANN_DATASET_FILE).read_bytes() == b"plaintext rows"
            assert unrelated.read_text() == "not a folder"
        finally:
            live_child.stdin.close()
    live_child.wait()
    # make_scratch_dir sweeps too (here: its fallback parent), and names the new folder ours.
    assert scann_assets.sweep_stale_scratch([tmp_path]) == [live]
    again = _fake_scratch(tmp_path, scratch_dir_prefix(dead, ns) + "y5z6a7b8")
    monkeypatch.setattr(scann_assets, "SHM_DIR", tmp_path / "no-shm-here")
    fresh = scann_assets.make_scratch_dir(tmp_path)
    assert not again.exists()
    assert parse_scratch_dir_name(fresh.name) == (os.getpid(), ns)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    scann_assets.remove_scratch_dir(fresh)


# ----------------------------------------------------------------------------- 3. while in use

def _inspect_scratch(path: Path, seen: list[tuple[Path, int, int, dict]]) -> None:
    st = path.stat()
    entries = {e.name: os.readlink(e.path) if e.is_symlink() else "plain file"
               for e in os.scandir(path)}
    seen.append((path, stat.S_IMODE(st.st_mode), st.st_uid, entries))


def _check_in_use(record: tuple[Path, int, int, dict], expected_names: set[str]) -> None:
    path, mode, uid, entries = record
    assert mode == 0o700 and uid == os.getuid(), (oct(mode), uid)
    assert parse_scratch_dir_name(path.name) == (os.getpid(), scann_assets._pid_namespace())
    if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK):
        assert path.parent == SHM
    assert set(entries) == expected_names
    for name, target in entries.items():  # links to our memory files, no plain file
        assert target.startswith(f"/proc/{os.getpid()}/fd/"), f"{name}: {target}"


def test_the_scratch_is_private_and_holds_only_links_while_in_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scann.scann_ops.py import scann_ops_pybind

    from lsmvec.compaction.scann_params import MIN_TREE_ROWS
    from lsmvec.compaction.segment import Segment, build_segment
    if not scann_assets._memory_files_usable():
        pytest.skip("no memfd_create or /proc here")
    seen: list[tuple[Path, int, int, dict]] = []
    original_serialize = scann_assets.serialize_searcher

    def serialize(searcher: Any, scratch: Path, *args: Any, **kwargs: Any) -> bool:
        _inspect_scratch(scratch, seen)
        return original_serialize(searcher, scratch, *args, **kwargs)

    original_load = scann_ops_pybind.load_searcher

    def load(path: str) -> Any:
        _inspect_scratch(Path(path), seen)
        return original_load(path)

    monkeypatch.setattr(scann_assets, "serialize_searcher", serialize)
    monkeypatch.setattr(scann_ops_pybind, "load_searcher", load)
    rows = np.random.default_rng(5).standard_normal((MIN_TREE_ROWS * 2, 8)).astype(np.float32)
    key, context = bytes(range(32)), b"index|seg-000001"
    files = build_segment(tmp_path / "seg", rows, metric="euclidean", key=key, context=context,
                          kind="tree_ah")
    segment = Segment.open(tmp_path / "seg", files, key=key, context=context, metric="euclidean")
    assert segment.search(rows[:3], 1)[0][:, 0].tolist() == [0, 1, 2]
    assert len(seen) == 2
    _check_in_use(seen[0], set(SCANN_ASSET_FILES))  # the build: a link per possible asset
    sealed = {e.name for e in files.files} & SCANN_ASSET_FILES
    _check_in_use(seen[1], sealed | {SCANN_DATASET_FILE})  # the load: what it unsealed
    assert not [r[0] for r in seen if r[0].exists()], "scratch left behind"


def test_a_failed_serialize_child_is_retried_in_process_with_fresh_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child fails after writing garbage through (or over) the links: the parent's
    in-process serialize starts from fresh memory files and seals the same assets."""
    import lsmvec.compaction.scann_serialize as scann_serialize
    from lsmvec.compaction.scann_params import MIN_TREE_ROWS, choose_params
    from lsmvec.compaction.sealed_file import read_sealed

    if not scann_serialize.fork_usable():
        pytest.skip("needs os.fork")
    rows = np.random.default_rng(6).standard_normal((MIN_TREE_ROWS * 2, 8)).astype(np.float32)
    searcher = scann_assets.train_searcher(rows, choose_params(len(rows), 8, "euclidean",
                                                               kind="tree_ah"), 1)
    key, context = bytes(range(32)), b"index|seg-000002"
    (tmp_path / "good").mkdir()
    good, _ = scann_assets.seal_searcher(searcher, rows, tmp_path / "good", key, context)

    def failing_child(_searcher: Any, scratch: Path, _vectors: Any, _timeout: float,
                      during: Any, _collapse: bool = True) -> tuple[bool, bool]:
        (scratch / "ah_codebook.pb").write_bytes(b"garbage through the link")
        os.unlink(scratch / "int8_dataset.npy")
        (scratch / "int8_dataset.npy").write_bytes(b"a plain file over the link")
        return (during() if during is not None else True), False

    monkeypatch.setattr(scann_serialize, "_serialize_in_child", failing_child)
    (tmp_path / "retried").mkdir()
    retried, stored = scann_assets.seal_searcher(searcher, rows, tmp_path / "retried", key,
                                                 context)
    assert not stored and sorted(retried) == sorted(good)
    for name in good:
        aad = scann_assets.file_context(context, name)
        assert read_sealed(tmp_path / "retried" / name, key, aad) == \
            read_sealed(tmp_path / "good" / name, key, aad), name


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
