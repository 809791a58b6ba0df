"""Results -> chat completions, and runner events -> ``chat.completion.chunk`` SSE lines."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from agents.types import AnswerDelta, RunResult, Step
from app.chat.prepare import stop_sequences
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
from models.types import FinishReason, Usage


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


def answering_line(step: Step) -> str:
    """The reasoning line of the answering call, sent as it starts (its answer is the content)."""
    where = f"round {step.round}" if step.round else "step"
    return f"[{where}] {step.role}: writing the answer\n"


def stop_at(text: str, stop: tuple[str, ...]) -> int | None:
    """Where ``text`` is cut: the first occurrence of any ``stop`` sequence (None: nowhere)."""
    return min((i for s in stop if (i := text.find(s)) >= 0), default=None)


def final_answer(result: RunResult, stop: tuple[str, ...] = ()) -> tuple[str, FinishReason]:
    """The answer cut at the first ``stop`` sequence, and its finish_reason: "length" when the
    final-answer call (the run's last step) was cut at max_tokens and no stop sequence matched."""
    text = result.answer
    cut = stop_at(text, stop)
    if cut is not None:
        return text[:cut], "stop"
    last = result.steps[-1] if result.steps else None
    return text, "length" if last is not None and last.finish_reason == "length" else "stop"


class ContentStream:
    """The answer pieces as ``delta.content``, cut at the first ``stop`` sequence as
    :func:`final_answer` cuts the whole answer (text that may start one is held back), so that
    what is sent adds up to the non-streamed ``message.content``."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # the answer pieces so far
        self.sent = ""
        self.cut = False

    def feed(self, piece: str) -> str:
        if self.cut or not piece:
            return ""
        self.text += piece
        end = stop_at(self.text, self.stop)
        self.cut = end is not None
        safe = self.text[: end if end is not None else max(0, len(self.text) - self.hold)]
        if len(safe) <= len(self.sent):
            return ""
        new, self.sent = safe[len(self.sent) :], safe
        return new

    def close(self, answer: str) -> str:
        """The rest of the (cut) ``answer``; "" if what was sent is not its start (the run
        noted that a later answer line changed it: agents.answer_stream)."""
        return answer[len(self.sent) :] if answer.startswith(self.sent) else ""


def wire(body: ChatCompletion | ChatCompletionChunk) -> dict[str, Any]:
    """The JSON of a completion or chunk: ``null`` where the spec requires the member
    (``logprobs``, ``refusal``), absent where it is optional (our extension, usage details the
    backend cannot tell, empty delta fields)."""
    data = body.model_dump(mode="json")
    for key in ("usage", "proreason", "system_fingerprint"):
        if data.get(key) is None:
            data.pop(key, None)
    if isinstance(body, ChatCompletion) and body.proreason is not None:
        data["proreason"] = body.proreason.model_dump(mode="json", exclude_none=True)
    if "usage" in data:
        details = data["usage"]["prompt_tokens_details"]
        data["usage"]["prompt_tokens_details"] = {k: v for k, v in details.items() if v is not None}
    for choice in data["choices"]:
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


def chat_usage(usage: Usage) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=usage.cached_tokens or 0,
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
    completion_id: str, model: str, result: RunResult, req: ChatCompletionRequest
) -> ChatCompletion:
    answer, finish_reason = final_answer(result, stop_sequences(req))
    trace = bool(req.proreason and req.proreason.trace)
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=answer), finish_reason=finish_reason)],
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
        return f"data: {json.dumps(wire(chunk), ensure_ascii=False)}\n\n"

    def chunk(self, delta: ChunkDelta, finish_reason: str | None = None, **extra: object) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice], **extra
        )
        return self._line(chunk)

    def role(self) -> str:
        return self.chunk(ChunkDelta(role="assistant", content=""))

    def reasoning(self, line: str, field: str) -> str:
        return self.chunk(ChunkDelta(**{field: line}))

    def step(self, step: Step, field: str) -> str:
        return self.reasoning(step_line(step), field)

    def content(self, text: str) -> str:
        return self.chunk(ChunkDelta(content=text))

    def finish(self, result: RunResult, finish_reason: FinishReason, trace: bool) -> str:
        info = proreason_info(result) if trace else None
        return self.chunk(ChunkDelta(), finish_reason, proreason=info)

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
    """The role, one ``delta.reasoning`` line per step (the answering call's as it starts), the
    answer as ``delta.content`` pieces while it is generated (the rest when the run ends), the
    finish chunk, the usage chunk (``stream_options.include_usage``), ``[DONE]``; an error after
    the start arrives as ``data: {"error": ...}``."""
    step_field = req.proreason.step_field if req.proreason else "reasoning"
    trace = bool(req.proreason and req.proreason.trace)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    stop = stop_sequences(req)
    content = ContentStream(stop)
    answering: set[int] = set()  # steps whose line was sent as they started
    yield writer.role()
    try:
        result: RunResult | None = None
        async for event in events:
            if isinstance(event, Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, RunResult):
                result = event
            elif isinstance(event, AnswerDelta):
                if event.step.index not in answering:
                    answering.add(event.step.index)
                    if step_field != "none":
                        yield writer.reasoning(answering_line(event.step), step_field)
                if piece := content.feed(event.text):
                    yield writer.content(piece)
            elif step_field != "none" and event.index not in answering:
                yield writer.step(event, step_field)
        if result is None:
            raise RuntimeError("the reasoner ended without a result")
        answer, finish_reason = final_answer(result, stop)
        if rest := content.close(answer):
            yield writer.content(rest)
        yield writer.finish(result, finish_reason, trace)
        if include_usage:
            yield writer.usage(result.usage)
    except Exception as exc:
        log_failure(exc, describe(exc), request_id)
        yield sse_error(exc, request_id)
    yield writer.done()
