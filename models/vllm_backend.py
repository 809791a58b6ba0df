"""In-process vLLM (v1 engine ``AsyncLLM``) for GPU hosts: ``pip install 'proreason[vllm]'``.

- ``VLLMBackend(config)`` is cheap; ``await start()`` imports vLLM and builds
  ``AsyncLLM.from_engine_args(AsyncEngineArgs(model=config.model, **config.engine_args))``
  (``generate`` starts it lazily otherwise). vLLM missing -> ``ModelLoadError`` naming the extra.
- Prompts: the model's chat template (``apply_chat_template(..., tokenize=False,
  add_generation_prompt=True)``) renders the messages, with an ``{"type": "image"}`` part where
  each image goes; the images travel as ``multi_modal_data={"image": [PIL images]}`` in the
  prompt dict and vLLM's processor expands the placeholders.
- Concurrent ``generate`` calls are batched by the engine (continuous batching); ``generate`` asks
  for the final output only, ``stream`` for deltas.
- Cancelling the caller (or closing a stream early) aborts the engine request
  (``engine.abort(request_id)``), so no GPU time is spent on answers nobody reads.
- ``json_schema`` -> ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
  (vLLM >= 0.12; the old ``guided_decoding`` spelling was removed).

The constructor takes an optional ``engine`` (anything with ``generate(prompt, sampling_params,
request_id)`` -> async iterator of RequestOutput-like objects, ``abort(request_id)``), a
``prompt_builder`` and the vLLM names (``api``), so tests run the real code path on a fake engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models.base import ModelBackend
from models.config import BackendConfig
from models.errors import (
    ModelError,
    ModelLoadError,
    ModelRejected,
    ModelUnavailable,
    ProReasonError,
)
from models.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    Message,
    StreamDelta,
    TextPart,
    Usage,
    map_finish_reason,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'proreason[vllm]'"

#: model generation-config defaults (vLLM's ``get_diff_sampling_param``) used when a request
#: leaves the value unset, as ``vllm serve`` does
_DEFAULTABLE = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


PromptBuilder = Callable[[GenerationRequest], Any]


@dataclass(frozen=True)
class VLLMApi:
    """The vLLM names this backend uses, resolved lazily (tests pass look-alikes)."""

    SamplingParams: Callable[..., Any]
    #: enum with ``CUMULATIVE``, ``DELTA`` and ``FINAL_ONLY``
    RequestOutputKind: Any
    #: None when the installed vLLM has no ``StructuredOutputsParams`` (then no json_schema)
    StructuredOutputsParams: Callable[..., Any] | None
    #: BackendConfig -> a started ``AsyncLLM``
    create_engine: Callable[[BackendConfig], Any]


def load_vllm_api() -> VLLMApi:
    """Import vLLM (heavy) and return the names we use. Raises ModelLoadError when unavailable."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise ModelLoadError(
            f"the 'vllm' backend needs vLLM on a CUDA host: {INSTALL_HINT} ({exc})"
        ) from exc
    except Exception as exc:  # a broken install (CUDA libraries, version clash) fails oddly
        raise ModelLoadError(f"vLLM is installed but failed to import: {exc!r}") from exc
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        StructuredOutputsParams = None

    def create_engine(config: BackendConfig) -> Any:
        engine_args = dict(config.engine_args)
        if config.context_length is not None:
            engine_args.setdefault("max_model_len", config.context_length)
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=config.model, **engine_args))

    return VLLMApi(SamplingParams, RequestOutputKind, StructuredOutputsParams, create_engine)


def hf_chat_message(message: Message) -> dict[str, Any]:
    """A message for ``apply_chat_template``: string content when text-only, else ordered parts
    with ``{"type": "image"}`` placeholders (the template writes the model's image tokens)."""
    if all(isinstance(p, TextPart) for p in message.content):
        return {"role": message.role, "content": message.text_content}
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


