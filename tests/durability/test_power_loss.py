"""Simulated power loss (LevelDB's fault_injection_test): unsynced bytes and unsynced directory
entries are dropped, and what recovers is what the durability setting promises.

``PowerLossFS`` replaces wal.fsio.FS and records, per file written through it (the log files,
CONFIG, every segment file), its size at the last fsync / fdatasync and whether its directory
entry was made durable (an fsync of its directory after its creation or rename); folders made
through it (a segment's temporary folder) likewise, and a folder renamed through it carries its
files along. At a cut the index folder is copied while open, and in the copy a folder whose
entry was never synced is deleted half the time, each tracked file is cut to a random size
between its last synced size and its current one (the OS may have written back any prefix of
the rest, often all of it), sometimes followed by zeros up to a random size (the size reached
the disk, the data did not), and a file whose directory entry was never synced is deleted half
the time. Then the copy is opened:
- always: the state is the one after some prefix of the ops (never a newer op without an
  older one, never a part of an op), at least up to the last completed flush / compact;
- durability="fsync": that prefix holds every acknowledged op (the op cut inside may or may not
  be there);
- verify() is ok and the segment folders are exactly the manifest's (nothing half-built is
  taken for a segment, no orphan is left).

Two workloads, both with background_compaction=False:
- ``test_power_loss_keeps_what_the_durability_setting_promises``: random upserts / deletes /
  flushes / compacts with a small memtable; cuts after op K or inside op K, after its first
  write through FS (its log write, or a segment write of the flush the upsert runs itself);
- ``test_power_loss_during_flush_and_merge``: explicit flush() / compact() / train(); cuts after
  the Nth FS call (every call is a candidate: mkdir, create, write, fsync, close, folder fsync,
  rename, remove) inside each of them, and after each of them.

What is not simulated: LMDB (store/) is not written through fsio, so its unsynced state cannot be
dropped; LMDB syncs each commit itself, and no commit is under way at a cut (cuts happen in the
thread doing the flush / merge, between FS calls, and a commit makes none). The catalog's rename
of a new index folder and the removal of merged-away segment folders bypass FS too (the files
they move or remove are simply no longer tracked). Removals are taken as durable at once (a
removed log file or folder never comes back).
"""
from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import crash_worker as cw
import fault_worker as fw
from lsmvec import Client, generate_key
from lsmvec.compaction.filenames import segment_dir_name
from lsmvec.wal import fsio

RUNS_PER_MODE = 5
CUTS_PER_RUN = 6
OPS_PER_RUN = 48
MAINTENANCE = frozenset({"flush", "compact"})


