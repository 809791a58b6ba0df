"""Questions about written text (the OCR expert's world), the text oracle that teaches the demo
models to answer them with and without the OCR expert, and follow-up turns in the training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import AgentConfig, PromptSet, Reasoner, RunOptions
from agents.run import format_ocr
from evals.datasets import EvalItem
from evals.oracle import (
    READ_QUESTION,
    ImageFacts,
    OracleBackend,
    TextOracleBackend,
    reading_statement,
    rows_in_notes,
)
from evals.text_images import (
    KINDS,
    annotated_recognizer,
    as_items,
    draw,
    text_questions,
)
from evals.trajectories import RunSpec, record_runs
from models.ocr import OcrEngine
from models.records import message_text
from models.types import ImageInput

PROMPTS = PromptSet.load()
CONFIG = AgentConfig(max_rounds=4, max_tokens=64, structured_decisions=False)


def _load(path: Path) -> ImageInput:
    from evals.demo import load_image

    return load_image(path)


def test_text_questions_are_seeded_per_split_and_answered_by_a_cell() -> None:
    train, again = text_questions("train", 12), text_questions("train", 12)
    test = text_questions("test", 12)
    assert [q.question for q in train] == [q.question for q in again]
    assert [q.case.png() for q in train] == [q.case.png() for q in again]
    assert {q.case.png() for q in train}.isdisjoint(q.case.png() for q in test)
    assert [q.kind for q in train[:4]] == list(KINDS)
    for q in train + test:
        assert q.answer in q.case.cells
        if q.kind in ("price", "table"):
            row = next(r for r in q.case.rows if r[0] == q.key)
            assert q.answer in row and q.key in q.question
        if q.kind == "table":
            assert q.column in q.question and q.case.rows[0].index(q.column) == row.index(q.answer)
    with pytest.raises(ValueError, match="splits"):
        text_questions("val", 1)


def test_boxes_cover_the_drawn_text() -> None:
    case = draw([["Tea", "3.40"]], size=30)
    for (left, top, right, bottom), cell in zip(case.boxes[0], case.rows[0], strict=True):
        inside = case.image.crop((left, top, right, bottom)).convert("L")
        outside = case.image.crop((right, top, right + 4, bottom)).convert("L")
        assert inside.getextrema()[0] < 100, cell  # ink inside the box
        assert outside.getextrema()[0] > 200, cell  # none just right of it
        assert right - left > 10 * len(cell) // 2


async def test_annotated_ocr_reads_known_images_only_and_the_notes_parse_back() -> None:
    (q,) = [q for q in text_questions("train", 8) if q.kind == "table"][:1]
    engine = OcrEngine(recognize=annotated_recognizer([q.case]))
    try:
        result = await engine.read(ImageInput(q.case.image))
        blank = await engine.read(ImageInput(draw([["x"]]).image.convert("L").convert("RGB")))
    finally:
        await engine.close()
    assert [tuple(line.text for line in row) for row in result.rows] == list(q.case.rows)
    assert blank.lines == ()
    note = PROMPTS.text("memory_ocr", n=1, content=format_ocr([result]))
    assert rows_in_notes(f"Notes:\n{note}\n2. Judge's assessment: ...") == list(q.case.rows)
    seen = PROMPTS.text("memory_vision", n=1, sub_question=READ_QUESTION,
                        content=reading_statement(q.case.rows))  # fmt: skip
    assert rows_in_notes(seen) == list(q.case.rows)
    assert rows_in_notes("1. Seen in the image (asked: x): The shape is a red circle.") == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ocr", [True, False])
async def test_text_oracle_solves_each_kind_through_the_real_loop(tmp_path, kind, ocr) -> None:
    """With the OCR expert the dispatcher asks it to read; without, the vision expert reads. The
    referee finds the answer's cell in the notes; the summarizer copies it."""
    (q,) = [q for q in text_questions("train", 8) if q.kind == kind][:1]
    (item,) = as_items([q], tmp_path)
    engine = OcrEngine(recognize=annotated_recognizer([q.case]))

    def models_for(item: EvalItem) -> RunSpec:
        oracle = TextOracleBackend(item.meta["text"], PROMPTS)
        return RunSpec(vision=oracle, text=oracle)

    try:
        records, (result,) = await record_runs(
            [item], models_for, lambda m: Reasoner(m, CONFIG, prompts=PROMPTS, ocr=engine),
            RunOptions(max_rounds=4, ocr=ocr), _load,
        )  # fmt: skip
    finally:
        await engine.close()
    assert (result.stop_reason, result.answer, result.parse_failures) == ("solved", q.answer, 0)
    expert = "ocr" if ocr else "vision"
    assert [s.role for s in result.steps] == ["dispatcher", expert, "referee", "summarizer"]
    assert json.loads(records[0]["reply"])["expert"] == expert
    verdict = json.loads(next(r["reply"] for r in records if r["role"] == "referee"))
    assert verdict["solvable"] and verdict["reasoning"].endswith(f'so the answer is "{q.answer}".')
    if kind == "table":
        assert f"{q.column} is column" in verdict["reasoning"]
    if not ocr:
        assert records[1]["reply"] == reading_statement(q.case.rows)


async def test_easy_vqa_questions_still_go_to_the_vision_expert_with_ocr_offered(
    shapes_png, tmp_path
) -> None:
    item = EvalItem("i", "what color is the shape?", (shapes_png,), "red")
    oracle = OracleBackend(item.question, ImageFacts("circle", "red"), PROMPTS)
    engine = OcrEngine(recognize=annotated_recognizer([]))
    try:
        records, (result,) = await record_runs(
            [item], lambda _: RunSpec(vision=oracle, text=oracle),
            lambda m: Reasoner(m, CONFIG, prompts=PROMPTS, ocr=engine),
            RunOptions(max_rounds=4, ocr=True), _load,
        )  # fmt: skip
    finally:
        await engine.close()
    assert [s.role for s in result.steps] == ["dispatcher", "vision", "referee", "summarizer"]
    assert result.answer == "red"
    assert "OCR expert" in message_text(records[0]["messages"][0])  # the dispatcher_ocr prompt


async def test_follow_up_items_carry_the_earlier_turn_into_every_text_role(shapes_png) -> None:
    """A follow-up turn is recorded as a chat sends it: the earlier question with the image, its
    answer, then the new question; the text roles' prompts show the conversation."""
    import random

    from evals.demo import _as_follow_ups

    first = EvalItem("a", "what shape is in the image?", (shapes_png,), "circle")
    second = EvalItem("b", "what color is the shape?", (shapes_png,), "red")
    (follow,) = _as_follow_ups([second], [first, second], 1.0, random.Random(0))
    assert follow.meta["history"][0][1] == "circle"
    image = _load(shapes_png)
    turns = follow.history([image])
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[0].images == [image] and turns[1].text_content == "circle"
    oracle = OracleBackend(second.question, ImageFacts("circle", "red"), PROMPTS)
    records, (result,) = await record_runs(
        [follow], lambda _: RunSpec(vision=oracle, text=oracle),
        lambda m: Reasoner(m, CONFIG, prompts=PROMPTS), RunOptions(max_rounds=4), _load,
    )  # fmt: skip
    assert result.answer == "red"
    for record in records:
        prompt = message_text(record["messages"][-1])
        if record["role"] == "vision":
            assert "Conversation so far" not in prompt
        else:
            assert "Conversation so far" in prompt
            assert "User: [image 1] " in prompt and "Assistant: circle" in prompt
