"""Run one or more methods over a dataset, concurrently, and report what happened.

The report never hides a fallback: accuracy is given with the stop-reason mix behind it
(``solved`` vs ``max_rounds_fallback`` ...), the parse failures and the unparsed answers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents import Question, Reasoner, RunOptions
from agents.types import ResolvedOptions
from evals.datasets import EvalItem
from evals.scoring import Verdict, score_choice, score_open
from models.errors import ModelError
from models.images import ImageDecoder


@dataclass
class ItemRecord:
    id: str
    method: str
    question: str
    reference: str
    prediction: str | None
    verdict: Verdict | Literal["error"]
    stop_reason: str | None
    rounds: int
    model_calls: int
    parse_failures: int
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int | None
    latency_s: float
    error: str | None = None


@dataclass
class MethodReport:
    method: str
    mode: str
    n: int
    accuracy: float
    correct: int
    wrong: int
    unparsed: int
    errors: int
    stop_reasons: dict[str, int] = field(default_factory=dict)
    fallback_rate: float = 0.0
    accuracy_when_solved: float | None = None
    parse_failures_per_question: float = 0.0
    model_calls_per_question: float = 0.0
    tokens_per_question: float = 0.0
    image_tokens_per_question: float | None = None
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    wall_time_s: float = 0.0


async def _question(item: EvalItem, decoder: ImageDecoder) -> Question:
    images = []
    for path in item.image_paths:
        data = await asyncio.to_thread(path.read_bytes)
        images.append(await decoder.decode(data, source=str(path)))
    return Question(
        text=item.question,
        images=tuple(images),
        answer_format="multiple_choice" if item.options else "open",
        options=item.options,
    )


async def _one(
    reasoner: Reasoner, item: EvalItem, options: RunOptions, method: str, decoder: ImageDecoder
) -> ItemRecord:
    question = await _question(item, decoder)
    started = time.perf_counter()
    try:
        result = await reasoner.run(question, options)
    except ModelError as exc:  # recorded, never a crash of the whole evaluation
        return ItemRecord(
            item.id, method, item.question, item.answer, None, "error", None, 0, 0, 0,
            0, 0, None, time.perf_counter() - started, error=exc.message,
        )  # fmt: skip
    if item.options:
        verdict = score_choice(result.answer, item.answer, item.options)
    else:
        verdict = score_open(result.answer, item.answer)
    return ItemRecord(
        id=item.id,
        method=method,
        question=item.question,
        reference=item.answer,
        prediction=result.answer,
        verdict=verdict,
        stop_reason=result.stop_reason,
        rounds=result.rounds,
        model_calls=len(result.steps),
        parse_failures=result.parse_failures,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        image_tokens=result.usage.image_tokens,
        latency_s=result.latency_s,
    )


def summarize(
    records: list[ItemRecord], options: ResolvedOptions, wall_time_s: float
) -> MethodReport:
    n = len(records)
    verdicts = Counter(r.verdict for r in records)
    stops = Counter(r.stop_reason for r in records if r.stop_reason)
    solved = [r for r in records if r.stop_reason == "solved"]
    latencies = sorted(r.latency_s for r in records) or [0.0]
    image_tokens = [r.image_tokens for r in records if r.image_tokens is not None]
    return MethodReport(
        method=options.method,
        mode=options.mode,
        n=n,
        accuracy=verdicts["correct"] / n if n else 0.0,
        correct=verdicts["correct"],
        wrong=verdicts["wrong"],
        unparsed=verdicts["unparsed"],
        errors=verdicts["error"],
        stop_reasons=dict(stops),
        fallback_rate=stops["max_rounds_fallback"] / n if n else 0.0,
        accuracy_when_solved=(
            sum(r.verdict == "correct" for r in solved) / len(solved) if solved else None
        ),
        parse_failures_per_question=sum(r.parse_failures for r in records) / n if n else 0.0,
        model_calls_per_question=sum(r.model_calls for r in records) / n if n else 0.0,
        tokens_per_question=(
            sum(r.prompt_tokens + r.completion_tokens for r in records) / n if n else 0.0
        ),
        image_tokens_per_question=(sum(image_tokens) / len(image_tokens) if image_tokens else None),
        latency_p50_s=statistics.median(latencies),
        latency_p95_s=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        wall_time_s=wall_time_s,
    )


async def evaluate(
    reasoner: Reasoner,
    items: list[EvalItem],
    options: RunOptions,
    decoder: ImageDecoder,
    *,
    concurrency: int = 8,
) -> tuple[MethodReport, list[ItemRecord]]:
    """Answer every item with one method, ``concurrency`` questions in flight."""
    gate = asyncio.Semaphore(concurrency)
    resolved = reasoner.resolve(options)  # the method and mode the report names

    async def guarded(item: EvalItem) -> ItemRecord:
        async with gate:
            return await _one(reasoner, item, options, resolved.method, decoder)

    started = time.perf_counter()
    records = await asyncio.gather(*(guarded(item) for item in items))
    wall = time.perf_counter() - started
    return summarize(list(records), resolved, wall), list(records)


def format_reports(reports: list[MethodReport]) -> str:
    header = (
        f"{'method':<10} {'mode':<9} {'n':>5} {'acc':>6} {'unparsed':>8} {'errors':>6} "
        f"{'fallback':>8} {'calls/q':>7} {'tok/q':>7} {'p50 s':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.method:<10} {r.mode:<9} {r.n:>5} {r.accuracy:>6.1%} {r.unparsed:>8} "
            f"{r.errors:>6} {r.fallback_rate:>8.1%} {r.model_calls_per_question:>7.1f} "
            f"{r.tokens_per_question:>7.0f} {r.latency_p50_s:>6.2f}"
        )
    return "\n".join(lines)


def write_outputs(
    out: Path,
    reports: list[MethodReport],
    records: dict[str, list[ItemRecord]],
    meta: dict[str, Any],
) -> None:
    """``report.json`` plus one ``predictions-<method>.jsonl`` per method."""
    out.mkdir(parents=True, exist_ok=True)
    for method, rows in records.items():
        lines = (json.dumps(asdict(r), ensure_ascii=False) for r in rows)
        (out / f"predictions-{method}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    payload = {"meta": meta, "reports": [asdict(r) for r in reports]}
    (out / "report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
