"""VLLMBackend on a fake engine that behaves like vLLM's v1 ``AsyncLLM`` (no vLLM, no GPU).

The fake does NOT abort requests on its own when its iterator is cancelled or closed (the real
``AsyncLLM.generate`` does): every abort observed here was sent by the backend.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from models.config import BackendConfig
from models.errors import ModelError, ModelLoadError, ModelRejected, ModelUnavailable
from models.factory import build_backend
from models.types import (
    GenerationRequest,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    TextPart,
    Usage,
)
from models.vllm_backend import ChatTemplatePrompt, VLLMApi, VLLMBackend

IMAGE_TOKEN = 9
TOKENS_PER_IMAGE = 4


# --------------------------------------------------------------------------- vLLM look-alikes
class FakeOutputKind(enum.Enum):  # vllm.sampling_params.RequestOutputKind
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class FakeStructuredOutputsParams:  # vllm.sampling_params.StructuredOutputsParams
    json: Any = None


@dataclass
class FakeSamplingParams:  # the vllm.SamplingParams fields the backend may set
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    min_tokens: int = 0
    output_kind: FakeOutputKind = FakeOutputKind.CUMULATIVE
    structured_outputs: FakeStructuredOutputsParams | None = None


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt_token_ids: list[int] | None
    outputs: list[FakeCompletionOutput]
    finished: bool


class FakeTokenizer:
    """A ChatML-like template: images become ``<image>`` where their part stands."""

    chat_template = "chatml-ish"

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, tokenize: bool, add_generation_prompt: bool
    ) -> str:
        assert tokenize is False and add_generation_prompt is True
        self.calls.append(messages)
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                content = "".join("<image>" if p["type"] == "image" else p["text"] for p in content)
            out.append(f"<|{m['role']}|>{content}<|end|>")
        return "".join(out) + "<|assistant|>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [100 + i for i, _ in enumerate(text.split())]


class EngineDeadError(RuntimeError):
    """Named like vllm.v1.engine.exceptions.EngineDeadError."""


@dataclass
class FakeEngine:
    answer: str = "a red square and a blue circle"
    token_delay_s: float = 0.0
    fail_with: Exception | None = None
    dead: bool = False
    calls: list[tuple[Any, FakeSamplingParams, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    shutdowns: int = 0
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)

    def __post_init__(self) -> None:
        self.model_config = SimpleNamespace(
            max_model_len=2048,
            hf_config=SimpleNamespace(image_token_id=IMAGE_TOKEN),
            get_diff_sampling_param=lambda: {"temperature": 0.7, "top_p": 0.8, "max_tokens": 9},
        )

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    async def generate(
        self, prompt: Any, sampling_params: FakeSamplingParams, request_id: str
    ) -> AsyncIterator[FakeRequestOutput]:
        if request_id in self.running:
            raise ValueError(f"request id {request_id} already running")
        self.calls.append((prompt, sampling_params, request_id))
        if self.fail_with is not None:
            raise self.fail_with
        images = len(prompt.get("multi_modal_data", {}).get("image", []))
        prompt_ids = list(range(len(prompt["prompt"].split()))) + [IMAGE_TOKEN] * (
            images * TOKENS_PER_IMAGE
        )
        words = [w if i == 0 else " " + w for i, w in enumerate(self.answer.split())]
        limit = sampling_params.max_tokens or len(words)
        words = words[:limit]
        kind = sampling_params.output_kind
        self.running.add(request_id)
        text, ids = "", []
        for i, word in enumerate(words):
            await asyncio.sleep(self.token_delay_s)
            text += word
            ids.append(500 + i)
            last = i == len(words) - 1
            finish = (
                ("length" if len(words) < len(self.answer.split()) else "stop") if last else None
            )
            if last:
                self.running.discard(request_id)
            if kind is FakeOutputKind.DELTA:
                out = FakeCompletionOutput(0, word, [500 + i], finish)
            elif kind is FakeOutputKind.FINAL_ONLY and not last:
                continue
            else:
                out = FakeCompletionOutput(0, text, list(ids), finish)
            first = kind is not FakeOutputKind.DELTA or i == 0
            yield FakeRequestOutput(request_id, prompt_ids if first else None, [out], last)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("engine core died")

    def shutdown(self) -> None:
        self.shutdowns += 1


def fake_api(engine_factory: Any = None) -> VLLMApi:
    def create_engine(config: BackendConfig) -> Any:
        if engine_factory is None:
            raise AssertionError("this test injects its engine")
        return engine_factory(config)

    return VLLMApi(
        SamplingParams=FakeSamplingParams,
        RequestOutputKind=FakeOutputKind,
        StructuredOutputsParams=FakeStructuredOutputsParams,
        create_engine=create_engine,
    )


def make_backend(engine: FakeEngine | None = None, **overrides: Any) -> VLLMBackend:
    config = BackendConfig(**{"backend": "vllm", "model": "org/tiny-vlm", **overrides})
    return VLLMBackend(config, engine=engine or FakeEngine(), api=fake_api())


def _request(text: str = "what is red?", images: int = 0, **kwargs: Any) -> GenerationRequest:
    pictures = [ImageInput(Image.new("RGB", (8, 8), (255, i * 40, 0))) for i in range(images)]
    return GenerationRequest(messages=(Message.user(text, pictures),), **kwargs)


# --------------------------------------------------------------------------- generate
async def test_generate_renders_the_chat_template_with_images_first() -> None:
    engine = FakeEngine()
    backend = make_backend(engine)
    request = GenerationRequest(
        messages=(
            Message.text("system", "Be brief."),
            Message.user(
                "Which shapes?", [ImageInput(Image.new("RGB", (8, 8), c)) for c in ("red", "blue")]
            ),
        ),
        sampling=SamplingParams(max_tokens=32, temperature=0.0, stop=("\n",), seed=3, min_tokens=2),
    )
    result = await backend.generate(request)

    assert result.text == "a red square and a blue circle"
    assert result.finish_reason == "stop"
    assert result.model == "org/tiny-vlm"
    assert result.latency_s >= 0
    ((prompt, params, _),) = engine.calls
    assert prompt["prompt"] == (
        "<|system|>Be brief.<|end|><|user|><image><image>Which shapes?<|end|><|assistant|>"
    )
    assert prompt["multi_modal_data"]["image"] == [img.image for img in request.images]
    assert engine.tokenizer.calls[0][0] == {"role": "system", "content": "Be brief."}
    assert params.max_tokens == 32
    assert params.temperature == 0.0
    assert params.top_p == 0.8  # the model's generation-config default, as vllm serve does
    assert params.stop == ["\n"]
    assert (params.seed, params.min_tokens) == (3, 2)
    assert params.output_kind is FakeOutputKind.FINAL_ONLY
    assert params.structured_outputs is None
    prompt_len = len(prompt["prompt"].split()) + 2 * TOKENS_PER_IMAGE
    assert result.usage == Usage(prompt_len, 7, image_tokens=2 * TOKENS_PER_IMAGE)
    assert engine.aborted == []


async def test_unset_temperature_takes_the_model_default() -> None:
    engine = FakeEngine()
    await make_backend(engine).generate(_request())
    params = engine.calls[0][1]
    assert (params.temperature, params.top_p) == (0.7, 0.8)
    assert params.max_tokens == 512  # ours, never the model default
    assert params.stop is None and params.seed is None and params.min_tokens == 0


async def test_text_only_prompt_has_no_multimodal_data() -> None:
    engine = FakeEngine()
    result = await make_backend(engine).generate(_request("hello"))
    prompt = engine.calls[0][0]
    assert "multi_modal_data" not in prompt
    assert engine.tokenizer.calls[0] == [{"role": "user", "content": "hello"}]
    assert result.usage.image_tokens == 0


async def test_json_schema_uses_structured_outputs() -> None:
    schema = {"type": "object", "properties": {"expert": {"type": "string"}}}
    engine = FakeEngine(answer='{"expert": "vision"}')
    backend = make_backend(engine)
    assert backend.supports_json_schema is True
    await backend.generate(_request(json_schema=schema))
    assert engine.calls[0][1].structured_outputs == FakeStructuredOutputsParams(json=schema)

    off_engine = FakeEngine()
    off = make_backend(off_engine, structured_output=False)
    assert off.supports_json_schema is False
    await off.generate(_request(json_schema=schema))
    assert off_engine.calls[0][1].structured_outputs is None


async def test_max_tokens_cut_is_finish_length() -> None:
    result = await make_backend().generate(_request(sampling=SamplingParams(max_tokens=3)))
    assert result.text == "a red square"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


async def test_request_ids_are_unique_even_when_the_caller_reuses_one() -> None:
    engine = FakeEngine(token_delay_s=0.01)
    backend = make_backend(engine)
    results = await asyncio.gather(*(backend.generate(_request(request_id="q1")) for _ in range(3)))
    assert len(results) == 3
    ids = [call[2] for call in engine.calls]
    assert len(set(ids)) == 3 and all(i.startswith("q1-") for i in ids)


# --------------------------------------------------------------------------- streaming
async def test_stream_yields_deltas_and_a_final_usage() -> None:
    engine = FakeEngine()
    deltas = [d async for d in make_backend(engine).stream(_request(images=1))]
    assert "".join(d.text for d in deltas) == engine.answer
    assert len(deltas) == 8
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 7
    assert deltas[-1].usage.image_tokens == TOKENS_PER_IMAGE
    assert engine.calls[0][1].output_kind is FakeOutputKind.DELTA
    assert engine.aborted == []


# --------------------------------------------------------------------------- cancellation
async def test_cancelling_generate_aborts_the_engine_request() -> None:
    engine = FakeEngine(token_delay_s=0.05)
    task = asyncio.create_task(make_backend(engine).generate(_request()))
    for _ in range(200):  # until the engine runs the request
        if engine.running:
            break
        await asyncio.sleep(0.005)
    assert engine.running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request_id = engine.calls[0][2]
    assert engine.aborted == [request_id]
    assert engine.running == set()


async def test_closing_a_stream_early_aborts_the_engine_request() -> None:
    engine = FakeEngine(token_delay_s=0.01)
    stream = make_backend(engine).stream(_request())
    first = await anext(stream)
    assert first.text == "a"
    await stream.aclose()
    assert engine.aborted == [engine.calls[0][2]]
    assert engine.running == set()


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("prompt (length 9000) is longer than the maximum model length"), ModelRejected),
        (EngineDeadError("engine core died"), ModelUnavailable),
        (RuntimeError("CUDA error: device-side assert"), ModelError),
    ],
)
async def test_engine_errors_map_to_the_error_hierarchy(
    error: Exception, expected: type[Exception]
) -> None:
    engine = FakeEngine(fail_with=error)
    with pytest.raises(expected) as info:
        await make_backend(engine).generate(_request())
    assert type(info.value) is expected
    assert str(error) in str(info.value)
    assert engine.aborted == [engine.calls[0][2]]


async def test_missing_vllm_is_a_load_error_naming_the_extra() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    backend = build_backend(BackendConfig(backend="vllm", model="org/m"))  # cheap: no import yet
    assert isinstance(backend, VLLMBackend)
    with pytest.raises(ModelLoadError, match=r"pip install 'proreason\[vllm\]'"):
        await backend.start()
    with pytest.raises(ModelLoadError):  # generate starts lazily and fails the same way
        await backend.generate(_request())


# --------------------------------------------------------------------------- life cycle
async def test_start_builds_the_engine_from_config_and_close_shuts_it_down() -> None:
    built: list[BackendConfig] = []
    engine = FakeEngine()

    def factory(config: BackendConfig) -> FakeEngine:
        built.append(config)
        return engine

    config = BackendConfig(
        backend="vllm", model="org/m", engine_args={"gpu_memory_utilization": 0.4}
    )
    backend = VLLMBackend(config, api=fake_api(factory))
    assert await backend.health() is False  # nothing loaded yet
    await backend.start()
    await backend.start()  # idempotent
    assert built == [config]
    assert backend.context_length == 2048
    assert await backend.health() is True
    await backend.close()
    assert engine.shutdowns == 1
    assert await backend.health() is False


async def test_engine_load_failure_is_a_model_load_error() -> None:
    def factory(config: BackendConfig) -> FakeEngine:
        raise RuntimeError("CUDA out of memory")

    backend = VLLMBackend(BackendConfig(backend="vllm", model="org/m"), api=fake_api(factory))
    with pytest.raises(ModelLoadError, match="CUDA out of memory"):
        await backend.start()


async def test_an_injected_engine_is_not_shut_down_and_context_length_config_wins() -> None:
    engine = FakeEngine()
    backend = make_backend(engine, context_length=1000)
    await backend.start()
    assert backend.context_length == 1000
    await backend.close()
    assert engine.shutdowns == 0


async def test_health_false_when_the_engine_died() -> None:
    engine = FakeEngine()
    backend = make_backend(engine)
    assert await backend.health() is True
    engine.dead = True
    assert await backend.health() is False


async def test_count_tokens_uses_the_tokenizer_once_loaded() -> None:
    text = "one two three four five six seven eight"
    backend = make_backend()
    assert backend.count_tokens(text) == len(text) // 4  # the approximation before start
    await backend.start()
    assert backend.count_tokens(text) == 8  # the fake tokenizer: one token per word


async def test_an_injected_prompt_builder_is_used() -> None:
    engine = FakeEngine()
    seen: list[GenerationRequest] = []

    def builder(request: GenerationRequest) -> dict[str, Any]:
        seen.append(request)
        return {"prompt": "custom prompt"}

    config = BackendConfig(backend="vllm", model="org/m")
    backend = VLLMBackend(config, engine=engine, prompt_builder=builder, api=fake_api())
    request = _request()
    await backend.generate(request)
    assert seen == [request]
    assert engine.calls[0][0] == {"prompt": "custom prompt"}
    assert engine.tokenizer.calls == []


def test_chat_template_prompt_keeps_part_order() -> None:
    image = ImageInput(Image.new("RGB", (4, 4)))
    message = Message(
        role="user", content=(TextPart("before "), ImagePart(image), TextPart(" after"))
    )
    prompt = ChatTemplatePrompt(FakeTokenizer())(GenerationRequest(messages=(message,)))
    assert prompt["prompt"] == "<|user|>before <image> after<|end|><|assistant|>"
    assert prompt["multi_modal_data"] == {"image": [image.image]}
