"""Trajectory recording, the easy-VQA oracle, and a very short demo training run (offline, fast)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents import AgentConfig, ModelSet, PromptSet, Question, Reasoner, RunOptions
from agents.parsing import parse_dispatch, parse_verdict
from evals.datasets import EvalItem
from evals.oracle import ImageFacts, OracleBackend, facts_from_annotations, parse_question
from evals.trajectories import (
    RecordingBackend,
    RunSpec,
    read_records,
    record_runs,
    write_records,
)
from models.base import ModelBackend
from models.records import message_text
from models.special_tokens import SpecialTokenGuard
from models.types import GenerationRequest, GenerationResult, ImageInput
from tests.fakes.roles import DEFAULT_SCRIPT, role_of

PROMPTS = PromptSet.load()
#: the committed demo models (docs/accuracy.md's figures were measured on them)
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo-models"
CONFIG = AgentConfig(max_rounds=4, max_tokens=64, structured_decisions=False)


class Scripted(ModelBackend):
    backend = "scripted"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult(text=DEFAULT_SCRIPT[role_of(request)], model=self.model)


def _load(path: Path) -> ImageInput:
    from evals.demo import load_image

    return load_image(path)


def _reasoner(models: ModelSet) -> Reasoner:
    return Reasoner(models, CONFIG, prompts=PROMPTS)


async def test_recording_backend_records_exact_requests(shapes_png: Path) -> None:
    inner = Scripted("scripted")
    vision, text = RecordingBackend(inner), RecordingBackend(Scripted("scripted-text"))
    image = _load(shapes_png)
    result = await _reasoner(ModelSet(vision=vision, text=text)).run(
        Question("What is left of the circle?", images=(image,))
    )
    assert result.stop_reason == "solved"
    calls = vision.calls + text.calls
    assert len(calls) == len(result.steps) == 4
    assert all(c.result is not None and c.result.text for c in calls)
    # the vision call carries the image and the sub-question only
    (vcall,) = vision.calls
    assert vcall.request.images == [image]
    assert DEFAULT_SCRIPT["dispatcher"] not in vcall.request.messages[-1].text_content


async def test_record_runs_and_jsonl_filters(shapes_png: Path, tmp_path: Path) -> None:
    items = [EvalItem("q1", "What is left of the circle?", (shapes_png,), "the red square")]

    def models_for(item: EvalItem) -> RunSpec:
        return RunSpec(vision=Scripted("v"), text=Scripted("t"))

    records, _results = await record_runs(
        items, models_for, _reasoner, RunOptions(max_rounds=2), _load, image_id=lambda p: p.stem
    )
    assert [r["role"] for r in records] == ["dispatcher", "vision", "referee", "summarizer"]
    vision = records[1]
    image_part = vision["messages"][-1]["content"][0]
    assert image_part["type"] == "image" and image_part["path"] == str(shapes_png)
    assert image_part["image_id"] == "shapes"
    assert vision["messages"][0]["role"] == "system"
    assert all(r["solved"] and r["finish_reason"] == "stop" for r in records)
    assert records[0]["correct"] is False  # "the red square is left of ..." != reference
    path = tmp_path / "t.jsonl"
    assert write_records(path, records) == 4
    assert len(read_records(path)) == 4
    assert read_records(path, correct_only=True) == []
    assert [r["role"] for r in read_records(path, solved_only=True, roles=["vision"])] == ["vision"]


def test_facts_from_annotations() -> None:
    rows = [
        ("what shape is in the image?", "circle", 0),
        ("is there a red shape?", "yes", 0),
        ("is there not a circle?", "yes", 1),
        ("does the image contain a triangle?", "no", 1),
        ("is no blue shape present?", "yes", 1),
    ]
    facts = facts_from_annotations(rows)
    assert facts[0] == ImageFacts("circle", "red")
    assert facts[1] == ImageFacts("rectangle", None)
    assert parse_question("is there not a gray shape in the image?") == replace(
        parse_question("is there a gray shape?"), negated=True
    )
    assert parse_question("what is the color of the triangle?").attribute == "colour"
    assert parse_question("what is the teal shape?").attribute == "shape"


@pytest.mark.parametrize(
    ("question", "facts", "answer", "reasoning"),
    [
        ("what shape is present?", ImageFacts("triangle", "blue"), "triangle",
         "The question asks for the shape. The notes say the shape is a blue triangle, so the "
         "answer is triangle."),
        ("does the image not contain a blue shape?", ImageFacts("circle", "blue"), "no",
         "The question asks whether there is no blue shape. The notes say the shape is a blue "
         "circle, and blue is blue, so the answer is no."),
        ("Is there a rectangle in the image?", ImageFacts("circle", "red"), "no",
         "The question asks whether there is a rectangle. The notes say the shape is a red "
         "circle, and a circle is not a rectangle, so the answer is no."),
    ],
)  # fmt: skip
async def test_oracle_solves_items(shapes_png, question, facts, answer, reasoning) -> None:
    """One protocol for every question: describe, reason in the verdict, answer from it."""
    item = EvalItem("i", question, (shapes_png,), answer)

    def models_for(item: EvalItem) -> RunSpec:
        oracle = OracleBackend(item.question, facts, PROMPTS)
        return RunSpec(vision=oracle, text=oracle)

    records, (result,) = await record_runs(
        [item], models_for, _reasoner, RunOptions(max_rounds=4), _load
    )
    assert (result.stop_reason, result.answer, result.parse_failures) == ("solved", answer, 0)
    roles = [r["role"] for r in records]
    assert roles == ["dispatcher", "vision", "referee", "summarizer"]
    assert all(r["correct"] for r in records)
    assert records[1]["reply"] == f"The shape is a {facts.colour} {facts.shape}."
    for record in records:
        if record["role"] == "dispatcher":
            keys = list(json.loads(record["reply"]))
            assert keys == ["thought", "expert", "question"]  # think, then decide
            parse_dispatch(record["reply"])
        if record["role"] == "referee":
            assert list(json.loads(record["reply"])) == ["reasoning", "solvable"]
            parse_verdict(record["reply"])
    assert json.loads(records[2]["reply"]) == {"reasoning": reasoning, "solvable": True}
    assert reasoning in message_text(records[3]["messages"][-1])  # the summarizer reads it


async def test_oracle_baselines(shapes_png) -> None:
    oracle = OracleBackend("is there not a red shape?", ImageFacts("circle", "red"), PROMPTS)
    image = _load(shapes_png)
    reasoner = _reasoner(ModelSet(vision=oracle, text=oracle))
    for method, expected in (("direct", "no"), ("cot", "no")):
        result = await reasoner.run(
            Question("is there not a red shape?", images=(image,)), RunOptions(method=method)
        )
        assert result.answer == expected


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A very short build: a few records, a few steps; the folders load like real models."""
    from evals.demo import (
        DemoSpec,
        init_text_model,
        init_vision_model,
        train_text_model,
        train_vision_model,
    )

    root = tmp_path_factory.mktemp("demo")
    spec = DemoSpec(
        vision_hidden=32, vision_layers=1, vision_text_hidden=32, vision_text_layers=1,
        text_hidden=32, text_layers=1, text_steps=3, vision_steps=3, pretrain_steps=2,
        pretrain_batch=4, text_batch=4, vision_batch=4, warmup_steps=1, max_seconds=None,
        threads_per_model=1,
    )  # fmt: skip
    import easy_vqa

    from evals.oracle import image_facts

    facts = image_facts("train")
    paths = easy_vqa.get_train_image_paths()
    questions, answers, ids = easy_vqa.get_train_questions()
    items = [
        EvalItem(f"train-{i}", q, (Path(paths[ids[i]]),), a)
        for i, (q, a) in enumerate(zip(questions[:40], answers[:40], strict=True))
        if facts.get(ids[i]) and parse_question(q).answer(facts[ids[i]]) == a
    ][:6]

    def models_for(item: EvalItem) -> RunSpec:
        oracle = OracleBackend(item.question, facts[int(item.image_paths[0].stem)], PROMPTS)
        return RunSpec(vision=oracle, text=oracle)

    records, _ = asyncio.run(
        record_runs(
            items, models_for, _reasoner, RunOptions(max_rounds=4), _load, image_id=lambda p: p.stem
        )
    )
    # questions about written text, the vision expert reading (no OCR): images without a shape
    from evals.oracle import TextOracleBackend
    from evals.text_images import as_items, text_questions

    written = as_items(text_questions("train", 8), root / "text-images")

    def reader_for(item: EvalItem) -> RunSpec:
        oracle = TextOracleBackend(item.meta["text"], PROMPTS)
        return RunSpec(vision=oracle, text=oracle)

    options = RunOptions(max_rounds=4)
    reading, _ = asyncio.run(
        record_runs(written, reader_for, _reasoner, options, _load, image_id=lambda p: p.stem)
    )
    records += reading
    text = [r for r in records if r["role"] != "vision"]
    # the LVLM also learns text-role calls (pure mode): records without an image
    vision = [r for r in records if r["role"] == "vision"] + text[:3]
    write_records(root / "text.jsonl", text)
    write_records(root / "vision.jsonl", vision)
    folders = {"text": root / "text", "vision": root / "vision"}
    init_text_model(folders["text"], text, spec)
    init_vision_model(folders["vision"], vision, spec)
    from dataclasses import asdict

    summaries = {
        "text": train_text_model(
            str(folders["text"]), str(root / "text.jsonl"), str(root / "runs/text"), asdict(spec)
        ),
        "vision": train_vision_model(
            str(folders["vision"]),
            str(root / "vision.jsonl"),
            str(root / "runs/vision"),
            asdict(spec),
        ),
    }
    return {"root": root, "folders": folders, "summaries": summaries, "vision": vision}