class PowerLossFS(fsio.FileSystem):
    """The real file system, plus what a power cut would keep of each file written through it."""

    def __init__(self) -> None:
        self.fd_paths: dict[int, Path] = {}
        self.synced: dict[Path, int] = {}  # file -> size at the last fsync / fdatasync
        self.pending: set[Path] = set()  # files and folders created or renamed, parent not fsynced
        self.dirs: set[Path] = set()  # folders made through FS (or renamed through it)
        self.syncs = 0
        self.calls = 0  # every FS call, counted once it has returned
        self.on_next_write: Callable[[], None] | None = None  # a cut inside the next write
        self.after_call: Callable[[str], None] | None = None  # called after every FS call

    def _done(self, name: str) -> None:
        self.calls += 1
        if self.after_call is not None:
            self.after_call(name)

    def write_all(self, fd: int, buffers: Any) -> None:
        super().write_all(fd, buffers)
        hook, self.on_next_write = self.on_next_write, None
        if hook is not None:  # written, not yet synced: the power fails now
            hook()
        self._done("write_all")

    def open_for_append(self, path: Any, *, exclusive: bool) -> int:
        p = Path(path).resolve()
        existed = p.exists()
        fd = super().open_for_append(path, exclusive=exclusive)
        self.fd_paths[fd] = p
        if not existed:
            self.pending.add(p)
            self.synced[p] = 0
        self._done("open_for_append")
        return fd

    def _synced_now(self, fd: int, name: str) -> None:
        self.syncs += 1
        self.synced[self.fd_paths[fd]] = os.fstat(fd).st_size
        self._done(name)

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._synced_now(fd, "fdatasync")

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._synced_now(fd, "fsync")

    def ftruncate(self, fd: int, size: int) -> None:
        super().ftruncate(fd, size)
        path = self.fd_paths.get(fd)
        if path in self.synced:  # cut below the synced size: nothing beyond it is left
            self.synced[path] = min(self.synced[path], size)
        self._done("ftruncate")

    def truncate_file(self, path: Any, size: int) -> None:
        super().truncate_file(path, size)
        self.synced[Path(path).resolve()] = size
        self._done("truncate_file")

    def fsync_dir(self, path: Any) -> None:
        super().fsync_dir(path)
        directory = Path(path).resolve()
        self.pending = {p for p in self.pending if p.parent != directory}
        self._done("fsync_dir")

    def close(self, fd: int) -> None:
        self.fd_paths.pop(fd, None)
        super().close(fd)
        self._done("close")

    def mkdir(self, path: Any, *, exist_ok: bool = False) -> None:
        p = Path(path).resolve()
        existed = p.exists()
        super().mkdir(path, exist_ok=exist_ok)
        if not existed:
            self.dirs.add(p)
            self.pending.add(p)
        self._done("mkdir")

    def _forget(self, root: Path) -> None:
        """Drop what is tracked at or under `root` (removed or replaced)."""
        def inside(p: Path) -> bool:
            return p == root or root in p.parents
        self.synced = {p: n for p, n in self.synced.items() if not inside(p)}
        self.pending = {p for p in self.pending if not inside(p)}
        self.dirs = {p for p in self.dirs if not inside(p)}

    def rename(self, src: Any, dst: Any) -> None:
        super().rename(src, dst)
        s, d = Path(src).resolve(), Path(dst).resolve()
        if d.is_dir():  # a folder: its tracked files and folders move along
            def moved(p: Path) -> Path:
                return d / p.relative_to(s) if p == s or s in p.parents else p
            self._forget(d)
            self.synced = {moved(p): n for p, n in self.synced.items()}
            self.pending = {moved(p) for p in self.pending}
            self.dirs = {moved(p) for p in self.dirs} | {d}
        else:
            self.synced[d] = self.synced.pop(s, 0)
        self.pending.discard(s)
        self.pending.add(d)
        self._done("rename")

    def remove(self, path: Any) -> None:
        super().remove(path)
        self._forget(Path(path).resolve())
        self._done("remove")

    def remove_tree(self, path: Any) -> None:
        super().remove_tree(path)
        self._forget(Path(path).resolve())
        self._done("remove_tree")


def cut_power(fs: PowerLossFS, live: Path, copy: Path, rng: np.random.Generator,
              tally: dict[str, int]) -> None:
    """Copy the open data folder `live` to `copy` and drop, in the copy, what a power cut may."""
    shutil.copytree(live, copy)
    for lock in copy.rglob("lock.mdb"):  # LMDB's reader table: rebuilt by the next open
        lock.unlink()
    for wal_file in live.rglob("wal/*.log"):
        assert wal_file.resolve() in fs.synced, f"{wal_file} was not written through fsio.FS"
    for seg_file in live.rglob("segments/*seg-*/*"):
        assert seg_file.resolve() in fs.synced, f"{seg_file} was not written through fsio.FS"
    root = live.resolve()
    for folder in sorted(fs.pending & fs.dirs):  # parents before children
        target = copy / folder.relative_to(root)
        if target.is_dir() and rng.random() < 0.5:
            shutil.rmtree(target)
            tally["entries_lost"] += 1
    for path, synced in fs.synced.items():
        target = copy / path.relative_to(root)
        if not target.exists():
            continue
        if path in fs.pending and rng.random() < 0.5:
            target.unlink()
            tally["entries_lost"] += 1
            continue
        size = target.stat().st_size
        # Any prefix of the unsynced bytes may have been written back; often all of them.
        keep = size if rng.random() < 0.25 else int(rng.integers(min(synced, size), size + 1))
        if keep == size:
            continue
        tally["unsynced_bytes_dropped"] += size - keep
        tally["files_cut"] += 1
        with open(target, "r+b") as f:
            f.truncate(keep)
            if rng.random() < 0.3:
                f.seek(keep)
                f.write(bytes(int(rng.integers(1, size - keep + 1))))
                tally["zero_tails"] += 1


