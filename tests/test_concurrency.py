"""`tools.llm.map_concurrently`, the one concurrency helper of every LLM caller: bounded, each
result handed over as it arrives, no call started after a failure, the caller's context kept.

No timings: calls are held by events and barriers, so each assertion is about order only.
"""

from __future__ import annotations

import contextvars
import threading

import pytest

from tools.llm import map_concurrently, map_in_order

WAIT = 10.0  # seconds a held call waits at most (a failed test, not a slow one)


def test_calls_are_bounded_and_the_bound_is_used() -> None:
    lock, running, peak = threading.Lock(), [0], [0]
    barrier = threading.Barrier(3, timeout=WAIT)  # breaks unless 3 calls run at once

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        barrier.wait()
        with lock:
            running[0] -= 1
        return i * i

    assert map_in_order(call, range(9), 3) == [i * i for i in range(9)]
    assert peak[0] == 3


def test_each_result_is_handed_over_while_other_calls_still_run() -> None:
    release = threading.Event()

    def call(i: int) -> int:
        if i:
            assert release.wait(WAIT)
        return i

    results = map_concurrently(call, range(4), 4)
    assert next(results) == (0, 0)  # the others are still held
    release.set()
    assert sorted(results) == [(1, 1), (2, 2), (3, 3)]


def test_a_failure_starts_nothing_more_keeps_running_results_then_raises() -> None:
    started: list[int] = []
    stopped = threading.Event()

    def call(i: int) -> str:
        started.append(i)
        if i == 1:
            raise ValueError("item 1 failed")
        assert stopped.wait(WAIT)  # item 0 returns only once the failure is known
        return f"late {i}"

    got = []
    with pytest.raises(ValueError, match="item 1 failed"):
        for pair in map_concurrently(call, range(10), 2, on_stop=stopped.set):
            got.append(pair)
    assert got == [(0, "late 0")]
    assert sorted(started) == [0, 1]


def test_a_caller_that_stops_does_not_wait_for_running_calls() -> None:
    stops: list[bool] = []
    release = threading.Event()

    def call(i: int) -> int:
        if i:
            assert release.wait(WAIT)
        return i

    results = map_concurrently(call, range(6), 2, on_stop=lambda: stops.append(True))
    try:
        assert next(results) == (0, 0)
        results.close()  # returns while item 1 is held: it is not waited for
        assert stops == [True]
    finally:
        release.set()


def test_one_item_runs_in_the_callers_thread_and_many_see_its_context() -> None:
    where = contextvars.ContextVar("where", default="unset")
    where.set("caller")
    caller = threading.get_ident()
    assert map_in_order(lambda _: threading.get_ident(), ["x"], 4) == [caller]
    seen = map_in_order(lambda _: (where.get(), threading.get_ident()), range(8), 2)
    assert {value for value, _ in seen} == {"caller"}  # the later calls too (started by others)
    assert caller not in {thread for _, thread in seen}
    assert map_in_order(lambda x: x, [], 4) == []
