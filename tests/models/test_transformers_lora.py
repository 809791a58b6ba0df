"""PEFT adapters on the in-process transformers backend (the offline tiny text model): loaded once
at start, chosen per request, and requests for different adapters in one micro-batch run through
PEFT's mixed-adapter batching, with the same greedy output as alone."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

from models.config import BackendConfig
from models.errors import InvalidRequest, ModelLoadError
from models.transformers_backend import TransformersBackend
from models.types import GenerationRequest, Message, SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="session")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapters(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for seed, name in enumerate(("disp", "ref"), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_models["text"])
        config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                 init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
        with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            model = peft.get_peft_model(base, config)
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _backend(folder: Path, adapters: dict[str, str], **kw) -> TransformersBackend:
    return TransformersBackend(
        BackendConfig(backend="transformers", model=str(folder), device="cpu", dtype="float32",
                      allow_download=False, max_wait_ms=50, adapters=adapters, **kw)
    )  # fmt: skip


def _ask(adapter: str | None) -> GenerationRequest:
    return GenerationRequest(
        messages=(Message.user("Which shape is red?"),),
        sampling=SamplingParams(max_tokens=8, min_tokens=8, temperature=0.0),
        adapter=adapter,
    )


async def test_mixed_adapters_share_one_batch_and_match_single_runs(tiny_models, adapters):
    backend = _backend(tiny_models["text"], adapters)
    await backend.start()
    try:
        assert backend.adapters == {"disp", "ref"}
        alone = [(await backend.generate(_ask(a))).text for a in ("disp", "ref", None)]
        batches = backend.batcher.stats.batches
        mixed = await asyncio.gather(*(backend.generate(_ask(a)) for a in ("disp", "ref", None)))
        assert backend.batcher.stats.batches == batches + 1  # one generate call for all three
        assert [r.text for r in mixed] == alone
        assert len(set(alone)) == 3  # each adapter (and the base) answers differently
        with pytest.raises(InvalidRequest, match="no adapter 'judge'"):
            await backend.generate(_ask("judge"))
    finally:
        await backend.close()


async def test_a_bad_adapter_folder_fails_at_start(tiny_models, tmp_path: Path):
    backend = _backend(tiny_models["text"], {"disp": str(tmp_path / "none")})
    with pytest.raises(ModelLoadError, match="adapter 'disp'"):
        await backend.start()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    backend = _backend(tiny_models["text"], {"disp": str(broken)})
    with pytest.raises(ModelLoadError, match="does not load"):
        await backend.start()
    await backend.close()
