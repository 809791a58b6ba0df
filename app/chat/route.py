"""``POST /v1/chat/completions``: OpenAI-compatible, ``model`` picks the pipeline."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.chat.prepare import prepare_chat
from app.chat.render import ChunkWriter, chat_completion, chat_events, wire
from app.chat.schemas import ChatCompletion, ChatCompletionRequest
from app.deps import Authorized, MediaDep, RunnerDep
from app.openapi import REASONING_ERRORS, event_stream
from app.sse import EventStream

router = APIRouter(tags=["openai"], dependencies=[Authorized])

_STREAM_DOC = event_stream(
    "A chat completion, or with `stream: true` `chat.completion.chunk` events: "
    "the role, one `delta.reasoning` line per agent step (field set by `proreason.step_field`), "
    "the answer as `delta.content` pieces while the final model call generates it, a chunk "
    "with `finish_reason`, a usage chunk "
    "(`stream_options.include_usage`), then `data: [DONE]`. Errors after the start arrive as "
    '`data: {"error": {...}}`.',
    event="",
    data="a `chat.completion.chunk` as JSON, an error envelope as JSON, or `[DONE]`",
)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: _STREAM_DOC, **REASONING_ERRORS},
    summary="OpenAI-compatible chat completion answered by a ProReason pipeline",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runner: RunnerDep, media: MediaDep
) -> JSONResponse | EventStream:
    request_id: str = request.state.request_id
    slot = runner.admit()
    work = prepare_chat(body, settings=runner.settings, media=media, reasoner=runner.reasoner)
    prepared, pipeline = await runner.within(request, slot, work)
    completion_id = f"chatcmpl-{request_id}"
    if body.stream:
        writer = ChunkWriter(completion_id, pipeline.name)
        render = partial(chat_events, req=body, writer=writer, request_id=request_id)
        return runner.stream(request, slot, prepared, render, answer_deltas=True)
    result = await runner.answer(request, slot, prepared)
    return JSONResponse(wire(chat_completion(completion_id, pipeline.name, result, body)))