def test_short_training_writes_curves_and_checkpoints(demo_build: dict) -> None:
    root = demo_build["root"]
    for kind in ("text", "vision"):
        assert demo_build["summaries"][kind]["steps"] == 3
        # a batch of text images only has no shape/colour label: the auxiliary loss must skip
        # it (cross-entropy over targets that are all ignored is NaN)
        losses = json.loads((root / "runs" / kind / "losses.json").read_text())["losses"]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
        assert (root / "runs" / kind / "loss.png").stat().st_size > 0
        assert (root / "runs" / kind / "checkpoint.pt").is_file()
        assert len(json.loads((root / "runs" / kind / "losses.json").read_text())["losses"]) == 3


async def test_trained_models_run_through_the_production_backend(
    demo_build: dict, shapes_png: Path
) -> None:
    from models.config import BackendConfig
    from models.transformers_backend import TransformersBackend

    backends = {
        kind: TransformersBackend(
            BackendConfig(
                backend="transformers",
                model=str(folder),
                device="cpu",
                dtype="float32",
                allow_download=False,
            )
        )
        for kind, folder in demo_build["folders"].items()
    }
    try:
        reasoner = _reasoner(ModelSet(vision=backends["vision"], text=backends["text"]))
        result = await reasoner.run(
            Question("what shape is in the image?", images=(_load(shapes_png),)),
            RunOptions(max_rounds=1, max_tokens=8),
        )
        assert result.steps and all(s.error is None for s in result.steps)
        assert backends["vision"].supports_images and not backends["text"].supports_images
    finally:
        for backend in backends.values():
            await backend.close()


