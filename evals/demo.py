"""The demo models: a tiny LVLM and a tiny text LM, trained offline on CPU, that make the real
ProReason loop reason to correct, ``solved`` answers on easy-VQA and, with the OCR expert, on
questions about text in an image.

:func:`build_demo` (``python -m evals.demo build [DIR]``) does everything in one go:

1. **data** (:func:`make_demo_records`): trajectories of the REAL ``agents.Reasoner`` loop with
   teachers that know the answers playing every role (``evals.oracle``: the easy-VQA annotations;
   the text each rendered image shows, ``evals.text_images``), recorded by ``evals.trajectories``
   (so the records hold exactly the current prompts): easy-VQA TRAIN questions (a share asked as
   a chat's follow-up turn), easy-VQA questions with the OCR expert offered, and questions about
   rendered text with the OCR expert (it reads) and without (the vision expert reads). The text
   roles' records train the text LM. The LVLM learns from the vision expert's records of those
   runs, from perception drills on every train image (shape, colour and presence sub-questions,
   rendered by the loop's own prompt code), from the ``direct`` and ``cot`` baselines and from
   pure-mode runs;
2. **tokenizers**: one phrase-level byte BPE per model (``models.tiny.train_bpe_tokenizer``): the
   words a model copies are single tokens, numbers pieces of two digits;
3. **models**: ``LlavaForConditionalGeneration`` (SigLIP tower, Qwen2 LM; 64x64 input, 8x8
   patches -> 64 image tokens; image_mean 1 / image_std 0.5 so the white background is 0) and a
   ``LlamaForCausalLM``, both from scratch;
4. **training** (``models.training``): both at once, one process and one torch thread each. The
   LVLM has an auxiliary shape/colour classifier on its projected image features (dropped after
   training) and sees random flips / quarter turns of the images.

The folders load with the production ``TransformersBackend`` (``configs/demo.yaml``).
``proreason demo-report`` (:func:`evaluate_demo`) runs the loop on the easy-VQA TEST split (and
on follow-up turns and test questions about text, when asked) and reports accuracy, stop
reasons, parse failures and perception accuracy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from agents import AgentConfig, ModelSet, PromptSet, Question, Reasoner, RunOptions
from agents.run import RunContext
from evals.datasets import EvalItem, load_dataset
from evals.oracle import (
    COLOURS,
    SHAPES,
    SUB_QUESTIONS,
    ImageFacts,
    OracleBackend,
    TextOracleBackend,
    asks_both,
    image_facts,
    parse_question,
)
from evals.text_images import WORDS, annotated_recognizer, as_items, text_questions
from evals.trajectories import (
    RecordingBackend,
    RunSpec,
    message_dicts,
    read_records,
    record_runs,
    write_records,
)
from models.base import ModelBackend
from models.images import ImageDecoder
from models.ocr import OcrEngine
from models.tiny import CHAT_TEMPLATE, IMAGE, set_generation_config, train_bpe_tokenizer
from models.types import GenerationRequest, ImageInput, SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_DEMO_DIR = Path("~/.cache/proreason/demo")
MARKER = "proreason-demo.json"
RECIPE_VERSION = 5
TEXT_ROLES = ("dispatcher", "insight", "referee", "summarizer")


@dataclass
class DemoSpec:
    """Everything that decides the demo build (recorded in each model folder's marker)."""

    seed: int = 0
    #: train questions whose ProReason trajectory trains the text LM
    text_items: int = 6000
    #: of those runs' dispatcher calls, how many train the text LM
    dispatcher_records: int = 1500
    #: train questions whose pure-mode trajectory (the LVLM plays every role) trains the LVLM
    pure_items: int = 6000
    #: train questions answered with the direct and cot baselines (LVLM data)
    direct_items: int = 12000
    cot_items: int = 3000
    #: presence sub-questions per train image in the perception drill
    presence_per_image: int = 2
    #: the share of the loop's questions asked as a chat's follow-up turn (an earlier question
    #: about the same image and its answer as history)
    follow_up_share: float = 0.25
    #: easy-VQA questions answered with the OCR expert offered (the dispatcher still looks)
    ocr_shape_items: int = 1000
    #: questions about written text (``evals.text_images``) answered with the OCR expert ...
    ocr_text_items: int = 3000
    #: ... and without it (the vision expert reads; these also teach the LVLM to read)
    read_text_items: int = 1500
    #: the text LM's loss weight of those questions' records (copying cells is the hard part)
    text_image_weight: float = 2.0
    # --- LVLM
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_text_hidden: int = 128
    vision_text_layers: int = 3
    vision_steps: int = 2500
    vision_batch: int = 32
    vision_lr: float = 5e-4
    aux_weight: float = 1.0
    #: phase 1: the vision tower + projector alone, as a shape/colour classifier (fast)
    pretrain_steps: int = 600
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    yes_no_weight: float = 2.0
    #: loss weight of the answer words (shapes, colours, yes/no) inside replies
    content_token_weight: float = 6.0
    # --- text LM
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_steps: int = 6000
    text_batch: int = 24
    text_lr: float = 1e-3
    # --- both
    vocab: int = 4096
    warmup_steps: int = 150
    #: a time cap per training job (None: none; the build is capped by steps, so it makes the
    #: same models on a busy machine, only later)
    max_seconds: float | None = None
    threads_per_model: int = 1
    agent_max_tokens: int = 96


# ------------------------------------------------------------------------------ data


def _image_id(path: Path) -> str:
    return Path(path).stem


@lru_cache(maxsize=8192)
def load_image(path: Path) -> ImageInput:
    """An image file as the service loads it (``models.images`` with the default limits)."""
    return ImageDecoder().decode_sync(Path(path).read_bytes())


def _answerable(items: list[EvalItem], facts: dict[int, ImageFacts]) -> list[EvalItem]:
    """Items the oracle can answer (the annotations give the image's shape and colour)."""
    out = []
    for item in items:
        parsed = parse_question(item.question)
        image = facts.get(int(_image_id(item.image_paths[0])))
        if (
            parsed is not None
            and image is not None
            and image.shape is not None
            and image.colour is not None  # the loop asks the vision expert for both
            and parsed.answer(image) == item.answer
        ):
            out.append(item)
    return out


def _text_role_records(
    records: list[dict[str, Any]], dispatchers: int, rng: random.Random
) -> list[dict[str, Any]]:
    """The text roles' records, with only ``dispatchers`` of the dispatcher's: its first decision
    is the same for every question, a share of them suffices."""
    text = [r for r in records if r["role"] in TEXT_ROLES and r["role"] != "dispatcher"]
    dispatch = [r for r in records if r["role"] == "dispatcher"]
    return text + rng.sample(dispatch, min(dispatchers, len(dispatch)))


def _balanced(
    items: list[EvalItem], facts: dict[int, ImageFacts], n: int, rng: random.Random
) -> list[EvalItem]:
    """``n`` items in which half the yes/no questions name the value the image has.

    In easy-VQA a yes/no question names the image's colour 1 time in 8 (its shape 1 in 3): a
    small model then learns to write "red is not green" whatever it reads. The pure-mode LVLM
    (which also sees and describes) did, so its referee data is balanced."""

    def matches(item: EvalItem) -> bool:
        parsed = parse_question(item.question)
        image = facts[int(_image_id(item.image_paths[0]))]
        return (
            parsed is not None
            and parsed.kind == "yesno"
            and image.get(parsed.attribute) == parsed.value
        )

    same = [i for i in items if matches(i)]
    yesno = [i for i in items if not matches(i) and parse_question(i.question).kind == "yesno"]
    what = [i for i in items if parse_question(i.question).kind == "what"]
    k = n // 3
    picked = [rng.choice(same) for _ in range(k)] + rng.sample(yesno, min(k, len(yesno)))
    picked += rng.sample(what, min(n - len(picked), len(what)))
    rng.shuffle(picked)
    return picked


def _as_typed(item: EvalItem, rng: random.Random) -> EvalItem:
    """The item with its question as a person may type it: half start with a capital letter."""
    if rng.random() < 0.5:
        return replace(item, question=item.question[:1].upper() + item.question[1:])
    return item


def _oracle_models(facts: dict[int, ImageFacts], prompts: PromptSet):
    def models_for(item: EvalItem) -> RunSpec:
        if "text" in item.meta:  # a question about written text (evals.text_images)
            oracle: ModelBackend = TextOracleBackend(item.meta["text"], prompts)
        else:
            fact = facts[int(_image_id(item.image_paths[0]))]
            oracle = OracleBackend(item.question, fact, prompts)
        return RunSpec(vision=oracle, text=oracle)

    return models_for


def _as_follow_ups(
    items: list[EvalItem], pool: list[EvalItem], share: float, rng: random.Random
) -> list[EvalItem]:
    """``share`` of ``items`` asked as a chat's second turn: another question about the same
    image (from ``pool``) and its answer as the earlier turn, as a chat UI sends it."""
    by_image: dict[Path, list[EvalItem]] = {}
    for other in pool:
        by_image.setdefault(other.image_paths[0], []).append(other)
    out = []
    for item in items:
        earlier = [o for o in by_image.get(item.image_paths[0], []) if o.question != item.question]
        if earlier and rng.random() < share:
            first = _as_typed(rng.choice(earlier), rng)
            item = replace(item, meta={**item.meta, "history": ((first.question, first.answer),)})
        out.append(item)
    return out


async def _drill_records(
    facts: dict[int, ImageFacts], paths: dict[int, str], prompts: PromptSet, config: AgentConfig,
    presence: int, rng: random.Random,
) -> list[dict[str, Any]]:  # fmt: skip
    """Vision-expert calls on every train image: shape, colour and presence sub-questions.

    The messages come from the loop's own prompt code (``RunContext.messages("vision", ...)``).
    """
    records = []
    for image_id, path in sorted(paths.items()):
        fact = facts.get(image_id)
        if fact is None:
            continue
        subs = [SUB_QUESTIONS["both"]] if fact.shape and fact.colour else []
        if fact.shape:
            subs.append(SUB_QUESTIONS["shape"])
            others = [s for s in SHAPES if s != fact.shape]
            subs += [f"Is there a {s} in the image?" for s in rng.sample(others, 1)]
            subs.append(f"Is there a {fact.shape} in the image?")
        if fact.colour:
            subs.append(SUB_QUESTIONS["colour"])
            others = [c for c in COLOURS if c != fact.colour]
            subs += [f"Is there a {c} shape in the image?" for c in rng.sample(others, 1)]
            subs.append(f"Is there a {fact.colour} shape in the image?")
        presence_subs = [s for s in subs if s.startswith("Is ")]
        keep = set(rng.sample(presence_subs, min(presence, len(presence_subs))))
        subs = [s for s in subs if not s.startswith("Is ") or s in keep]
        image = load_image(Path(path))
        oracle = RecordingBackend(OracleBackend("what shape is in the image?", fact, prompts))
        question = Question(text="(perception drill)", images=(image,))
        models = ModelSet(vision=oracle)
        job = Reasoner(models, config, prompts=prompts).prepare(question, RunOptions(mode="pure"))
        ctx = RunContext(job, models, prompts, config)
        for sub in subs:
            messages = ctx.messages("vision", oracle, images=(image,), sub_question=sub)
            result = await oracle.generate(
                GenerationRequest(messages, SamplingParams(max_tokens=config.max_tokens))
            )
            ref = {image.sha256: {"path": str(path), "image_id": str(image_id)}}
            records.append(
                {
                    "role": "vision", "method": "drill", "item_id": f"train-image-{image_id}",
                    "round": None, "solved": True, "correct": True, "stop_reason": None,
                    "finish_reason": result.finish_reason, "parse_error": None,
                    "messages": message_dicts(messages, ref), "reply": result.text,
                }
            )  # fmt: skip
    return records


def make_demo_records(
    out_dir: Path, spec: DemoSpec | None = None, *, prompts_dir: Path | None = None
) -> dict[str, Path]:
    """Generate the demo training data from the CURRENT prompts; returns the JSONL paths.

    ``text.jsonl``: the text roles' calls of ProReason runs (solved and correct runs only);
    ``vision.jsonl``: the vision expert's calls of those runs, the perception drill and the
    direct / cot baseline calls.
    """
    import easy_vqa

    spec = spec or DemoSpec()
    out_dir = Path(out_dir)
    rng = random.Random(spec.seed)
    prompts = PromptSet.load(prompts_dir)
    config = AgentConfig(
        max_rounds=4, max_tokens=spec.agent_max_tokens, structured_decisions=False,
        prompts_dir=prompts_dir,
    )  # fmt: skip
    facts = image_facts("train")
    items = _answerable(load_dataset("easy-vqa", split="train"), facts)
    models_for = _oracle_models(facts, prompts)

    n_text = spec.ocr_text_items + spec.read_text_items
    written = as_items(text_questions("train", n_text), out_dir / "text-images")
    rng.shuffle(written)
    # the OCR expert reads the text images from their annotations (an OCR that is always right)
    ocr = OcrEngine(recognize=annotated_recognizer(i.meta["text"].case for i in written))

    def reasoner_for(models: ModelSet) -> Reasoner:
        return Reasoner(models, config, prompts=prompts, ocr=ocr)

    async def loop_runs(chosen: list[EvalItem], options: RunOptions) -> list[dict[str, Any]]:
        recs, _ = await record_runs(
            chosen, models_for, reasoner_for, options, load_image, image_id=_image_id,
            concurrency=32,
        )  # fmt: skip
        return [r for r in recs if r["solved"] and r["correct"]]

    async def run_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        text_items = [
            _as_typed(item, rng) for item in rng.sample(items, min(spec.text_items, len(items)))
        ]
        text_items = _as_follow_ups(text_items, items, spec.follow_up_share, rng)
        good = await loop_runs(text_items, RunOptions(max_rounds=4))
        text = _text_role_records(good, spec.dispatcher_records, rng)
        vision = [r for r in good if r["role"] == "vision"]
        # the OCR expert offered: easy-VQA questions (the dispatcher still asks the vision
        # expert) and questions about written text (it asks the OCR expert)
        shape_ocr = [_as_typed(i, rng) for i in rng.sample(items, spec.ocr_shape_items)]
        good = await loop_runs(shape_ocr, RunOptions(max_rounds=4, ocr=True))
        text += _text_role_records(good, spec.ocr_shape_items // 2, rng)
        read_ocr = [_as_typed(i, rng) for i in written[: spec.ocr_text_items]]
        good = await loop_runs(read_ocr, RunOptions(max_rounds=4, ocr=True))
        text += _text_role_records(good, spec.ocr_text_items // 3, rng)
        # no OCR expert: the vision expert reads (the LVLM learns to, from the pixels)
        read_vision = [_as_typed(i, rng) for i in written[spec.ocr_text_items :]]
        good = await loop_runs(read_vision, RunOptions(max_rounds=4))
        text += _text_role_records(good, spec.read_text_items // 3, rng)
        vision += [r for r in good if r["role"] == "vision"]
        baseline: list[dict[str, Any]] = []
        for method, n in (("direct", spec.direct_items), ("cot", spec.cot_items)):
            chosen = rng.sample(items, min(n, len(items)))
            recs, _ = await record_runs(
                chosen, models_for, reasoner_for, RunOptions(method=method), load_image,
                image_id=_image_id, concurrency=32,
            )  # fmt: skip
            baseline += recs
        drill = await _drill_records(
            facts, easy_vqa.get_train_image_paths(), prompts, config, spec.presence_per_image, rng
        )
        pure_items = [
            _as_typed(item, rng) for item in _balanced(items, facts, spec.pure_items, rng)
        ]
        pure_good = await loop_runs(pure_items, RunOptions(mode="pure", max_rounds=4))
        vision += drill + baseline
        # pure mode: the LVLM plays the text roles too (their calls carry no image)
        vision += _text_role_records(pure_good, spec.dispatcher_records // 4, rng)
        return text, vision

    try:
        text, vision = asyncio.run(run_all())
    finally:
        asyncio.run(ocr.close())
    paths = {"text": out_dir / "text.jsonl", "vision": out_dir / "vision.jsonl"}
    write_records(paths["text"], text)
    write_records(paths["vision"], vision)
    logger.info("demo records: %d text, %d vision", len(text), len(vision))
    return paths


# ------------------------------------------------------------------------------ tokenizers


def _corpus(records: list[dict[str, Any]]) -> list[str]:
    """Every distinct message text as the chat template lays it out ("user\n..."), and replies."""
    texts = set()
    for record in records:
        for message in record["messages"]:
            text = "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")
            texts.add(f"{message['role']}\n{text}")
        texts.add(f"assistant\n{record['reply']}")
        texts.add(record["reply"])
    return sorted(texts)


#: the words a demo model copies from its input into its replies: one token each, whatever
#: surrounds them (see ``models.tiny.train_bpe_tokenizer``'s ``phrases_around``)
CONTENT_WORDS = (*SHAPES, *COLOURS, "yes", "no", "Yes", "No", *WORDS)


def train_tokenizer(texts: list[str], *, max_vocab: int, model_max_length: int = 2048):
    """A phrase-level byte BPE on the demo corpus: text that recurs in the prompts (instructions,
    templates) merges into long tokens, so the models read short sequences and train fast; the
    content words stay single tokens (``models.tiny.train_bpe_tokenizer``)."""
    return train_bpe_tokenizer(
        texts, vocab_size=max_vocab, model_max_length=model_max_length, min_frequency=1,
        phrases_around=CONTENT_WORDS, numbers=True,
    )  # fmt: skip


def _lm_config(kind: str, tokenizer: Any, hidden: int, layers: int, heads: int, max_pos: int):
    """A small decoder config: ``"llama"`` (the text LM) or ``"qwen2"`` (the LLaVA's LM)."""
    from transformers import LlamaConfig, Qwen2Config

    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind](
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def check_tokenizer_survives(folder: Path, trained: Any) -> None:
    """Fail if ``AutoTokenizer`` would load ``folder``'s tokenizer with another pre-tokenizer.

    transformers 5 rebuilds the tokenizer of some model types from their own class (a ``qwen2``
    folder gets ``Qwen2Tokenizer`` with Qwen2's word-splitting regex, whatever tokenizer.json
    says), which would silently undo the phrase-level merges: the text LM is a Llama for that.
    """
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(folder)
    probe = "Question: is there not a red shape?\n\nNotes about the image:\n(no notes yet)"
    if loaded(probe)["input_ids"] != trained(probe)["input_ids"]:
        raise RuntimeError(
            f"{folder}: AutoTokenizer loads a different tokenizer ({type(loaded).__name__}) "
            "than the one trained"
        )


def init_text_model(folder: Path, records: list[dict[str, Any]], spec: DemoSpec) -> None:
    """Save an untrained Llama text LM with its tokenizer into ``folder``."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = train_tokenizer(_corpus(records), max_vocab=spec.vocab, model_max_length=1024)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(
        _lm_config("llama", tokenizer, spec.text_hidden, spec.text_layers, spec.text_heads, 1024)
    )
    set_generation_config(model, tokenizer)
    _fresh(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    check_tokenizer_survives(folder, tokenizer)


def init_vision_model(folder: Path, records: list[dict[str, Any]], spec: DemoSpec) -> None:
    """Save an untrained LLaVA (SigLIP tower + Qwen2 LM) with its processor into ``folder``."""
    import torch
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tokenizer = train_tokenizer(_corpus(records), max_vocab=spec.vocab, model_max_length=1024)
    tokens = (spec.image_size // spec.patch_size) ** 2
    vision_config = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=_lm_config(
            "qwen2", tokenizer, spec.vision_text_hidden, spec.vision_text_layers, 4, 1024
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=tokens,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    set_generation_config(model, tokenizer)
    image_processor = SiglipImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[1.0, 1.0, 1.0],  # easy-VQA backgrounds are near-white: white -> 0
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    _fresh(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    check_tokenizer_survives(folder, tokenizer)


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


# ------------------------------------------------------------------------------ training jobs


def _record_weight(spec: DemoSpec):
    def weight(record: dict[str, Any]) -> float:
        if record["reply"].strip().lower() in ("yes", "no") or "Answer: yes" in record["reply"] \
                or "Answer: no" in record["reply"]:  # fmt: skip
            return spec.yes_no_weight
        return 1.0

    return weight


def _content_tokens(tokenizer: Any, spec: DemoSpec, *, copied: bool = False) -> dict[int, float]:
    """Token ids of the answer words (one token each with the demo tokenizers) -> loss weight.

    ``copied`` (the text LM): also the words and number pieces it copies from the text an image
    shows (``evals.text_images``) into its reasoning and answers."""
    out = {}
    words: tuple[str, ...] = (*SHAPES, *COLOURS, "yes", "no")
    if copied:
        words += (*WORDS, *(str(n) for n in range(100)), *(f"{n:02d}" for n in range(10)))
    for word in words:
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                out[ids[0]] = spec.content_token_weight
    return out


def _dihedral(torch: Any):
    """Per-image random flip / quarter turn (shape and colour do not change)."""

    def augment(pixels: Any, rng: random.Random) -> Any:
        out = []
        for img in pixels:
            k = rng.randrange(8)
            img = torch.rot90(img, k % 4, dims=(1, 2))
            out.append(torch.flip(img, dims=(2,)) if k >= 4 else img)
        return torch.stack(out)

    return augment


def _remaining(spec: DemoSpec, started: float) -> float | None:
    """The job's time budget (``max_seconds`` covers loading and pre-training too)."""
    if spec.max_seconds is None:
        return None
    return max(1.0, spec.max_seconds - (time.perf_counter() - started))


def train_text_model(folder: str, records_path: str, run_dir: str, spec_dict: dict) -> dict:
    """Train the text LM in ``folder`` on ``records_path`` (a training job; own process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.training import TrainConfig, encode_records, train

    started = time.perf_counter()
    spec = DemoSpec(**spec_dict)
    torch.set_num_threads(spec.threads_per_model)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # as the backend loads it
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    records = read_records(Path(records_path))
    examples = encode_records(
        records, tokenizer, token_weights=_content_tokens(tokenizer, spec, copied=True),
        weight=lambda r: spec.text_image_weight if r["item_id"].startswith("text-") else 1.0,
    )  # fmt: skip
    cfg = TrainConfig(
        steps=spec.text_steps, batch_size=spec.text_batch, lr=spec.text_lr,
        warmup_steps=spec.warmup_steps, seed=spec.seed, max_seconds=_remaining(spec, started),
        threads=spec.threads_per_model, checkpoint_every=500,
    )  # fmt: skip
    model, summary = train(
        model, examples, cfg, Path(run_dir), pad_id=tokenizer.pad_token_id, name="text"
    )
    model.save_pretrained(folder)
    summary["max_tokens"] = max(len(e.input_ids) for e in examples)
    return summary


def train_vision_model(folder: str, records_path: str, run_dir: str, spec_dict: dict) -> dict:
    """Train the LVLM in ``folder`` on ``records_path`` (a training job; own process)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evals.oracle import image_facts as facts_of
    from models.training import TrainConfig, encode_records, image_expansion_of, train

    started = time.perf_counter()
    spec = DemoSpec(**spec_dict)
    torch.set_num_threads(spec.threads_per_model)
    processor = AutoProcessor.from_pretrained(folder)  # as the backend loads it
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    records = read_records(Path(records_path))
    facts = facts_of("train")
    pixels: dict[str, Any] = {}
    expansion = None
    labels: dict[str, tuple[int, int]] = {}
    for record in records:
        part = next(
            (p for m in record["messages"] for p in m["content"] if p["type"] == "image"), None
        )
        if part is None:
            continue  # a text role's call (pure mode)
        key = str(part.get("path"))
        if key in pixels:
            continue
        expansion, features = image_expansion_of(processor, load_image(Path(key)).image)
        pixels[key] = features["pixel_values"]
        image_id = str(part.get("image_id", ""))
        fact = facts.get(int(image_id), ImageFacts()) if image_id.isdigit() else ImageFacts()
        labels[key] = (
            SHAPES.index(fact.shape) if fact.shape else -100,
            COLOURS.index(fact.colour) if fact.colour else -100,
        )
    examples = encode_records(
        records, processor.tokenizer, processor=processor, image_expansion=expansion,
        weight=_record_weight(spec), token_weights=_content_tokens(processor.tokenizer, spec),
    )  # fmt: skip
    hidden = model.config.text_config.hidden_size
    aux = torch.nn.ModuleDict(
        {"shape": torch.nn.Linear(hidden, len(SHAPES)), "colour": torch.nn.Linear(hidden, 8)}
    )
    captured: dict[str, Any] = {}
    projector = model.model.multi_modal_projector
    projector.register_forward_hook(lambda mod, args, out: captured.__setitem__("f", out))

    def aux_loss(model: Any, aux: Any, batch: dict[str, Any]) -> Any:
        if batch["examples"][0].image is None:  # a batch of text-role calls: no image features
            return 0.0
        feats = captured["f"]
        feats = feats.reshape(len(batch["examples"]), -1, feats.shape[-1]).mean(1)
        target = torch.tensor([labels[e.image] for e in batch["examples"]])
        loss = 0.0
        for column, head in enumerate(("shape", "colour")):
            if (target[:, column] >= 0).any():  # a text image has neither (all-ignored: NaN)
                loss = loss + torch.nn.functional.cross_entropy(
                    aux[head](feats), target[:, column], ignore_index=-100
                )
        return spec.aux_weight * loss

    _pretrain_vision(torch, model, aux, pixels, labels, spec, Path(run_dir))
    cfg = TrainConfig(
        steps=spec.vision_steps, batch_size=spec.vision_batch, lr=spec.vision_lr,
        warmup_steps=spec.warmup_steps, seed=spec.seed, max_seconds=_remaining(spec, started),
        threads=spec.threads_per_model, checkpoint_every=500,
    )  # fmt: skip
    model, summary = train(
        model, examples, cfg, Path(run_dir), pad_id=processor.tokenizer.pad_token_id,
        pixels=pixels, augment=_dihedral(torch), aux=aux, aux_loss=aux_loss, name="vision",
    )  # fmt: skip
    model.save_pretrained(folder)
    summary["max_tokens"] = max(len(e.input_ids) for e in examples)
    return summary


def _pretrain_vision(
    torch: Any, model: Any, aux: Any, pixels: dict[str, Any], labels: dict[str, tuple[int, int]],
    spec: DemoSpec, run_dir: Path,
) -> None:  # fmt: skip
    """Phase 1: train the vision tower + projector as a shape/colour classifier (mean-pooled
    projected features -> the ``aux`` heads), with the same augmentation; logged to run_dir."""
    from models.training import plot_losses

    keys = [k for k in pixels if labels[k] != (-100, -100)]
    if not keys or spec.pretrain_steps <= 0:
        return
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    params = [*tower.parameters(), *projector.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=spec.pretrain_lr, weight_decay=0.01)
    warm = max(1, spec.pretrain_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / spec.pretrain_steps)
    )
    rng = random.Random(spec.seed + 7)
    augment = _dihedral(torch)
    ce = torch.nn.functional.cross_entropy
    losses, correct = [], []
    for _ in range(spec.pretrain_steps):
        batch = rng.sample(keys, min(spec.pretrain_batch, len(keys)))
        pv = augment(torch.cat([pixels[k] for k in batch]), rng)
        feats = model.model.get_image_features(
            pixel_values=pv,
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.stack([f.reshape(-1, f.shape[-1]).mean(0) for f in feats])
        target = torch.tensor([labels[k] for k in batch])
        shape_logits, colour_logits = aux["shape"](feats), aux["colour"](feats)
        loss = ce(shape_logits, target[:, 0], ignore_index=-100) + ce(
            colour_logits, target[:, 1], ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ok = (shape_logits.argmax(1) == target[:, 0])[target[:, 0] >= 0].float().mean()
        correct.append(float(ok))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pretrain.json").write_text(
        json.dumps({"losses": losses, "shape_acc_last50": sum(correct[-50:]) / 50})
    )
    plot_losses(losses, run_dir / "pretrain_loss.png", title="vision tower pre-training")
    acc = sum(correct[-50:]) / len(correct[-50:])
    logger.info("vision pre-training: loss %.3f, shape accuracy %.3f", losses[-1], acc)


# ------------------------------------------------------------------------------ the build


def _marker(kind: str, spec: DemoSpec) -> dict[str, Any]:
    return {"kind": kind, "recipe": RECIPE_VERSION, "spec": asdict(spec)}


def is_built(out_dir: Path = DEFAULT_DEMO_DIR, spec: DemoSpec | None = None) -> bool:
    """Whether both demo models exist with this spec (no torch import)."""
    spec = spec or DemoSpec()
    root = Path(out_dir).expanduser()
    for kind in ("vision", "text"):
        try:
            if json.loads((root / kind / MARKER).read_text()) != _marker(kind, spec):
                return False
        except (OSError, ValueError):
            return False
    return True


def build_demo(
    out_dir: Path = DEFAULT_DEMO_DIR,
    spec: DemoSpec | None = None,
    *,
    force: bool = False,
    prompts_dir: Path | None = None,
    parallel: bool = True,
) -> dict[str, Path]:
    """Build (or reuse) the trained demo models under ``out_dir``: ``{"vision": ..., "text": ...}``.

    Regenerates the training data from the current prompts, trains both models (in parallel
    processes by default) and writes ``build.json`` (timings, losses) and the loss curves under
    ``out_dir/runs``. A folder whose marker matches ``spec`` is reused unless ``force``.
    """
    spec = spec or DemoSpec()
    root = Path(out_dir).expanduser()
    folders = {"vision": root / "vision", "text": root / "text"}
    if not force and is_built(root, spec):
        return folders
    started = time.perf_counter()
    data_dir = root / "data"
    runs = root / "runs"
    if runs.exists():
        shutil.rmtree(runs)  # a new build starts fresh (resume is for an interrupted train)
    paths = make_demo_records(data_dir, spec, prompts_dir=prompts_dir)
    data_s = time.perf_counter() - started
    init_text_model(folders["text"], read_records(paths["text"]), spec)
    init_vision_model(folders["vision"], read_records(paths["vision"]), spec)
    jobs = {
        "vision": (train_vision_model, str(folders["vision"]), str(paths["vision"])),
        "text": (train_text_model, str(folders["text"]), str(paths["text"])),
    }
    summaries: dict[str, Any] = {}
    if parallel:
        with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
            futures = {
                kind: pool.submit(fn, folder, data, str(runs / kind), asdict(spec))
                for kind, (fn, folder, data) in jobs.items()
            }
            summaries = {kind: f.result() for kind, f in futures.items()}
    else:
        for kind, (fn, folder, data) in jobs.items():
            summaries[kind] = fn(folder, data, str(runs / kind), asdict(spec))
    for kind, folder in folders.items():
        (folder / MARKER).write_text(json.dumps(_marker(kind, spec), indent=2))
    build = {
        "data_seconds": round(data_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "records": {k: sum(1 for _ in open(p)) for k, p in paths.items()},
        "training": summaries,
        "sizes_mb": {k: round(_size(f) / 1e6, 2) for k, f in folders.items()},
        "spec": asdict(spec),
    }
    (root / "build.json").write_text(json.dumps(build, indent=2))
    logger.info("demo models built in %.0fs: %s", build["total_seconds"], build["sizes_mb"])
    return folders


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ evaluation


@dataclass
class DemoEval:
    method: str
    mode: str
    n: int
    accuracy: float
    solved_rate: float
    parse_failures: int
    parse_failure_rate: float  # parse failures per question
    fallback_rate: float = 0.0
    calls_per_question: float = 0.0
    tokens_per_question: float = 0.0
    perception_calls: int = 0
    perception_accuracy: float | None = None
    stop_reasons: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    #: the questions: "easy-vqa", "easy-vqa, follow-up turn", "text, OCR expert" ...
    setting: str = "easy-vqa"


def _perception_correct(reply: str, sub_question: str, fact: ImageFacts) -> bool | None:
    """Whether a vision reply states the right attribute(s) (None: not checkable)."""
    if asks_both(sub_question):
        if fact.shape is None or fact.colour is None:
            return None
        said = reply.lower()
        return [w for w in SHAPES if w in said] == [fact.shape] and [
            w for w in COLOURS if w in said
        ] == [fact.colour]
    parsed = parse_question(sub_question)
    if parsed is None:
        return None
    truth = fact.get(parsed.attribute)
    if truth is None:
        return None
    domain = SHAPES if parsed.attribute == "shape" else COLOURS
    named = [w for w in domain if w in reply.lower()]
    ok = named == [truth]
    if parsed.kind == "yesno":
        lead = reply.strip().lower().split(",")[0].split(".")[0]
        ok = ok and lead == ("yes" if truth == parsed.value else "no")
    return ok


def _kind(item: EvalItem) -> str:
    """The question kind accuracy is broken down by."""
    if "kind" in item.meta:
        return f"text-{item.meta['kind']}"
    parsed = parse_question(item.question)
    if parsed is None:
        return "other"
    return f"{parsed.kind}-{parsed.attribute}" + ("-neg" if parsed.negated else "")


def follow_up_items(items: list[EvalItem], split: str, seed: int = 0) -> list[EvalItem]:
    """``items`` asked as a chat's second turn: the earlier turn another question of the split
    about the same image, answered right (its reference answer)."""
    rng = random.Random(seed)
    return _as_follow_ups(items, load_dataset("easy-vqa", split=split), 1.0, rng)


async def evaluate_demo(
    opened: ModelSet,
    agent: AgentConfig,
    *,
    limit: int | None = 300,
    seed: int = 0,
    methods: tuple[str, ...] = ("proreason", "direct", "cot"),
    concurrency: int = 16,
    oracle_vision: bool = False,
    pure: bool = False,
    follow_up: bool = False,
    text: int = 0,
) -> list[DemoEval]:
    """The demo models on the easy-VQA TEST split through the production backend and Reasoner.

    Accuracy, the share of ``solved`` answers, parse failures, accuracy per question kind, and
    perception accuracy (every vision-expert reply checked against the test annotations).
    ``oracle_vision``: replace the LVLM by a perfect vision expert (measures the text LM alone).
    ``opened``: the demo profile's models, opened by the caller (``proreason demo-report``).
    ``pure``: also run ``proreason`` in pure mode (the LVLM plays every role).
    ``follow_up``: also run ``proreason`` on the same questions asked as a chat's second turn.
    ``text``: also run ``proreason`` on that many test questions about written text
    (``evals.text_images``) with the OCR expert (the real RapidOCR) and without it, and the
    ``direct`` baseline on them.
    """
    from evals.oracle import OracleVisionBackend, reading_statement, template_field
    from evals.runner import evaluate

    items = load_dataset("easy-vqa", split="test", limit=limit, seed=seed)
    facts = image_facts("test")
    truth: dict[str, Any] = {
        load_image(item.image_paths[0]).sha256: facts.get(int(_image_id(item.image_paths[0])),
                                                          ImageFacts())
        for item in items
    }  # fmt: skip
    prompts = PromptSet.load(agent.prompts_dir)
    inner = OracleVisionBackend(dict(truth), prompts) if oracle_vision else opened.vision
    vision = RecordingBackend(inner)
    models = ModelSet(vision=vision, text=opened.text)
    decoder = ImageDecoder()
    reasoner = Reasoner(models, agent)
    base = {"max_rounds": agent.max_rounds}
    runs: list[tuple[str, list[EvalItem], RunOptions]] = []
    for method in methods:
        runs.append(("easy-vqa", items, RunOptions(method=method, mode="assisted", **base)))
        if method == "proreason" and pure:
            runs.append(("easy-vqa", items, RunOptions(method=method, mode="pure", **base)))
        if method == "proreason" and follow_up:
            runs.append(("easy-vqa, follow-up turn", follow_up_items(items, "test", seed),
                         RunOptions(method=method, mode="assisted", **base)))  # fmt: skip
    if text:
        written = as_items(text_questions("test", text))  # the images inline: nothing on disk
        truth.update({decoder.decode_sync(i.image_data[0]).sha256: i.meta["text"] for i in written})
        runs += [
            ("text, OCR expert", written, RunOptions(method="proreason", ocr=True, **base)),
            ("text, no OCR expert", written, RunOptions(method="proreason", ocr=False, **base)),
            ("text", written, RunOptions(method="direct", **base)),
        ]
    reports = []
    for setting, chosen, options in runs:
        vision.take()
        report, rows = await evaluate(reasoner, chosen, options, decoder, concurrency=concurrency)
        checks = []
        for call in vision.take():
            user = call.request.messages[-1].text_content
            sub = template_field(prompts, "vision", "sub_question", user)
            if call.result is None or sub is None:
                continue
            known = truth.get(call.request.images[0].sha256, ImageFacts())
            if isinstance(known, ImageFacts):
                checks.append(_perception_correct(call.result.text, sub, known))
            else:  # a text image: did the vision expert read it exactly?
                checks.append(call.result.text.strip() == reading_statement(known.case.rows))
        checked = [c for c in checks if c is not None]
        kinds: dict[str, list[bool]] = {}
        for item, row in zip(chosen, rows, strict=True):
            kinds.setdefault(_kind(item), []).append(row.verdict == "correct")
        n = report.n
        reports.append(
            DemoEval(
                method=report.method,
                mode=report.mode,
                setting=setting,
                n=n,
                accuracy=report.accuracy,
                solved_rate=report.stop_reasons.get("solved", 0) / n if n else 0.0,
                parse_failures=sum(r.parse_failures for r in rows),
                parse_failure_rate=report.parse_failures_per_question,
                fallback_rate=report.fallback_rate,
                calls_per_question=round(report.model_calls_per_question, 2),
                tokens_per_question=round(report.tokens_per_question, 1),
                perception_calls=len(checked),
                perception_accuracy=sum(checked) / len(checked) if checked else None,
                stop_reasons=report.stop_reasons,
                by_kind={k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())},
                wall_s=round(report.wall_time_s, 1),
            )
        )
        logger.info("%s", reports[-1])
    return reports


def main(argv: list[str] | None = None) -> int:
    """``python -m evals.demo {data,build}`` (experiments; ``proreason build-demo`` and
    ``proreason demo-report`` are the user-facing commands)."""
    parser = argparse.ArgumentParser(prog="python -m evals.demo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_data = sub.add_parser("data", help="write the demo training records (JSONL)")
    p_data.add_argument("out", type=Path)
    p_build = sub.add_parser("build", help="build the demo models")
    p_build.add_argument("out", type=Path, nargs="?", default=DEFAULT_DEMO_DIR)
    p_build.add_argument("--force", action="store_true")
    p_build.add_argument("--serial", action="store_true", help="train one model after the other")
    p_build.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                         help="override DemoSpec fields")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "agents", "models.transformers_backend", "models.batcher"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.cmd == "data":
        paths = make_demo_records(args.out)
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    elif args.cmd == "build":
        spec = DemoSpec()
        for item in args.set:
            key, _, value = item.partition("=")
            current = getattr(spec, key)
            setattr(spec, key, type(current)(value) if current is not None else float(value))
        started = time.perf_counter()
        folders = build_demo(args.out, spec, force=args.force, parallel=not args.serial)
        took = time.perf_counter() - started
        print(json.dumps({k: str(v) for k, v in folders.items()}), f"{took:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