def _check_cut(copy: Path, key: bytes, durability: str, where: str, plan: list[cw.Op],
               models: list[dict], acked: int, last: int, floor: int, seed: int) -> int:
    """Open the cut copy and check it (see the module docstring). `acked`: ops acknowledged
    before the cut; `last`: the newest op that may have survived; `floor`: ops a completed
    flush / compact made durable. Returns how many ops survived."""
    with Client(copy, durability=durability) as client:
        index = client.load_index(fw.INDEX_NAME, key)
        state = fw.read_state(index)
        matches = [j for j in range(last + 1) if models[j] == state]
        assert matches, (f"{where}: the state is not the one after any prefix of the ops: "
                         f"{fw.judge(state, {(0, 0): fw.History(plan[:acked], None)}).details[:6]}")
        survived = max(matches)
        if durability == "fsync":
            assert survived >= acked, f"{where}: {acked - survived} acknowledged ops lost"
        assert survived >= floor, (f"{where}: only {survived} ops survived, but a flush had "
                                   f"made {floor} durable")
        fw.check_queries(index, state, seed)
        # The replay may have left frozen memtables, which the open flushes in the background
        # (even with background_compaction off); verify() races such a flush (it reads the
        # store and log after releasing its snapshot), so let it finish first.
        index.flush()
        assert sorted(index.list_ids()) == sorted(state), f"{where}: a flush changed the ids"
        report = index.verify()
        assert report["ok"], f"{where}: verify: {report['problems'][:3]}"
        seg_root = copy / fw.INDEX_NAME / "segments"
        on_disk = sorted(os.listdir(seg_root)) if seg_root.exists() else []
        named = sorted(segment_dir_name(s["id"]) for s in index.stats()["segments"])
        assert on_disk == named, f"{where}: segment folders {on_disk}, manifest {named}"
        index.upsert([{"id": "after-cut", "vector": np.ones(fw.DIM, np.float32)}])
    return survived


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    with fw.scratch(tmp_path) as path:
        yield path


