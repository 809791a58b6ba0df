"""The OCR expert in the loop: offered only when enabled (profile or request), the dispatcher's
prompt, schema and parser unchanged when it is not, its text in memory in reading order, one Step
of role "ocr" per consultation (latency, no tokens), the cache across rounds and requests, a
timeout spending the round, and the real engine on a drawn table."""

from __future__ import annotations

import hashlib
import time

import pytest
from PIL import Image

from agents import AgentConfig, ModelSet, Question, Reasoner, RunOptions
from agents.parsing import ParseError, parse_dispatch
from agents.proreason import DISPATCH_SCHEMA, dispatch_schema, parallel_dispatch_schema
from models.errors import InvalidRequest
from models.ocr import OcrEngine
from models.types import ImageInput
from tests.fakes.models import FakeModel
from tests.fakes.ocr_images import table

OCR = '{"thought": "The prices are printed.", "expert": "ocr", "question": "Read the prices."}'
SOLVED = '{"reasoning": "The notes give the total.", "solvable": true}'

#: sha256 of system + NUL + user of the dispatcher prompts, as trained demo models saw them: the
#: OCR expert must not change a byte of them
PINNED = {
    "default/dispatcher": "a305f418832485484993b9630ac78114f29b7a199c7ffbe1ed91b57fb1374710",
    "default/dispatcher_parallel": (
        "9481a19ec2058bc0881a8bed54a867d1667c79b05bba008cea2db8aca2971ed0"
    ),
    "reference/dispatcher": "15f23e256c1427c9c07a39a7464484621354d6af7472a873912288f6ff02984e",
    "reference/dispatcher_parallel": (
        "d1c1f766279a889a23c64b4032735a81304ca537a16a05f720802c7ac822a4a7"
    ),
}


class Recognizer:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    def __call__(self, image: Image.Image):
        self.calls += 1
        time.sleep(self.delay_s)
        return [("42.50", 0.99, [200, 10, 260, 30]), ("Total", 0.99, [10, 12, 80, 30]),
                ("Tax", 0.98, [10, 50, 50, 70]), ("3.40", 0.97, [200, 50, 250, 70])]  # fmt: skip


def make(prompt_sets, engine: OcrEngine | None, *, script=None, json_schema=False, **config):
    vision = FakeModel("lvlm")
    text = FakeModel("llm", script=script or {}, json_schema=json_schema)
    reasoner = Reasoner(
        ModelSet(vision=vision, text=text), AgentConfig(**config), prompts=prompt_sets, ocr=engine
    )
    return reasoner, vision, text


def test_the_dispatcher_prompts_are_byte_identical_when_ocr_is_off(prompt_sets) -> None:
    for key, digest in PINNED.items():
        set_name, name = key.split("/")
        prompt = prompt_sets[set_name][name]
        text = (prompt.system or "") + "\0" + prompt.user
        assert hashlib.sha256(text.encode()).hexdigest() == digest, key
        assert "OCR" not in text


async def test_ocr_off_the_dispatcher_is_not_told_and_an_ocr_decision_is_unknown(
    prompt_sets, image
) -> None:
    reasoner, _, text = make(
        prompt_sets, OcrEngine(recognize=Recognizer()), script={"dispatcher": OCR},
        json_schema=True, max_rounds=1,
    )  # fmt: skip
    result = await reasoner.run(Question("What is the total?", (image,)))
    dispatch = text.of("dispatcher")[0]
    system = dispatch.request.messages[0].text_content
    assert system == prompt_sets["default"]["dispatcher"].system and "OCR" not in dispatch.text
    assert dispatch.request.json_schema == DISPATCH_SCHEMA
    assert DISPATCH_SCHEMA["properties"]["expert"]["enum"] == ["vision", "insight"]
    assert result.steps[0].parse_error == "unknown expert 'ocr'"
    assert "ocr" not in [s.role for s in result.steps]
    with pytest.raises(ParseError):
        parse_dispatch('{"expert": "OCR Expert", "question": "q"}')


async def test_the_dispatcher_consults_ocr_and_its_text_joins_memory_in_reading_order(
    prompt_sets, image
) -> None:
    rec = Recognizer()
    reasoner, vision, text = make(
        prompt_sets, OcrEngine(recognize=rec), script={"dispatcher": OCR, "referee": SOLVED},
        json_schema=True,
    )  # fmt: skip
    result = await reasoner.run(Question("What is the total?", (image,)), RunOptions(ocr=True))
    assert [s.role for s in result.steps] == ["dispatcher", "ocr", "referee", "summarizer"]
    dispatch = text.of("dispatcher")[0]
    assert "the OCR expert reads every piece of text" in dispatch.request.messages[0].text_content
    assert dispatch.request.json_schema["properties"]["expert"]["enum"] == [
        "vision", "insight", "ocr"]  # fmt: skip
    ocr = result.steps[1]
    assert (ocr.model, ocr.backend, ocr.sub_question) == ("ocr", "ocr", "Read the prices.")
    assert ocr.usage.total_tokens == 0 and ocr.latency_s > 0 and ocr.finish_reason == "stop"
    assert ocr.output == (
        "Image 1 (64x64 px):\n[10,12,80,30] Total | [200,10,260,30] 42.50\n"
        "[10,50,50,70] Tax | [200,50,250,70] 3.40"
    )
    assert ocr.memory_entry == ocr.output
    referee = text.of("referee")[0].user_text
    assert "1. Text read in the image (OCR, rows top to bottom" in referee
    assert "Total | [200,10,260,30] 42.50" in referee
    assert vision.calls == [] and rec.calls == 1
    assert result.usage_by_role["ocr"].total_tokens == 0


