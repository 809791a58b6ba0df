"""Run one or more methods over a dataset, concurrently, and report what happened.

The report never hides a fallback: accuracy is given with the stop-reason mix behind it
(``solved`` vs ``max_rounds_fallback`` ...), the parse failures and the unparsed answers.

Runs survive: every finished item is appended to the column's ``predictions-<column>.jsonl``
(one JSON object a line, flushed) as it completes; re-running the same command reads the file
and skips the items already answered (an item recorded as an error is tried again), so a
``kill -9`` loses at most the items in flight. A bad item (a missing image, a model error) is
recorded as an ``error`` and the run goes on.

Who answers is an :class:`Answerer`: :class:`InProcess` (a :class:`agents.Reasoner` in this
process) or :class:`Endpoint` (a running service over its OpenAI-compatible
``/v1/chat/completions``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from agents import Question, Reasoner, RunOptions
from agents.types import ResolvedOptions
from evals.datasets import EvalItem
from evals.scoring import Verdict, parsed_answer, score_item
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
    mode: str | None = None
    prompts: str | None = None
    benchmark: str | None = None
    #: what the extractor read ("yes", "B", "3.5"); None: unparsed (or an error)
    parsed: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: the optional LLM judge's verdict (None: not judged)
    judge: Literal["correct", "wrong", "unclear"] | None = None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ItemRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


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
    rounds_per_question: float = 0.0
    prompts: str | None = None
    benchmark: str | None = None
    column: str = ""
    accuracy_ci95: tuple[float, float] = (0.0, 0.0)
    #: the LLM judge's accuracy over the judged items (None: no judge)
    judge_accuracy: float | None = None
    #: the benchmark's own metrics (HallusionBench, MME, POPE)
    official: dict[str, Any] | None = None
    #: the paired McNemar test against ``direct`` on the same items
    vs_direct: dict[str, Any] | None = None


@dataclass
class Outcome:
    """One answered question, whoever answered it."""

    answer: str
    method: str
    mode: str
    stop_reason: str | None
    rounds: int
    model_calls: int
    parse_failures: int
    prompt_tokens: int
    completion_tokens: int
    image_tokens: int | None
    latency_s: float


class Answerer(Protocol):
    async def answer(self, item: EvalItem, options: RunOptions) -> Outcome: ...

    def resolve(self, options: RunOptions) -> tuple[str, str]:
        """The (method, mode) a run with ``options`` reports."""
        ...


async def _image_bytes(item: EvalItem) -> list[bytes]:
    data = [await asyncio.to_thread(p.read_bytes) for p in item.image_paths]
    return [*data, *item.image_data]


def _question_text(item: EvalItem) -> Question:
    return Question(
        text=item.question,
        answer_format="multiple_choice" if item.options else "open",
        options=item.options,
    )


async def _question(item: EvalItem, decoder: ImageDecoder) -> Question:
    images = []
    for n, data in enumerate(await _image_bytes(item), start=1):
        images.append(await decoder.decode(data, source=f"{item.id} image {n}"))
    q = _question_text(item)
    return Question(
        text=q.text, images=tuple(images), history=item.history(images),
        answer_format=q.answer_format, options=q.options,
    )  # fmt: skip


class InProcess:
    """The pipeline in this process."""

    def __init__(self, reasoner: Reasoner, decoder: ImageDecoder) -> None:
        self.reasoner, self.decoder = reasoner, decoder

    def resolve(self, options: RunOptions) -> tuple[str, str]:
        resolved = self.reasoner.resolve(options)
        return resolved.method, resolved.mode

    async def answer(self, item: EvalItem, options: RunOptions) -> Outcome:
        question = await _question(item, self.decoder)
        result = await self.reasoner.run(question, options)
        return Outcome(
            answer=result.answer,
            method=result.method,
            mode=result.mode,
            stop_reason=result.stop_reason,
            rounds=result.rounds,
            model_calls=len(result.steps),
            parse_failures=result.parse_failures,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            image_tokens=result.usage.image_tokens,
            latency_s=result.latency_s,
        )


_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))


def _data_url(data: bytes) -> str:
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None:
        mime = "image/webp" if data[8:12] == b"WEBP" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class Endpoint:
    """A running service, over ``POST /v1/chat/completions``. The method is the model name
    (``proreason``, ``proreason-pure``, ``proreason-direct`` ...); options go in the
    ``proreason`` extension with ``trace: true`` for the stop reason, rounds and calls."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        prefix: str = "proreason",
        timeout_s: float = 600.0,
        client: Any = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.prefix = prefix
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)

    def model_name(self, options: RunOptions) -> str:
        method = options.method or "proreason"
        if method != "proreason":
            return f"{self.prefix}-{method}"
        if options.parallel_perception:
            return f"{self.prefix}-parallel"
        return f"{self.prefix}-{options.mode}" if options.mode else self.prefix

    def resolve(self, options: RunOptions) -> tuple[str, str]:
        return options.method or "proreason", options.mode or "server"

    async def answer(self, item: EvalItem, options: RunOptions) -> Outcome:
        content: list[dict[str, Any]] = [{"type": "text", "text": item.question}]
        for data in await _image_bytes(item):
            content.append({"type": "image_url", "image_url": {"url": _data_url(data)}})
        ext: dict[str, Any] = {"trace": True}
        if item.options:
            ext |= {"answer_format": "multiple_choice", "options": list(item.options)}
        if options.max_rounds:
            ext["max_rounds"] = options.max_rounds
        if options.prompts:
            ext["prompts"] = options.prompts
        body: dict[str, Any] = {
            "model": self.model_name(options),
            "messages": [{"role": "user", "content": content}],
            "proreason": ext,
        }
        if options.max_tokens:
            body["max_tokens"] = options.max_tokens
        started = time.perf_counter()
        response = await self.client.post(f"{self.url}/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(
                f"the service answered {response.status_code}: {response.text[:300]}"
            )
        data = response.json()
        info = data.get("proreason") or {}
        usage = data.get("usage") or {}
        return Outcome(
            answer=data["choices"][0]["message"].get("content") or "",
            method=info.get("method", options.method or "proreason"),
            mode=info.get("mode", options.mode or "server"),
            stop_reason=info.get("stop_reason"),
            rounds=int(info.get("rounds", 0)),
            model_calls=len(info.get("steps", [])),
            parse_failures=int(info.get("parse_failures", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            image_tokens=None,
            latency_s=time.perf_counter() - started,
        )

    async def close(self) -> None:
        await self.client.aclose()


class Judge(Protocol):
    async def __call__(self, question: str, reference: str, prediction: str) -> str: ...


@dataclass(frozen=True)
class Column:
    """One column of the report: a method under a mode and a prompt set, on one benchmark."""

    options: RunOptions
    method: str
    mode: str
    benchmark: str | None = None

    @property
    def key(self) -> str:
        parts = [self.method]
        if self.options.mode:
            parts.append(self.options.mode)
        if self.options.prompts:
            parts.append(self.options.prompts)
        return "-".join(parts)


def read_results(path: Path) -> dict[str, ItemRecord]:
    """The records in a predictions file, the last one per item winning; a line cut by a kill
    (or otherwise unreadable) is skipped."""
    done: dict[str, ItemRecord] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = ItemRecord.from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        done[record.id] = record
    return done


class _Appender:
    """Appends one record a line and flushes it to the OS at once (a kill -9 keeps it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a line cut by a kill must not glue itself to the next record
        if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with path.open("ab") as f:
                f.write(b"\n")
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: ItemRecord) -> None:
        self.file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


async def _one(
    answerer: Answerer, item: EvalItem, column: Column, judge: Judge | None
) -> ItemRecord:
    started = time.perf_counter()
    base = {
        "id": item.id,
        "question": item.question,
        "reference": item.answer,
        "mode": column.mode,
        "prompts": column.options.prompts,
        "benchmark": column.benchmark,
        "meta": item.meta,
    }
    try:
        out = await answerer.answer(item, column.options)
        verdict = score_item(out.answer, item)
        judged = None
        if judge is not None:
            judged = await judge(item.question, item.answer, out.answer)
    except Exception as exc:  # recorded, never a crash of the whole evaluation
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return ItemRecord(
            **base, method=column.method, prediction=None, verdict="error", stop_reason=None,
            rounds=0, model_calls=0, parse_failures=0, prompt_tokens=0, completion_tokens=0,
            image_tokens=None, latency_s=time.perf_counter() - started, error=message,
        )  # fmt: skip
    return ItemRecord(
        **base,
        method=column.method,
        prediction=out.answer,
        verdict=verdict,
        stop_reason=out.stop_reason,
        rounds=out.rounds,
        model_calls=out.model_calls,
        parse_failures=out.parse_failures,
        prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens,
        image_tokens=out.image_tokens,
        latency_s=out.latency_s,
        parsed=parsed_answer(out.answer, item),
        judge=judged,
    )


async def run_column(
    answerer: Answerer,
    items: list[EvalItem],
    column: Column,
    results: Path | None,
    *,
    concurrency: int = 8,
    progress: bool = False,
    judge: Judge | None = None,
) -> tuple[list[ItemRecord], float]:
    """Answer every item not yet in ``results`` (appending each as it finishes); all records in
    item order, and the wall time of this invocation."""
    done = read_results(results) if results else {}
    done = {k: r for k, r in done.items() if r.verdict != "error"}
    todo = [item for item in items if item.id not in done]
    appender = _Appender(results) if results and todo else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=column.key, unit="q")
    correct = sum(1 for i in items if i.id in done and done[i.id].verdict == "correct")
    finished = len(items) - len(todo)
    gate = asyncio.Semaphore(concurrency)

    async def guarded(item: EvalItem) -> None:
        nonlocal correct, finished
        async with gate:
            record = await _one(answerer, item, column, judge)
        done[item.id] = record
        if appender:
            appender.write(record)
        finished += 1
        correct += record.verdict == "correct"
        if bar is not None:
            bar.set_postfix(acc=f"{correct / finished:.1%}", refresh=False)
            bar.update(1)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(guarded(item) for item in todo))
    finally:
        if appender:
            appender.close()
        if bar is not None:
            bar.close()
    return [done[item.id] for item in items], time.perf_counter() - started


def summarize(
    records: list[ItemRecord], options: ResolvedOptions | Column, wall_time_s: float
) -> MethodReport:
    from evals.metrics import bootstrap_interval, official_metrics

    n = len(records)
    verdicts = Counter(r.verdict for r in records)
    stops = Counter(r.stop_reason for r in records if r.stop_reason)
    solved = [r for r in records if r.stop_reason == "solved"]
    latencies = sorted(r.latency_s for r in records) or [0.0]
    image_tokens = [r.image_tokens for r in records if r.image_tokens is not None]
    judged = [r for r in records if r.judge is not None]
    column = options if isinstance(options, Column) else None
    benchmark = column.benchmark if column else None
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
        rounds_per_question=sum(r.rounds for r in records) / n if n else 0.0,
        prompts=column.options.prompts if column else None,
        benchmark=benchmark,
        column=column.key if column else options.method,
        accuracy_ci95=bootstrap_interval([r.verdict == "correct" for r in records]),
        judge_accuracy=(
            sum(r.judge == "correct" for r in judged) / len(judged) if judged else None
        ),
        official=official_metrics(benchmark, records),
    )


async def evaluate(
    reasoner: Reasoner,
    items: list[EvalItem],
    options: RunOptions,
    decoder: ImageDecoder,
    *,
    concurrency: int = 8,
    results: Path | None = None,
    progress: bool = False,
    benchmark: str | None = None,
) -> tuple[MethodReport, list[ItemRecord]]:
    """Answer every item with one method in this process, ``concurrency`` questions in flight
    (the original entry point; ``results``: resume from and append to that JSONL file)."""
    resolved = reasoner.resolve(options)  # the method and mode the report names
    column = Column(options, resolved.method, resolved.mode, benchmark)
    records, wall = await run_column(
        InProcess(reasoner, decoder), items, column, results,
        concurrency=concurrency, progress=progress,
    )  # fmt: skip
    return summarize(records, column, wall), records


def format_reports(reports: list[MethodReport]) -> str:
    header = (
        f"{'benchmark':<14} {'column':<22} {'mode':<9} {'n':>5} {'acc':>6} {'95% CI':>13} "
        f"{'unparsed':>8} {'errors':>6} {'fallback':>8} {'calls/q':>7} {'tok/q':>7} {'p50 s':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        lo, hi = r.accuracy_ci95
        lines.append(
            f"{r.benchmark or '-':<14} {r.column or r.method:<22} {r.mode:<9} {r.n:>5} "
            f"{r.accuracy:>6.1%} {f'{lo:.1%}-{hi:.1%}':>13} {r.unparsed:>8} "
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