def _one_run(work: Path, durability: str, seed: int, tally: dict[str, int]) -> list[str]:
    """One workload with CUTS_PER_RUN cuts, each after op c or inside op c (after its log
    write, before its sync). Returns "<cut>-><ops that survived>" per cut."""
    rng = np.random.default_rng(seed)
    run_dir, key = work / f"run{seed}", generate_key()
    live = run_dir / "live"
    plan = [cw.make_op(seed, 0, 0, k, MAINTENANCE) for k in range(OPS_PER_RUN)]
    points = sorted(int(c) for c in rng.choice(np.arange(1, OPS_PER_RUN + 1), CUTS_PER_RUN,
                                               replace=False))
    # cut -> (acked ops, whether op c was in flight, ops a flush / compact had made durable)
    cuts: dict[int, tuple[int, bool, int]] = {}
    fs, real = PowerLossFS(), fsio.FS
    fsio.FS = fs
    try:
        fw.create_index(live, key, durability=durability, wal_roll_bytes=30_000)
        with Client(live, durability=durability) as client:
            index = client.load_index(fw.INDEX_NAME, key)
            floor = 0
            for c, op in enumerate(plan, start=1):
                during = c in points and op.kind in ("new", "overwrite", "delete") and rng.random() < 0.5
                if during:
                    fs.on_next_write = lambda c=c: cut_power(fs, live, run_dir / f"cut{c}", rng, tally)
                    cuts[c] = (c - 1, True, floor)
                cw.apply_op(index, op)
                assert fs.on_next_write is None, "the op wrote nothing to the log"
                if op.kind in MAINTENANCE:
                    floor = c
                if c in points and not during:
                    cut_power(fs, live, run_dir / f"cut{c}", rng, tally)
                    cuts[c] = (c, False, floor)
    finally:
        fsio.FS = real
    assert fs.syncs > 0
    models = [fw.model_after(plan[:j]) for j in range(OPS_PER_RUN + 1)]
    outcomes = []
    for c, (acked, during, floor) in sorted(cuts.items()):
        where = f"{durability} run {seed}, cut {'inside op' if during else 'after op'} {c}"
        last = c if during else acked  # the newest op that may have survived
        survived = _check_cut(run_dir / f"cut{c}", key, durability, where, plan, models,
                              acked, last, floor, seed)
        tally["cuts"] += 1
        tally["cuts_inside_an_op"] += during
        tally["acked_ops_at_cuts"] += acked
        tally["acked_ops_lost"] += max(0, acked - survived)
        tally["inflight_survived"] += during and survived == c
        outcomes.append(f"{c}{'*' if during else ''}->{survived}")
    return outcomes


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_power_loss_keeps_what_the_durability_setting_promises(durability: str, work_dir: Path,
                                                               record_property: Any) -> None:
    tally = dict.fromkeys(("cuts", "cuts_inside_an_op", "acked_ops_at_cuts", "acked_ops_lost",
                           "inflight_survived", "files_cut", "unsynced_bytes_dropped",
                           "zero_tails", "entries_lost"), 0)
    outcomes = []
    for run in range(RUNS_PER_MODE):
        outcomes += _one_run(work_dir, durability, 500 + 10 * run + (durability == "os"), tally)
    if durability == "fsync":
        assert tally["acked_ops_lost"] == 0
    summary = (f"power_loss[{durability}]: {tally['cuts']} power-loss cuts "
               f"({tally['cuts_inside_an_op']} inside an op, between its log write and its sync; "
               f"{tally['inflight_survived']} of those ops survived whole), "
               f"{tally['acked_ops_at_cuts']} acknowledged ops before the cuts in all; "
               f"{tally['files_cut']} files cut ({tally['unsynced_bytes_dropped']} unsynced bytes "
               f"dropped, {tally['zero_tails']} zero-filled tails), {tally['entries_lost']} unsynced "
               f"directory entries dropped; acknowledged ops lost {tally['acked_ops_lost']} "
               f"({'must be 0' if durability == 'fsync' else 'allowed with durability=os: a suffix'}); "
               f"non-prefix states 0; cut->survived (* = inside the op) {outcomes}")
    record_property("power_loss_summary", summary)
    print(summary)


# ------------------------------------------------------------------ cuts inside flush and merge

MAINTENANCE_SEEDS = (700, 711)
CUT_ALWAYS = frozenset({"write_all", "rename", "mkdir"})
"""FS calls after which a cut is always taken inside a flush / compact / train: they leave
unsynced bytes or an unsynced directory entry behind (the first call of each op too)."""
CUT_SHARE = 0.2
"""Share of the other FS calls inside a flush / compact / train after which a cut is taken."""


def _maintenance_plan(seed: int) -> list[cw.Op]:
    """Upserts / overwrites / deletes in rounds, each round ended by an explicit flush; a
    compact() once five segments exist (four of a tier merge, and deletes leave dead rows),
    a train() (everything merged into one segment), and a last round left in the log."""
    plan: list[cw.Op] = []
    k = 0

    def data(n: int) -> None:
        nonlocal k
        for _ in range(n):
            plan.append(cw.make_op(seed, 0, 0, k))
            k += 1

    for _ in range(5):
        data(3)
        plan.append(cw.Op("flush"))
    plan.append(cw.Op("compact"))
    data(3)
    plan.append(cw.Op("flush"))
    data(2)
    plan.append(cw.Op("train"))
    data(2)
    plan.append(cw.Op("compact"))  # a flush of the last round, then merges if the policy wants
    return plan


