"""Trajectory records (SFT data): every model call of real ``agents.Reasoner`` runs, as sent.

One JSON object per role call::

    {"role": "dispatcher", "item_id": "train-17", "solved": true, "correct": true,
     "finish_reason": "stop", "method": "proreason",
     "messages": [{"role": "system", "content": [{"type": "text", "text": "..."}]},
                  {"role": "user", "content": [{"type": "image", "path": ".../17.png",
                                                "image_id": "17"},
                                               {"type": "text", "text": "..."}]}],
     "reply": "{\\"thought\\": ..., \\"expert\\": \\"vision\\", \\"question\\": ...}"}

Records are made by wrapping the run's backends in :class:`RecordingBackend`, which delegates to
the real backend and keeps each ``GenerationRequest`` with its ``GenerationResult``; after the run
each call is matched to its Step (by request id) for the role. So the messages are exactly what
the models see at inference (prompt templates, memory rendering, truncation), with images by
reference. ``solved`` is ``stop_reason == "solved"``; ``correct`` is the scored answer (None when
the item has no reference).

:func:`record_runs` makes records for a list of items; :func:`write_records` /
:func:`read_records` store them as JSONL (``read_records`` filters solved-only / correct-only /
roles), for ``proreason eval --trajectories FILE`` and for training (``models.training``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import ModelSet, Question, Reasoner, RunOptions, RunResult
from evals.datasets import EvalItem
from evals.scoring import score_choice, score_open
from models.base import ModelBackend
from models.records import ImageRefs, message_dicts
from models.types import (
    GenerationRequest,
    GenerationResult,
    ImageInput,
    StreamDelta,
)


@dataclass
class RecordedCall:
    request: GenerationRequest
    result: GenerationResult | None = None  # None: the call raised
    error: str | None = None


class RecordingBackend(ModelBackend):
    """A backend that delegates to ``inner`` and records every request with its result.

    ``calls`` holds the :class:`RecordedCall` objects in call order. Streaming is recorded too
    (the deltas are joined into one result). Everything else (capabilities, token counting,
    context length, life cycle) is the inner backend's.
    """

    def __init__(self, inner: ModelBackend) -> None:
        super().__init__(inner.model, context_length=inner.context_length)
        self.inner = inner
        self.backend = inner.backend
        self.calls: list[RecordedCall] = []

    @property  # type: ignore[override]
    def supports_json_schema(self) -> bool:  # type: ignore[override]
        return self.inner.supports_json_schema

    @property  # type: ignore[override]
    def supports_images(self) -> bool:  # type: ignore[override]
        return self.inner.supports_images

    @property  # type: ignore[override]
    def context_length(self) -> int | None:  # type: ignore[override]
        return self.inner.context_length

    @context_length.setter
    def context_length(self, value: int | None) -> None:
        pass  # always the inner backend's (it may learn it when loading)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        call = RecordedCall(request)
        self.calls.append(call)
        try:
            call.result = await self.inner.generate(request)
        except Exception as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        return call.result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        call = RecordedCall(request)
        self.calls.append(call)
        text, last = "", None
        try:
            async for delta in self.inner.stream(request):
                text += delta.text
                last = delta
                yield delta
        except Exception as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        call.result = GenerationResult(
            text=text,
            finish_reason=(last.finish_reason if last and last.finish_reason else "stop"),
            usage=(last.usage if last and last.usage else GenerationResult("").usage),
            model=self.inner.model,
        )

    async def start(self) -> None:
        await self.inner.start()

    async def health(self) -> bool:
        return await self.inner.health()

    async def close(self) -> None:
        await self.inner.close()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def take(self) -> list[RecordedCall]:
        """The calls recorded so far, forgetting them."""
        calls, self.calls = self.calls, []
        return calls


# ------------------------------------------------------------------------------ serialisation

def records_for_run(
    calls: Iterable[RecordedCall],
    result: RunResult,
    *,
    item_id: str,
    correct: bool | None,
    image_refs: ImageRefs | None = None,
) -> list[dict[str, Any]]:
    """One record per successful call of a run; the role comes from the run's Step."""
    by_index = {step.index: step for step in result.steps}
    records = []
    for call in calls:
        if call.result is None:
            continue
        rid = call.request.request_id or ""
        index = rid.rsplit("-", 1)[-1]
        step = by_index.get(int(index)) if index.isdigit() else None
        records.append(
            {
                "role": step.role if step is not None else "unknown",
                "method": result.method,
                "item_id": item_id,
                "round": step.round if step is not None else None,
                "solved": result.stop_reason == "solved",
                "correct": correct,
                "stop_reason": result.stop_reason,
                "finish_reason": call.result.finish_reason,
                "parse_error": step.parse_error if step is not None else None,
                "messages": message_dicts(call.request.messages, image_refs),
                "reply": call.result.text,
            }
        )
    return records


def score(item: EvalItem, answer: str) -> bool | None:
    if not item.answer:
        return None
    verdict = (
        score_choice(answer, item.answer, item.options) if item.options
        else score_open(answer, item.answer)
    )  # fmt: skip
    return verdict == "correct"


# ------------------------------------------------------------------------------------ running


@dataclass
class RunSpec:
    """The models one item is answered with (per item: the demo oracle knows one item)."""

    vision: ModelBackend
    text: ModelBackend | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def record_runs(
    items: Sequence[EvalItem],
    models_for: Callable[[EvalItem], RunSpec],
    reasoner_for: Callable[[ModelSet], Reasoner],
    options: RunOptions,
    load_image: Callable[[Path], ImageInput],
    *,
    image_id: Callable[[Path], str] | None = None,
    concurrency: int = 8,
) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """Answer every item with the real Reasoner, recording every model call.

    ``models_for(item)`` gives the backends for an item (wrapped here in RecordingBackends);
    ``reasoner_for(models)`` builds the Reasoner (share one PromptSet across items);
    ``load_image(path)`` loads an image as the service would. Returns the records of all runs (in
    item order) and the RunResults.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(item: EvalItem) -> tuple[list[dict[str, Any]], RunResult]:
        async with gate:
            spec = models_for(item)
            vision = RecordingBackend(spec.vision)
            text = RecordingBackend(spec.text) if spec.text is not None else None
            images = [load_image(p) for p in item.image_paths]
            refs = {
                img.sha256: {"path": str(p), **({"image_id": image_id(p)} if image_id else {})}
                for img, p in zip(images, item.image_paths, strict=True)
            }
            question = Question(
                text=item.question,
                images=tuple(images),
                history=item.history(images),
                answer_format="multiple_choice" if item.options else "open",
                options=item.options,
            )
            reasoner = reasoner_for(ModelSet(vision=vision, text=text))
            result = await reasoner.run(question, options)
            calls = vision.take() + (text.take() if text is not None else [])
            calls.sort(key=lambda c: int((c.request.request_id or "-0").rsplit("-", 1)[-1]))
            recs = records_for_run(
                calls, result, item_id=item.id, correct=score(item, result.answer),
                image_refs=refs,
            )  # fmt: skip
            return recs, result

    done = await asyncio.gather(*(one(item) for item in items))
    return [r for recs, _ in done for r in recs], [res for _, res in done]


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_records(
    path: Path,
    *,
    solved_only: bool = False,
    correct_only: bool = False,
    roles: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Records from a JSONL file, optionally only solved runs, correct runs, some roles."""
    wanted = set(roles) if roles is not None else None
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            if solved_only and not record.get("solved"):
                continue
            if correct_only and record.get("correct") is not True:
                continue
            if wanted is not None and record.get("role") not in wanted:
                continue
            out.append(record)
    return out
