"""Simulated power loss (LevelDB's fault_injection_test): unsynced bytes and unsynced directory
entries are dropped, and what recovers is what the durability setting promises.

``PowerLossFS`` replaces wal.fsio.FS and records, per file written through it (the log files,
CONFIG), its size at the last fsync / fdatasync and whether its directory entry was made durable
(an fsync of its directory after its creation or rename). At a cut -- after K acknowledged ops,
K random, or inside op K between its log write and its sync -- the index folder is copied while
open, and in the copy each tracked file is cut to a
random size between its last synced size and its current one (the OS may have written back any
prefix of the rest, often all of it), sometimes followed by zeros up to a random size (the size reached the disk,
the data did not), and a file whose directory entry was never synced is deleted half the time.
Then the copy is opened:
- always: the state is the one after some prefix of the ops (never a newer op without an
  older one, never a part of an op), at least up to the last completed flush / compact;
- durability="fsync": that prefix holds every acknowledged op (the op cut inside may or may not
  be there).

What is not simulated: LMDB (store/) and segment files are not written through fsio, so their
unsynced state cannot be dropped. Cuts are therefore made only with background_compaction=False,
between calls or at the log write of an upsert / delete -- never while a flush or merge runs
(an auto flush runs inside the upsert that triggers it, before its log write): LMDB syncs each
commit itself and a segment is fsynced before its commit, so at those moments those files hold
only synced data.
Removals are taken as durable at once (a removed log file never comes back).
"""
from __future__ import annotations

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
from lsmvec.wal import fsio

RUNS_PER_MODE = 5
CUTS_PER_RUN = 6
OPS_PER_RUN = 48
MAINTENANCE = frozenset({"flush", "compact"})


class PowerLossFS(fsio.FileSystem):
    """The real file system, plus what a power cut would keep of each file written through it."""

    def __init__(self) -> None:
        self.fd_paths: dict[int, Path] = {}
        self.synced: dict[Path, int] = {}  # size at the last fsync / fdatasync
        self.pending: set[Path] = set()  # created or renamed, directory not yet fsynced
        self.syncs = 0
        self.on_next_write: Callable[[], None] | None = None  # a cut inside the next append

    def write_all(self, fd: int, buffers: Any) -> None:
        super().write_all(fd, buffers)
        hook, self.on_next_write = self.on_next_write, None
        if hook is not None:  # written, not yet synced: the power fails now
            hook()

    def open_for_append(self, path: Any, *, exclusive: bool) -> int:
        p = Path(path).resolve()
        existed = p.exists()
        fd = super().open_for_append(path, exclusive=exclusive)
        self.fd_paths[fd] = p
        if not existed:
            self.pending.add(p)
            self.synced[p] = 0
        return fd

    def _synced_now(self, fd: int) -> None:
        self.syncs += 1
        self.synced[self.fd_paths[fd]] = os.fstat(fd).st_size

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._synced_now(fd)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._synced_now(fd)

    def truncate_file(self, path: Any, size: int) -> None:
        super().truncate_file(path, size)
        self.synced[Path(path).resolve()] = size

    def fsync_dir(self, path: Any) -> None:
        super().fsync_dir(path)
        directory = Path(path).resolve()
        self.pending = {p for p in self.pending if p.parent != directory}

    def close(self, fd: int) -> None:
        self.fd_paths.pop(fd, None)
        super().close(fd)

    def rename(self, src: Any, dst: Any) -> None:
        super().rename(src, dst)
        s, d = Path(src).resolve(), Path(dst).resolve()
        self.synced[d] = self.synced.pop(s, 0)
        self.pending.discard(s)
        self.pending.add(d)

    def remove(self, path: Any) -> None:
        super().remove(path)
        p = Path(path).resolve()
        self.synced.pop(p, None)
        self.pending.discard(p)


def cut_power(fs: PowerLossFS, live: Path, copy: Path, rng: np.random.Generator,
              tally: dict[str, int]) -> None:
    """Copy the open data folder `live` to `copy` and drop, in the copy, what a power cut may."""
    shutil.copytree(live, copy)
    for lock in copy.rglob("lock.mdb"):  # LMDB's reader table: rebuilt by the next open
        lock.unlink()
    for wal_file in live.rglob("wal/*.log"):
        assert wal_file.resolve() in fs.synced, f"{wal_file} was not written through fsio.FS"
    for path, synced in fs.synced.items():
        target = copy / path.relative_to(live.resolve())
        if not target.exists():
            continue
        if path in fs.pending and rng.random() < 0.5:
            target.unlink()
            tally["entries_lost"] += 1
            continue
        size = target.stat().st_size
        # Any prefix of the unsynced bytes may have been written back; often all of them.
        keep = size if rng.random() < 0.25 else int(rng.integers(synced, size + 1))
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
        with Client(run_dir / f"cut{c}", durability=durability) as client:
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
            index.upsert([{"id": "after-cut", "vector": np.ones(fw.DIM, np.float32)}])
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