def _maintenance_run(work: Path, seed: int, tally: dict[str, int]) -> list[str]:
    """Run the plan once with cuts after a random share of the FS calls of every flush /
    compact / train, and after each of them; then reopen and check every cut."""
    rng = np.random.default_rng(seed)
    run_dir, key = work / f"maint{seed}", generate_key()
    live = run_dir / "live"
    plan = _maintenance_plan(seed)
    # name -> (acked ops, whether the maintenance op was in flight, ops made durable by it)
    cuts: dict[str, tuple[int, bool, int]] = {}
    fs, real = PowerLossFS(), fsio.FS
    fsio.FS = fs
    try:
        fw.create_index(live, key, durability="fsync", wal_roll_bytes=30_000,
                        memtable_bytes=1 << 30)  # nothing flushed unless asked
        with Client(live, durability="fsync") as client:
            index = client.load_index(fw.INDEX_NAME, key)
            floor = 0
            for c, op in enumerate(plan, start=1):
                if op.kind not in cw.MAINTENANCE_KINDS:
                    cw.apply_op(index, op)
                    continue
                first = fs.calls + 1

                def cut_after(name: str, c: int = c, first: int = first, floor: int = floor) -> None:
                    if fs.calls == first or name in CUT_ALWAYS or rng.random() < CUT_SHARE:
                        label = f"{op.kind}{c}-call{fs.calls - first + 1}-{name}"
                        cut_power(fs, live, run_dir / label, rng, tally)
                        cuts[label] = (c - 1, True, floor)

                fs.after_call = cut_after
                try:
                    cw.apply_op(index, op)
                finally:
                    fs.after_call = None
                assert fs.calls >= first, f"{op.kind} {c} made no FS call"
                tally[f"{op.kind}_calls"] += fs.calls - first + 1
                floor = c
                cut_power(fs, live, run_dir / f"after-{op.kind}{c}", rng, tally)
                cuts[f"after-{op.kind}{c}"] = (c, False, floor)
    finally:
        fsio.FS = real
    models = [fw.model_after(plan[:j]) for j in range(len(plan) + 1)]
    outcomes = []
    for label, (acked, during, floor) in cuts.items():
        where = f"maintenance run {seed}, cut {label}"
        last = acked + 1 if during else acked
        survived = _check_cut(run_dir / label, key, "fsync", where, plan, models, acked, last,
                              floor, seed)
        shutil.rmtree(run_dir / label)
        tally["cuts"] += 1
        tally["cuts_inside"] += during
        tally["acked_ops_lost"] += max(0, acked - survived)
        outcomes.append(f"{label}->{survived}")
    return outcomes


def test_power_loss_during_flush_and_merge(work_dir: Path, record_property: Any) -> None:
    tally: dict[str, int] = collections.Counter()
    outcomes = []
    for seed in MAINTENANCE_SEEDS:
        outcomes += _maintenance_run(work_dir, seed, tally)
    assert tally["acked_ops_lost"] == 0
    assert tally["cuts_inside"] >= 20, f"too few cuts inside flush / merge: {dict(tally)}"
    summary = (f"power_loss[flush/merge]: {tally['cuts']} cuts ({tally['cuts_inside']} inside "
               f"a flush / compact / train, after one of its FS calls: "
               f"{tally['flush_calls']} flush, {tally['compact_calls']} compact, "
               f"{tally['train_calls']} train calls in all); {tally['files_cut']} files cut "
               f"({tally['unsynced_bytes_dropped']} unsynced bytes dropped, {tally['zero_tails']} "
               f"zero-filled tails), {tally['entries_lost']} unsynced directory entries dropped; "
               f"acknowledged ops lost 0; non-prefix states 0; cuts {outcomes}")
    record_property("power_loss_summary", summary)
    print(summary)
