"""Decisions cut at max_tokens, thought-first schemas, and the reference prompt set end to end."""

from __future__ import annotations

import pytest

from agents import AgentConfig, ModelSet, PromptError, Question, Reasoner, RunOptions
from agents.proreason import DISPATCH_SCHEMA, VERDICT_SCHEMA, parallel_dispatch_schema
from models.errors import InvalidRequest
from models.types import ImageInput
from tests.fakes.models import FakeModel

SOLVED = '{"reasoning": "Both shapes are named.", "solvable": true}'


def test_schemas_put_the_thought_first() -> None:
    assert list(DISPATCH_SCHEMA["properties"]) == ["thought", "expert", "question"]
    assert list(VERDICT_SCHEMA["properties"]) == ["reasoning", "solvable"]
    assert list(parallel_dispatch_schema(3)["properties"]) == ["thought", "expert", "questions"]
    assert DISPATCH_SCHEMA["required"] == ["thought", "expert", "question"]


@pytest.mark.parametrize("role", ["dispatcher", "referee"])
async def test_a_decision_cut_at_max_tokens_is_never_read(
    make_reasoner, image: ImageInput, role: str
) -> None:
    # the first reply is complete JSON but the call ended at max_tokens: it is not trusted
    text = FakeModel("llm", cut={role: {1}}, script={"referee": SOLVED})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("How many shapes?", images=(image,))
    )
    cut = next(s for s in result.steps if s.role == role)
    assert cut.finish_reason == "length"
    assert cut.decision is None and "max_tokens" in (cut.parse_error or "")
    assert result.parse_failures == 1
    assert result.stop_reason == "solved" and result.rounds == 2
    assert all(s.finish_reason == "stop" for s in result.steps if s is not cut)
    if role == "referee":  # a cut referee never adds its reasoning to memory
        assert cut.memory_entry is None


async def test_the_real_servers_cut_verdict_is_not_solvable(
    make_reasoner, image: ImageInput
) -> None:
    cut = '{"solvable": false, "reasoning": "we still need the colour of the'
    text = FakeModel("llm", script={"referee": [cut, SOLVED]})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("What colour?", images=(image,))
    )
    first = next(s for s in result.steps if s.role == "referee")
    assert first.parse_error and first.decision is None
    assert result.rounds == 2  # read as unreadable, not as SOLVABLE


REFERENCE_SCRIPT = {
    "dispatcher": [
        "{\n'Thought':'We need the shapes first.',\n'EXPERT name':'Vision Expert',\n"
        "'Question':'Which shapes are in the picture?'\n}",
        "{\n'Thought':'Now count them.',\n'EXPERT name':'Reasoning Expert',\n"
        "'Question':'How many shapes are listed?'\n}",
    ],
    "insight": "Reasoning: a square and a circle.\nFinal Answer: two shapes",
    "referee": [
        "Thought: The count is not established yet.\nAnswer: UNSOLVABLE",
        "Thought: The notes give two shapes.\nAnswer: CAN_SOLVE",
    ],
    "summarizer": "Thought: two are listed.\nAnswer: B",
}


async def _reference_run(reasoner: Reasoner, image: ImageInput, **options: object):
    return await reasoner.run(
        Question(
            "How many shapes?",
            images=(image,),
            answer_format="multiple_choice",
            options=("one", "two", "three"),
        ),
        RunOptions(**options),  # type: ignore[arg-type]
    )


async def test_the_reference_protocol_end_to_end(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", json_schema=True)
    text = FakeModel("llm", json_schema=True, script=REFERENCE_SCRIPT)
    result = await _reference_run(make_reasoner(vision, text), image, prompts="reference")

    assert result.stop_reason == "solved" and result.rounds == 2 and result.parse_failures == 0
    assert result.answer == "B"
    roles = [s.role for s in result.steps]
    assert roles == ["dispatcher", "vision", "referee", "dispatcher", "insight", "referee",
                     "summarizer"]  # fmt: skip
    # text protocol: no JSON schema is ever sent, even to a backend that supports one
    assert all(c.request.json_schema is None for c in vision.calls + text.calls)
    dispatch = result.steps[0]
    assert dispatch.decision == {
        "thought": "We need the shapes first.",
        "expert": "vision",
        "question": "Which shapes are in the picture?",
    }
    assert result.steps[2].decision == {
        "reasoning": "The count is not established yet.",
        "solvable": False,
    }
    assert result.steps[4].memory_entry == "two shapes"
    assert result.steps[5].memory_entry == "The notes give two shapes."
    # the authors' prompts: system prompts only for the reasoning expert, unlabelled memory
    first = text.of("dispatcher")[0].request.messages
    assert [m.role for m in first] == ["user"]
    assert [m.role for m in text.of("insight")[0].request.messages] == ["system", "user"]
    summary = text.of("summarizer")[0].user_text
    assert "two shapes\nThe notes give two shapes." in summary
    assert "Seen in the image" not in summary and "B. two" in summary
    assert vision.of("vision")[0].user_text.startswith("Work through this step by step")


async def test_the_default_set_sends_thought_first_schemas(
    make_reasoner, image: ImageInput
) -> None:
    text = FakeModel("llm", json_schema=True)
    await make_reasoner(FakeModel("lvlm"), text).run(Question("Q?", images=(image,)))
    assert text.of("dispatcher")[0].request.json_schema == DISPATCH_SCHEMA
    assert text.of("referee")[0].request.json_schema == VERDICT_SCHEMA


async def test_the_prompt_set_is_a_profile_default(make_reasoner, image: ImageInput) -> None:
    text = FakeModel("llm", script=REFERENCE_SCRIPT)
    reasoner = make_reasoner(FakeModel("lvlm"), text, prompts="reference")
    assert reasoner.resolve(RunOptions()).prompts == "reference"
    assert reasoner.resolve(RunOptions(prompts="default")).prompts == "default"
    result = await _reference_run(reasoner, image)
    assert result.stop_reason == "solved" and result.answer == "B"


def test_an_unknown_prompt_set(make_reasoner, prompt_sets) -> None:
    with pytest.raises(InvalidRequest, match="unknown prompt set") as info:
        make_reasoner(FakeModel("lvlm"), FakeModel("llm")).resolve(RunOptions(prompts="nope"))
    assert info.value.param == "prompts"
    with pytest.raises(PromptError, match="no prompt set 'nope'"):
        Reasoner(ModelSet(vision=FakeModel("lvlm")), AgentConfig(prompts="nope"),
                 prompts=prompt_sets)  # fmt: skip
