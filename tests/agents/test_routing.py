"""Who gets which request: pure vs assisted, images, what the vision expert may see, history,
JSON schemas, and memory bounded to the model's context."""

from __future__ import annotations

import pytest

from agents import Question, RunOptions
from agents.proreason import DISPATCH_SCHEMA, VERDICT_SCHEMA
from models.types import ImageInput, ImagePart, Message, TextPart
from tests.fakes.models import FakeModel

NOT_YET = '{"solvable": false, "reasoning": "Not enough yet."}'
SOLVED = '{"solvable": true, "reasoning": "Enough."}'
TEXT_ROLES = {"dispatcher", "insight", "referee", "summarizer"}
QUESTION = "Which colour is the shape that touches the left border of the picture?"


def mixed_dispatcher(request, n: int) -> str:
    if n % 2:
        return '{"expert": "vision", "question": "Describe the leftmost shape."}'
    return '{"expert": "insight", "question": "What follows from the notes?"}'


def script(**extra: object) -> dict:
    return {"dispatcher": mixed_dispatcher, "referee": [NOT_YET] * 3 + [SOLVED], **extra}


async def test_assisted_mode_routes_text_roles_to_the_text_model(
    make_reasoner, image: ImageInput
) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm", script=script())
    result = await make_reasoner(vision, text).run(
        Question(QUESTION, images=(image,)), RunOptions(mode="assisted")
    )
    assert result.rounds == 4
    assert set(vision.roles()) == {"vision"}
    assert set(text.roles()) == TEXT_ROLES
    assert all(c.n_images == 0 for c in text.calls)
    assert all(c.n_images == 1 for c in vision.calls)
    for step in result.steps:
        assert step.model == ("lvlm" if step.role == "vision" else "llm")


@pytest.mark.parametrize("with_text_model", [False, True])
async def test_pure_mode_uses_the_lvlm_for_every_role(
    make_reasoner, image: ImageInput, with_text_model: bool
) -> None:
    vision = FakeModel("lvlm", script=script(referee=NOT_YET))
    text = FakeModel("llm") if with_text_model else None
    result = await make_reasoner(vision, text, max_rounds=4).run(
        Question(QUESTION, images=(image,)), RunOptions(mode="pure", max_rounds=4)
    )
    assert result.stop_reason == "max_rounds_fallback"
    assert set(vision.roles()) == TEXT_ROLES - {"summarizer"} | {"vision", "answer"}
    if text is not None:
        assert text.calls == []
    # the image travels only with the vision expert and the fallback
    for call in vision.calls:
        assert call.n_images == (1 if call.role in ("vision", "answer") else 0), call.role


async def test_vision_expert_sees_only_images_and_its_sub_question(
    make_reasoner, image: ImageInput
) -> None:
    vision = FakeModel("lvlm", script={"vision": "SEEN-MARKER: a red square on the left."})
    text = FakeModel("llm", script=script())
    question = Question(
        QUESTION,
        images=(image,),
        answer_format="multiple_choice",
        options=("crimson-option", "azure-option"),
        history=(Message.text("user", "HISTORY-MARKER earlier turn"),),
    )
    result = await make_reasoner(vision, text).run(question)
    calls = vision.of("vision")
    assert len(calls) == 2
    for call in calls:
        shown = call.text
        assert "Describe the leftmost shape." in shown
        assert "step by step" in shown.lower()
        assert QUESTION not in shown
        assert "touches the left border" not in shown
        assert "crimson-option" not in shown and "Options" not in shown
        assert "Answer:" not in shown and "letter" not in shown
        assert "SEEN-MARKER" not in shown  # no memory
        assert "HISTORY-MARKER" not in shown  # no chat history
        assert "What follows from the notes" not in shown
    # ... while the summarizer does get the question, the memory and the answer format
    summary = text.of("summarizer")[0].user_text
    assert QUESTION in summary and "SEEN-MARKER" in summary
    assert "A. crimson-option" in summary and "B. azure-option" in summary
    assert result.stop_reason == "solved"


async def test_several_images_go_first_to_vision_and_fallback(
    make_reasoner, image: ImageInput, image2: ImageInput
) -> None:
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script={"referee": NOT_YET})
    result = await make_reasoner(vision, text, max_rounds=2).run(
        Question("Are the two pictures mirrored?", images=(image, image2))
    )
    assert result.stop_reason == "max_rounds_fallback"
    for call in vision.calls:  # vision x2 and the fallback
        user = call.request.messages[-1]
        assert user.role == "user"
        assert [p.image for p in user.content[:2] if isinstance(p, ImagePart)] == [image, image2]
        assert isinstance(user.content[-1], TextPart)
        assert len(user.content) == 3
    assert [c.role for c in vision.calls] == ["vision", "vision", "answer"]
    assert all(c.n_images == 0 for c in text.calls)


