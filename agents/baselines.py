"""One-shot baselines behind the same interface (``RunOptions.method``), stop_reason "baseline".

- ``direct``:  the LVLM answers question + images in one call.
- ``cot``:     the same with a step-by-step instruction; the answer line is extracted.
- ``ccot``:    compositional CoT: the LVLM writes a JSON scene graph (question-aware), then answers
  with the scene graph in the prompt (images again, first).
- ``caption``: a passive, question-agnostic description by the LVLM, then the text model (the
  LVLM without the image in pure mode) answers from the description alone.

Questions without an image go to the text model directly, as in the ProReason loop
(stop_reason "no_image_direct"). A ModelError from any baseline call fails the run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agents.parsing import ParseError, extract_object
from agents.proreason import answer_without_image
from agents.run import AnswerStyle, RunContext
from agents.types import AnswerDelta, Step

SCENE_GRAPH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "attributes": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["name"],
            },
        },
        "relationships": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "subject": {"type": "string"},
                    "relation": {"type": "string"},
                    "object": {"type": "string"},
                },
                "required": ["subject", "relation", "object"],
            },
        },
    },
    "required": ["objects", "relationships"],
}


async def run_baseline(ctx: RunContext) -> AsyncIterator[Step | AnswerDelta]:
    if not ctx.question.images:
        async for event in answer_without_image(ctx):
            yield event
        return
    method = ctx.options.method
    if method == "direct":
        answer = _answer_with_image(ctx, "direct", "direct", "direct")
    elif method == "cot":
        answer = _answer_with_image(ctx, "cot", "cot", "step")
    elif method == "ccot":
        graph = await ctx.call(
            "scene_graph",
            ctx.vision,
            ctx.messages(
                "ccot_graph", ctx.vision, images=ctx.question.images, question=ctx.question.text
            ),
            json_schema=ctx.json_schema(ctx.vision, SCENE_GRAPH_SCHEMA),
        )
        scene_graph = "" if graph.error else _scene_graph_text(ctx, graph)
        yield graph
        ctx.raise_if_failed(graph)
        answer = _answer_with_image(
            ctx, "ccot_answer", "ccot_answer", "direct", scene_graph=scene_graph
        )
    elif method == "caption":
        caption = await ctx.call(
            "caption", ctx.vision, ctx.messages("caption", ctx.vision, images=ctx.question.images)
        )
        yield caption
        ctx.raise_if_failed(caption)
        messages = ctx.messages(
            "caption_answer",
            ctx.text,
            question=ctx.question.text,
            caption=ctx.clip(caption.output.strip(), ctx.text),
            answer_format=ctx.answer_format("direct"),
        )
        answer = ctx.final_call("caption_answer", ctx.text, messages, "baseline", style="direct")
    else:  # the Reasoner validates methods before a run starts
        raise ValueError(f"not a baseline method: {method!r}")
    async for event in answer:
        yield event


def _answer_with_image(
    ctx: RunContext, role: str, prompt_name: str, style: AnswerStyle, **fields: Any
) -> AsyncIterator[Step | AnswerDelta]:
    messages = ctx.messages(
        prompt_name,
        ctx.vision,
        images=ctx.question.images,
        question=ctx.question.text,
        answer_format=ctx.answer_format(style),
        **fields,
    )
    return ctx.final_call(role, ctx.vision, messages, "baseline", style=style)


def _scene_graph_text(ctx: RunContext, step: Step) -> str:
    """The scene graph as compact JSON; unreadable JSON is passed on as written (and noted)."""
    try:
        graph = extract_object(step.output)
    except ParseError:
        ctx.note("ccot: the scene graph is not valid JSON; passed on as written")
        return ctx.clip(step.output.strip(), ctx.vision)
    step.decision = graph
    return ctx.clip(json.dumps(graph, ensure_ascii=False), ctx.vision)