async def test_the_profile_enables_ocr_and_a_request_may_turn_it_off(prompt_sets, image) -> None:
    engine = OcrEngine(recognize=Recognizer())
    reasoner, _, text = make(
        prompt_sets, engine, script={"dispatcher": OCR, "referee": SOLVED}, ocr=True
    )
    on = await reasoner.run(Question("What is the total?", (image,)))
    off = await reasoner.run(Question("What is the total?", (image,)), RunOptions(ocr=False))
    assert "ocr" in [s.role for s in on.steps] and "ocr" not in [s.role for s in off.steps]
    assert "OCR" in text.of("dispatcher")[0].text and "OCR" not in text.of("dispatcher")[-1].text


async def test_ocr_is_read_once_per_image_across_rounds_and_requests(prompt_sets, image) -> None:
    rec = Recognizer()
    reasoner, _, _ = make(
        prompt_sets, OcrEngine(recognize=rec),
        script={"dispatcher": OCR, "referee": ['{"reasoning": "not yet", "solvable": false}',
                                               '{"reasoning": "more", "solvable": false}', SOLVED]},
    )  # fmt: skip
    first = await reasoner.run(Question("Total?", (image,)), RunOptions(ocr=True))
    assert [s.role for s in first.steps].count("ocr") == 3 and rec.calls == 1
    assert any("text from the cache" in n for n in first.notes)
    await reasoner.run(Question("Tax?", (ImageInput(image.image.copy()),)), RunOptions(ocr=True))
    assert rec.calls == 1


async def test_an_ocr_timeout_spends_the_round(prompt_sets, image) -> None:
    reasoner, _, text = make(
        prompt_sets, OcrEngine(recognize=Recognizer(delay_s=0.3), timeout_s=0.02),
        script={"dispatcher": [OCR, '{"expert": "vision", "question": "What is shown?"}'],
                "referee": SOLVED},
    )  # fmt: skip
    result = await reasoner.run(Question("Total?", (image,)), RunOptions(ocr=True))
    roles = [s.role for s in result.steps]
    assert roles == ["dispatcher", "ocr", "dispatcher", "vision", "referee", "summarizer"]
    assert result.steps[1].error == "ModelTimeout: OCR took longer than 0.02s"
    assert result.stop_reason == "solved" and len(text.of("referee")) == 1


async def test_ocr_requests_are_refused_without_an_engine(prompt_sets, image, monkeypatch) -> None:
    monkeypatch.setattr("agents.reasoner.ocr_available", lambda: False)
    reasoner, _, _ = make(prompt_sets, None)
    assert reasoner.ocr is None
    with pytest.raises(InvalidRequest) as info:
        reasoner.prepare(Question("Total?", (image,)), RunOptions(ocr=True))
    assert info.value.param == "ocr"
    with pytest.raises(Exception, match=r"agent\.ocr"):
        make(prompt_sets, None, ocr=True)


def test_parser_and_schemas_know_ocr_only_when_enabled() -> None:
    for text in ('{"expert": "ocr"}', "{'EXPERT name':'OCR Expert','Question':'Read it'}",
                 '{"expert": "text reader", "question": "q"}'):  # fmt: skip
        assert parse_dispatch(text, ocr=True).expert == "ocr"
    assert parse_dispatch('{"expert": "ocr"}', ocr=True).question == "Read the text in the image."
    assert parse_dispatch('{"expert": "text reader", "question": "q"}').expert == "insight"
    with pytest.raises(ParseError, match="unknown expert"):  # ambiguous: neither
        parse_dispatch('{"expert": "vision reader", "question": "q"}', ocr=True)
    assert dispatch_schema(False) is DISPATCH_SCHEMA
    assert "ocr" in dispatch_schema(True)["properties"]["expert"]["enum"]
    assert "ocr" not in DISPATCH_SCHEMA["properties"]["expert"]["enum"]
    assert "ocr" not in parallel_dispatch_schema(3)["properties"]["expert"]["enum"]
    assert "ocr" in parallel_dispatch_schema(3, True)["properties"]["expert"]["enum"]


async def test_the_reference_set_offers_the_ocr_expert_in_its_own_protocol(
    prompt_sets, image
) -> None:
    decision = "{\n'Thought':'printed','EXPERT name':'OCR Expert','Question':'Read the total'\n}"
    reasoner, _, text = make(
        prompt_sets, OcrEngine(recognize=Recognizer()),
        script={"dispatcher": decision, "referee": "Thought: known.\nAnswer: CAN_SOLVE"},
    )  # fmt: skip
    result = await reasoner.run(
        Question("Total?", (image,)), RunOptions(ocr=True, prompts="reference")
    )
    assert [s.role for s in result.steps] == ["dispatcher", "ocr", "referee", "summarizer"]
    assert "2. OCR Expert" in text.of("dispatcher")[0].text
    assert text.of("referee")[0].user_text.count("Image 1 (64x64 px):") == 1


async def test_the_real_engine_reads_a_drawn_table_into_memory(prompt_sets, ocr_engine) -> None:
    case = table()
    reasoner, _, text = make(
        prompt_sets, ocr_engine, script={"dispatcher": OCR, "referee": SOLVED}
    )
    result = await reasoner.run(
        Question("How many visitors did Rome have?", (ImageInput(case.image),)),
        RunOptions(ocr=True),
    )
    rows = result.steps[1].output.splitlines()[1:]
    cells = [[cell.split("] ", 1)[1] for cell in row.split(" | ")] for row in rows]
    assert tuple(tuple(r) for r in cells) == case.rows
    assert "] Rome | [" in text.of("referee")[0].user_text