async def test_history_reaches_the_text_roles(make_reasoner, image: ImageInput) -> None:
    history = (
        Message.text("user", "What is in picture one? HIST-Q"),
        Message.text("assistant", "A red square. HIST-A"),
    )
    vision, text = FakeModel("lvlm"), FakeModel("llm", script=script())
    await make_reasoner(vision, text).run(
        Question("And its colour?", images=(image,), history=history)
    )
    for call in text.calls:
        assert "Conversation so far" in call.user_text, call.role
        assert "User: What is in picture one? HIST-Q" in call.user_text
        assert "Assistant: A red square. HIST-A" in call.user_text
    assert all("HIST-Q" not in c.text for c in vision.of("vision"))


async def test_long_history_is_bounded(make_reasoner, image: ImageInput) -> None:
    history = tuple(
        Message.text("user" if i % 2 == 0 else "assistant", f"TURN-{i:02d} " + "blah " * 60)
        for i in range(40)
    )
    text = FakeModel("llm", context=1200)
    result = await make_reasoner(FakeModel("lvlm"), text, max_tokens=64).run(
        Question("And now?", images=(image,), history=history)
    )
    prompt = text.of("dispatcher")[0].user_text
    assert "TURN-39" in prompt  # the most recent turns are kept
    assert "TURN-00" not in prompt
    assert "earlier turns omitted]" in prompt
    assert any("chat history truncated" in n for n in result.notes)
    history_part = "Conversation so far" + prompt.split("Conversation so far")[1].split(
        "Question to solve"
    )[0]
    assert text.count_tokens(history_part) <= (1200 - 64) // 4


async def test_memory_is_bounded_to_the_context(make_reasoner, image: ImageInput) -> None:
    context, max_tokens = 900, 64

    def vision_answer(request, n: int) -> str:
        return f"NOTE-{n:02d} " + "the square is red and sits left of the circle. " * 8

    vision = FakeModel("lvlm", script={"vision": vision_answer})
    text = FakeModel("llm", context=context, script={"referee": [NOT_YET] * 7 + [SOLVED]})
    result = await make_reasoner(vision, text, max_tokens=max_tokens).run(
        Question("Where is the square?", images=(image,))
    )
    assert result.stop_reason == "solved"
    assert result.rounds == 8
    # every text-role prompt fits the context with room for the answer
    for call in text.calls:
        used = sum(text.count_tokens(m.text_content) for m in call.request.messages)
        assert used <= context - max_tokens, (call.role, used)
    last = text.of("summarizer")[0].user_text
    assert "NOTE-01" in last  # the first note is kept
    assert "NOTE-08" in last  # and the most recent ones
    assert "NOTE-03" not in last  # the oldest middle ones are dropped
    assert "earlier notes omitted]" in last
    truncations = [n for n in result.notes if "memory truncated" in n]
    assert truncations and any("summarizer" in n for n in truncations)
    assert all("900-token context" in n for n in truncations)


async def test_memory_is_not_truncated_when_it_fits(make_reasoner, image: ImageInput) -> None:
    text = FakeModel("llm", script={"referee": [NOT_YET] * 3 + [SOLVED]})
    result = await make_reasoner(FakeModel("lvlm"), text).run(
        Question("Where is the square?", images=(image,))
    )
    assert not any("truncated" in n for n in result.notes)
    assert "omitted" not in text.of("summarizer")[0].user_text


@pytest.mark.parametrize(
    ("supports", "structured", "expected"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
async def test_json_schema_only_when_supported_and_enabled(
    make_reasoner, image: ImageInput, supports: bool, structured: bool, expected: bool
) -> None:
    vision = FakeModel("lvlm", json_schema=True)
    text = FakeModel("llm", json_schema=supports, script=script())
    await make_reasoner(vision, text, structured_decisions=structured).run(
        Question(QUESTION, images=(image,))
    )
    for call in text.calls + vision.calls:
        schema = call.request.json_schema
        if expected and call.role == "dispatcher":
            assert schema == DISPATCH_SCHEMA
        elif expected and call.role == "referee":
            assert schema == VERDICT_SCHEMA
        else:
            assert schema is None, call.role


async def test_request_ids_are_unique_per_call(make_reasoner, image: ImageInput) -> None:
    vision, text = FakeModel("lvlm"), FakeModel("llm", script=script())
    await make_reasoner(vision, text).run(Question(QUESTION, images=(image,)))
    ids = [c.request.request_id for c in vision.calls + text.calls]
    assert all(ids) and len(set(ids)) == len(ids)
