"""``POST /v1/chat/completions``: OpenAI-compatible, ``model`` picks the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.chat_schemas import ChatCompletion, ChatCompletionRequest
from app.deps import Authorized, ServiceDep
from app.routes.docs import REASONING_ERRORS
from app.serving import serve_chat
from app.sse import EventStream

router = APIRouter(tags=["openai"], dependencies=[Authorized])

_STREAM_DOC = {
    "description": "A chat completion, or with `stream: true` `chat.completion.chunk` events: "
    "the role, one `delta.reasoning` line per agent step (field set by `proreason.step_field`), "
    "the answer as `delta.content`, a chunk with `finish_reason`, a usage chunk "
    "(`stream_options.include_usage`), then `data: [DONE]`. Errors after the start arrive as "
    '`data: {"error": {...}}`.',
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    response_model_exclude_none=True,
    responses={200: _STREAM_DOC, **REASONING_ERRORS},
    summary="OpenAI-compatible chat completion answered by a ProReason pipeline",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: ServiceDep
) -> ChatCompletion | EventStream:
    return await serve_chat(request, service, body)
