"""Serializing ScaNN in a forked child: the parent never runs ScaNN's GIL-holding serialize,
the files equal an in-process serialize, and every child failure falls back cleanly."""
from __future__ import annotations

import errno
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest

import lsmvec.compaction.scann_serialize as scann_serialize
from lsmvec.compaction.scann_assets import train_searcher
from lsmvec.compaction.scann_params import MIN_TREE_ROWS, choose_params

pytestmark = pytest.mark.skipif(not scann_serialize.fork_usable(), reason="needs os.fork (Linux)")


class FakeSearcher:
    """Writes a known dataset.npy (and one other asset) and records which process ran."""

    def __init__(self, vectors: np.ndarray, *, in_child: str = "ok", differ: bool = False,
                 log: Path, flag: Path | None = None) -> None:
        self.vectors = vectors
        self.in_child = in_child
        self.differ = differ
        self.parent = os.getpid()
        self.log = log
        self.flag = flag

    def serialize(self, path: str, relative_path: bool = False) -> None:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if os.getpid() != self.parent:
            if self.in_child == "raise":
                raise RuntimeError("child failure")
            if self.in_child == "hang":
                time.sleep(3600)
            if self.in_child == "die":
                os._exit(1)
            if self.in_child == "wait_for_flag":  # the parent's during() makes it
                deadline = time.monotonic() + 30
                while not self.flag.exists():
                    if time.monotonic() > deadline:
                        os._exit(3)
                    time.sleep(0.001)
        rows = self.vectors + (1.0 if self.differ else 0.0)
        stream = io.BytesIO()  # written as ScaNN does: one sequential write, no seek
        np.lib.format.write_array(stream, rows)
        with open(os.path.join(path, "dataset.npy"), "wb") as f:
            f.write(stream.getvalue())
        Path(path, "scann_assets.pbtxt").write_text("assets {}\n")


def pids(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]


def rows(n: int = 50, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)


