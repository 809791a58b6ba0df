"""Request validation (before any model call) and the final answer string."""

from __future__ import annotations

from typing import Any

import pytest

from agents import AgentConfig, ModelSet, PromptError, Question, Reasoner, RunOptions
from agents.types import ResolvedOptions
from models.errors import InvalidRequest
from models.types import ImageInput
from tests.fakes.models import FakeModel


@pytest.mark.parametrize(
    ("question", "options", "match"),
    [
        (dict(text=""), None, "empty"),
        (dict(text="   \n"), None, "empty"),
        (dict(text="Q?"), RunOptions(method="others"), "unknown method"),  # type: ignore[arg-type]
        (dict(text="Q?"), RunOptions(mode="hybrid"), "unknown mode"),  # type: ignore[arg-type]
        (dict(text="Q?"), RunOptions(max_rounds=0), "max_rounds"),
        (dict(text="Q?"), RunOptions(max_rounds=99), "max_rounds"),
        (dict(text="Q?"), RunOptions(max_tokens=0), "max_tokens"),
        (dict(text="Q?"), RunOptions(temperature=-1), "temperature"),
        (dict(text="Q?", answer_format="multiple_choice", options=("only",)), None, "at least 2"),
        (dict(text="Q?", answer_format="multiple_choice", options=("a", " ")), None, "empty"),
        (dict(text="Q?", answer_format="multiple_choice", options=("a",) * 27), None, "at most"),
        (dict(text="Q?", options=("a", "b")), None, "only allowed with answer_format"),
        (dict(text="Q?", answer_format="essay"), None, "answer_format"),
    ],
)
async def test_invalid_requests_fail_before_any_call(
    make_reasoner, question: dict[str, Any], options: RunOptions | None, match: str
) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm")
    reasoner = make_reasoner(vision, text)
    with pytest.raises(InvalidRequest, match=match):
        await reasoner.run(Question(**question), options)
    with pytest.raises(InvalidRequest, match=match):
        reasoner.prepare(Question(**question), options)
    assert vision.calls == [] and text.calls == []


async def test_assisted_mode_without_a_text_model_is_refused(
    make_reasoner, image: ImageInput
) -> None:
    vision = FakeModel("lvlm")
    reasoner = make_reasoner(vision)  # a pure deployment
    question = Question("Q?", images=(image,))
    with pytest.raises(InvalidRequest, match="mode 'assisted' needs a text model") as info:
        await reasoner.run(question, RunOptions(mode="assisted"))
    assert info.value.param == "mode"
    with pytest.raises(InvalidRequest, match="text model"):
        await reasoner.run(question, RunOptions(method="caption", mode="assisted"))
    assert vision.calls == []
    # methods that use only the LVLM do not need one
    result = await reasoner.run(question, RunOptions(method="direct", mode="assisted"))
    assert result.stop_reason == "baseline"


async def test_images_for_a_text_only_vision_backend_are_refused(
    make_reasoner, image: ImageInput
) -> None:
    reasoner = make_reasoner(FakeModel("lvlm", images_ok=False), FakeModel("llm"))
    with pytest.raises(InvalidRequest, match="does not accept images"):
        await reasoner.run(Question("Q?", images=(image,)))


def test_resolve_options_fills_defaults_from_the_config(make_reasoner) -> None:
    reasoner = make_reasoner(
        FakeModel("lvlm"), FakeModel("llm"),
        method="cot", mode="pure", max_rounds=3, parallel_perception=True, max_tokens=99,
        temperature=0.2,
    )  # fmt: skip
    assert reasoner.prepare(Question("Q?")).options == ResolvedOptions(
        method="cot", mode="pure", max_rounds=3, parallel_perception=True, max_tokens=99,
        temperature=0.2,
    )  # fmt: skip
    explicit = reasoner.prepare(Question("Q?"), RunOptions(max_tokens=5, temperature=0.0)).options
    assert (explicit.max_tokens, explicit.temperature, explicit.method) == (5, 0.0, "cot")
    assert explicit.parallel_perception is True  # unset fields keep the config's value


def test_bad_prompts_dir_fails_at_construction(tmp_path) -> None:
    with pytest.raises(PromptError, match="no prompt templates"):
        Reasoner(ModelSet(vision=FakeModel("lvlm")), AgentConfig(prompts_dir=tmp_path))


def test_bundled_prompts_load_by_default() -> None:
    reasoner = Reasoner(ModelSet(vision=FakeModel("lvlm")), AgentConfig())
    assert reasoner.prompts["vision"].fields == {"sub_question"}


OPTIONS = ("a red square", "a blue circle", "a green triangle")


@pytest.mark.parametrize(
    ("summary", "answer", "extracted"),
    [
        ("The notes mention a circle.\nAnswer: B", "B", True),
        ("The notes mention a circle.\n**Answer:** (B)", "B", True),
        ("Thought: only a circle is blue.\nAnswer: a blue circle", "B", True),
        ("Answer: C. a green triangle", "C", True),
        ("It must be option C.", "C", True),
        ("I cannot decide.\nAnswer: none of them", "none of them", False),
        ("Answer: E", "E", False),  # a letter that is not an option is never mapped
    ],
)
async def test_multiple_choice_answers(
    make_reasoner, image: ImageInput, summary: str, answer: str, extracted: bool
) -> None:
    text = FakeModel("llm", script={"summarizer": summary})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("Which shape is blue?", images=(image,), answer_format="multiple_choice",
                 options=OPTIONS)
    )  # fmt: skip
    assert result.answer == answer
    assert result.answer_extracted is extracted
    assert any("not matched" in n for n in result.notes) is (not extracted)
    prompt = text.of("summarizer")[0].user_text
    assert "A. a red square\nB. a blue circle\nC. a green triangle" in prompt
    # the other text roles never see the options
    assert all("a green triangle" not in c.text for c in text.calls if c.role != "summarizer")


@pytest.mark.parametrize(
    ("summary", "answer"),
    [
        ("Two.", "Two"),
        ("**Answer:** Two.", "Two"),
        ("The notes list two shapes.\nFinal answer: 2", "2"),
        ('"a red square"', "a red square"),
        ("The answer is: 3.5 cm", "3.5 cm"),
    ],
)
async def test_open_answers_are_clean(
    make_reasoner, image: ImageInput, summary: str, answer: str
) -> None:
    text = FakeModel("llm", script={"summarizer": summary})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("How many shapes?", images=(image,))
    )
    assert result.answer == answer
    assert result.answer_extracted
