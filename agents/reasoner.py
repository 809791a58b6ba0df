"""The public entry point: ``Reasoner(models, config).run(question, options)``, or
``job = reasoner.prepare(question, options)`` then ``reasoner.stream(job)``.

The Reasoner loads and checks the prompt templates once, validates each request before any model
call (``InvalidRequest``, in ``prepare``: the only place), runs the chosen method and assembles the
:class:`RunResult`.

Errors: an invalid question or options raise ``models.errors.InvalidRequest``; a ModelError from a
call that must produce the final answer (summarizer, fallback, direct answers, baselines)
propagates; model-output problems and in-loop call failures are recorded on the trace.
``asyncio.CancelledError`` always propagates at once; deadlines are the caller's (consume
:meth:`Reasoner.stream` and keep the steps seen so far).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TypeVar, get_args

from agents.baselines import run_baseline
from agents.config import AgentConfig
from agents.prompts import DEFAULT_SET, OCR_PROMPTS, VIDEO_PROMPTS, PromptError, PromptSet
from agents.proreason import run_proreason
from agents.run import RunContext
from agents.types import (
    MAX_OPTIONS,
    MAX_ROUNDS,
    AnswerFormat,
    Job,
    Method,
    Mode,
    ModelSet,
    Question,
    ResolvedOptions,
    RunEvent,
    RunOptions,
    RunResult,
)
from models.errors import InvalidRequest, ModelLoadError
from models.ocr import OcrEngine, ocr_available
from models.types import Usage

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = get_args(Method)
MODES: tuple[str, ...] = get_args(Mode)
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)
#: methods that call a text role (and so need a text model in assisted mode)
_TEXT_METHODS = ("proreason", "caption")
T = TypeVar("T")


def check_choices(answer_format: str, options: Sequence[str]) -> None:
    """multiple_choice needs 2 to MAX_OPTIONS non-empty options; open questions take none."""
    if answer_format == "multiple_choice":
        if len(options) < 2:
            raise InvalidRequest(
                "answer_format 'multiple_choice' needs at least 2 'options'", param="options"
            )
        if len(options) > MAX_OPTIONS:
            raise InvalidRequest(
                f"a multiple_choice question takes at most {MAX_OPTIONS} options",
                param="options",
            )
        if any(not str(o).strip() for o in options):
            raise InvalidRequest("'options' must not contain empty strings", param="options")
    elif options:
        raise InvalidRequest(
            "'options' are only allowed with answer_format 'multiple_choice'",
            param="answer_format",
        )


def _check_question(question: Question) -> None:
    if not question.text or not question.text.strip():
        raise InvalidRequest("the question text is empty", param="question")
    if question.answer_format not in ANSWER_FORMATS:
        raise InvalidRequest(
            f"unknown answer_format {question.answer_format!r}; "
            f"choose one of {', '.join(ANSWER_FORMATS)}",
            param="answer_format",
        )
    check_choices(question.answer_format, question.options)


class Reasoner:
    """Answers questions about images with ProReason or a baseline. Safe to share across tasks.

    ``prepare`` validates a question and fills its options from the AgentConfig (the one place
    either happens); ``stream`` runs the resulting Job; ``run`` does both and returns the result.
    """

    def __init__(
        self,
        models: ModelSet,
        config: AgentConfig,
        *,
        prompts: PromptSet | Mapping[str, PromptSet] | None = None,
        ocr: OcrEngine | None = None,
    ) -> None:
        self.models = models
        self.config = config
        #: every prompt set, loaded and validated once; a bad template fails here, at start-up
        if prompts is None:
            sets = PromptSet.load_sets(config.prompts_dir)
        elif isinstance(prompts, PromptSet):
            sets = {DEFAULT_SET: prompts}
        else:
            sets = dict(prompts)
        if config.prompts not in sets:
            raise PromptError(
                f"agent.prompts: no prompt set {config.prompts!r}; have {', '.join(sorted(sets))}"
            )
        self.prompt_sets: dict[str, PromptSet] = sets
        #: the OCR expert's engine (loaded on its first read); None when the extra is missing
        if ocr is None and ocr_available():
            ocr = OcrEngine(
                timeout_s=config.ocr_timeout_s,
                cache_size=config.ocr_cache_size,
                min_score=config.ocr_min_score,
            )
        self.ocr = ocr
        served = models.vision.adapters | (models.text.adapters if models.text else frozenset())
        unknown = {r: a for r, a in config.adapters.items() if a not in served}
        if unknown:
            raise ModelLoadError(
                "agent.adapters: no backend serves "
                + ", ".join(f"{a!r} (for {r})" for r, a in sorted(unknown.items()))
                + f"; served: {', '.join(sorted(served)) or 'none'}"
            )
        if config.ocr and ocr is None:
            raise ModelLoadError(
                "agent.ocr: the OCR expert needs RapidOCR: pip install 'proreason[ocr]'"
            )
        if config.ocr and not self.prompts.has(*OCR_PROMPTS):
            raise PromptError(
                f"agent.ocr: prompt set {config.prompts!r} lacks the OCR expert's prompts "
                f"({', '.join(sorted(OCR_PROMPTS))})"
            )

    @property
    def prompts(self) -> PromptSet:
        """The profile's prompt set (``agent.prompts``)."""
        return self.prompt_sets[self.config.prompts]

    def prepare(self, question: Question, options: RunOptions | None = None) -> Job:
        """Check a request before anything runs (InvalidRequest) and resolve its options."""
        _check_question(question)
        if question.images and not self.models.vision.supports_images:
            raise InvalidRequest(
                f"the vision model {self.models.vision.model!r} does not accept images",
                param="images",
            )
        resolved = self.resolve(options or RunOptions())
        if question.video is not None and not self.prompt_sets[resolved.prompts].has(
            *VIDEO_PROMPTS
        ):
            raise InvalidRequest(
                f"prompt set {resolved.prompts!r} has no video prompts "
                f"({', '.join(sorted(VIDEO_PROMPTS))})",
                param="video",
            )
        return Job(question, resolved)

    def resolve(self, options: RunOptions) -> ResolvedOptions:
        """``options`` with every gap filled from the AgentConfig. Raises InvalidRequest."""
        cfg = self.config

        def pick(value: T | None, default: T) -> T:
            return default if value is None else value

        resolved = ResolvedOptions(
            method=pick(options.method, cfg.method),
            mode=pick(options.mode, cfg.mode),
            max_rounds=pick(options.max_rounds, cfg.max_rounds),
            parallel_perception=pick(options.parallel_perception, cfg.parallel_perception),
            max_tokens=pick(options.max_tokens, cfg.max_tokens),
            temperature=pick(options.temperature, cfg.temperature),
            prompts=pick(options.prompts, cfg.prompts),
            top_p=options.top_p,
            seed=options.seed,
            ocr=bool(pick(options.ocr, cfg.ocr)),
        )
        if resolved.prompts not in self.prompt_sets:
            raise InvalidRequest(
                f"unknown prompt set {resolved.prompts!r}; choose one of "
                f"{', '.join(sorted(self.prompt_sets))}",
                param="prompts",
            )
        if resolved.ocr and self.ocr is None:
            raise InvalidRequest(
                "this server has no OCR expert (the 'ocr' extra is not installed)", param="ocr"
            )
        if resolved.ocr and not self.prompt_sets[resolved.prompts].has(*OCR_PROMPTS):
            raise InvalidRequest(
                f"prompt set {resolved.prompts!r} has no OCR expert prompts", param="ocr"
            )
        if resolved.method not in METHODS:
            raise InvalidRequest(
                f"unknown method {resolved.method!r}; choose one of {', '.join(METHODS)}",
                param="method",
            )
        if resolved.mode not in MODES:
            raise InvalidRequest(
                f"unknown mode {resolved.mode!r}; choose one of {', '.join(MODES)}", param="mode"
            )
        rounds = resolved.max_rounds
        if not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise InvalidRequest(
                f"max_rounds must be an integer from 1 to {MAX_ROUNDS}", param="max_rounds"
            )
        if resolved.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if resolved.temperature is not None and resolved.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", param="temperature")
        if (
            resolved.mode == "assisted"
            and self.models.text is None
            and resolved.method in _TEXT_METHODS
        ):
            raise InvalidRequest(
                f"mode 'assisted' needs a text model; this deployment has only the vision model "
                f"{self.models.vision.model!r} (use mode 'pure')",
                param="mode",
            )
        return resolved

    async def run(self, question: Question, options: RunOptions | None = None) -> RunResult:
        """Answer ``question``; returns the answer with its full trace."""
        result: RunResult | None = None
        async for event in self.stream(self.prepare(question, options)):
            if isinstance(event, RunResult):
                result = event
        if result is None:  # stream() always ends with a RunResult or raises
            raise RuntimeError("the run ended without a result")
        return result

    async def stream(self, job: Job, *, answer_deltas: bool = False) -> AsyncIterator[RunEvent]:
        """Yield each Step of a prepared Job as its model call finishes, then one RunResult.

        ``answer_deltas``: the call that answers (summarizer, fallback, no-image answer, the
        baselines' answer) is streamed, and its AnswerDeltas come before its Step: an empty one
        as it starts, then pieces that add up to ``RunResult.answer`` (agents.answer_stream).
        """
        ctx = RunContext(
            job,
            self.models,
            self.prompt_sets[job.options.prompts],
            self.config,
            ocr=self.ocr,
            answer_deltas=answer_deltas,
        )
        method = run_proreason(ctx) if job.options.method == "proreason" else run_baseline(ctx)
        try:
            async for event in method:
                yield event
        finally:
            await method.aclose()
        yield self._result(ctx)

    def _result(self, ctx: RunContext) -> RunResult:
        if ctx.stop_reason is None:  # every method sets it when it answers
            raise RuntimeError(f"method {ctx.options.method!r} finished without an answer")
        by_role: dict[str, Usage] = {}
        total = Usage()
        for step in ctx.steps:
            by_role[step.role] = by_role.get(step.role, Usage()) + step.usage
            total = total + step.usage
        result = RunResult(
            answer=ctx.answer,
            method=ctx.options.method,
            mode=ctx.options.mode,
            stop_reason=ctx.stop_reason,
            rounds=ctx.rounds,
            steps=list(ctx.steps),
            usage_by_role=by_role,
            usage=total,
            latency_s=ctx.elapsed(),
            parse_failures=ctx.parse_failures,
            notes=list(ctx.notes),
            answer_extracted=ctx.answer_extracted,
        )
        logger.info(
            "run %s: method=%s mode=%s stop=%s rounds=%d calls=%d parse_failures=%d %.2fs",
            ctx.run_id,
            result.method,
            result.mode,
            result.stop_reason,
            result.rounds,
            len(result.steps),
            result.parse_failures,
            result.latency_s,
        )
        return result
