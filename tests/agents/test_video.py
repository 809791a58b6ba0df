"""A question about a video in the loop: the vision expert sees the sampled frames as ordered
images, each after its "Frame n at t s:" label; the roles that cannot see are told it is a video
with N frames at which times; baselines and the fallback see the labelled frames too; questions
without a video are unchanged byte for byte."""

from __future__ import annotations

import pytest

from agents import AgentConfig, ModelSet, Question, Reasoner, RunOptions
from agents.prompts import PromptSet
from models.errors import InvalidRequest
from models.ocr import OcrEngine
from models.types import ImagePart, TextPart
from models.video import VideoLimits, decode_video
from tests.fakes.models import FakeModel
from tests.fakes.videos import frames_shown, make_video

MOMENT = '{"thought": "Find the change.", "expert": "vision", "question": "What colour is the square in frame 3, after 2.0 s?"}'  # noqa: E501
SOLVED = '{"reasoning": "It turns blue at 2.5 s.", "solvable": true}'
CONTEXT = (
    "This question is about a video (4.00 s long). It is seen as 4 frames, in time order: "
    "frame 1 at 0.50 s, frame 2 at 1.50 s, frame 3 at 2.50 s, frame 4 at 3.50 s."
)


@pytest.fixture(scope="module")
def clip():
    data = make_video(frames=40, fps=10, change_at=25)
    return decode_video(data, frames=4, sampling="uniform", limits=VideoLimits())


def make(prompt_sets, **script):
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script=script)
    reasoner = Reasoner(ModelSet(vision=vision, text=text), AgentConfig(), prompts=prompt_sets)
    return reasoner, vision, text



async def test_the_vision_expert_sees_ordered_labelled_frames(prompt_sets, clip) -> None:
    reasoner, vision, _text = make(prompt_sets, dispatcher=MOMENT, referee=SOLVED)
    result = await reasoner.run(Question.about_video("When does the square turn blue?", clip))
    assert result.stop_reason == "solved"
    (call,) = vision.of("vision")
    assert frames_shown(call) == [
        ("Frame 1 at 0.50 s:", "red"),
        ("Frame 2 at 1.50 s:", "red"),
        ("Frame 3 at 2.50 s:", "blue"),
        ("Frame 4 at 3.50 s:", "blue"),
    ]
    user = call.request.messages[-1]
    assert user.content[0] == TextPart(
        "These are 4 frames of a video (4.00 s long), in time order."
    )
    assert (
        isinstance(user.content[-1], TextPart)
        and "in frame 3, after 2.0 s" in user.content[-1].text
    )
    assert call.n_images == 4


async def test_the_roles_that_cannot_see_are_told_the_frames_and_times(prompt_sets, clip) -> None:
    reasoner, _vision, text = make(prompt_sets, dispatcher=MOMENT, referee=SOLVED)
    await reasoner.run(Question.about_video("When does the square turn blue?", clip))
    assert text.roles() == ["dispatcher", "referee", "summarizer"]
    for call in text.calls:
        assert CONTEXT in call.user_text, call.role
        assert call.n_images == 0
        # before the question: fixed per question, so the prefix cache still holds it
        assert call.user_text.index(CONTEXT) < call.user_text.index("When does the square")


async def test_a_question_without_video_is_unchanged(prompt_sets, clip) -> None:
    still = Question("What colour is the square?", images=clip.frames[:1])
    reasoner, vision, text = make(prompt_sets)
    await reasoner.run(still)
    assert "video" not in vision.of("vision")[0].text
    assert all("video" not in c.text for c in text.calls)
    assert [type(p) for p in vision.of("vision")[0].request.messages[-1].content] == [
        ImagePart,
        TextPart,
    ]


@pytest.mark.parametrize("method", ["direct", "cot", "ccot", "caption"])
async def test_baselines_see_the_labelled_frames(prompt_sets, clip, method) -> None:
    reasoner, vision, _text = make(prompt_sets)
    q = Question.about_video("When does it turn blue?", clip)
    await reasoner.run(q, RunOptions(method=method))
    first = vision.calls[0]
    assert [label for label, _ in frames_shown(first)] == [
        f"Frame {n} at {t:.2f} s:" for n, t in enumerate(clip.timestamps, start=1)
    ]


async def test_the_fallback_sees_the_frames_and_the_context(prompt_sets, clip) -> None:
    never = '{"reasoning": "not yet", "solvable": false}'
    reasoner, vision, _text = make(prompt_sets, dispatcher=MOMENT, referee=never)
    result = await reasoner.run(Question.about_video("When?", clip), RunOptions(max_rounds=1))
    assert result.stop_reason == "max_rounds_fallback"
    fallback = vision.calls[-1]
    assert len(frames_shown(fallback)) == 4 and CONTEXT in fallback.user_text


async def test_the_reference_set_gets_the_video_too(prompt_sets, clip) -> None:
    reasoner, vision, text = make(prompt_sets)
    await reasoner.run(Question.about_video("When?", clip), RunOptions(prompts="reference"))
    assert len(frames_shown(vision.calls[0])) == 4
    assert CONTEXT in text.calls[0].user_text


async def test_ocr_names_the_frames_by_number_and_time(prompt_sets, clip) -> None:
    ocr = '{"thought": "Read it.", "expert": "ocr", "question": "Read the text."}'
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script={"dispatcher": ocr, "referee": SOLVED})
    engine = OcrEngine(recognize=lambda image: [("GO", 0.99, [1, 1, 20, 10])])
    reasoner = Reasoner(
        ModelSet(vision=vision, text=text), AgentConfig(), prompts=prompt_sets, ocr=engine
    )
    result = await reasoner.run(
        Question.about_video("What is written?", clip), RunOptions(ocr=True)
    )
    (step,) = [s for s in result.steps if s.role == "ocr"]
    assert step.output.splitlines()[0].startswith("Frame 1 at 0.50 s (")
    assert "Frame 4 at 3.50 s (" in step.output


def test_a_video_question_holds_exactly_its_frames(clip) -> None:
    with pytest.raises(ValueError):
        Question("q", images=clip.frames[:2], video=clip)


async def test_a_prompt_set_without_video_prompts_refuses_video_questions(clip, tmp_path) -> None:
    base = PromptSet.load()
    for src in base.source.glob("*.yaml"):
        if src.name != "video.yaml":
            (tmp_path / src.name).write_text(src.read_text())
    reasoner = Reasoner(
        ModelSet(vision=FakeModel("lvlm"), text=FakeModel("llm")),
        AgentConfig(prompts_dir=tmp_path),
    )
    with pytest.raises(InvalidRequest) as info:
        reasoner.prepare(Question.about_video("When?", clip))
    assert info.value.param == "video"
    reasoner.prepare(Question("When?", images=clip.frames[:1]))  # images still work
