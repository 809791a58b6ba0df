"""Results -> chat completions, and runner events -> ``chat.completion.chunk`` SSE lines."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from agents.types import RunResult, Step
from app.chat.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatUsage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    PromptTokensDetails,
    ProReasonInfo,
)
from app.errors import describe, log_failure, sse_error
from app.runner import Event, Heartbeat
from app.schemas import step_out
from app.sse import KEEP_ALIVE
from models.types import Usage


def _clip(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def step_line(step: Step) -> str:
    """One human-readable line per model call (streamed as chat 'reasoning')."""
    where = f"round {step.round}" if step.round else "step"
    head = f"[{where}] {step.role}"
    if step.error:
        return f"{head}: model error: {_clip(step.error)}\n"
    if step.parse_error:
        return f"{head}: unusable output ({_clip(step.parse_error, 120)})\n"
    decision = step.decision or {}
    if step.role == "dispatcher" and decision:
        expert = decision.get("expert", "?")
        asked = decision.get("questions") or [step.sub_question or decision.get("question") or ""]
        return f"{head} -> {expert}: {_clip(' | '.join(str(q) for q in asked))}\n"
    if step.role == "referee" and decision:
        verdict = "solvable" if decision.get("solvable") else "not yet solvable"
        return f"{head}: {verdict}. {_clip(str(decision.get('reasoning', '')))}\n"
    text = step.memory_entry if step.memory_entry is not None else step.output
    return f"{head}: {_clip(text)}\n"



def chat_usage(usage: Usage) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(
            image_tokens=usage.image_tokens,
            text_tokens=None
            if usage.image_tokens is None
            else usage.prompt_tokens - usage.image_tokens,
        ),
    )


def proreason_info(result: RunResult) -> ProReasonInfo:
    return ProReasonInfo(
        method=result.method,
        mode=result.mode,
        stop_reason=result.stop_reason,
        rounds=result.rounds,
        parse_failures=result.parse_failures,
        answer_extracted=result.answer_extracted,
        steps=[step_out(s) for s in result.steps],
    )


def chat_completion(
    completion_id: str, model: str, result: RunResult, trace: bool
) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=result.answer))],
        usage=chat_usage(result.usage),
        proreason=proreason_info(result) if trace else None,
    )


class ChunkWriter:
    """Builds the ``data: <chat.completion.chunk>`` lines of one streamed completion."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    @staticmethod
    def _line(chunk: ChatCompletionChunk) -> str:
        data = chunk.model_dump(mode="json")
        for key in ("usage", "proreason"):
            if data[key] is None:
                del data[key]
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def chunk(self, delta: ChunkDelta, finish_reason: str | None = None, **extra: object) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice], **extra
        )
        return self._line(chunk)

    def role(self) -> str:
        return self.chunk(ChunkDelta(role="assistant", content=""))

    def step(self, step: Step, field: str) -> str:
        return self.chunk(ChunkDelta(**{field: step_line(step)}))

    def content(self, text: str) -> str:
        return self.chunk(ChunkDelta(content=text))

    def finish(self, result: RunResult, trace: bool) -> str:
        info = proreason_info(result) if trace else None
        return self.chunk(ChunkDelta(), "stop", proreason=info)

    def usage(self, usage: Usage) -> str:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=chat_usage(usage)
        )
        return self._line(chunk)

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"


async def chat_events(
    events: AsyncIterator[Event],
    *,
    req: ChatCompletionRequest,
    writer: ChunkWriter,
    request_id: str,
) -> AsyncIterator[str]:
    """The role, one ``delta.reasoning`` line per step, the answer, the finish chunk, the usage
    chunk (``stream_options.include_usage``), ``[DONE]``; an error after the start arrives as
    ``data: {"error": ...}``."""
    step_field = req.proreason.step_field if req.proreason else "reasoning"
    trace = bool(req.proreason and req.proreason.trace)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    yield writer.role()
    try:
        result: RunResult | None = None
        async for event in events:
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, RunResult):
                result = event
            elif step_field != "none":
                yield writer.step(event, step_field)
        if result is None:
            raise RuntimeError("the reasoner ended without a result")
        yield writer.content(result.answer)
        yield writer.finish(result, trace)
        if include_usage:
            yield writer.usage(result.usage)
    except Exception as exc:
        log_failure(exc, describe(exc), request_id)
        yield sse_error(exc, request_id)
    yield writer.done()
