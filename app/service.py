"""The reasoning service behind the routes: admission (backpressure), deadlines, metrics, health.

Routes parse a request, call ``prepare_*`` (which loads the media), then either ``answer`` (one
result) or ``events`` (steps as they happen, then the result). Both enforce the request deadline
and record metrics from the Steps the Reasoner yields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace

from agents import Reasoner
from agents.types import ModelSet, RunResult, Step
from app.chat_schemas import ChatCompletionRequest
from app.convert import Prepared, Upload, prepare_chat, prepare_reason
from app.media import MediaLoader
from app.metrics import Metrics
from app.pipelines import Pipeline
from app.schemas import ReasonParams
from app.settings import Settings
from models.errors import DeadlineExceeded, Overloaded, ProReasonError

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a run that is still going and wait (bounded) until its model calls are cancelled."""
    if task.done():
        return
    task.cancel()
    await asyncio.wait([task], timeout=STOP_TIMEOUT_S)


class Heartbeat:
    """Nothing happened for a while (the run is still going)."""


HEARTBEAT = Heartbeat()


class Slot:
    """One admitted question; release exactly once (idempotent)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()


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

    def _release(self) -> None:
        self.in_flight -= 1
        self._metrics.in_flight.set(self.in_flight)


class ReasoningService:
    #: seconds of silence after which ``events`` yields a HEARTBEAT
    heartbeat_s: float = 15.0

    def __init__(
        self,
        *,
        settings: Settings,
        models: ModelSet,
        media: MediaLoader,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.models = models
        self.media = media
        self.metrics = metrics
        self.reasoner = Reasoner(models, settings.agent)
        self.admission = Admission(settings.server.max_in_flight, metrics)

    # ----------------------------------------------------------------- requests -> Prepared

    def admit(self) -> Slot:
        return self.admission.acquire()

    async def prepare_reason(
        self, params: ReasonParams, question: str, refs: Sequence[str], uploads: Sequence[Upload]
    ) -> Prepared:
        prepared = await prepare_reason(
            params, question, refs, uploads, settings=self.settings, media=self.media
        )
        return self._validated(prepared)

    async def prepare_chat(self, req: ChatCompletionRequest) -> tuple[Prepared, Pipeline]:
        prepared, pipeline = await prepare_chat(req, settings=self.settings, media=self.media)
        return self._validated(prepared), pipeline

    def _validated(self, prepared: Prepared) -> Prepared:
        """The Reasoner's own checks (e.g. assisted mode needs a text model), before any start."""
        job = self.reasoner.prepare(prepared.question, prepared.options)
        return replace(prepared, job=job)

    # ----------------------------------------------------------------- running

    async def events(self, prepared: Prepared) -> AsyncIterator[Step | RunResult | Heartbeat]:
        """Steps as the Reasoner records them, then the RunResult; the deadline applies to all.

        The Reasoner runs in one task of its own (so its stream never hops tasks); this
        generator waits for its events under the deadline, yielding a ``HEARTBEAT`` after every
        ``heartbeat_s`` of silence (streams turn it into an SSE comment that keeps proxies from
        closing an idle connection). On expiry: ``DeadlineExceeded`` whose ``partial`` is the
        list of steps done so far. Closing this generator (the client went away) or the
        deadline cancels the run, and so the model call in progress.
        """
        options = prepared.options
        deadline = time.monotonic() + prepared.timeout_s
        queue: asyncio.Queue[Step | RunResult | BaseException | None] = asyncio.Queue()
        task = asyncio.create_task(self._produce(prepared, queue))
        steps: list[Step] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._deadline(prepared, steps)
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
                else:
                    steps.append(event)
                    self.metrics.observe_step(event)
                yield event
        except ProReasonError as exc:
            self.metrics.observe_failure(options.method, options.mode, exc.code)
            raise
        finally:
            await _stop(task)

    @staticmethod
    def _deadline(prepared: Prepared, steps: list[Step]) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request did not finish within its deadline of {prepared.timeout_s:g}s "
            f"({len(steps)} model call(s) done)",
            partial=steps,
        )

    async def _produce(self, prepared: Prepared, queue: asyncio.Queue) -> None:
        try:
            assert prepared.job is not None
            stream = self.reasoner.stream(prepared.job)
            async with aclosing(stream) as events:
                async for event in events:
                    queue.put_nowait(event)
        except Exception as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    async def answer(self, prepared: Prepared) -> RunResult:
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
