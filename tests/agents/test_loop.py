"""The faithful ProReason loop: stop paths, exact call counts, spent rounds, errors, streaming."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from agents import Question, RunOptions, RunResult, Step
from models.errors import CircuitOpen, ContextLengthExceeded, ModelError, ModelUnavailable
from models.types import ImageInput
from tests.fakes.models import FakeModel

NOT_YET = '{"solvable": false, "reasoning": "The count is still unknown."}'
SOLVED = '{"solvable": true, "reasoning": "Both shapes are named."}'


def referee_solves_at(k: int) -> list[str]:
    return [NOT_YET] * (k - 1) + [SOLVED]


async def test_solved_in_one_round_costs_four_calls(make_reasoner, image: ImageInput) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm")
    result = await make_reasoner(vision, text).run(Question("How many shapes?", images=(image,)))

    assert result.stop_reason == "solved"
    assert result.rounds == 1
    assert [s.role for s in result.steps] == ["dispatcher", "vision", "referee", "summarizer"]
    assert result.answer == "the red square is left of the blue circle"
    assert vision.roles() == ["vision"]
    assert text.roles() == ["dispatcher", "referee", "summarizer"]
    vstep, rstep = result.steps[1], result.steps[2]
    assert vstep.sub_question == "Which shapes are visible?"
    assert vstep.memory_entry.startswith("Step 1: a red square.")
    assert rstep.decision == {"solvable": True, "reasoning": "The notes place both shapes."}
    assert rstep.memory_entry == "The notes place both shapes."
    # the summarizer saw the vision answer and the referee's reasoning
    summary_prompt = text.of("summarizer")[0].user_text
    assert "a blue circle right of it" in summary_prompt
    assert "The notes place both shapes." in summary_prompt
    assert result.parse_failures == 0
    assert result.usage.total_tokens == sum(s.usage.total_tokens for s in result.steps) > 0
    assert set(result.usage_by_role) == {"dispatcher", "vision", "referee", "summarizer"}
    assert result.usage_by_role["vision"].image_tokens == 7


async def test_insight_rounds_keep_only_the_final_answer(make_reasoner, image: ImageInput) -> None:
    text = FakeModel(
        "llm",
        script={
            "dispatcher": [
                '{"expert": "vision", "question": "Which shapes are visible?"}',
                '{"expert": "insight", "question": "How many shapes do the notes list?"}',
            ],
            "insight": "First the square, then the circle, so two.\nFinal answer: two shapes",
            "referee": [NOT_YET, SOLVED],
        },
    )
    vision = FakeModel("lvlm")
    result = await make_reasoner(vision, text).run(Question("How many shapes?", images=(image,)))

    assert result.stop_reason == "solved"
    assert result.rounds == 2
    assert [s.role for s in result.steps] == [
        "dispatcher", "vision", "referee",
        "dispatcher", "insight", "referee", "summarizer",
    ]  # fmt: skip
    insight = result.steps[4]
    assert insight.sub_question == "How many shapes do the notes list?"
    assert insight.memory_entry == "two shapes"
    later = text.of("referee")[1].user_text
    assert "two shapes" in later
    assert "First the square" not in later  # the insight's reasoning stays out of memory
    # the dispatcher is told which expert ran last
    assert "Expert consulted last: none" in text.of("dispatcher")[0].user_text
    assert "Expert consulted last: vision" in text.of("dispatcher")[1].user_text


@pytest.mark.parametrize("k", [1, 2, 5, 8])
async def test_exact_call_counts(make_reasoner, image: ImageInput, k: int) -> None:
    text = FakeModel("llm", script={"referee": referee_solves_at(k)})
    vision = FakeModel("lvlm")
    result = await make_reasoner(vision, text).run(Question("How many?", images=(image,)))
    assert result.stop_reason == "solved"
    assert result.rounds == k
    assert len(result.steps) == 4 + 3 * (k - 1)
    assert len(vision.calls) + len(text.calls) == 4 + 3 * (k - 1)


async def test_max_rounds_falls_back_to_the_lvlm_with_25_calls(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel("llm", script={"referee": NOT_YET})
    vision = FakeModel("lvlm", script={"answer": "It shows two shapes.\nAnswer: 2"})
    result = await make_reasoner(vision, text).run(Question("How many?", images=(image,)))

    assert result.stop_reason == "max_rounds_fallback"
    assert result.rounds == 8
    assert len(result.steps) == 25
    assert result.steps[-1].role == "fallback"
    assert result.answer == "2"
    fallback = vision.of("answer")[0]
    assert fallback.n_images == 1
    assert "How many?" in fallback.user_text
    assert "summarizer" not in [s.role for s in result.steps]


async def test_no_image_is_answered_by_the_text_model(make_reasoner) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm", script={"answer": "Paris"})
    result = await make_reasoner(vision, text).run(Question("Capital of France?"))
    assert result.stop_reason == "no_image_direct"
    assert result.rounds == 0
    assert [s.role for s in result.steps] == ["direct"]
    assert result.answer == "Paris"
    assert vision.calls == []
    assert len(text.calls) == 1
    assert text.calls[0].n_images == 0


async def test_parse_failures_and_unknown_expert_spend_the_round(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel(
        "llm",
        script={
            "dispatcher": [
                "I would look at the picture first.",  # no JSON at all
                '{"expert": "oracle", "question": "What is it?"}',  # unknown expert
                '{"expert": "vision"}',  # no sub-question
                '{"expert": "vision", "question": "Which shapes?"}',
            ],
            "referee": ["Hmm, maybe?", SOLVED],
        },
    )
    vision = FakeModel("lvlm")
    result = await make_reasoner(vision, text).run(Question("How many?", images=(image,)))

    assert result.stop_reason == "solved"
    assert result.rounds == 5
    # rounds 1-3: the dispatcher's call only; round 4: the referee is unreadable; round 5 solves
    assert len(result.steps) == 1 + 1 + 1 + 3 + 4
    assert result.parse_failures == 4
    failed = [s for s in result.steps if s.parse_error]
    assert [(s.round, s.role) for s in failed] == [
        (1, "dispatcher"), (2, "dispatcher"), (3, "dispatcher"), (4, "referee"),
    ]  # fmt: skip
    assert "unknown expert" in failed[1].parse_error
    assert "sub-question" in failed[2].parse_error
    assert all(s.decision is None for s in failed)
    assert len(vision.of("vision")) == 2


async def test_all_rounds_unparseable_still_ends_with_the_fallback(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel("llm", script={"dispatcher": "no idea"})
    result = await make_reasoner(FakeModel("lvlm"), text, max_rounds=3).run(
        Question("How many?", images=(image,))
    )
    assert result.stop_reason == "max_rounds_fallback"
    assert result.parse_failures == 3
    assert [s.role for s in result.steps] == ["dispatcher"] * 3 + ["fallback"]


async def test_expert_model_error_spends_the_round(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", fail={"vision": {1}})
    text = FakeModel(
        "llm",
        script={
            "dispatcher": [
                '{"expert": "vision", "question": "Which shapes?"}',
                '{"expert": "insight", "question": "Count them."}',
                '{"expert": "vision", "question": "Which shapes?"}',
            ]
        },
        fail={"insight": {1}},
    )
    result = await make_reasoner(vision, text).run(Question("How many?", images=(image,)))

    assert result.stop_reason == "solved"
    assert result.rounds == 3
    assert [s.role for s in result.steps] == [
        "dispatcher", "vision",  # round 1: the vision call fails, no referee
        "dispatcher", "insight",  # round 2: the insight call fails, no referee
        "dispatcher", "vision", "referee", "summarizer",
    ]  # fmt: skip
    failed = [s for s in result.steps if s.error]
    assert [s.role for s in failed] == ["vision", "insight"]
    assert all("scripted failure" in (s.error or "") for s in failed)
    assert all(s.memory_entry is None for s in failed)
    assert result.parse_failures == 0
    assert any("model call failed" in n for n in result.notes)
    # the dispatcher still says "none" ran last: the failed calls added nothing
    assert "Expert consulted last: none" in text.of("dispatcher")[2].user_text


@pytest.mark.parametrize("role", ["summarizer", "fallback"])
async def test_final_answer_model_error_propagates(
    make_reasoner, image: ImageInput, role: str
) -> None:
    if role == "summarizer":
        vision, text = FakeModel("lvlm"), FakeModel("llm", fail={"summarizer": {1}})
    else:
        vision = FakeModel("lvlm", fail={"answer": {1}})
        text = FakeModel("llm", script={"referee": NOT_YET})
    reasoner = make_reasoner(vision, text, max_rounds=2)
    question = Question("How many?", images=(image,))
    with pytest.raises(ModelError, match="scripted failure"):
        await reasoner.run(question)

    # stream(): the failed step is yielded first, then the error is raised
    seen: list[Step] = []
    vision.counts.clear()
    text.counts.clear()
    with pytest.raises(ModelError):
        async for event in reasoner.stream(reasoner.prepare(question)):
            assert isinstance(event, Step)
            seen.append(event)
    assert seen[-1].role == role
    assert seen[-1].error is not None


async def test_no_image_model_error_propagates(make_reasoner) -> None:
    text = FakeModel("llm", fail={"answer": {1}})
    with pytest.raises(ModelError):
        await make_reasoner(FakeModel("lvlm"), text).run(Question("Capital of France?"))


async def test_dispatcher_and_referee_errors_spend_the_round(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel("llm", fail={"dispatcher": {1}, "referee": {1}})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("How many?", images=(image,))
    )
    assert result.stop_reason == "solved"
    assert [s.role for s in result.steps] == [
        "dispatcher",  # round 1: failed call
        "dispatcher", "vision", "referee",  # round 2: the referee call fails
        "dispatcher", "vision", "referee", "summarizer",
    ]  # fmt: skip
    assert result.rounds == 3


async def test_stream_yields_each_step_then_one_result(make_reasoner, image: ImageInput) -> None:
    text = FakeModel("llm", script={"referee": referee_solves_at(2)})
    reasoner = make_reasoner(FakeModel("lvlm"), text)
    events = [
        e async for e in reasoner.stream(reasoner.prepare(Question("How many?", images=(image,))))
    ]

    assert all(isinstance(e, Step) for e in events[:-1])
    result = events[-1]
    assert isinstance(result, RunResult)
    assert events[:-1] == result.steps
    assert [s.index for s in result.steps] == list(range(7))
    # steps arrive in call order and were complete when yielded
    starts = [s.started_at for s in result.steps]
    assert starts == sorted(starts)
    assert all(s.output for s in result.steps)


async def test_stream_yields_steps_as_they_finish(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm")
    text = FakeModel("llm")
    reasoner = make_reasoner(vision, text)
    stream = reasoner.stream(reasoner.prepare(Question("How many?", images=(image,))))
    first = await anext(stream)
    assert isinstance(first, Step) and first.role == "dispatcher"
    assert len(text.calls) == 1 and vision.calls == []  # nothing ran ahead of the consumer
    await stream.aclose()


async def test_cancellation_propagates_immediately(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", delay_s=30)
    task = asyncio.create_task(
        make_reasoner(vision, FakeModel("llm")).run(Question("How many?", images=(image,)))
    )
    for _ in range(200):
        await asyncio.sleep(0.005)
        if vision.calls:
            break
    assert vision.calls, "the vision call never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)
    assert vision.calls[0].finished > 0  # the in-flight model call was cancelled too


async def test_options_none_uses_the_agent_config(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", script={"referee": NOT_YET})
    text = FakeModel("llm")
    reasoner = make_reasoner(vision, text, max_rounds=2, mode="pure", max_tokens=77)
    result = await reasoner.run(Question("How many?", images=(image,)))
    assert result.mode == "pure"
    assert result.rounds == 2
    assert len(result.steps) == 2 * 3 + 1
    assert text.calls == []  # pure: the LVLM played every role
    assert {c.request.sampling.max_tokens for c in vision.calls} == {77}
    assert {c.request.sampling.temperature for c in vision.calls} == {None}


async def test_run_options_override_the_config(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script={"referee": NOT_YET})
    reasoner = make_reasoner(vision, text, max_rounds=8, temperature=0.7)
    result = await reasoner.run(
        Question("How many?", images=(image,)), RunOptions(max_rounds=1, max_tokens=5)
    )
    assert result.rounds == 1
    assert len(result.steps) == 4  # dispatcher, vision, referee, fallback
    requests = [c.request for c in vision.calls + text.calls]
    assert {r.sampling.max_tokens for r in requests} == {5}
    assert {r.sampling.temperature for r in requests} == {0.7}
    # one session id per question (balancer affinity), one request id per call
    (session,) = {r.session_id for r in requests}
    assert session is not None
    assert len({r.request_id for r in requests}) == len(requests)
    assert all(r.request_id.startswith(f"{session}-") for r in requests)


async def test_trace_is_json_friendly(make_reasoner, image: ImageInput) -> None:
    result = await make_reasoner(FakeModel("lvlm"), FakeModel("llm")).run(
        Question("How many?", images=(image,))
    )
    for step in result.steps:
        json.dumps(step.decision)
        assert step.model in ("lvlm", "llm")
        assert step.backend == "fake"
        assert step.latency_s >= 0 and step.started_at >= 0
    assert result.latency_s >= max(s.started_at + s.latency_s for s in result.steps) - 1e-6


@pytest.mark.parametrize("parallel", [False, True])
async def test_steps_are_complete_when_streamed(
    make_reasoner, image: ImageInput, parallel: bool
) -> None:
    text = FakeModel(
        "llm",
        script={
            "dispatcher": [
                "not json",
                '{"expert": "vision", "questions": ["Colour?", "Shape?"]}',
                '{"expert": "insight", "question": "Conclude."}',
            ],
            "referee": ["unclear", SOLVED],
        },
    )
    reasoner = make_reasoner(FakeModel("lvlm"), text)
    snapshots: list[Step] = []
    result = None
    job = reasoner.prepare(
        Question("How many?", images=(image,)), RunOptions(parallel_perception=parallel)
    )
    async for event in reasoner.stream(job):
        if isinstance(event, Step):
            snapshots.append(copy.deepcopy(event))
        else:
            result = event
    assert isinstance(result, RunResult)
    by_index = {s.index: s for s in snapshots}
    assert [by_index[s.index] for s in result.steps] == result.steps
    assert by_index[0].parse_error and result.parse_failures == 2
    assert all(s.memory_entry for s in result.steps if s.role in ("vision", "insight"))
    assert result.steps[-2].memory_entry == "Both shapes are named."


async def test_insight_without_answer_line_keeps_its_last_line(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel(
        "llm",
        script={
            "dispatcher": '{"expert": "insight", "question": "Conclude."}',
            "insight": "Reasoning first.\n\nSo there are two shapes.",
        },
    )
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("How many?", images=(image,))
    )
    assert result.steps[1].memory_entry == "So there are two shapes."
    assert any("no final-answer line" in n for n in result.notes)
    assert "Reasoning first." not in text.of("referee")[0].user_text


async def test_empty_expert_answer_spends_the_round(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", script={"vision": ["   ", "a red square"]})
    result = await make_reasoner(vision, FakeModel("llm")).run(
        Question("How many?", images=(image,))
    )
    assert [s.role for s in result.steps] == [
        "dispatcher", "vision", "dispatcher", "vision", "referee", "summarizer",
    ]  # fmt: skip
    assert result.steps[1].parse_error == "empty answer"
    assert result.parse_failures == 1


async def test_memory_truncation_is_logged(make_reasoner, image: ImageInput, caplog) -> None:
    vision = FakeModel("lvlm", script={"vision": "x " * 400})
    text = FakeModel("llm", context=700, script={"referee": [NOT_YET] * 3 + [SOLVED]})
    with caplog.at_level("INFO", logger="agents"):
        result = await make_reasoner(vision, text, max_tokens=32).run(
            Question("How many?", images=(image,))
        )
    assert any("memory truncated" in n for n in result.notes)
    assert any("memory truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("role", "error"),
    [
        ("dispatcher", ModelUnavailable("model 'llm' unavailable after 4 attempt(s)")),
        ("dispatcher", CircuitOpen("model 'llm' unavailable: circuit open", retry_after_s=9)),
        ("vision", ModelUnavailable("model 'lvlm' unavailable")),
        ("referee", ModelUnavailable("model 'llm' unavailable")),
        ("dispatcher", ContextLengthExceeded("maximum context length is 4096 tokens")),
    ],
    ids=["dispatcher-down", "circuit-open", "vision-down", "referee-down", "context-length"],
)
async def test_an_unavailable_model_or_too_long_prompt_fails_the_run_at_once(
    make_reasoner, image: ImageInput, role: str, error: Exception
) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm")
    (vision if role == "vision" else text).raise_on[role] = error
    reasoner = make_reasoner(vision, text, max_rounds=8)
    seen: list[Step] = []
    with pytest.raises(type(error)) as info:
        async for event in reasoner.stream(reasoner.prepare(Question("How?", images=(image,)))):
            seen.append(event)
    assert info.value is error
    assert seen[-1].role == role and seen[-1].error  # the failed step is yielded first
    assert len(vision.roles()) + len(text.roles()) == len(seen) <= 3  # no round spent after it
