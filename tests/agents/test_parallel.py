"""Opt-in parallel perception: several visual sub-questions per round, run concurrently."""

from __future__ import annotations

import asyncio
import json

from agents import Question, RunOptions, Step
from agents.proreason import parallel_dispatch_schema
from models.types import ImageInput
from tests.fakes.models import FakeModel

QUESTIONS = ["What colour is the square?", "Where is the circle?", "Is there any text?"]
PARALLEL = json.dumps({"expert": "vision", "questions": QUESTIONS})
NOT_YET = '{"solvable": false, "reasoning": "Not enough yet."}'


def echo(request, n: int) -> str:
    sub_question = request.messages[-1].text_content.split(": ", 1)[-1].strip()
    return f"Looking closely: answer to <{sub_question}>"


async def test_parallel_vision_calls_overlap_and_referee_runs_once(
    make_reasoner, image: ImageInput
) -> None:
    delay = 0.2
    vision = FakeModel("lvlm", delay_s=delay, script={"vision": echo})
    text = FakeModel("llm", script={"dispatcher": PARALLEL})
    result = await make_reasoner(vision, text).run(
        Question("Describe the scene.", images=(image,)), RunOptions(parallel_perception=True)
    )

    assert result.stop_reason == "solved"
    assert [s.role for s in result.steps] == [
        "dispatcher", "vision", "vision", "vision", "referee", "summarizer",
    ]  # fmt: skip
    vsteps = [s for s in result.steps if s.role == "vision"]
    assert [s.sub_question for s in vsteps] == QUESTIONS
    assert all(s.parallel for s in vsteps)
    assert not any(s.parallel for s in result.steps if s.role != "vision")
    assert result.steps[0].decision == {"expert": "vision", "questions": QUESTIONS}
    # concurrent: every call started before any finished
    calls = vision.of("vision")
    assert max(c.started for c in calls) < min(c.finished for c in calls)
    assert result.latency_s < 3 * delay
    # each answer is its own memory entry, all seen by the referee (run once)
    referee = text.of("referee")
    assert len(referee) == 1
    for q in QUESTIONS:
        assert f"answer to <{q}>" in referee[0].user_text
    assert [s.memory_entry for s in vsteps] == [
        f"Looking closely: answer to <{q}>" for q in QUESTIONS
    ]
    # each vision call got only its own sub-question
    for call, q in zip(calls, QUESTIONS, strict=True):
        assert q in call.text
        assert all(other not in call.text for other in QUESTIONS if other != q)
    assert "up to 3" in text.of("dispatcher")[0].user_text


async def test_parallel_questions_are_capped(make_reasoner, image: ImageInput) -> None:
    many = json.dumps({"expert": "vision", "questions": [f"Q{i}?" for i in range(6)]})
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script={"dispatcher": many})
    result = await make_reasoner(vision, text, max_parallel_questions=2).run(
        Question("Describe.", images=(image,)), RunOptions(parallel_perception=True)
    )
    assert [s.sub_question for s in result.steps if s.role == "vision"] == ["Q0?", "Q1?"]
    assert any("4 extra visual sub-question(s) dropped" in n for n in result.notes)


async def test_one_failed_parallel_call_keeps_the_others(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", script={"vision": echo}, fail={"vision": {2}})
    text = FakeModel("llm", script={"dispatcher": PARALLEL})
    result = await make_reasoner(vision, text).run(
        Question("Describe.", images=(image,)), RunOptions(parallel_perception=True)
    )
    vsteps = [s for s in result.steps if s.role == "vision"]
    assert sum(1 for s in vsteps if s.error) == 1
    assert sum(1 for s in vsteps if s.memory_entry) == 2
    assert [s.role for s in result.steps][-2:] == ["referee", "summarizer"]


async def test_parallel_steps_stream_as_they_finish(make_reasoner, image: ImageInput) -> None:
    class Staggered(FakeModel):
        async def generate(self, request):  # the first sub-question is the slowest
            text = request.messages[-1].text_content
            if QUESTIONS[0] in text:
                await asyncio.sleep(0.15)
            return await super().generate(request)

    vision = Staggered("lvlm", script={"vision": echo})
    text = FakeModel("llm", script={"dispatcher": PARALLEL})
    reasoner = make_reasoner(vision, text)
    job = reasoner.prepare(
        Question("Describe.", images=(image,)), RunOptions(parallel_perception=True)
    )
    events = [e async for e in reasoner.stream(job)]
    streamed = [e.sub_question for e in events if isinstance(e, Step) and e.role == "vision"]
    assert streamed[-1] == QUESTIONS[0]  # yielded when it finished, after the faster ones
    assert sorted(streamed) == sorted(QUESTIONS)
    result = events[-1]
    assert [s.sub_question for s in result.steps if s.role == "vision"] == QUESTIONS


async def test_parallel_mode_insight_and_single_question(make_reasoner, image: ImageInput) -> None:
    text = FakeModel(
        "llm",
        json_schema=True,
        script={
            "dispatcher": [
                '{"expert": "vision", "question": "Only one?"}',
                '{"expert": "insight", "questions": ["Count.", "Ignored."]}',
            ],
            "referee": [NOT_YET, '{"solvable": true, "reasoning": "ok"}'],
        },
    )
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("Describe.", images=(image,)), RunOptions(parallel_perception=True)
    )
    roles = [s.role for s in result.steps]
    assert roles == ["dispatcher", "vision", "referee", "dispatcher", "insight", "referee",
                     "summarizer"]  # fmt: skip
    assert not result.steps[1].parallel  # a single visual question is an ordinary call
    assert result.steps[4].sub_question == "Count."
    assert text.of("dispatcher")[0].request.json_schema == parallel_dispatch_schema(3)


async def test_default_loop_takes_one_question_even_if_given_several(
    make_reasoner, image: ImageInput
) -> None:
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script={"dispatcher": PARALLEL})
    result = await make_reasoner(vision, text).run(Question("Describe.", images=(image,)))
    assert [s.role for s in result.steps] == ["dispatcher", "vision", "referee", "summarizer"]
    assert result.steps[1].sub_question == QUESTIONS[0]
    assert "up to" not in text.of("dispatcher")[0].user_text


async def test_cancel_during_parallel_perception_cancels_every_call(
    make_reasoner, image: ImageInput
) -> None:
    vision = FakeModel("lvlm", delay_s=30)
    text = FakeModel("llm", script={"dispatcher": PARALLEL})
    task = asyncio.create_task(
        make_reasoner(vision, text).run(
            Question("Describe.", images=(image,)), RunOptions(parallel_perception=True)
        )
    )
    for _ in range(200):
        await asyncio.sleep(0.005)
        if len(vision.calls) == 3:
            break
    assert len(vision.calls) == 3
    task.cancel()
    try:
        await asyncio.wait_for(task, timeout=2)
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the run was not cancelled")
    await asyncio.sleep(0)
    assert all(c.finished > 0 for c in vision.calls)
