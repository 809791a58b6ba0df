"""MicroBatcher with plain Python batch functions (no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from models.batcher import BatcherClosed, BatcherStalled, MicroBatcher


class Recorder:
    """A batch function that records every batch it got and doubles numbers."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        with self._lock:
            self.running -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 2 for i in items]


async def test_concurrent_calls_form_batches_in_order() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=4, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    # 10 items, at most 4 per batch, formed in arrival order
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batcher.stats.batches == 3
    assert batcher.stats.batch_sizes == [4, 4, 2]
    assert batcher.stats.mean_batch_size == pytest.approx(10 / 3)
    assert "MainThread" not in rec.threads
    await batcher.close()


async def test_full_batch_does_not_wait_for_max_wait() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=2, max_wait_ms=5_000)
    start = time.monotonic()
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [2, 4]
    assert time.monotonic() - start < 1.0
    await batcher.close()


async def test_lone_item_waits_max_wait_then_runs() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=150)
    start = time.monotonic()
    assert await batcher.submit(3) == 6
    elapsed = time.monotonic() - start
    assert 0.14 <= elapsed < 1.5
    assert rec.batches == [[3]]
    await batcher.close()


async def test_items_arriving_within_max_wait_join_the_batch() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=200)

    async def late(i: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return await batcher.submit(i)

    assert await asyncio.gather(late(1, 0.0), late(2, 0.05), late(3, 0.1)) == [2, 4, 6]
    assert rec.batches == [[1, 2, 3]]
    await batcher.close()


async def test_newcomers_queue_while_a_batch_runs_and_only_one_batch_runs_at_a_time() -> None:
    rec = Recorder(delay_s=0.2)
    batcher = MicroBatcher(rec, max_batch_size=16, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # batch [0] is running now
    rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 6)))
    assert await first == 0
    assert rest == [2, 4, 6, 8, 10]
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]
    assert rec.max_running == 1
    await batcher.close()


async def test_event_loop_stays_free_while_batch_runs() -> None:
    rec = Recorder(delay_s=0.3)
    batcher = MicroBatcher(rec, max_batch_size=1, max_wait_ms=0)
    task = asyncio.ensure_future(batcher.submit(1))
    ticks = 0
    while not task.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks >= 10  # the loop kept running during the 0.3 s batch
    await batcher.close()


async def test_groups_by_key_oldest_group_first() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=30, key=lambda i: i % 2)
    results = await asyncio.gather(*(batcher.submit(i) for i in [1, 2, 3, 4, 5]))
    assert results == [2, 4, 6, 8, 10]
    assert rec.batches == [[1, 3, 5], [2, 4]]
    await batcher.close()


async def test_per_item_exceptions_reach_only_their_caller() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=20)
    results = await asyncio.gather(
        batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
    )
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -1"
    assert len(rec.batches) == 1
    await batcher.close()


async def test_a_failing_batch_fails_only_the_bad_item_and_the_next_batch_still_runs() -> None:
    calls: list[list[str]] = []

    def fn(items: list[str]) -> list[str]:
        calls.append(items)
        if "boom" in items:
            raise RuntimeError("batch exploded")
        return [s.upper() for s in items]

    batcher = MicroBatcher(fn, max_batch_size=2, max_wait_ms=20)
    results = await asyncio.gather(
        batcher.submit("a"), batcher.submit("boom"), batcher.submit("c"), return_exceptions=True
    )
    # the failed batch [a, boom] is retried item by item: only "boom" fails
    assert results[0] == "A"
    assert isinstance(results[1], RuntimeError) and "exploded" in str(results[1])
    assert results[2] == "C"
    assert calls == [["a", "boom"], ["a"], ["boom"], ["c"]]
    assert batcher.stats.failed_batches == 1 and batcher.stats.retried_items == 2
    assert await batcher.submit("d") == "D"
    assert batcher.healthy
    await batcher.close()


