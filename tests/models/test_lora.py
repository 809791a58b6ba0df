"""LoRA adapters per role: BackendConfig.adapters validated at start-up, GenerationRequest.adapter
to each backend (in-process vLLM: a LoRARequest per call on the injected fake engine; HTTP: the
adapter's served model name), and agent.adapters checked against what the backends serve."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents import AgentConfig, ModelSet, Question, Reasoner
from models.config import BackendConfig
from models.errors import ModelLoadError, ModelRejected
from models.openai_backend import OpenAIBackend
from models.types import ImageInput
from models.vllm_backend import VLLMBackend
from tests.fakes.models import FakeModel
from tests.models.test_vllm_backend import FakeEngine, _request, fake_api


@dataclass(frozen=True)
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class LoRAEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.loras: list[Any] = []

    async def generate(self, prompt, sampling_params, request_id, *, session_id=None,
                       lora_request=None):  # fmt: skip
        self.loras.append(lora_request)
        async for output in super().generate(
            prompt, sampling_params, request_id, session_id=session_id
        ):
            yield output


def adapter_dir(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    return folder


def vllm(engine: FakeEngine, adapters: dict[str, str], **args: Any) -> VLLMBackend:
    api = dataclasses.replace(fake_api(), LoRARequest=FakeLoRARequest)
    config = BackendConfig(
        backend="vllm", model="org/text", adapters=adapters,
        engine_args={"enable_lora": True, **args},
    )  # fmt: skip
    return VLLMBackend(config, engine=engine, api=api)


async def test_vllm_sends_a_lora_request_per_call(tmp_path: Path) -> None:
    disp, ref = adapter_dir(tmp_path, "disp"), adapter_dir(tmp_path, "ref")
    engine = LoRAEngine()
    backend = vllm(engine, {"disp": str(disp), "ref": str(ref)})
    await backend.start()
    assert backend.adapters == {"disp", "ref"}
    await backend.generate(_request(adapter="ref"))
    await backend.generate(_request())
    await backend.generate(_request(adapter="disp"))
    assert engine.loras == [FakeLoRARequest("ref", 2, str(ref)), None,
                            FakeLoRARequest("disp", 1, str(disp))]  # fmt: skip
    with pytest.raises(ModelRejected, match="no adapter 'nope'"):
        await backend.generate(_request(adapter="nope"))


async def test_a_bad_adapter_path_fails_at_start_up(tmp_path: Path) -> None:
    backend = vllm(LoRAEngine(), {"disp": str(tmp_path / "missing")})
    with pytest.raises(ModelLoadError, match=r"adapter 'disp'.*no adapter_config\.json"):
        await backend.start()
    with pytest.raises(ValueError, match="adapter name"):
        BackendConfig(backend="vllm", model="m", adapters={"bad name": "x"})


def test_openai_addresses_an_adapter_by_its_served_name() -> None:
    backend = OpenAIBackend(
        BackendConfig(
            backend="openai", model="Qwen/Qwen2.5-1.5B-Instruct", adapters={"disp": "", "ref": ""}
        )
    )
    assert backend.adapters == {"disp", "ref"}
    assert backend._body(_request(adapter="disp"))["model"] == "disp"
    assert backend._body(_request())["model"] == "Qwen/Qwen2.5-1.5B-Instruct"


async def test_roles_answer_with_their_adapters_and_unknown_ones_fail_at_start_up(
    shapes_image,
) -> None:
    image = ImageInput(shapes_image)
    vision, text = FakeModel("lvlm"), FakeModel("llm")
    text.adapters = frozenset({"disp", "ref"})
    config = AgentConfig(adapters={"dispatcher": "disp", "referee": "ref"})
    reasoner = Reasoner(ModelSet(vision=vision, text=text), config)
    await reasoner.run(Question("Where is the square?", (image,)))
    adapters = {c.role: c.request.adapter for c in text.calls + vision.calls}
    assert adapters == {"dispatcher": "disp", "referee": "ref", "summarizer": None,
                        "vision": None}  # fmt: skip
    with pytest.raises(ModelLoadError, match="no backend serves 'judge' \\(for referee\\)"):
        Reasoner(ModelSet(vision=vision, text=text), AgentConfig(adapters={"referee": "judge"}))


def test_the_vllm_lora_profile_names_adapters_its_text_server_serves() -> None:
    from app.settings import load_settings
    from models.factory import build_backend

    settings = load_settings("vllm-lora")
    text = build_backend(settings.models.text)
    vision = build_backend(settings.models.vision)
    reasoner = Reasoner(ModelSet(vision=vision, text=text), settings.agent)
    assert reasoner.config.adapters == {"dispatcher": "disp", "referee": "ref"}
    assert text.adapters == {"disp", "ref"} and vision.adapters == frozenset()
