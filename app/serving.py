"""Serving one request end to end: admit, prepare (validate + load media), run, respond.

Order matters: a slot is taken first (429 fails fast, before any media is fetched), then the whole
request is validated and its images loaded, and only then does a response start. After a stream
started, errors travel inside it (``event: error`` for /v1/reason, ``data: {"error": ...}`` for
chat). Non-streaming work runs under ``cancel_on_disconnect``; streams under ``EventStream``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import Request

from agents.types import RunResult
from app.chat_schemas import ChatCompletion, ChatCompletionRequest
from app.convert import Prepared, Upload
from app.disconnect import cancel_on_disconnect
from app.errors import describe, log_failure, sse_error
from app.render import ChunkWriter, chat_completion, event_type, reason_response, sse, step_out
from app.schemas import ReasonParams, ReasonResponse
from app.service import Heartbeat, ReasoningService, Slot
from app.sse import EventStream

log = logging.getLogger(__name__)

T = TypeVar("T")

#: an SSE comment: ignored by clients, keeps proxies from closing an idle stream
KEEP_ALIVE = ": keep-alive\n\n"


async def _prepare(request: Request, slot: Slot, work: Coroutine[Any, Any, T]) -> T:
    """Validate and load media (cancelled if the client leaves); free the slot on failure."""
    try:
        return await cancel_on_disconnect(request, work)
    except BaseException:
        slot.release()
        raise


async def _answer(
    request: Request, service: ReasoningService, slot: Slot, prepared: Prepared
) -> RunResult:
    """A whole answer, cancelled if the client leaves; the slot is freed either way."""
    try:
        result = await cancel_on_disconnect(request, service.answer(prepared))
    finally:
        slot.release()
    request.state.stop_reason = result.stop_reason
    return result


def _stream_failed(exc: Exception, request_id: str) -> None:
    log_failure(exc, describe(exc), request_id)


# --------------------------------------------------------------------------- /v1/reason


async def serve_reason(
    request: Request,
    service: ReasoningService,
    params: ReasonParams,
    question: str,
    refs: Sequence[str],
    uploads: Sequence[Upload] = (),
) -> ReasonResponse | EventStream:
    started = time.perf_counter()
    request_id: str = request.state.request_id
    slot = service.admit()
    prepared = await _prepare(
        request, slot, service.prepare_reason(params, question, refs, uploads)
    )
    if params.stream:
        events = _reason_events(request, service, prepared, started)
        return EventStream(events, on_close=slot.release)
    result = await _answer(request, service, slot, prepared)
    return reason_response(request_id, result, prepared, time.perf_counter() - started)


async def _reason_events(
    request: Request, service: ReasoningService, prepared: Prepared, started: float
) -> AsyncIterator[str]:
    request_id: str = request.state.request_id
    try:
        async for event in service.events(prepared):
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, RunResult):
                request.state.stop_reason = event.stop_reason
                body = reason_response(request_id, event, prepared, time.perf_counter() - started)
                yield sse("result", body.model_dump(mode="json", exclude_none=True))
            else:
                yield sse(event_type(event), step_out(event).model_dump(mode="json"))
    except Exception as exc:
        _stream_failed(exc, request_id)
        yield sse_error(exc, request_id, event="error")
    yield "event: done\ndata: [DONE]\n\n"


# --------------------------------------------------------------------------- chat


async def serve_chat(
    request: Request, service: ReasoningService, req: ChatCompletionRequest
) -> ChatCompletion | EventStream:
    request_id: str = request.state.request_id
    slot = service.admit()
    prepared, pipeline = await _prepare(request, slot, service.prepare_chat(req))
    completion_id = f"chatcmpl-{request_id}"
    if req.stream:
        writer = ChunkWriter(completion_id, pipeline.name)
        events = _chat_events(request, service, prepared, req, writer)
        return EventStream(events, on_close=slot.release)
    result = await _answer(request, service, slot, prepared)
    return chat_completion(completion_id, pipeline.name, result, prepared.trace)


async def _chat_events(
    request: Request,
    service: ReasoningService,
    prepared: Prepared,
    req: ChatCompletionRequest,
    writer: ChunkWriter,
) -> AsyncIterator[str]:
    request_id: str = request.state.request_id
    step_field = req.proreason.step_field if req.proreason else "reasoning"
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    yield writer.role()
    try:
        result: RunResult | None = None
        async for event in service.events(prepared):
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, RunResult):
                result = event
            elif step_field != "none":
                yield writer.step(event, step_field)
        if result is None:
            raise RuntimeError("the reasoner ended without a result")
        request.state.stop_reason = result.stop_reason
        yield writer.content(result.answer)
        yield writer.finish(result, prepared.trace)
        if include_usage:
            yield writer.usage(result.usage)
    except Exception as exc:
        _stream_failed(exc, request_id)
        yield sse_error(exc, request_id)
    yield writer.done()