@pytest.mark.parametrize(
    "error", [StopIteration(), StopAsyncIteration(), SystemExit(3), KeyboardInterrupt()]
)
async def test_any_exception_of_the_batch_function_fails_the_batch_not_the_batcher(
    error: BaseException,
) -> None:
    """StopIteration cannot be set on an asyncio future: it used to leave the caller (and every
    later caller) waiting forever; BaseExceptions used to kill the dispatcher."""

    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise error
        return [i * 2 for i in items]

    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_ms=20)
    results = await asyncio.wait_for(
        asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True), 5
    )
    assert isinstance(results[0], RuntimeError) and type(error).__name__ in str(results[0])
    assert results[1] == 2
    assert await asyncio.wait_for(batcher.submit(2), 5) == 4
    assert batcher.healthy
    await batcher.close()


async def test_a_dispatcher_bug_fails_the_waiting_callers_and_batching_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batcher = MicroBatcher(Recorder(), max_batch_size=4, max_wait_ms=10)
    real = batcher._next_batch
    state = {"broken": True}

    def flaky() -> tuple[list, float]:
        if state["broken"] and batcher._pending:
            state["broken"] = False
            raise KeyError("bug")
        return real()

    monkeypatch.setattr(batcher, "_next_batch", flaky)
    with pytest.raises(RuntimeError, match="internal batching error"):
        await asyncio.wait_for(batcher.submit(1), 5)
    assert await asyncio.wait_for(batcher.submit(2), 5) == 4
    assert batcher.healthy
    await batcher.close()


async def test_a_hung_worker_fails_its_callers_and_the_queue_and_reports_unhealthy() -> None:
    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            release.wait(10)  # hung until released
        return [i * 2 for i in items]

    batcher = MicroBatcher(fn, max_batch_size=1, max_wait_ms=0, batch_timeout_s=0.2)
    hung = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(1))
    started = time.monotonic()
    for task in (hung, queued):
        with pytest.raises(BatcherStalled, match="hung"):
            await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    assert not batcher.healthy
    with pytest.raises(BatcherStalled):  # fails fast while the worker is stuck
        await batcher.submit(2)
    release.set()  # the worker comes back: batching resumes
    for _ in range(100):
        if batcher.healthy:
            break
        await asyncio.sleep(0.02)
    assert batcher.healthy
    assert await asyncio.wait_for(batcher.submit(3), 5) == 6
    assert batcher.stats.stalls == 1
    await batcher.close()


async def test_wrong_number_of_results_is_an_error_for_the_batch() -> None:
    batcher = MicroBatcher(lambda items: [], max_batch_size=2, max_wait_ms=20)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    # the batch fails, then each item alone fails the same way
    assert all(isinstance(r, RuntimeError) and "0 results for 1 items" in str(r) for r in results)
    await batcher.close()


async def test_caller_cancelled_while_queued_is_dropped() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=100)
    keep1 = asyncio.ensure_future(batcher.submit(1))
    gone = asyncio.ensure_future(batcher.submit(2))
    keep2 = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0.01)
    gone.cancel()
    assert await keep1 == 2 and await keep2 == 6
    assert gone.cancelled()
    assert rec.batches == [[1, 3]]
    assert batcher.stats.cancelled == 1
    await batcher.close()


async def test_caller_cancelled_while_running_does_not_break_the_others() -> None:
    rec = Recorder(delay_s=0.2)
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=10)
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.1)  # the batch is running
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 0 and results[2] == 4
    assert isinstance(results[1], asyncio.CancelledError)
    assert await batcher.submit(5) == 10  # still serving
    await batcher.close()


async def test_close_fails_queued_and_running_callers_and_later_submits() -> None:
    rec = Recorder(delay_s=0.3)
    batcher = MicroBatcher(rec, max_batch_size=1, max_wait_ms=0)
    running = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    await batcher.close(ConnectionError("shutting down"))
    for task in (running, queued):
        with pytest.raises(ConnectionError, match="shutting down"):
            await task
    with pytest.raises(ConnectionError):
        await batcher.submit(3)
    await batcher.close()  # idempotent
    assert rec.batches == [[1]]


async def test_default_close_error_and_explicit_executor() -> None:
    rec = Recorder()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="only-worker") as pool:
        batcher = MicroBatcher(rec, max_batch_size=4, max_wait_ms=10, executor=pool)
        assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [2, 4]
        assert all(name.startswith("only-worker") for name in rec.threads)
        await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_wait_ms=-1)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, batch_timeout_s=0)