def test_the_child_streams_an_equal_dataset_through_a_fifo_and_nothing_keeps_it(
        tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows(20_000, 8)  # 640 kB: more than one pipe buffer
    fake = FakeSearcher(vectors, log=tmp_path / "log")
    assert scann_serialize.serialize_searcher(fake, scratch, vectors) == (True, False)
    assert os.getpid() not in pids(tmp_path / "log")  # only the child serialized
    assert sorted(os.listdir(scratch)) == ["scann_assets.pbtxt"]  # no FIFO, no dataset left


def test_a_dataset_that_differs_is_kept_by_an_in_process_serialize(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    fake = FakeSearcher(vectors, differ=True, log=tmp_path / "log")
    assert scann_serialize.serialize_searcher(fake, scratch, vectors) == (True, True)
    ran = pids(tmp_path / "log")
    assert len(ran) == 2 and ran[0] != os.getpid() and ran[1] == os.getpid()
    np.testing.assert_array_equal(np.load(scratch / "dataset.npy"), vectors + 1.0)


@pytest.mark.parametrize("shape, dtype", [((50, 9), "<f4"), ((50, 8), "<f8"), ((49, 8), "<f4")])
def test_a_dataset_of_another_shape_or_type_counts_as_different(tmp_path: Path, shape: tuple,
                                                                dtype: str) -> None:
    """The FIFO's reader checks the .npy header too, not only the bytes."""
    class Other(FakeSearcher):
        def serialize(self, path: str, relative_path: bool = False) -> None:
            if os.getpid() == self.parent:
                return super().serialize(path, relative_path)
            stream = io.BytesIO()
            np.lib.format.write_array(stream, np.zeros(shape, dtype))
            with open(os.path.join(path, "dataset.npy"), "wb") as f:
                f.write(stream.getvalue())
            Path(path, "scann_assets.pbtxt").write_text("assets {}\n")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = np.zeros((50, 8), np.float32)
    fake = Other(vectors, log=tmp_path / "log")
    assert scann_serialize.serialize_searcher(fake, scratch, vectors) == (True, False)
    assert pids(tmp_path / "log") == [os.getpid()]  # the parent serialized again


def test_during_runs_in_the_parent_while_the_child_serializes(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    flag = tmp_path / "flag"
    fake = FakeSearcher(vectors, in_child="wait_for_flag", log=tmp_path / "log", flag=flag)
    ran_in: list[int] = []

    def during() -> bool:
        ran_in.append(os.getpid())
        flag.touch()  # the child serializes only once this ran: they overlap
        return True

    assert scann_serialize.serialize_searcher(fake, scratch, vectors, during=during) == (True,
                                                                                       False)
    assert ran_in == [os.getpid()]
    assert os.getpid() not in pids(tmp_path / "log")


@pytest.mark.parametrize("outcome", ["unwanted", "raises"])
def test_during_saying_no_or_failing_stops_the_child(tmp_path: Path, outcome: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    fake = FakeSearcher(vectors, in_child="hang", log=tmp_path / "log")

    def during() -> bool:
        while not (tmp_path / "log").exists() or not pids(tmp_path / "log"):  # in serialize
            time.sleep(0.001)
        if outcome == "raises":
            raise KeyError("calibration failed")
        return False

    if outcome == "raises":
        with pytest.raises(KeyError):
            scann_serialize.serialize_searcher(fake, scratch, vectors, during=during)
    else:
        assert scann_serialize.serialize_searcher(fake, scratch, vectors,
                                                  during=during) == (False, False)
    child = pids(tmp_path / "log")[0]
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped
    assert pids(tmp_path / "log") == [child]  # and nobody serialized
    assert os.listdir(scratch) == []


@pytest.mark.parametrize("failure", ["raise", "die"])
def test_a_failing_child_falls_back_to_the_parent(tmp_path: Path, failure: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    fake = FakeSearcher(vectors, in_child=failure, log=tmp_path / "log")
    assert scann_serialize.serialize_searcher(fake, scratch, vectors) == (True, False)
    ran = pids(tmp_path / "log")
    assert len(ran) == 2 and ran[0] != os.getpid() and ran[1] == os.getpid()
    assert sorted(os.listdir(scratch)) == ["scann_assets.pbtxt"]


def test_a_child_over_time_is_killed_and_the_parent_serializes(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    fake = FakeSearcher(vectors, in_child="hang", log=tmp_path / "log")
    started = time.monotonic()
    assert scann_serialize.serialize_searcher(fake, scratch, vectors,
                                              timeout_s=0.5) == (True, False)
    assert time.monotonic() - started < 30
    child = pids(tmp_path / "log")[0]
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped: no zombie left behind
    assert pids(tmp_path / "log")[1] == os.getpid()


def test_the_environment_switch_keeps_serialize_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSMVEC_SERIALIZE_IN_CHILD", "0")
    assert not scann_serialize.fork_usable()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    vectors = rows()
    fake = FakeSearcher(vectors, log=tmp_path / "log")
    order: list[str] = []
    assert scann_serialize.serialize_searcher(
        fake, scratch, vectors, during=lambda: order.append("during") or True) == (True, False)
    assert pids(tmp_path / "log") == [os.getpid()] and order == ["during"]
    assert scann_serialize.serialize_searcher(fake, scratch, vectors,
                                              during=lambda: False) == (False, False)
    assert pids(tmp_path / "log") == [os.getpid()]  # not serialized again


def test_a_real_searcher_serialized_in_a_child_equals_one_serialized_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n, dim = MIN_TREE_ROWS + 500, 16
    vectors = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    searcher = train_searcher(vectors, choose_params(n, dim, "euclidean", kind="tree_ah"), 1)
    forked, local = tmp_path / "forked", tmp_path / "local"
    forked.mkdir()
    local.mkdir()
    assert scann_serialize.serialize_searcher(searcher, forked, vectors) == (True, False)
    monkeypatch.setenv("LSMVEC_SERIALIZE_IN_CHILD", "0")
    assert scann_serialize.serialize_searcher(searcher, local, vectors) == (True, False)
    names = sorted(os.listdir(local))
    assert sorted(os.listdir(forked)) == names and "dataset.npy" not in names
    for name in names:
        assert (forked / name).read_bytes() == (local / name).read_bytes(), name


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages of the mapping holding `address` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                inside = lo <= address < hi
            elif inside and fields[0] == "AnonHugePages:":
                return int(fields[1])
    return 0


def test_big_anonymous_mappings_are_collapsed_into_huge_pages_before_the_fork() -> None:
    """The fork copies one page-table entry per page while holding the GIL: the serializer
    first collapses big anonymous mappings (here a 96 MiB buffer in 4 KiB pages)."""
    import ctypes
    buf = bytearray(96 << 20)
    buf[::4096] = b"\x01" * len(buf[::4096])  # resident, in small pages
    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    before = _anon_huge_kb(address)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    probe = (address + (4 << 20)) & ~((2 << 20) - 1)
    if libc.madvise(probe, 2 << 20, 25) != 0 and ctypes.get_errno() == errno.EINVAL:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux < 6.1)")
    scann_serialize._collapse_to_huge_pages()
    after = _anon_huge_kb(address)
    assert after >= before + (64 << 10), (before, after)  # at least 64 MiB more in huge pages
    assert buf[::4096] == b"\x01" * len(buf[::4096])  # same contents