class ChatTemplatePrompt:
    """GenerationRequest -> vLLM prompt dict, rendered with the model's chat template.

    ``template_owner`` is the tokenizer (or, for models whose template lives only on the
    processor, the processor): anything with ``apply_chat_template``.
    """

    def __init__(self, template_owner: Any) -> None:
        self.template_owner = template_owner

    def __call__(self, request: GenerationRequest) -> dict[str, Any]:
        messages = [hf_chat_message(m) for m in request.messages]
        text = self.template_owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):
            raise ModelError(f"chat template returned {type(text).__name__}, expected text")
        prompt: dict[str, Any] = {"prompt": text}
        images = [img.image for img in request.images]
        if images:
            prompt["multi_modal_data"] = {"image": images}
        return prompt


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class VLLMBackend(ModelBackend):
    """vLLM's ``AsyncLLM`` in this process; see the module docstring."""

    backend = "vllm"

    def __init__(
        self,
        config: BackendConfig,
        *,
        engine: Any | None = None,
        tokenizer: Any | None = None,
        prompt_builder: PromptBuilder | None = None,
        api: VLLMApi | None = None,
    ) -> None:
        if config.backend != "vllm":
            raise ValueError(f"VLLMBackend needs backend='vllm', got {config.backend!r}")
        super().__init__(config.model, context_length=config.context_length)
        self.config = config
        self.supports_json_schema = config.structured_output
        self._api = api
        self._engine = engine
        self._owns_engine = engine is None
        self._tokenizer = tokenizer
        self._prompt_builder = prompt_builder
        self._sampling_defaults: dict[str, Any] = {}
        self._image_token_id: int | None = None
        self._started = False
        self._start_lock = asyncio.Lock()

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Import vLLM and build the engine (unless one was injected); read the model's facts."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._api is None:
                self._api = load_vllm_api()
            if self._engine is None:
                log.info(
                    "loading %s with vLLM (engine args: %s)", self.model, self.config.engine_args
                )
                try:
                    # Built on the event loop like vLLM's own server does; the engine core
                    # process loads the weights.
                    self._engine = self._api.create_engine(self.config)
                except ProReasonError:
                    raise
                except Exception as exc:
                    raise ModelLoadError(f"vLLM could not load {self.model!r}: {exc}") from exc
            self._read_model_config(getattr(self._engine, "model_config", None))
            if self._api.StructuredOutputsParams is None:
                self.supports_json_schema = False
            if self._prompt_builder is None:
                self._prompt_builder = ChatTemplatePrompt(await self._template_owner())
            self._started = True

    def _read_model_config(self, model_config: Any) -> None:
        if model_config is None:
            return
        if self.context_length is None:
            max_len = getattr(model_config, "max_model_len", None)
            if isinstance(max_len, int) and max_len > 0:
                self.context_length = max_len
        diff = getattr(model_config, "get_diff_sampling_param", None)
        if callable(diff):
            try:
                defaults = dict(diff() or {})
            except Exception as exc:  # optional nicety; never fatal
                log.debug("no generation-config defaults for %s: %r", self.model, exc)
                defaults = {}
            self._sampling_defaults = {k: v for k, v in defaults.items() if k in _DEFAULTABLE}
        hf_config = getattr(model_config, "hf_config", None)
        for name in ("image_token_id", "image_token_index"):
            token_id = getattr(hf_config, name, None)
            if isinstance(token_id, int):
                self._image_token_id = token_id
                break

    async def _template_owner(self) -> Any:
        if self._tokenizer is None:
            get_tokenizer = getattr(self._engine, "get_tokenizer", None)
            if get_tokenizer is None:
                raise ModelLoadError(f"the vLLM engine for {self.model!r} exposes no tokenizer")
            self._tokenizer = await _maybe_await(get_tokenizer())
        if getattr(self._tokenizer, "chat_template", None) is not None:
            return self._tokenizer
        # Some multimodal models keep their chat template on the processor only.
        try:
            from transformers import AutoProcessor

            trust = bool(self.config.engine_args.get("trust_remote_code", False))
            processor = AutoProcessor.from_pretrained(self.model, trust_remote_code=trust)
        except Exception as exc:
            log.warning("%s: no processor chat template (%r); using the tokenizer's", self, exc)
            return self._tokenizer
        return processor if getattr(processor, "chat_template", None) else self._tokenizer

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        self._started = False
        if engine is not None and self._owns_engine:
            shutdown = getattr(engine, "shutdown", None)
            if shutdown is not None:
                await _maybe_await(shutdown())

    async def health(self) -> bool:
        engine = self._engine
        if engine is None or getattr(engine, "errored", False):
            return False
        check = getattr(engine, "check_health", None)
        if check is None:
            return True
        try:
            await _maybe_await(check())
        except Exception as exc:
            log.warning("%r: engine health check failed: %r", self, exc)
            return False
        return True

    def count_tokens(self, text: str) -> int:
        encode = getattr(self._tokenizer, "encode", None)
        if encode is None:
            return super().count_tokens(text)
        return max(1, len(encode(text, add_special_tokens=False)))

    # ------------------------------------------------------------------ requests
    def _sampling_params(self, request: GenerationRequest, output_kind: Any) -> Any:
        if self._api is None:
            raise RuntimeError("start() has not run")
        s = request.sampling
        kwargs: dict[str, Any] = dict(self._sampling_defaults)
        kwargs["max_tokens"] = s.max_tokens
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        if s.top_p is not None:
            kwargs["top_p"] = s.top_p
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.min_tokens is not None:
            kwargs["min_tokens"] = s.min_tokens
        if request.json_schema is not None and self.supports_json_schema:
            structured = self._api.StructuredOutputsParams
            if structured is not None:
                kwargs["structured_outputs"] = structured(json=request.json_schema)
        kwargs["output_kind"] = output_kind
        return self._api.SamplingParams(**kwargs)

    def _map_error(self, exc: Exception) -> ProReasonError:
        if isinstance(exc, ProReasonError):
            return exc
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "EngineDeadError" in names:
            return ModelUnavailable(f"the vLLM engine for {self.model!r} is dead: {exc!r}")
        # vLLM's VLLMValidationError is a ValueError (prompt too long, too many images, ...);
        # a chat template's raise_exception() is a jinja2 TemplateError (e.g. role order).
        if isinstance(exc, ValueError) or "TemplateError" in names:
            return ModelRejected(str(exc) or type(exc).__name__, status_code=400)
        return ModelError(f"vLLM failed on {self.model!r}: {type(exc).__name__}: {exc}")

    async def _outputs(
        self, request: GenerationRequest, output_kind_name: str
    ) -> AsyncIterator[Any]:
        """The engine's RequestOutputs for ``request``; aborts the engine request unless it
        finished (caller cancelled, stream closed early, or an error)."""
        await self.start()
        if self._api is None or self._engine is None or self._prompt_builder is None:
            raise ModelUnavailable(f"the vLLM backend for {self.model!r} is closed")
        engine = self._engine
        try:
            prompt = self._prompt_builder(request)
            params = self._sampling_params(
                request, getattr(self._api.RequestOutputKind, output_kind_name)
            )
        except Exception as exc:
            raise self._map_error(exc) from exc
        # vLLM needs ids unique among running requests; a caller's id may be reused across rounds.
        request_id = f"{request.request_id or 'proreason'}-{uuid.uuid4().hex[:12]}"
        finished = False
        outputs = engine.generate(prompt, params, request_id)
        try:
            async for output in outputs:
                finished = bool(getattr(output, "finished", False))
                yield output
        except Exception as exc:
            raise self._map_error(exc) from exc
        finally:
            aclose = getattr(outputs, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if not finished:
                try:
                    await engine.abort(request_id)
                    log.debug("aborted vLLM request %s", request_id)
                except Exception as exc:
                    log.warning("aborting vLLM request %s failed: %r", request_id, exc)

    def _usage(self, prompt_token_ids: Sequence[int] | None, completion_tokens: int) -> Usage:
        prompt_ids = list(prompt_token_ids or ())
        image_tokens = None
        if self._image_token_id is not None:
            image_tokens = prompt_ids.count(self._image_token_id)
        return Usage(len(prompt_ids), completion_tokens, image_tokens)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        last: Any = None
        async with contextlib.aclosing(self._outputs(request, "FINAL_ONLY")) as outputs:
            async for output in outputs:
                last = output
        if last is None or not last.outputs:
            raise ModelError(f"vLLM returned no output for {self.model!r}")
        completion = last.outputs[0]
        return GenerationResult(
            text=completion.text,
            finish_reason=map_finish_reason(completion.finish_reason),
            usage=self._usage(last.prompt_token_ids, len(completion.token_ids)),
            latency_s=time.perf_counter() - started,
            model=self.model,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        prompt_ids: Sequence[int] | None = None
        completion_tokens = 0
        finish: FinishReason | None = None
        async with contextlib.aclosing(self._outputs(request, "DELTA")) as outputs:
            async for output in outputs:
                if output.prompt_token_ids:
                    prompt_ids = output.prompt_token_ids
                for completion in output.outputs[:1]:
                    completion_tokens += len(completion.token_ids)
                    if completion.text:
                        yield StreamDelta(text=completion.text)
                    if completion.finish_reason is not None:
                        finish = map_finish_reason(completion.finish_reason)
        yield StreamDelta(
            finish_reason=finish or "stop", usage=self._usage(prompt_ids, completion_tokens)
        )
