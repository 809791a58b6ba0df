"""Reasoner.stream(job, answer_deltas=True): the answering call is streamed as AnswerDeltas."""

from __future__ import annotations

import pytest

from agents import Question, RunOptions
from agents.types import AnswerDelta, RunResult, Step
from models.errors import ModelError
from models.types import ImageInput
from tests.fakes.models import FakeModel

OPTIONS = ("a red square", "a blue circle", "a green triangle")
NOT_YET = '{"solvable": false, "reasoning": "not yet"}'


async def events_of(reasoner, question: Question, options: RunOptions | None = None) -> list:
    job = reasoner.prepare(question, options)
    return [e async for e in reasoner.stream(job, answer_deltas=True)]


def split(events: list) -> tuple[list[Step], list[AnswerDelta], RunResult]:
    assert isinstance(events[-1], RunResult)
    steps = [e for e in events if isinstance(e, Step)]
    deltas = [e for e in events if isinstance(e, AnswerDelta)]
    return steps, deltas, events[-1]


@pytest.mark.parametrize(
    ("method", "rounds", "images", "final_role", "model"),
    [
        ("proreason", 8, True, "summarizer", "text"),
        ("proreason", 1, True, "fallback", "vision"),  # the referee never says solvable
        ("proreason", 8, False, "direct", "text"),  # no image: the text model answers
        ("direct", 8, True, "direct", "vision"),
        ("cot", 8, True, "cot", "vision"),
        ("ccot", 8, True, "ccot_answer", "vision"),
        ("caption", 8, True, "caption_answer", "text"),
    ],
)
async def test_the_answering_call_streams_after_every_other_step(
    make_reasoner, image: ImageInput, method, rounds, images, final_role, model
) -> None:
    # cot reasons first and ends with an answer line; the others answer directly
    reply = "A red square and a blue circle, side by side."
    if method == "cot":
        reply = "Step 1: I look.\nStep 2: two shapes.\nAnswer: " + reply
    script = {"answer": reply, "summarizer": "The red square is left of the blue circle."}
    if rounds == 1:
        script["referee"] = NOT_YET
    backends = {"vision": FakeModel("lvlm", script=script), "text": FakeModel("llm", script=script)}
    reasoner = make_reasoner(backends["vision"], backends["text"])
    question = Question("Where?", images=(image,) if images else ())
    options = RunOptions(method=method, max_rounds=rounds)
    events = await events_of(reasoner, question, options)
    steps, deltas, result = split(events)
    final = steps[-1]
    assert final.role == final_role
    # the deltas: after every other step, before the final step, an empty one first
    first = events.index(deltas[0])
    assert all(isinstance(e, Step) for e in events[:first])
    assert events[first:-2] == deltas and events[-2] is final
    assert deltas[0].text == "" and all(d.step is final for d in deltas)
    pieces = [d.text for d in deltas[1:]]
    assert len(pieces) >= 4 and all(pieces)
    # they add up to the answer a non-streamed run gives; the step holds the whole reply
    assert "".join(pieces) == result.answer
    plain = await make_reasoner(
        FakeModel("lvlm", script=script), FakeModel("llm", script=script)
    ).run(question, options)
    assert result.answer == plain.answer and result.stop_reason == plain.stop_reason
    assert final.output == plain.steps[-1].output and final.usage == plain.steps[-1].usage
    assert final.latency_s > 0 and final.finish_reason == "stop"
    call = backends[model].calls[-1]
    assert call.streamed and call.done and call.pieces >= 4
    # only the answering call is streamed
    assert [c.streamed for b in backends.values() for c in b.calls].count(True) == 1


async def test_without_answer_deltas_nothing_is_streamed(make_reasoner, image) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm")
    job = make_reasoner(vision, text).prepare(Question("Where?", images=(image,)))
    events = [e async for e in make_reasoner(vision, text).stream(job)]
    assert not any(isinstance(e, AnswerDelta) for e in events)
    assert not any(c.streamed for c in vision.calls + text.calls)


async def test_a_multiple_choice_answer_arrives_as_its_letter_at_the_end(
    make_reasoner, image
) -> None:
    text = FakeModel("llm", script={"summarizer": "Only the circle is blue.\nAnswer: (B)"})
    question = Question(
        "Which shape is blue?", images=(image,), answer_format="multiple_choice", options=OPTIONS
    )
    _, deltas, result = split(await events_of(make_reasoner(FakeModel("lvlm"), text), question))
    assert [d.text for d in deltas] == ["", "B"] and result.answer == "B"
    assert text.of("summarizer")[0].pieces > 3  # streamed, but held back until the letter


async def test_a_later_answer_line_is_noted_and_the_answer_is_the_whole_replys(
    make_reasoner, image
) -> None:
    text = FakeModel(
        "llm", script={"summarizer": "Red.\nWait, the notes say otherwise.\nAnswer: blue"}
    )
    _, deltas, result = split(
        await events_of(make_reasoner(FakeModel("lvlm"), text), Question("Which?", images=(image,)))
    )
    assert "".join(d.text for d in deltas) == "Red"
    assert result.answer == "blue"
    assert any("changed the answer" in n and "'Red'" in n for n in result.notes)


async def test_a_cut_answer_keeps_its_finish_reason(make_reasoner, image) -> None:
    text = FakeModel("llm", cut={"summarizer": {1}})
    steps, deltas, result = split(
        await events_of(make_reasoner(FakeModel("lvlm"), text), Question("Where?", images=(image,)))
    )
    assert steps[-1].finish_reason == "length"
    assert "".join(d.text for d in deltas) == result.answer
    assert any("cut at max_tokens" in n for n in result.notes)


async def test_a_failed_answering_call_fails_the_run(make_reasoner, image) -> None:
    text = FakeModel("llm", fail={"summarizer": {1}})
    job = make_reasoner(FakeModel("lvlm"), text).prepare(Question("Where?", images=(image,)))
    seen = []
    with pytest.raises(ModelError, match="scripted failure"):
        async for event in make_reasoner(FakeModel("lvlm"), text).stream(job, answer_deltas=True):
            seen.append(event)
    assert isinstance(seen[-1], Step) and seen[-1].role == "summarizer" and seen[-1].error
    assert [e.text for e in seen if isinstance(e, AnswerDelta)] == [""]
