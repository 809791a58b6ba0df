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
  instance is raised to that caller only. If ``fn`` raises, every caller of that batch gets the
  exception.
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
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """Raised to callers of a closed batcher (unless ``close`` was given another error)."""


@dataclass
class BatcherStats:
    """Counters for tests, logs and metrics."""

    batches: int = 0
    items: int = 0
    #: items dropped because their caller was cancelled while queued
    cancelled: int = 0
    #: batches whose function raised
    failed_batches: int = 0
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
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
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

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result (or raise its exception) once its batch has run."""
        if self._closed is not None:
            raise self._closed
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
                continue
            await self._run(batch)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        self._running = batch
        items = [p.item for p in batch]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.batch_sizes.append(len(items))
        del self.stats.batch_sizes[:-1000]
        try:
            if self._executor is not None:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._executor, self._fn, items)
            else:
                results = await asyncio.to_thread(self._fn, items)
            if len(results) != len(items):
                raise RuntimeError(
                    f"{self.name}: batch function returned {len(results)} results "
                    f"for {len(items)} items"
                )
        except Exception as exc:  # the batch failed: every caller of it gets the error
            self.stats.failed_batches += 1
            logger.debug("%s: batch of %d failed: %r", self.name, len(items), exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._running = []
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():  # cancelled while running, or failed by close()
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
