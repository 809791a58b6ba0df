"""The offline tiny-model builder (models/tiny.py), checked by loading with plain transformers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from models.tiny import (
    BOS,
    IMAGE,
    MARKER,
    TinySpec,
    _is_built,
    build_tiny_models,
    build_tiny_text_model,
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builds_both_model_folders(tiny_models: dict[str, Path]) -> None:
    assert set(tiny_models) == {"vision", "text"}
    for folder in tiny_models.values():
        assert (folder / "config.json").is_file()
        assert (folder / "model.safetensors").stat().st_size < 2_000_000
        assert (folder / "tokenizer.json").is_file()
        assert (folder / "chat_template.jinja").is_file()
    assert (tiny_models["vision"] / "processor_config.json").is_file()
    marker = json.loads((tiny_models["vision"] / MARKER).read_text())
    assert marker["kind"] == "vision"


def test_second_build_reuses_the_folders(tiny_models: dict[str, Path]) -> None:
    weights = tiny_models["text"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_tiny_models(tiny_models["text"].parent)
    assert time.perf_counter() - start < 0.5
    assert again == tiny_models
    assert weights.stat().st_mtime_ns == before


def test_marker_must_match_the_spec(tiny_models: dict[str, Path]) -> None:
    assert _is_built(tiny_models["vision"], "vision", TinySpec())
    assert not _is_built(tiny_models["vision"], "vision", TinySpec(hidden_size=128))
    assert not _is_built(tiny_models["vision"], "text", TinySpec())
    assert not _is_built(tiny_models["vision"].parent / "missing", "vision", TinySpec())


def test_build_is_deterministic_and_force_rebuilds(tmp_path: Path) -> None:
    folder = build_tiny_text_model(tmp_path / "a")
    digest = _digest(folder / "model.safetensors")
    (folder / "stale.txt").write_text("left over")
    build_tiny_text_model(folder)  # what force=True does for each model
    assert not (folder / "stale.txt").exists()
    assert _digest(folder / "model.safetensors") == digest  # torch.manual_seed(0)


def test_vision_model_mirrors_llava_interleave_architecture(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(tiny_models["vision"])
    assert config.model_type == "llava"
    assert config.vision_config.model_type == "siglip_vision_model"
    assert config.text_config.model_type == "qwen2"
    processor = AutoProcessor.from_pretrained(tiny_models["vision"])
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor.image_processor).__name__.endswith("Pil")
    assert processor.tokenizer.padding_side == "left"
    assert 256 < len(processor.tokenizer) <= 520
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids(IMAGE)


def test_chat_template_renders_parts_in_order_with_one_bos(
    tiny_models: dict[str, Path], shapes_image: object
) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vision"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image"},
                {"type": "text", "text": "second"},
            ],
        },
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith(BOS + "<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "first<image>second<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    enc = processor(text=[text], images=[shapes_image], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids(IMAGE)) == TinySpec().image_tokens == 16
    assert tuple(enc["pixel_values"].shape) == (1, 3, 32, 32)


def test_text_model_loads_with_auto_classes_and_generates(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["text"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["text"])
    assert type(model).__name__ == "Qwen2ForCausalLM"
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    messages = [{"role": "user", "content": "What shape is it?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 6


@pytest.mark.parametrize("kind", ["vision", "text"])
def test_tokenizer_round_trips_text(tiny_models: dict[str, Path], kind: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[kind])
    sample = 'Is there a red circle? {"expert": "vision"} ünïcødé 42'
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(sample.encode())  # BPE merges learned something
    assert tok.decode(ids) == sample
