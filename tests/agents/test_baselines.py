"""The one-shot baselines behind the same interface: their calls, routing and answers."""

from __future__ import annotations

import json

import pytest

from agents import Question, RunOptions
from agents.baselines import SCENE_GRAPH_SCHEMA
from models.errors import ModelError
from models.types import ImageInput
from tests.fakes.models import FakeModel
from tests.fakes.roles import DEFAULT_SCRIPT as DEFAULTS

QUESTION = "What colour is the square?"


async def test_direct(make_reasoner, image: ImageInput) -> None:
    vision, text = FakeModel("lvlm", script={"answer": "Red."}), FakeModel("llm")
    result = await make_reasoner(vision, text).run(
        Question(QUESTION, images=(image,)), RunOptions(method="direct")
    )
    assert (result.method, result.stop_reason, result.rounds) == ("direct", "baseline", 0)
    assert [s.role for s in result.steps] == ["direct"]
    assert result.answer == "Red"
    assert text.calls == []
    call = vision.calls[0]
    assert call.n_images == 1 and QUESTION in call.user_text
    assert "step by step" not in call.user_text.lower()


async def test_cot_extracts_the_answer_line(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel(
        "lvlm", script={"answer": "The square is filled.\nIts colour is red.\nAnswer: red"}
    )
    result = await make_reasoner(vision).run(
        Question(QUESTION, images=(image,)), RunOptions(method="cot", mode="pure")
    )
    assert [s.role for s in result.steps] == ["cot"]
    assert result.answer == "red"
    assert "step by step" in vision.calls[0].user_text.lower()
    assert vision.calls[0].n_images == 1


@pytest.mark.parametrize("supports_schema", [True, False])
async def test_ccot_writes_a_scene_graph_then_answers_with_it(
    make_reasoner, image: ImageInput, supports_schema: bool
) -> None:
    vision = FakeModel(
        "lvlm",
        json_schema=supports_schema,
        script={"scene_graph": "```json\n" + DEFAULTS["scene_graph"] + "\n```", "answer": "red"},
    )
    text = FakeModel("llm")
    result = await make_reasoner(vision, text).run(
        Question(QUESTION, images=(image,)), RunOptions(method="ccot")
    )
    assert [s.role for s in result.steps] == ["scene_graph", "ccot_answer"]
    assert result.answer == "red"
    assert text.calls == []
    graph_call, answer_call = vision.calls
    assert graph_call.n_images == answer_call.n_images == 1
    assert graph_call.request.json_schema == (SCENE_GRAPH_SCHEMA if supports_schema else None)
    assert answer_call.request.json_schema is None
    graph = json.loads(DEFAULTS["scene_graph"])
    assert json.dumps(graph) in answer_call.user_text  # the parsed graph, fences removed
    assert result.steps[0].decision == graph


async def test_ccot_with_an_unreadable_scene_graph_goes_on(
    make_reasoner, image: ImageInput
) -> None:
    vision = FakeModel(
        "lvlm", script={"scene_graph": "a red square, a blue circle", "answer": "red"}
    )
    result = await make_reasoner(vision).run(
        Question(QUESTION, images=(image,)), RunOptions(method="ccot", mode="pure")
    )
    assert result.answer == "red"
    assert "a red square, a blue circle" in vision.calls[1].user_text
    assert any("scene graph is not valid JSON" in n for n in result.notes)


@pytest.mark.parametrize("mode", ["assisted", "pure"])
async def test_caption_then_text_answer(make_reasoner, image: ImageInput, mode: str) -> None:
    vision = FakeModel("lvlm", script={"answer": "red (vision)"})
    text = FakeModel("llm", script={"answer": "red"})
    result = await make_reasoner(vision, text).run(
        Question(QUESTION, images=(image,)), RunOptions(method="caption", mode=mode)
    )
    assert [s.role for s in result.steps] == ["caption", "caption_answer"]
    caption_call = vision.of("caption")[0]
    assert caption_call.n_images == 1
    assert QUESTION not in caption_call.text  # passive, question-agnostic
    answerer = text if mode == "assisted" else vision
    answer_call = answerer.of("answer")[0]
    assert answer_call.n_images == 0
    assert DEFAULTS["caption"] in answer_call.user_text and QUESTION in answer_call.user_text
    assert result.answer == ("red" if mode == "assisted" else "red (vision)")
    assert result.steps[1].model == ("llm" if mode == "assisted" else "lvlm")


@pytest.mark.parametrize("method", ["direct", "cot", "ccot", "caption"])
async def test_baselines_without_image_answer_with_the_text_model(
    make_reasoner, method: str
) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm", script={"answer": "Paris"})
    result = await make_reasoner(vision, text).run(
        Question("Capital of France?"), RunOptions(method=method)
    )
    assert result.stop_reason == "no_image_direct"
    assert result.answer == "Paris"
    assert vision.calls == [] and len(text.calls) == 1


async def test_baseline_multiple_choice(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", script={"answer": "(B)"})
    result = await make_reasoner(vision).run(
        Question(QUESTION, images=(image,), answer_format="multiple_choice",
                 options=("blue", "red", "green")),
        RunOptions(method="direct", mode="pure"),
    )  # fmt: skip
    assert result.answer == "B"
    assert result.answer_extracted
    prompt = vision.calls[0].user_text
    assert "A. blue\nB. red\nC. green" in prompt
    assert "letter" in prompt


async def test_baseline_model_error_propagates(make_reasoner, image: ImageInput) -> None:
    vision = FakeModel("lvlm", fail={"caption": {1}})
    with pytest.raises(ModelError):
        await make_reasoner(vision, FakeModel("llm")).run(
            Question(QUESTION, images=(image,)), RunOptions(method="caption")
        )
