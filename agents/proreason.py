"""The ProReason loop, faithful to the reference control flow (see docs/proreason.md).

::

    no image            -> the text model answers directly            (stop_reason no_image_direct)
    repeat max_rounds:
        Dispatcher(question, memory, last expert) -> {"thought", "expert", "question"}
            unreadable / cut at max_tokens / unknown expert / failed call: the round is spent
        Vision expert(images, sub-question only)   -> whole answer to memory
        | Insight expert(memory, sub-question)      -> its final-answer line to memory
            failed call / empty output: the round is spent
        Referee(question, memory) -> {"reasoning": ..., "solvable": bool}
            unreadable / cut at max_tokens / failed call: the round is spent
            solvable: reasoning to memory; Summarizer(question, memory) answers (stop_reason solved)
    the LVLM answers the question directly                     (stop_reason max_rounds_fallback)

Thought first: the JSON schemas (and the prompts) put the thought before the decision, since an
autoregressive model decides as it writes and vLLM's structured output follows the schema's
property order. The ``reference`` prompt set uses the authors' text protocol instead (no schema).

Cost: 4 calls when solved in round 1, 3 more per extra round, 25 at most with 8 rounds.
A ModelError from the summarizer or the fallback (the final answer) fails the run; so does, from
any call, ``ModelUnavailable`` (the model is down or its circuit breaker open) or
``ContextLengthExceeded`` (every round would be refused alike): no round is spent on those.

The OCR expert (opt-in: ``agent.ocr`` / request ``ocr``): the dispatcher gets the
``dispatcher_ocr`` prompt (the ``dispatcher`` prompt is untouched when OCR is off), "ocr" joins the
schema's expert enum and the parser's known experts, and an OCR decision reads the text of every
image (RapidOCR, cached per image) into memory like an expert's answer: a Step of role "ocr".

Parallel perception (opt-in): the dispatcher may ask up to ``max_parallel_questions`` visual
sub-questions in one decision; they run concurrently (one batch for the backend), each answer is a
memory entry, their steps carry ``parallel=True``, and the referee runs once after the round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agents.parsing import (
    DispatchDecision,
    ParseError,
    Verdict,
    answer_line,
    clean_answer,
    parse_dispatch,
    parse_verdict,
)
from agents.run import RunContext
from agents.types import AnswerDelta, Step
from models.types import Message

_EXPERTS = ["vision", "insight"]
_EXPERTS_OCR = ["vision", "insight", "ocr"]

# Property order matters: constrained decoding writes the properties in this order, so the
# thought comes before the decision it informs.
DISPATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "thought": {"type": "string"},
        "expert": {"type": "string", "enum": _EXPERTS},
        "question": {"type": "string"},
    },
    "required": ["thought", "expert", "question"],
    "additionalProperties": False,
}

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "solvable": {"type": "boolean"}},
    "required": ["reasoning", "solvable"],
    "additionalProperties": False,
}


def dispatch_schema(ocr: bool = False) -> dict[str, Any]:
    """The dispatcher's schema; with the OCR expert when the run offers it."""
    if not ocr:
        return DISPATCH_SCHEMA
    schema = {**DISPATCH_SCHEMA, "properties": dict(DISPATCH_SCHEMA["properties"])}
    schema["properties"]["expert"] = {"type": "string", "enum": _EXPERTS_OCR}
    return schema


def parallel_dispatch_schema(max_questions: int, ocr: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "thought": {"type": "string"},
            "expert": {"type": "string", "enum": _EXPERTS_OCR if ocr else _EXPERTS},
            "questions": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": max_questions,
            },
        },
        "required": ["thought", "expert", "questions"],
        "additionalProperties": False,
    }


def answer_without_image(ctx: RunContext) -> AsyncIterator[Step | AnswerDelta]:
    """No image: the text model answers the question in one call."""
    messages = ctx.messages(
        "no_image", ctx.text, question=ctx.question.text, answer_format=ctx.answer_format("direct")
    )
    return ctx.final_call("direct", ctx.text, messages, "no_image_direct", style="direct")


