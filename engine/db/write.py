"""The write queue: group commit in the engine (the writers queue of LevelDB's DBImpl::Write).

Callers queue up; the caller at the head of the queue is the leader. It takes every waiting
record (up to MAX_GROUP_BYTES), gives them consecutive LSNs from the log's next_lsn, seals each
payload bound to its LSN and kind, and -- without holding the queue lock -- hands the group to
the log (LogWriter.append_group: one writev, one fdatasync). Then it applies each record to
memory in LSN order (the record's apply callback: the memtable, under the index's write lock),
and wakes the followers. The next leader starts only after that, so applies of successive
groups never interleave and memory follows log order. A call returns once its record is
durable and applied: durable and visible.

Overlap: a record may come with a `prepare` callable (the engine's: copy the batch's vectors
into rows of the memtable that readers do not see yet, and look its ids up). The leader hands
the group's prepares to the queue's stager thread, then seals, writes and syncs the group
(AES-GCM, writev and fdatasync release the GIL) while they run; apply then finds that work
done. Measured at 1000 x 384 per call: 0.4-0.8 ms of prepare (2.5 ms in a fresh process, whose
first pages fault) hidden behind 0.45 ms of sealing, 0.45 ms of writev and 1.1-1.5 ms of
fdatasync. Nothing a prepare does is visible before apply, so a record that fails to seal or
to be written leaves nothing behind; a prepare that raises is ignored (apply does the work).

Late payloads: a record may instead come with a `resolve` callable that computes its payload
at its LSN position (delete(filters=): which ids match is decided there). Such a record always
heads its group, so when its leader calls resolve every earlier record is applied and no later
one is; resolve raising fails that record alone, like a seal failure.

Failures:
- a record whose seal fails (or whose sealed payload is too large) fails alone; its LSN goes to
  the next record of the group, so the log has no gap.
- the log refused the group: a failed write is cut back (StorageError / StorageFullError, the
  LSNs are reused by the next group -- so `seal` may see an LSN twice and must not derive a
  nonce from the LSN alone); a failed sync poisons the log (LogPoisonedError). Every caller of
  the group gets that error.
- an apply that raises leaves a durable record that memory does not hold: memory no longer
  matches what replay would rebuild. The queue poisons itself: that caller, the callers of the
  group's later records (durable too) and every later write get ApplyFailedError until the
  index is reopened, which replays those records. Earlier records of the group stay applied.
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from lsmvec.wal import LogWriter, record_parts
from lsmvec.wal.errors import ApplyFailedError, ClosedError
from lsmvec.wal.format import HEADER_SIZE, Buffer

__all__ = ["WriteQueue", "MAX_GROUP_BYTES", "STAGE_MIN_BYTES", "wal_aad", "sealer"]

log = logging.getLogger(__name__)

MAX_GROUP_BYTES = 64 << 20  # one group's payload cap: bounds a leader's latency and memory
STAGE_MIN_BYTES = 256 << 10
"""Groups whose records with a prepare carry less payload than this skip the stager: handing
work to it and back cost 60-130 us here (a 1-row upsert: 145 -> 280 us with durability="os"),
more than the copy it overlaps until a batch is about 170 rows of 384 floats."""
Payload = Buffer | Sequence[Buffer]
Seal = Callable[[int, int, list], Any]  # (lsn, kind, payload parts) -> sealed bytes-like
Apply = Callable[[int], None]
Prepare = Callable[[], None]
Resolve = Callable[[], Payload]
Record = tuple  # (kind, payload, apply[, prepare[, resolve]])


def wal_aad(uuid: bytes, lsn: int, kind: int) -> bytes:
    """The associated data a log payload is sealed under: it binds the record to its index,
    its LSN and its kind (a record moved or relabelled fails authentication)."""
    return b"%s|wal|%d|%d" % (uuid, kind, lsn)


def payload_bytes(payload: Payload) -> int:
    """Bytes of a record payload: bytes-like, or a list of bytes-like parts."""
    if isinstance(payload, (list, tuple)):
        return sum(memoryview(part).nbytes for part in payload)
    return memoryview(payload).nbytes


def sealer(cipher: Any) -> Seal:
    """The engine's seal: AES-256-GCM (random nonce) over the payload parts, bound by wal_aad."""
    def seal(lsn: int, kind: int, parts: list) -> bytearray:
        return cipher.wal.seal_parts(parts, wal_aad(cipher.uuid, lsn, kind))
    return seal


