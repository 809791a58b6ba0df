"""Results -> wire responses: ``/v1/reason`` bodies and events, chat completions and chunks."""

from __future__ import annotations

import json
import time
from collections import defaultdict

from agents.types import RunResult, Step
from app.chat_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatUsage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    PromptTokensDetails,
    ProReasonInfo,
)
from app.convert import Prepared
from app.schemas import ReasonResponse, StepOut, Timings, UsageOut
from models.types import Usage

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


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        image_tokens=usage.image_tokens,
    )


def step_out(step: Step) -> StepOut:
    return StepOut.model_validate(step, from_attributes=True)


def steps_json(steps: list[Step]) -> list[dict[str, object]]:
    return [step_out(s).model_dump(mode="json") for s in steps]


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


# --------------------------------------------------------------------------- /v1/reason


def reason_response(
    request_id: str, result: RunResult, prepared: Prepared, total_s: float
) -> ReasonResponse:
    by_role: dict[str, float] = defaultdict(float)
    for step in result.steps:
        by_role[step.role] += step.latency_s
    return ReasonResponse(
        id=f"reason-{request_id}",
        created=int(time.time()),
        answer=result.answer,
        answer_extracted=getattr(result, "answer_extracted", True),
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
        trace=[step_out(s) for s in result.steps] if prepared.trace else None,
    )


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


# --------------------------------------------------------------------------- chat


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
        answer_extracted=getattr(result, "answer_extracted", True),
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
