"""Running prepared questions for the routes: admission, deadlines, heartbeats, disconnects.

    route ─ runner.admit()            a slot, or 429 at once (before any media is fetched)
          ─ runner.within(req, slot, prepare(...))   validate + load media; slot freed on failure
          ─ runner.answer(req, slot, prepared)       one RunResult        (slot freed)
            runner.stream(req, slot, prepared, render)   an EventStream   (slot freed on close)

Both ``answer`` and ``stream`` consume ``events``: the Reasoner's Steps (and, for a stream that
asks with ``answer_deltas``, the AnswerDeltas of the answering call), then its RunResult, under
the request's deadline (504 with the steps done so far), with a HEARTBEAT after each quiet
``heartbeat_s`` (streams turn it into an SSE comment). A client that leaves cancels the run, and so
the model call in progress. Metrics are recorded here, from the Steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from agents import Reasoner
from agents.types import AnswerDelta, Job, ModelSet, RunEvent, RunResult, Step
from app.disconnect import cancel_on_disconnect
from app.errors import DeadlineExceeded, Overloaded
from app.metrics import Metrics
from app.settings import Settings
from app.sse import EventStream
from models.errors import ProReasonError

log = logging.getLogger(__name__)

T = TypeVar("T")

HEALTH_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class Heartbeat:
    """Nothing happened for a while (the run is still going)."""


HEARTBEAT = Heartbeat()
Event = Step | AnswerDelta | RunResult | Heartbeat


@dataclass(frozen=True)
class Prepared:
    """A validated request with its images loaded: ready to run."""

    job: Job
    #: this request's deadline, seconds (the server's, or lower when the request asks)
    timeout_s: float
    #: seconds spent fetching and decoding the images
    media_s: float


def request_timeout(settings: Settings, requested: float | None) -> float:
    """The server's deadline, lowered (never raised) by the request's own ``timeout_s``."""
    limit = settings.server.request_timeout_s
    return min(limit, requested) if requested else limit


class Slot:
    """One admitted question; release exactly once (idempotent)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.release()


class Admission:
    """At most ``limit`` questions in flight; beyond it fail fast with 429 (no queue)."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self._metrics = metrics

    def acquire(self) -> Slot:
        if self.in_flight >= self.limit:
            self._metrics.rejected.inc()
            raise Overloaded(
                f"too many questions in flight ({self.limit}); retry shortly", retry_after_s=1.0
            )
        self.in_flight += 1
        self._metrics.in_flight.set(self.in_flight)
        return Slot(self)

    def release(self) -> None:
        self.in_flight -= 1
        self._metrics.in_flight.set(self.in_flight)


class Runner:
    """Runs questions for the routes (one per app). Safe to share across requests."""

    #: seconds of silence after which ``events`` yields a HEARTBEAT
    heartbeat_s: float = 15.0

    def __init__(self, *, settings: Settings, models: ModelSet, metrics: Metrics) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.reasoner = Reasoner(models, settings.agent)
        self.admission = Admission(settings.server.max_in_flight, metrics)
        metrics.watch_circuits({"vision": models.vision, "text": models.text})

    # ----------------------------------------------------------------- the request's life

    def admit(self) -> Slot:
        return self.admission.acquire()

    async def within(self, request: Request, slot: Slot, work: Awaitable[T]) -> T:
        """Await the request's preparation (cancelled if the client leaves); on failure the slot
        is freed and the error raised (before any response started)."""
        try:
            return await cancel_on_disconnect(request, work)
        except BaseException:
            slot.release()
            raise

    async def answer(self, request: Request, slot: Slot, prepared: Prepared) -> RunResult:
        """The whole answer, cancelled if the client leaves; the slot is freed either way."""
        try:
            result = await cancel_on_disconnect(request, self._result(prepared))
        finally:
            slot.release()
        request.state.stop_reason = result.stop_reason
        return result

    def stream(
        self,
        request: Request,
        slot: Slot,
        prepared: Prepared,
        render: Callable[[AsyncIterator[Event]], AsyncIterator[str]],
        *,
        answer_deltas: bool = False,
    ) -> EventStream:
        """An SSE response of ``render(events)``; the slot is freed when the stream closes.
        ``answer_deltas``: the answer is streamed too (AnswerDeltas, see Reasoner.stream)."""

        async def events() -> AsyncIterator[Event]:
            async with aclosing(self.events(prepared, answer_deltas=answer_deltas)) as stream:
                async for event in stream:
                    if isinstance(event, RunResult):
                        request.state.stop_reason = event.stop_reason
                    yield event

        return EventStream(render(events()), on_close=slot.release)

    # ----------------------------------------------------------------- running

    async def events(
        self, prepared: Prepared, *, answer_deltas: bool = False
    ) -> AsyncIterator[Event]:
        """Steps as the Reasoner records them, then the RunResult; the deadline applies to all.

        The Reasoner runs in one task of its own (so its stream never hops tasks); this
        generator waits for its events under the deadline. On expiry: ``DeadlineExceeded`` with
        the steps done so far. Closing this generator (the client went away) or the deadline
        cancels the run, and so the model call in progress.
        """
        options = prepared.job.options
        deadline = time.monotonic() + prepared.timeout_s
        queue: asyncio.Queue[RunEvent | BaseException | None] = asyncio.Queue()
        task = asyncio.create_task(self._produce(prepared.job, queue, answer_deltas))
        steps: list[Step] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"the request did not finish within its deadline of "
                        f"{prepared.timeout_s:g}s ({len(steps)} model call(s) done)",
                        steps=steps,
                    )
                try:
                    event = await asyncio.wait_for(queue.get(), min(remaining, self.heartbeat_s))
                except asyncio.TimeoutError:
                    if time.monotonic() < deadline:
                        yield HEARTBEAT
                    continue
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, RunResult):
                    self.metrics.observe_result(event)
                elif isinstance(event, Step):
                    steps.append(event)
                    self.metrics.observe_step(event)
                yield event
        except ProReasonError as exc:
            self.metrics.observe_failure(options.method, options.mode, exc.code)
            raise
        finally:
            await _stop(task)

    async def _produce(self, job: Job, queue: asyncio.Queue, answer_deltas: bool) -> None:
        try:
            async with aclosing(self.reasoner.stream(job, answer_deltas=answer_deltas)) as events:
                async for event in events:
                    queue.put_nowait(event)
        except Exception as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    async def _result(self, prepared: Prepared) -> RunResult:
        result: RunResult | None = None
        async with aclosing(self.events(prepared)) as events:
            async for event in events:
                if isinstance(event, RunResult):
                    result = event
        if result is None:
            raise RuntimeError("the reasoner ended without a result")
        return result

    # ----------------------------------------------------------------- health

    async def readiness(self) -> dict[str, bool]:
        """role -> healthy, checked concurrently with a timeout."""
        backends = {"vision": self.models.vision}
        if self.models.text is not None:
            backends["text"] = self.models.text

        async def check(backend: object) -> bool:
            try:
                return bool(await asyncio.wait_for(backend.health(), HEALTH_TIMEOUT_S))  # type: ignore[attr-defined]
            except Exception as exc:  # a failing health probe means "not ready", never a 500
                log.warning("health check of %r failed: %s", backend, exc)
                return False

        results = await asyncio.gather(*(check(b) for b in backends.values()))
        return dict(zip(backends, results, strict=True))


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a run that is still going and wait (bounded) until its model calls are cancelled."""
    if task.done():
        return
    task.cancel()
    await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
