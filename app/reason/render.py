"""Results -> ``/v1/reason`` bodies, and runner events -> its server-sent events."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from agents.types import AnswerDelta, RunResult, Step
from app.errors import describe, log_failure, sse_error
from app.reason.schemas import ReasonResponse, Timings
from app.runner import Event, Heartbeat, Prepared
from app.schemas import step_out, usage_out
from app.sse import KEEP_ALIVE, sse

log = logging.getLogger(__name__)

#: Step role -> SSE event type of /v1/reason streams
_EVENT_TYPES = {
    "dispatcher": "dispatch",
    "vision": "vision",
    "insight": "insight",
    "referee": "verdict",
    "summarizer": "answer",
    "fallback": "fallback",
    "direct": "answer",
    "cot": "answer",
    "ccot_answer": "answer",
    "caption_answer": "answer",
    "scene_graph": "perception",
    "caption": "perception",
}


def event_type(step: Step) -> str:
    return _EVENT_TYPES.get(step.role, step.role if step.role.isidentifier() else "step")


def reason_response(
    request_id: str, result: RunResult, prepared: Prepared, total_s: float, *, trace: bool
) -> ReasonResponse:
    by_role: dict[str, float] = defaultdict(float)
    for step in result.steps:
        by_role[step.role] += step.latency_s
    return ReasonResponse(
        id=f"reason-{request_id}",
        created=int(time.time()),
        answer=result.answer,
        answer_extracted=result.answer_extracted,
        method=result.method,
        mode=result.mode,
        stop_reason=result.stop_reason,
        rounds=result.rounds,
        parse_failures=result.parse_failures,
        usage=usage_out(result.usage),
        usage_by_role={role: usage_out(u) for role, u in result.usage_by_role.items()},
        timings=Timings(
            total_s=round(total_s, 4),
            media_s=round(prepared.media_s, 4),
            reasoning_s=round(result.latency_s, 4),
            by_role_s={k: round(v, 4) for k, v in by_role.items()},
        ),
        notes=list(result.notes),
        trace=[step_out(s) for s in result.steps] if trace else None,
    )


async def reason_events(
    events: AsyncIterator[Event],
    *,
    request_id: str,
    prepared: Prepared,
    started: float,
    trace: bool,
) -> AsyncIterator[str]:
    """One SSE event per model call, then ``result``, then ``done``; an error after the start
    arrives as ``event: error`` with the error envelope."""
    try:
        async for event in events:
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, AnswerDelta):
                continue  # /v1/reason streams whole steps (its route asks for no deltas)
            elif isinstance(event, RunResult):
                total = time.perf_counter() - started
                body = reason_response(request_id, event, prepared, total, trace=trace)
                yield sse("result", body.model_dump(mode="json", exclude_none=True))
            else:
                yield sse(event_type(event), step_out(event).model_dump(mode="json"))
    except Exception as exc:
        log_failure(exc, describe(exc), request_id)
        yield sse_error(exc, request_id, event="error")
    yield "event: done\ndata: [DONE]\n\n"