async def run_proreason(ctx: RunContext) -> AsyncIterator[Step | AnswerDelta]:
    """Yield every Step as its call completes (and the final answer's AnswerDeltas before its
    Step, when the run streams them); the answer and stop reason end up on ``ctx``."""
    if not ctx.question.images:
        async for step in answer_without_image(ctx):
            yield step
        return
    last_expert = "none"
    for rnd in range(1, ctx.options.max_rounds + 1):
        ctx.rounds = rnd
        step = await _dispatch(ctx, rnd, last_expert)
        decision = None if step.error else _read_dispatch(ctx, step)
        yield step  # steps are yielded complete: parsed, annotated, remembered
        ctx.raise_if_fatal(step)
        if decision is None:
            continue  # failed call, unreadable decision or unknown expert: round spent

        added = 0
        if decision.expert == "vision":
            async for vstep in _perceive(ctx, rnd, decision.questions):
                added += _remember(ctx, vstep, "vision", vstep.output)
                yield vstep
                ctx.raise_if_fatal(vstep)
        elif decision.expert == "ocr":
            ostep = await ctx.read_text(round=rnd, sub_question=decision.question)
            added += _remember(ctx, ostep, "ocr", ostep.output)
            yield ostep
        else:
            istep = await _insight(ctx, rnd, decision.question)
            if not istep.error:
                added += _remember(ctx, istep, "insight", _insight_conclusion(ctx, istep))
            yield istep
            ctx.raise_if_fatal(istep)
        if not added:
            continue  # the expert call failed or said nothing: round spent
        last_expert = decision.expert

        rstep = await _referee(ctx, rnd)
        verdict = None if rstep.error else _read_verdict(ctx, rstep)
        if verdict is not None and verdict.solvable and verdict.reasoning:
            ctx.memory.add("referee", verdict.reasoning, round=rnd)
            rstep.memory_entry = verdict.reasoning
        yield rstep
        ctx.raise_if_fatal(rstep)
        if verdict is None or not verdict.solvable:
            continue
        async for event in _summarize(ctx, rnd):
            yield event
        return

    messages = ctx.messages(
        "fallback",
        ctx.vision,
        images=ctx.question.images,
        question=ctx.question.text,
        answer_format=ctx.answer_format("direct"),
    )
    fallback = ctx.final_call(
        "fallback", ctx.vision, messages, "max_rounds_fallback", style="direct", round=ctx.rounds
    )
    async for event in fallback:
        yield event


def _cut_off(ctx: RunContext, step: Step) -> bool:
    """A decision whose call ended at max_tokens is unreadable, whatever its prefix says."""
    if step.finish_reason != "length":
        return False
    ctx.parse_failed(step, "output cut at max_tokens (finish_reason=length): not read")
    return True


def _read_dispatch(ctx: RunContext, step: Step) -> DispatchDecision | None:
    """The dispatcher's decision, recorded on the step; None (and a parse failure) if unusable."""
    if _cut_off(ctx, step):
        return None
    try:
        decision = parse_dispatch(
            step.output,
            parallel=ctx.options.parallel_perception,
            max_questions=ctx.config.max_parallel_questions,
            ocr=ctx.options.ocr,
        )
    except ParseError as exc:
        ctx.parse_failed(step, str(exc))
        return None
    step.decision = decision.as_dict()
    if decision.dropped:
        ctx.note(
            f"round {step.round}: {decision.dropped} extra visual sub-question(s) dropped "
            f"(max_parallel_questions={ctx.config.max_parallel_questions})"
        )
    return decision


def _read_verdict(ctx: RunContext, step: Step) -> Verdict | None:
    """The referee's verdict, recorded on the step; None (and a parse failure) if unusable."""
    if _cut_off(ctx, step):
        return None
    try:
        verdict = parse_verdict(step.output)
    except ParseError as exc:
        ctx.parse_failed(step, str(exc))
        return None
    step.decision = verdict.as_dict()
    return verdict


