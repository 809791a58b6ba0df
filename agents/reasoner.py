"""The public entry point: ``Reasoner(models, config).run(question, options)`` / ``.stream(...)``.

The Reasoner loads and checks the prompt templates once, validates each request before any model
call (``InvalidRequest``), runs the chosen method and assembles the :class:`RunResult`.

Errors: an invalid question or options raise ``models.errors.InvalidRequest``; a ModelError from a
call that must produce the final answer (summarizer, fallback, direct answers, baselines)
propagates; model-output problems and in-loop call failures are recorded on the trace.
``asyncio.CancelledError`` always propagates at once; deadlines are the caller's (consume
:meth:`Reasoner.stream` and keep the steps seen so far).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import get_args

from agents.baselines import run_baseline
from agents.config import AgentConfig
from agents.prompts import PromptSet
from agents.proreason import run_proreason
from agents.run import RunContext
from agents.types import (
    AnswerFormat,
    Method,
    Mode,
    ModelSet,
    Question,
    RunOptions,
    RunResult,
    Step,
)
from models.errors import InvalidRequest
from models.types import Usage

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = get_args(Method)
MODES: tuple[str, ...] = get_args(Mode)
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)
#: methods that call a text role (and so need a text model in assisted mode)
_TEXT_METHODS = ("proreason", "caption")
_MAX_OPTIONS = 26


class Reasoner:
    """Answers questions about images with ProReason or a baseline. Safe to share across tasks."""

    def __init__(
        self, models: ModelSet, config: AgentConfig, *, prompts: PromptSet | None = None
    ) -> None:
        self.models = models
        self.config = config
        #: loaded and validated once; a bad template fails here, at start-up
        self.prompts = prompts if prompts is not None else PromptSet.load(config.prompts_dir)

    def resolve_options(self, options: RunOptions | None = None) -> RunOptions:
        """Options with every default filled in from the AgentConfig. Raises InvalidRequest."""
        cfg = self.config
        if options is None:
            options = RunOptions(
                method=cfg.method,
                mode=cfg.mode,
                max_rounds=cfg.max_rounds,
                parallel_perception=cfg.parallel_perception,
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
            )
        if options.method not in METHODS:
            raise InvalidRequest(
                f"unknown method {options.method!r}; choose one of {', '.join(METHODS)}",
                param="method",
            )
        if options.mode not in MODES:
            raise InvalidRequest(
                f"unknown mode {options.mode!r}; choose one of {', '.join(MODES)}", param="mode"
            )
        if not isinstance(options.max_rounds, int) or not 1 <= options.max_rounds <= 32:
            raise InvalidRequest("max_rounds must be an integer from 1 to 32", param="max_rounds")
        if options.max_tokens is not None and options.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if options.temperature is not None and options.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", param="temperature")
        if (
            options.mode == "assisted"
            and self.models.text is None
            and options.method in _TEXT_METHODS
        ):
            raise InvalidRequest(
                f"mode 'assisted' needs a text model; this deployment has only the vision model "
                f"{self.models.vision.model!r} (use mode 'pure')",
                param="mode",
            )
        return replace(
            options,
            max_tokens=options.max_tokens or cfg.max_tokens,
            temperature=options.temperature if options.temperature is not None else cfg.temperature,
        )

    def validate(self, question: Question, options: RunOptions | None = None) -> RunOptions:
        """Check a request before anything runs (call it before starting a stream)."""
        if not question.text or not question.text.strip():
            raise InvalidRequest("the question text is empty", param="question")
        if question.answer_format not in ANSWER_FORMATS:
            raise InvalidRequest(
                f"unknown answer_format {question.answer_format!r}; "
                f"choose one of {', '.join(ANSWER_FORMATS)}",
                param="answer_format",
            )
        if question.answer_format == "multiple_choice":
            if not 2 <= len(question.options) <= _MAX_OPTIONS:
                raise InvalidRequest(
                    f"a multiple_choice question needs 2 to {_MAX_OPTIONS} options",
                    param="options",
                )
            if any(not str(o).strip() for o in question.options):
                raise InvalidRequest("an option is empty", param="options")
        elif question.options:
            raise InvalidRequest(
                "options are given but answer_format is 'open'; use 'multiple_choice'",
                param="answer_format",
            )
        if question.images and not self.models.vision.supports_images:
            raise InvalidRequest(
                f"the vision model {self.models.vision.model!r} does not accept images",
                param="images",
            )
        return self.resolve_options(options)

    async def run(self, question: Question, options: RunOptions | None = None) -> RunResult:
        """Answer ``question``; returns the answer with its full trace."""
        result: RunResult | None = None
        async for event in self.stream(question, options):
            if isinstance(event, RunResult):
                result = event
        if result is None:  # stream() always ends with a RunResult or raises
            raise RuntimeError("the run ended without a result")
        return result

    async def stream(
        self, question: Question, options: RunOptions | None = None
    ) -> AsyncIterator[Step | RunResult]:
        """Yield each Step as its model call finishes, then exactly one RunResult."""
        resolved = self.validate(question, options)
        ctx = RunContext(question, resolved, self.models, self.prompts, self.config)
        method = run_proreason(ctx) if resolved.method == "proreason" else run_baseline(ctx)
        try:
            async for step in method:
                yield step
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