def test_training_renders_prompts_like_the_backend(demo_build: dict) -> None:
    """Training tokenises exactly what the production backend feeds the model."""
    from transformers import AutoProcessor

    from evals.demo import load_image
    from models.training import encode_records, image_expansion_of, render_prompt
    from models.transformers_backend import TransformersBackend
    from models.types import ImagePart, Message, TextPart

    processor = AutoProcessor.from_pretrained(demo_build["folders"]["vision"])
    record = demo_build["vision"][0]
    image = load_image(Path(record["messages"][-1]["content"][0]["path"]))
    messages = tuple(
        Message(
            m["role"],
            tuple(
                ImagePart(image) if p["type"] == "image" else TextPart(p["text"])
                for p in m["content"]
            ),
        )
        for m in record["messages"]
    )
    guard = SpecialTokenGuard.for_tokenizer(processor.tokenizer, processor)
    lm = SimpleNamespace(processor=processor, tokenizer=processor.tokenizer, guard=guard)
    rendered = TransformersBackend._render(None, lm, messages)  # type: ignore[arg-type]
    assert rendered == render_prompt(record, processor, vision=True)
    expansion, _ = image_expansion_of(processor, image.image)
    (example,) = encode_records(
        [record], processor.tokenizer, processor=processor, image_expansion=expansion
    )
    ids = processor(text=[rendered], images=[image.image], add_special_tokens=False)["input_ids"]
    assert example.input_ids[: example.reply_start] == list(ids[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft uses a deprecated transformers alias
def test_lora_training_merges_into_a_plain_model(demo_build: dict, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.training import LoraSettings, TrainConfig, encode_records, train

    folder = demo_build["folders"]["text"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    records = read_records(demo_build["root"] / "text.jsonl")
    examples = encode_records(records, tokenizer)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=1, lora=LoraSettings(r=2), progress=False)
    merged, summary = train(model, examples, cfg, tmp_path, pad_id=tokenizer.pad_token_id)
    assert summary["steps"] == 2
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name in merged.state_dict())


def test_the_phrase_tokenizer_keeps_content_words_whole_and_survives_loading(tmp_path) -> None:
    """Recurring prompt text merges into long tokens, the copied words stay one token each, and
    the folder loads with the same tokenizer (a qwen2 folder would not: transformers rebuilds
    its pre-tokenizer, so the check must fail there)."""
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    from evals.demo import CONTENT_WORDS, _lm_config, check_tokenizer_survives, train_tokenizer

    instructions = "Are the notes below sufficient to answer the question reliably?\n\nQuestion: "
    texts = [f"user\n{instructions}is there a {c} shape?" for c in ("red", "blue", "green")]
    texts += [f"user\n{instructions}what colour is the {s}?" for s in ("circle", "triangle")]
    tok = train_tokenizer(texts, max_vocab=2048)
    pieces = [tok.decode([i]) for i in tok(texts[2], add_special_tokens=False)["input_ids"]]
    assert pieces == [f"user\n{instructions}is there a ", "green", " shape?"]
    for word in ("green", "red", "circle"):
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"]) == [word]
    assert "no" in CONTENT_WORDS and tok.convert_ids_to_tokens(tok("cannot")["input_ids"]) != [
        "can", "no", "t"
    ]  # fmt: skip
    # numbers: pieces of two digits, the same wherever they stand (copied from a note to a reply)
    note, reply = "[267,108,353,138] 7069 | [505,108,591,138] Tea", 'so the answer is "7069".'
    texts += [f"user\n{note}", f"assistant\n{reply}", "7069 Tea", "answer is 12.50"]
    tok = train_tokenizer(texts, max_vocab=2048)
    for text in (note, reply):
        pieces = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
        assert pieces[pieces.index("70") : pieces.index("70") + 2] == ["70", "69"], pieces
    note_pieces = [tok.decode([i]) for i in tok(note, add_special_tokens=False)["input_ids"]]
    assert note_pieces[-1] == "Tea"  # a word the text images show: one token (CONTENT_WORDS)
    torch.manual_seed(0)
    for kind, model_class, survives in (
        ("llama", LlamaForCausalLM, True), ("qwen2", Qwen2ForCausalLM, False),
    ):  # fmt: skip
        folder = tmp_path / kind
        model_class(_lm_config(kind, tok, 16, 1, 2, 64)).save_pretrained(folder)
        tok.save_pretrained(folder)
        if survives:
            check_tokenizer_survives(folder, tok)
        else:
            with pytest.raises(RuntimeError, match="different tokenizer"):
                check_tokenizer_survives(folder, tok)


def test_batches_never_mix_records_with_and_without_an_image() -> None:
    """The LVLM trains on its vision calls and (pure mode) on text-role calls: a batch's pixel
    values must cover all its records or none."""
    from models.training import Example, _Batches

    examples = [
        Example(input_ids=[1] * (3 + i % 7), reply_start=1, image=None if i % 3 else f"img{i}")
        for i in range(200)
    ]
    batches = _Batches(examples, batch_size=8, seed=0)
    kinds, seen = set(), set()
    for _ in range(60):  # > 2 passes over the 200 records
        batch = batches.next()
        assert len({e.image is None for e in batch}) == 1
        kinds.add(batch[0].image is None)
        seen.update(id(e) for e in batch)
    assert kinds == {True, False} and len(seen) == 200  # both kinds, every record drawn


async def test_demo_report_measures_follow_ups_and_text_questions_with_and_without_ocr() -> None:
    """The code behind docs/accuracy.md's figures, on the committed demo models: each setting is
    a row of its own, follow-up items carry an earlier turn, the text rows read the images with
    the real RapidOCR (on) or through the vision expert (off), whose readings are checked."""
    pytest.importorskip("rapidocr")
    from app.backends import close_models, open_models
    from app.settings import load_settings
    from evals.demo import evaluate_demo

    settings = load_settings(
        "demo",
        models={"vision": {"model": str(DEMO / "vision")}, "text": {"model": str(DEMO / "text")}},
    )
    models = await open_models(settings.models)
    try:
        rows = await evaluate_demo(
            models, settings.agent, limit=4, methods=("proreason",), follow_up=True, text=4
        )
    finally:
        await close_models(models)
    assert [(r.setting, r.method) for r in rows] == [
        ("easy-vqa", "proreason"), ("easy-vqa, follow-up turn", "proreason"),
        ("text, OCR expert", "proreason"), ("text, no OCR expert", "proreason"),
        ("text", "direct"),
    ]  # fmt: skip
    assert [r.n for r in rows] == [4, 4, 4, 4, 4]
    easy, follow, ocr, no_ocr, _ = rows
    assert easy.accuracy == follow.accuracy == 1.0 and follow.tokens_per_question > (
        easy.tokens_per_question
    )  # the same questions, with the earlier turn in the text roles' prompts
    assert set(ocr.by_kind) == {"text-word", "text-number", "text-price", "text-table"}
    assert ocr.solved_rate == 1.0 and ocr.by_kind["text-word"] == 1.0
    assert ocr.perception_calls == 0  # the OCR expert read; the vision expert was not asked
    assert no_ocr.perception_calls >= 4 and no_ocr.perception_accuracy is not None
