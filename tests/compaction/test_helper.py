"""compactor.Helper: a build's second thread -- its value, its error, its scheduling."""
from __future__ import annotations

import os
import threading

import pytest

from lsmvec.compaction.compactor import Helper


def _where() -> tuple[int, int | None]:
    """The running thread's native id and scheduling policy (None where it cannot be read)."""
    tid = threading.get_native_id()
    policy = os.sched_getscheduler(tid) if hasattr(os, "sched_getscheduler") else None
    return tid, policy


def test_result_is_the_functions_value_from_another_thread() -> None:
    helper = Helper(_where, "test-helper")
    tid, _policy = helper.result()
    assert tid != threading.get_native_id()
    assert helper.result()[0] == tid  # result() may be asked again


def test_inline_runs_in_the_calling_thread() -> None:
    assert Helper(_where, "test-helper", in_background=False).result()[0] == \
        threading.get_native_id()


def test_an_error_is_raised_by_result_not_lost() -> None:
    def fail() -> None:
        raise ValueError("boom in the helper")

    helper = Helper(fail, "test-helper")
    helper.wait()  # waiting alone does not raise
    with pytest.raises(ValueError, match="boom in the helper"):
        helper.result()


def test_an_idle_helper_runs_under_sched_idle_and_the_caller_keeps_its_policy() -> None:
    before = os.sched_getscheduler(threading.get_native_id())
    _tid, policy = Helper(_where, "test-helper", idle=True).result()
    assert policy == os.SCHED_IDLE
    assert Helper(_where, "test-helper").result()[1] == before  # not idle unless asked
    assert os.sched_getscheduler(threading.get_native_id()) == before
    # inline work is never made idle: it would be the caller's own thread
    assert Helper(_where, "test-helper", in_background=False, idle=True).result()[1] == before
