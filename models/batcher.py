"""A generic dynamic micro-batcher: many concurrent awaiters, one batch function call.

    caller 1 ─ submit(a) ─┐
    caller 2 ─ submit(b) ─┼─> pending (arrival order) ─> dispatcher ─> fn([a, b, c]) in a worker
    caller 3 ─ submit(c) ─┘                                             thread, one at a time

Rules, kept simple on purpose:

- **Grouping.** Every item has a key (``key(item)``; default: one group). A batch holds items of one
  key only, so a batch function never sees incompatible items (e.g. text-only prompts vs prompts
  with images, different sampling settings). The group of the *oldest* pending item goes next
  (first come, first served across groups).
- **When a batch starts.** As soon as its group has ``max_batch_size`` items, or its oldest item has
  waited ``max_wait_ms``. While a batch runs, newcomers queue up, so under load the next batch is
  formed immediately and is large: the batch size adapts to the load.
- **One at a time.** The dispatcher runs one batch at a time, in the given executor (or a thread via
  ``asyncio.to_thread``): the event loop never blocks and a model never runs two batches at once.
- **Results.** ``fn`` returns one result per item, in order; an element that is an exception
  instance is raised to that caller only. If ``fn`` raises for a batch of several items, every item
  is retried alone, so one bad item fails only its own caller, never its neighbours. Any exception
  (even ``StopIteration``, which asyncio cannot put into a future, or a ``BaseException``) becomes
  an error of that batch: the dispatcher lives on.
- **Watchdog.** With ``batch_timeout_s``, a batch function still running after that long marks the
  batcher *stalled*: its callers and every queued caller fail with ``BatcherStalled``, new
  ``submit`` calls fail at once, and ``healthy`` is False until the worker returns (a thread cannot
  be killed; when it comes back, its results are discarded and batching resumes).
- **Cancellation.** A caller cancelled while queued is dropped before its batch is formed. A caller
  cancelled while its batch runs just stops waiting; the batch (already in a thread) completes and
  its result is discarded.
- **Closing.** ``close()`` stops the dispatcher and fails every waiting caller (queued or running)
  with the given error; later ``submit`` calls fail with it too.

The batcher binds to the event loop of its first ``submit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """Raised to callers of a closed batcher (unless ``close`` was given another error)."""


class BatcherStalled(RuntimeError):
    """Raised to callers while the worker is hung (a batch outlived ``batch_timeout_s``)."""


@dataclass
class BatcherStats:
    """Counters for tests, logs and metrics."""

    batches: int = 0
    items: int = 0
    #: items dropped because their caller was cancelled while queued
    cancelled: int = 0
    #: batches whose function raised
    failed_batches: int = 0
    #: items of a failed batch run again alone
    retried_items: int = 0
    #: batches that outlived ``batch_timeout_s`` (the worker was hung)
    stalls: int = 0
    #: size of every batch run, in order (bounded to the last 1,000)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Pending(Generic[T, R]):
    item: T
    key: Hashable
    future: asyncio.Future[R]
    enqueued_at: float


class MicroBatcher(Generic[T, R]):
    """Collect concurrent ``submit`` calls into batches for one synchronous batch function."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        key: Callable[[T], Hashable] | None = None,
        executor: Executor | None = None,
        name: str = "batcher",
        batch_timeout_s: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if batch_timeout_s is not None and batch_timeout_s <= 0:
            raise ValueError("batch_timeout_s must be > 0")
        self.batch_timeout_s = batch_timeout_s
        self._stalled: BatcherStalled | None = None
        #: monotonic time the running batch function started in the worker (None: idle)
        self._worker_started: float | None = None
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._key = key or (lambda _item: None)
        self._executor = executor
        self.name = name
        self.stats = BatcherStats()
        self._pending: list[_Pending[T, R]] = []
        self._running: list[_Pending[T, R]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed: BaseException | None = None

    @property
    def queued(self) -> int:
        """Callers waiting for a batch (not counting the running one)."""
        return sum(1 for p in self._pending if not p.future.done())

    @property
    def healthy(self) -> bool:
        """False once closed, while the worker is stalled, or if the dispatcher died."""
        if self._closed is not None or self._stalled is not None:
            return False
        started = self._worker_started
        if (
            started is not None
            and self.batch_timeout_s is not None
            and time.monotonic() - started > self.batch_timeout_s
        ):
            return False
        task = self._task
        return task is None or not task.done()

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result (or raise its exception) once its batch has run."""
        if self._closed is not None:
            raise self._closed
        if self._stalled is not None:
            raise self._stalled
        loop = asyncio.get_running_loop()
        wakeup = self._ensure_dispatcher(loop)
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(item, self._key(item), future, time.monotonic()))
        wakeup.set()
        return await future

    async def close(self, error: BaseException | None = None) -> None:
        """Stop batching; fail queued and running callers with ``error``. Idempotent."""
        if self._closed is None:
            self._closed = error or BatcherClosed(f"{self.name} is closed")
        for pending in (*self._pending, *self._running):
            if not pending.future.done():
                pending.future.set_exception(self._closed)
        self._pending.clear()
        self._running = []
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- internals ---

    def _ensure_dispatcher(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._wakeup is None or self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError(f"{self.name} is bound to another running event loop")
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(
                self._dispatch(self._wakeup), name=f"{self.name}-dispatcher"
            )
        return self._wakeup

    def _drop_cancelled(self) -> None:
        kept = [p for p in self._pending if not p.future.done()]
        self.stats.cancelled += len(self._pending) - len(kept)
        self._pending = kept

    def _next_batch(self) -> tuple[list[_Pending[T, R]], float]:
        """The batch to run now (maybe empty) and, if empty, how long to wait at most."""
        self._drop_cancelled()
        if not self._pending:
            return [], float("inf")
        oldest = self._pending[0]
        group = [p for p in self._pending if p.key == oldest.key][: self.max_batch_size]
        wait_left = oldest.enqueued_at + self.max_wait_s - time.monotonic()
        if len(group) < self.max_batch_size and wait_left > 0:
            return [], wait_left
        chosen = {id(p) for p in group}
        self._pending = [p for p in self._pending if id(p) not in chosen]
        return group, 0.0

    async def _dispatch(self, wakeup: asyncio.Event) -> None:
        while True:
            try:
                await self._dispatch_once(wakeup)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not leave callers waiting forever
                logger.exception("%s: dispatcher error", self.name)
                for pending in (*self._running, *self._pending):
                    if not pending.future.done():
                        pending.future.set_exception(
                            RuntimeError(f"{self.name}: internal batching error: {exc!r}")
                        )
                self._pending.clear()
                self._running = []

    async def _dispatch_once(self, wakeup: asyncio.Event) -> None:
        batch, wait_left = self._next_batch()
        if not batch:
            wakeup.clear()
            if wait_left == float("inf"):
                await wakeup.wait()
            else:
                try:
                    await asyncio.wait_for(wakeup.wait(), wait_left)
                except asyncio.TimeoutError:
                    pass
            return
        await self._run(batch)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        self._running = batch
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.batch_sizes.append(len(batch))
        del self.stats.batch_sizes[:-1000]
        try:
            outcome = await self._attempt(batch)
            if isinstance(outcome, BaseException):
                self.stats.failed_batches += 1
                logger.debug("%s: batch of %d failed: %r", self.name, len(batch), outcome)
                if len(batch) > 1:  # find the culprit(s): each item alone
                    for pending in batch:
                        if pending.future.done():
                            continue
                        self.stats.retried_items += 1
                        self._running = [pending]
                        self._resolve([pending], await self._attempt([pending]))
                    return
            self._resolve(batch, outcome)
        finally:
            self._running = []

    def _resolve(
        self, batch: list[_Pending[T, R]], outcome: Sequence[R | BaseException] | BaseException
    ) -> None:
        if isinstance(outcome, BaseException):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(outcome)
            return
        for pending, result in zip(batch, outcome, strict=True):
            if pending.future.done():  # cancelled while running, or failed by close()
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _call(self, items: list[T]) -> Sequence[R | BaseException]:
        """The batch function, in the worker thread; every exception becomes a plain one."""
        self._worker_started = time.monotonic()
        try:
            return self._fn(items)
        except Exception as exc:
            if isinstance(exc, StopIteration | StopAsyncIteration):  # asyncio rejects these
                raise RuntimeError(f"{self.name}: batch function raised {exc!r}") from exc
            raise
        except BaseException as exc:  # SystemExit & co. in a worker thread: an error of this batch
            raise RuntimeError(f"{self.name}: batch function raised {exc!r}") from exc
        finally:
            self._worker_started = None

    async def _attempt(
        self, batch: list[_Pending[T, R]]
    ) -> Sequence[R | BaseException] | BaseException:
        """Run ``fn`` on ``batch``: its results, or the exception that failed the whole batch."""
        items = [p.item for p in batch]
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._call, items)
        try:
            if self.batch_timeout_s is None:
                results = await job
            else:
                done, _ = await asyncio.wait({job}, timeout=self.batch_timeout_s)
                results = job.result() if done else await self._stall(job)
            if len(results) != len(items):
                raise RuntimeError(
                    f"{self.name}: batch function returned {len(results)} results "
                    f"for {len(items)} items"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        return results

    async def _stall(self, job: asyncio.Future[Sequence[R | BaseException]]) -> Any:
        """The worker outlived ``batch_timeout_s``: fail everyone waiting, wait for it to return."""
        self.stats.stalls += 1
        self._stalled = BatcherStalled(
            f"{self.name}: the model worker is hung (one batch has run for more than "
            f"{self.batch_timeout_s:g} s); try again later"
        )
        logger.error("%s", self._stalled)
        for pending in (*self._running, *self._pending):
            if not pending.future.done():
                pending.future.set_exception(self._stalled)
        self._pending.clear()
        try:
            await job
        except Exception:
            pass
        finally:
            self._stalled = None
            logger.warning("%s: the worker returned after a stall; serving again", self.name)
        raise BatcherStalled(f"{self.name}: the batch outlived batch_timeout_s")
