"""Tiny random-weight models, built offline in seconds (like vLLM's ``--load-format dummy``).

``proreason build-tiny [DIR]`` calls :func:`build_tiny_models`. It writes two Hugging Face model
folders that load through exactly the same code as real models (``AutoConfig`` / ``AutoProcessor``
/ ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM``):

- ``vision/``: the architecture of the default LVLM (``llava-hf/llava-interleave-qwen-0.5b-hf``):
  ``LlavaForConditionalGeneration`` with a SigLIP vision tower and a Qwen2 language model, a
  ``LlavaProcessor`` (PIL SigLIP image processor; 32x32 images, 8x8 patches -> 16 image tokens);
- ``text/``: a ``Qwen2ForCausalLM`` with its own tokenizer.

Both use a byte-level BPE tokenizer (vocabulary ~512) trained here on a small built-in corpus,
with ChatML markers, ``<image>`` and a chat template that puts BOS first and renders image and
text parts in order. Weights are random (``torch.manual_seed(0)``): answers are gibberish by
design; the models exist to exercise loading, batching, streaming and token accounting offline.

A build is idempotent: a folder holding a marker with the same spec is reused without importing
torch, so calling this on every start-up is cheap.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TINY_DIR = Path("~/.cache/proreason/tiny")
#: written last into every finished model folder; its content is the build spec
MARKER = "proreason-tiny.json"
#: bump when the recipe changes so that old builds are rebuilt
RECIPE_VERSION = 1

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
IM_START, IMAGE = "<|im_start|>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IMAGE)

#: ChatML with BOS first; ``content`` is a string or a list of parts rendered in order
#: ({"type": "image"} -> ``<image>``, {"type": "text", "text": ...} -> the text).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
You are a careful visual assistant. Look at the image and answer the question step by step.
What shape is in the image? Is there a red circle? How many squares are there? What colour is it?
The image shows a blue triangle on a white background. The square in the corner is green.
Yes. No. There is one circle, two squares and a rectangle. The answer is: yellow.
Question: which expert should answer next? Decide between the vision expert and the insight expert.
{"expert": "vision", "question": "What is the colour of the shape?"}
{"solvable": true, "reason": "The memory says the shape is a red circle."}
Final answer: the shape is a circle. Thought: the memory contains enough information.
Describe the picture. The left half is dark, the right half is bright; a line crosses the middle.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100, punctuation . , ; : ! ? ( ) [ ] { } " ' - + = * / % # @ &.
"""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of one tiny model. The defaults make a model of well under 1 MB."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 512
    # vision tower (LVLM only)
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    max_position_embeddings: int = 4096
    #: weight init std; the usual 0.02 makes a tiny model repeat one token whatever the input,
    #: 0.2 gives outputs that depend on the prompt and the image (tests compare them)
    init_std: float = 0.2
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tiny_models(
    target_dir: Path = DEFAULT_TINY_DIR,
    *,
    force: bool = False,
    spec: TinySpec | None = None,
) -> dict[str, Path]:
    """Build (or reuse) the tiny LVLM and text LM under ``target_dir``.

    Returns ``{"vision": <folder>, "text": <folder>}``. An existing folder whose marker matches the
    spec is reused without importing torch (fast); ``force=True`` rebuilds. ``spec`` changes the
    sizes (the benchmark uses a wider model); tests and the ``tiny`` profile use the default.
    """
    spec = spec or TinySpec()
    root = Path(target_dir).expanduser()
    folders = {"vision": root / "vision", "text": root / "text"}
    for kind, folder in folders.items():
        if not force and _is_built(folder, kind, spec):
            logger.debug("tiny %s model up to date in %s", kind, folder)
            continue
        builder = build_tiny_vision_model if kind == "vision" else build_tiny_text_model
        builder(folder, spec)
    return folders


def _marker_content(kind: str, spec: TinySpec) -> dict[str, Any]:
    return {"kind": kind, "recipe": RECIPE_VERSION, "spec": asdict(spec)}


def _is_built(folder: Path, kind: str, spec: TinySpec) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()) == _marker_content(kind, spec)
    except (OSError, ValueError):
        return False


def _fresh_dir(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _finish(folder: Path, kind: str, spec: TinySpec) -> None:
    (folder / MARKER).write_text(json.dumps(_marker_content(kind, spec), indent=2))
    logger.info("built tiny %s model in %s", kind, folder)


def train_bpe_tokenizer(
    texts: list[str],
    *,
    vocab_size: int,
    model_max_length: int,
    min_frequency: int | None = None,
    phrases_around: Sequence[str] | None = None,
    numbers: bool = False,
) -> Any:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained on ``texts``, with the chat
    special tokens, the ChatML template and left padding (also used by ``evals.demo``).

    ``phrases_around``: words kept as pieces of their own; everything between them is NOT split
    at spaces, so merges may span words and text that recurs (a prompt's instructions) becomes a
    few tokens, while the listed words (the values a model copies) stay single tokens.
    ``numbers`` (with ``phrases_around``): numbers are split into pieces of two digits ("2022" ->
    "20", "22"), each a token of its own: a number is the same tokens wherever it is copied from
    or to, and every number is made of 110 tokens the model sees all the time (an unseen number
    is not an unseen token)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if phrases_around:
        words = "|".join(sorted(map(re.escape, phrases_around), key=len, reverse=True))
        pieces = rf"\b(?:{words})\b" + (r"|\d{1,2}" if numbers else "")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pieces), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    options = {} if min_frequency is None else {"min_frequency": min_frequency}
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **options,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=model_max_length,
    )


def _train_tokenizer(spec: TinySpec) -> Any:
    return train_bpe_tokenizer(
        _CORPUS.splitlines(),
        vocab_size=spec.vocab_size,
        model_max_length=spec.max_position_embeddings,
    )


def _qwen2_config(spec: TinySpec, tokenizer: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=spec.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def set_generation_config(model: Any, tokenizer: Any) -> None:
    """Greedy decoding with the tokenizer's bos/eos/pad ids (also used by ``evals.demo``)."""
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False


def build_tiny_text_model(folder: Path, spec: TinySpec | None = None) -> Path:
    """A tiny ``Qwen2ForCausalLM`` + tokenizer with a chat template, saved into ``folder``."""
    import torch
    from transformers import Qwen2ForCausalLM

    spec = spec or TinySpec()
    _fresh_dir(folder)
    tokenizer = _train_tokenizer(spec)
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(_qwen2_config(spec, tokenizer))
    set_generation_config(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _finish(folder, "text", spec)
    return folder


def build_tiny_vision_model(folder: Path, spec: TinySpec | None = None) -> Path:
    """A tiny LLaVA (SigLIP tower + Qwen2) + ``LlavaProcessor``, saved into ``folder``."""
    import torch
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    spec = spec or TinySpec()
    _fresh_dir(folder)
    tokenizer = _train_tokenizer(spec)
    vision_config = SiglipVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=_qwen2_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=spec.image_tokens,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    set_generation_config(model, tokenizer)
    image_processor = SiglipImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
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
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _finish(folder, "vision", spec)
    return folder