class _Entry:
    """One queued record and, once its group is done, its outcome."""

    __slots__ = ("kind", "parts", "size", "apply", "prepare", "resolve", "lsn", "done", "error",
                 "wake")

    def __init__(self, kind: int, parts: list[Buffer], size: int, apply: Apply | None,
                 prepare: Prepare | None = None, resolve: Resolve | None = None):
        self.kind, self.parts, self.size, self.apply = kind, parts, size, apply
        self.prepare, self.resolve = prepare, resolve
        self.lsn = 0
        self.done = False
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until the leader releases this caller
        self.wake.acquire()


class WriteQueue:
    """Group commit of records into `log`, each applied (apply(lsn)) once durable. `seal`, when
    given, transforms each payload's parts before it is written; it runs in the leader's
    thread. `name` names the index in messages. Thread-safe."""

    def __init__(self, log_writer: LogWriter, *, seal: Seal | None = None, name: str = "index"):
        self.log = log_writer
        self.name = name
        self._seal = seal
        self._cond = threading.Condition(threading.Lock())  # guards the queue and the flags
        self._queue: deque[_Entry] = deque()
        self._closing = False
        self._failed: BaseException | None = None  # the first apply error: poisoned
        self._failed_lsn = 0
        self._stager: _Stager | None = None  # started by the first group with a prepare

    @property
    def poisoned(self) -> bool:
        """True once an apply failed (writes refused until reopen) or the log is poisoned."""
        return self._failed is not None or self.log.poisoned

    def check(self) -> None:
        """Raise now what a write would raise before it is queued: ClosedError,
        ApplyFailedError, LogPoisonedError."""
        if self._closing:
            raise ClosedError(f"index {self.name!r} is closed")
        self.check_applied()
        self.log.check_writable()

    def check_applied(self) -> None:
        """Raise ApplyFailedError if an apply has failed: memory no longer matches the log, so
        nothing that writes (a flush would make that memory permanent) may go on."""
        if self._failed is not None:
            raise self._apply_failed_error()

    # -- writing ------------------------------------------------------------------------------

    def write(self, kind: int, payload: Payload, apply: Apply | None = None,
              prepare: Prepare | None = None) -> int:
        """Log one record and return its LSN once it is durable (per the log's durability)
        and apply(lsn) has run. `payload`: bytes-like, or a list of bytes-like parts.

        Raises InvalidArgumentError (kind outside 1..254, payload over MAX_PAYLOAD),
        InvalidTypeError (payload not bytes-like), ClosedError (after close), what sealing
        raised (nothing logged), StorageError / StorageFullError (the write failed; nothing
        logged), LogPoisonedError (a sync failed, now or earlier), ApplyFailedError (this or an
        earlier apply failed; this record is logged when the failure was its own)."""
        entry = self._entry(kind, payload, apply, prepare)
        with self._cond:
            self.check()
            self._queue.append(entry)
            head = self._queue[0] is entry
        self._await(entry, head)
        if entry.error is not None:
            raise entry.error
        return entry.lsn

    def write_many(self, records: Sequence[Record]) -> list[int | BaseException]:
        """Log several records -- (kind, payload, apply[, prepare[, resolve]]) -- queued back
        to back, from one thread: they share groups (one write, one sync) without a thread per
        record. Returns, per record, its LSN or the error
        that `write` would have raised for it (each record stands alone: one failing to seal
        or to be written does not undo another). Raises, before queueing anything, what `write`
        raises for a bad kind or payload, and ClosedError / LogPoisonedError /
        ApplyFailedError."""
        entries = [self._entry(*record) for record in records]
        if not entries:
            return []
        with self._cond:
            self.check()
            head = not self._queue
            self._queue.extend(entries)
        for i, entry in enumerate(entries):
            if not entry.done:
                self._await(entry, head and i == 0)
        return [entry.error if entry.error is not None else entry.lsn for entry in entries]

    @staticmethod
    def _entry(kind: int, payload: Payload, apply: Apply | None,
               prepare: Prepare | None = None, resolve: Resolve | None = None) -> _Entry:
        parts, size = record_parts(kind, payload)
        return _Entry(kind, parts, size, apply, prepare, resolve)

    def _await(self, entry: _Entry, head: bool) -> None:
        """Wait until `entry`'s group is done, leading it when `entry` reaches the head."""
        if not head:  # released once: when its group is done, or when it becomes the head
            entry.wake.acquire()
        with self._cond:
            group = None if entry.done else self._take_group()
        if group is not None:
            self._lead(group)

    def _take_group(self) -> list[_Entry]:
        """The head of the queue, up to MAX_GROUP_BYTES (at least one). Stays queued until done,
        so later callers wait behind it. Caller holds _cond."""
        group: list[_Entry] = []
        total = 0
        for entry in self._queue:
            if group and (total + entry.size > MAX_GROUP_BYTES or entry.resolve is not None):
                break  # a record resolved at its LSN leads its group: see _seal_group
            group.append(entry)
            total += entry.size + HEADER_SIZE
        return group

    def _lead(self, group: list[_Entry]) -> None:
        try:
            if self._failed is not None:  # queued before an earlier group's apply failed
                for entry in group:
                    entry.error = self._apply_failed_error()
                return
            prepared = self._start_prepares(group)
            try:
                written = self._seal_group(group)
                durable = bool(written) and self._append(written)
            finally:
                if prepared:  # they touch memory apply reads: done before it, or before leaving
                    self._stager.wait()
            if durable:
                self._apply(written)
        except BaseException as exc:  # e.g. KeyboardInterrupt in the leader: fail the rest
            for entry in group:
                if entry.error is None and entry.lsn == 0:
                    entry.error = exc
            raise
        finally:
            # Wake exactly the callers that can go on -- this group's and the next leader --
            # not every waiting thread (with hundreds of writers, a notify_all per group is a
            # thundering herd that costs more CPU than the group commit saves).
            with self._cond:
                for _ in group:
                    self._queue.popleft().done = True
                following = self._queue[0] if self._queue else None
                if following is None:
                    self._cond.notify_all()  # close() waits for an empty queue
            for entry in group[1:]:  # group[0] leads: the head, not waiting
                entry.wake.release()
            if following is not None:
                following.wake.release()

    def _seal_group(self, group: list[_Entry]) -> list[_Entry]:
        """Give the group's records their LSNs and seal them; the records to write, in LSN
        order (a record that cannot be sealed gets its error and gives its LSN to the next)."""
        lsn = self.log.next_lsn  # only the leader appends, so this is the group's first LSN
        written: list[_Entry] = []
        for entry in group:
            if entry.resolve is not None:  # only ever a group's head (_take_group)
                try:  # every earlier LSN is applied, no later one is: decide the payload now
                    entry.parts, entry.size = record_parts(entry.kind, entry.resolve())
                except Exception as exc:  # this caller's problem only
                    entry.error = exc
                    continue
            if self._seal is not None:
                try:
                    sealed = self._seal(lsn, entry.kind, entry.parts)
                    entry.parts, entry.size = record_parts(entry.kind, sealed)
                except Exception as exc:  # this caller's problem only
                    entry.error = exc
                    continue
            entry.lsn = lsn
            lsn += 1
            written.append(entry)
        return written

    def _start_prepares(self, group: list[_Entry]) -> bool:
        """Hand the group's prepares to the stager, which runs them while this thread seals,
        writes and syncs (all three release the GIL). True if any was started."""
        prepares = [e.prepare for e in group if e.prepare is not None]
        if not prepares or sum(e.size for e in group if e.prepare is not None) < STAGE_MIN_BYTES:
            return False  # apply does the work: cheaper than the hand-over for small records
        if self._stager is None:
            self._stager = _Stager(self.name)
        self._stager.start(prepares)
        return True

    def _append(self, written: list[_Entry]) -> bool:
        """One writev + one fdatasync for the group; False (each entry has its error) when the
        log refused it."""
        try:
            self.log.append_group([(e.kind, e.parts) for e in written], first_lsn=written[0].lsn)
        except Exception as exc:
            for i, entry in enumerate(written):
                entry.lsn = 0
                entry.error = exc if i == 0 else _own_copy(exc)
            return False
        return True

    def _apply(self, written: list[_Entry]) -> None:
        """Apply the durable records in LSN order; the first failure poisons the queue."""
        interrupted: BaseException | None = None
        for entry in written:
            if self._failed is not None:
                entry.error = self._apply_failed_error()
                continue
            if entry.apply is None:
                continue
            try:
                entry.apply(entry.lsn)
            except BaseException as exc:  # durable, not in memory: refuse writes until reopen
                log.error("index %s: applying log record %d failed; the record is durable but "
                          "not in memory, writes are refused until reopen", self.name, entry.lsn,
                          exc_info=exc)
                self._failed, self._failed_lsn = exc, entry.lsn
                entry.error = self._apply_failed_error()
                if not isinstance(exc, Exception):
                    interrupted = exc
        if interrupted is not None:
            raise interrupted

    def _apply_failed_error(self) -> ApplyFailedError:
        cause = self._failed
        err = ApplyFailedError(f"index {self.name!r} refuses writes after a failed apply (log "
                               f"record {self._failed_lsn}: {cause!r}); the record is durable "
                               f"and comes back when the index is reopened; reopen the index")
        err.__cause__ = cause
        return err

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new writes (ClosedError) and wait until the queued ones are done. The log
        itself is closed by its owner, after this. Idempotent."""
        with self._cond:
            self._closing = True
            while self._queue:
                self._cond.wait()
        if self._stager is not None:
            self._stager.stop()

    def __repr__(self) -> str:
        state = ("closed" if self._closing else "poisoned" if self.poisoned else "open")
        return f"<WriteQueue {self.name!r} queued={len(self._queue)} {state}>"


class _Stager:
    """One thread that runs a leader's prepares while the leader writes and syncs. Two plain
    locks hand the work over and back (a Condition costs a second lock round trip)."""

    def __init__(self, name: str):
        self._jobs: list[Prepare] | None = None
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._thread = threading.Thread(target=self._run, name=f"lsmvec-stage-{name}", daemon=True)
        self._thread.start()

    def start(self, jobs: list[Prepare]) -> None:
        self._jobs = jobs
        self._go.release()

    def wait(self) -> None:
        """Until the started jobs are done; an interrupt while waiting is raised after."""
        interrupted: BaseException | None = None
        while True:
            try:
                self._done.acquire()
                break
            except BaseException as exc:  # KeyboardInterrupt: the jobs still touch memory
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def stop(self) -> None:
        self._jobs = None
        self._go.release()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._go.acquire()
            jobs, self._jobs = self._jobs, None
            if jobs is None:
                return
            try:
                for job in jobs:
                    try:
                        job()
                    except Exception:  # apply does the whole work instead
                        log.debug("a prepare failed; its apply does the work", exc_info=True)
            finally:
                self._done.release()  # the leader never waits for a dead stager


def _own_copy(exc: BaseException) -> BaseException:
    """A copy of `exc` for another caller, so no two threads raise (and re-traceback) one
    object."""
    try:
        twin = copy.copy(exc)
    except Exception:
        return exc
    twin.__cause__ = exc.__cause__
    return twin