def _remember(ctx: RunContext, step: Step, role: str, content: str) -> int:
    """Add an expert's answer to memory; an empty or failed answer spends the round (returns 0)."""
    if step.error:
        return 0
    if not content.strip():
        ctx.parse_failed(step, "empty answer")
        return 0
    entry = ctx.memory.add(role, content, sub_question=step.sub_question, round=step.round)
    step.memory_entry = entry.content
    return 1


def _insight_conclusion(ctx: RunContext, step: Step) -> str:
    """Only the final-answer part of the insight expert's reply goes to memory."""
    line = answer_line(step.output)
    if line is not None:
        return clean_answer(line)
    lines = [ln.strip() for ln in step.output.strip().splitlines() if ln.strip()]
    if lines:
        ctx.note(f"round {step.round} insight: no final-answer line; kept its last line")
    return lines[-1] if lines else ""


async def _dispatch(ctx: RunContext, rnd: int, last_expert: str) -> Step:
    parallel = ctx.options.parallel_perception
    limit = ctx.config.max_parallel_questions
    ocr = ctx.options.ocr
    name = ("dispatcher_parallel" if parallel else "dispatcher") + ("_ocr" if ocr else "")
    schema = parallel_dispatch_schema(limit, ocr) if parallel else dispatch_schema(ocr)
    return await ctx.call(
        "dispatcher",
        ctx.text,
        ctx.messages(
            name,
            ctx.text,
            round=rnd,
            question=ctx.question.text,
            last_expert=last_expert,
            max_questions=limit,
        ),
        round=rnd,
        json_schema=ctx.json_schema(ctx.text, schema),
    )


def _vision_messages(ctx: RunContext, sub_question: str) -> tuple[Message, ...]:
    """The images and the sub-question, nothing else (no question, memory or answer format)."""
    return ctx.messages("vision", ctx.vision, images=ctx.question.images, sub_question=sub_question)


async def _perceive(ctx: RunContext, rnd: int, questions: tuple[str, ...]) -> AsyncIterator[Step]:
    """One vision call, or several at once (parallel perception); steps yielded as they finish."""
    if len(questions) == 1:
        question = questions[0]
        messages = _vision_messages(ctx, question)
        yield await ctx.call("vision", ctx.vision, messages, round=rnd, sub_question=question)
        return
    steps = [
        ctx.new_step("vision", ctx.vision, round=rnd, sub_question=q, parallel=True)
        for q in questions
    ]
    tasks = {
        asyncio.ensure_future(ctx.execute(s, ctx.vision, _vision_messages(ctx, q))): s
        for s, q in zip(steps, questions, strict=True)
    }
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: tasks[t].index):
                yield task.result()  # re-raises a bug in our code; ModelErrors are on the step
    finally:
        unfinished = [t for t in tasks if not t.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)


async def _insight(ctx: RunContext, rnd: int, sub_question: str) -> Step:
    return await ctx.call(
        "insight",
        ctx.text,
        ctx.messages("insight", ctx.text, round=rnd, sub_question=sub_question),
        round=rnd,
        sub_question=sub_question,
    )


async def _referee(ctx: RunContext, rnd: int) -> Step:
    return await ctx.call(
        "referee",
        ctx.text,
        ctx.messages("referee", ctx.text, round=rnd, question=ctx.question.text),
        round=rnd,
        json_schema=ctx.json_schema(ctx.text, VERDICT_SCHEMA),
    )


def _summarize(ctx: RunContext, rnd: int) -> AsyncIterator[Step | AnswerDelta]:
    messages = ctx.messages(
        "summarizer",
        ctx.text,
        round=rnd,
        question=ctx.question.text,
        answer_format=ctx.answer_format("summary"),
    )
    return ctx.final_call("summarizer", ctx.text, messages, "solved", style="summary", round=rnd)
