"""In-process vLLM (v1 engine ``AsyncLLM``) for GPU hosts: ``pip install 'proreason[vllm]'``.

- ``VLLMBackend(config)`` is cheap; ``await start()`` imports vLLM and builds
  ``AsyncLLM.from_engine_args(AsyncEngineArgs(model=config.model, **config.engine_args))``
  (``generate`` starts it lazily otherwise). vLLM missing -> ``ModelLoadError`` naming the extra.
- Prompts go through vLLM's chat renderer, as ``LLM.chat`` does (vLLM 0.33:
  ``entrypoints/common/offline.py`` ``_preprocess_chat`` -> ``renderers/base.py``
  ``render_chat_async``): OpenAI-style messages whose images are ``{"type": "image_pil",
  "image_pil": <PIL>, "uuid": <sha256>}`` parts (``renderers/chat_utils/types.py``
  ``CustomChatCompletionContentPILImageParam``), the model's chat template with
  ``add_generation_prompt=True`` and the chat path's ``add_special_tokens=False``. The rendered
  ``EngineInput`` goes to ``AsyncLLM.generate``; the raw ``{"prompt": str, "multi_modal_data"}``
  input is deprecated in 0.33 and tokenized with ``add_special_tokens=True`` (a double BOS).
  The image's sha256 is its media id (``multi_modal_uuids``): vLLM skips re-processing an image
  it has seen, which every perception round of a question repeats.
  The renderer tokenizes the rendered prompt with added tokens parsed, so the model's special /
  control tokens in message text are broken first (``models.special_tokens``).
  Engines without a renderer (older vLLM) get the legacy ``ChatTemplatePrompt`` (template text +
  ``multi_modal_data`` + ``multi_modal_uuids``).
- ``GenerationRequest.session_id`` (one per question) is passed as ``generate(session_id=...)``
  when the engine takes it (vLLM 0.33).
- Concurrent ``generate`` calls are batched by the engine (continuous batching); ``generate`` asks
  for the final output only, ``stream`` for deltas.
- Cancelling the caller (or closing a stream early) aborts the engine request
  (``engine.abort(request_id)``), so no GPU time is spent on answers nobody reads.
- ``json_schema`` -> ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
  (vLLM >= 0.12; the old ``guided_decoding`` spelling was removed).
- Errors (vLLM 0.33 ``vllm/exceptions.py``, ``vllm/v1/engine/exceptions.py``), matched by class
  name along the MRO so no vLLM import is needed: ``VLLMValidationError`` & co.
  (``VLLMClientError``, not ``ValueError``) -> ``ModelRejected``, ``ContextLengthExceeded`` when
  the prompt is too long; ``GracefulHTTPError`` (``QueueOverflowError``, ``MaxQueuedTokensError``)
  and ``RetryableRequestError`` -> ``ModelOverloaded``; ``EngineDeadError`` ->
  ``ModelUnavailable``. A ``finish_reason`` of ``error`` or ``abort`` raises
  (``models.types.map_finish_reason``): partial text of a failed generation is never an answer.

The constructor takes an optional ``engine`` (anything with ``generate(prompt, sampling_params,
request_id)`` -> async iterator of RequestOutput-like objects, ``abort(request_id)``, and
optionally a ``renderer``), a ``prompt_builder`` (sync or async) and the vLLM names (``api``), so
tests run the real code path on a fake engine.
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
    ContextLengthExceeded,
    ModelError,
    ModelLoadError,
    ModelOverloaded,
    ModelRejected,
    ModelUnavailable,
    ProReasonError,
    is_context_length_error,
)
from models.special_tokens import SpecialTokenGuard
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

#: vLLM client-error class names -> the status vLLM's own server gives them
#: (``entrypoints/serve/exception_handling/error_response.py`` ``create_error_response``)
_CLIENT_ERROR_STATUS = {"VLLMNotFoundError": 404, "VLLMUnprocessableEntityError": 422}


#: GenerationRequest -> what ``engine.generate`` takes (or an awaitable of it)
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
    #: ``vllm.renderers.ChatParams``; None: this vLLM has no renderer (legacy prompt dicts)
    ChatParams: Callable[..., Any] | None = None
    #: ``vllm.utils.mistral.is_mistral_tokenizer`` (Mistral templates render to token ids)
    is_mistral_tokenizer: Callable[[Any], bool] | None = None
    #: ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``
    LoRARequest: Callable[..., Any] | None = None


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
    try:
        from vllm.renderers import ChatParams
    except ImportError:  # vLLM before the renderer refactor
        ChatParams = None
    try:
        from vllm.utils.mistral import is_mistral_tokenizer
    except ImportError:
        is_mistral_tokenizer = None
    try:
        from vllm.lora.request import LoRARequest
    except ImportError:
        LoRARequest = None

    def create_engine(config: BackendConfig) -> Any:
        engine_args = dict(config.engine_args)
        if config.context_length is not None:
            engine_args.setdefault("max_model_len", config.context_length)
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=config.model, **engine_args))

    return VLLMApi(
        SamplingParams,
        RequestOutputKind,
        StructuredOutputsParams,
        create_engine,
        ChatParams=ChatParams,
        is_mistral_tokenizer=is_mistral_tokenizer,
        LoRARequest=LoRARequest,
    )


def vllm_chat_message(message: Message) -> dict[str, Any]:
    """A message for vLLM's chat renderer: string content when text-only, else ordered parts,
    each image a PIL part carrying its sha256 as the media id (``uuid``)."""
    if all(isinstance(p, TextPart) for p in message.content):
        return {"role": message.role, "content": message.text_content}
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append(
                {"type": "image_pil", "image_pil": part.image.image, "uuid": part.image.sha256}
            )
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


class RendererPrompt:
    """GenerationRequest -> vLLM ``EngineInput`` through the engine's chat renderer.

    The same call ``LLM.chat`` makes (vLLM 0.33 ``entrypoints/common/offline.py``
    ``_preprocess_chat``): ``ChatParams`` with ``add_generation_prompt=True`` (``tokenize`` only
    for Mistral tokenizers / prompt embeds), the renderer's ``default_chat_tok_params`` with
    ``add_special_tokens=False`` (the template writes BOS; vLLM #55197), then
    ``renderer.render_chat_async([conversation], chat_params, tok_params)``, which applies the
    template, tokenizes, checks the length against ``max_model_len`` (``VLLMValidationError``)
    and runs the multimodal processor (cached by media id).
    """

    def __init__(self, renderer: Any, chat_params: Any, tok_params: Any) -> None:
        self.renderer = renderer
        self.chat_params = chat_params
        self.tok_params = tok_params
        # the renderer tokenizes the rendered text with added tokens parsed: user text must not
        # carry the model's control tokens (``<|im_start|>``, ``<|image_pad|>`` ...)
        self.guard = _guard_for(getattr(renderer, "tokenizer", None))

    @classmethod
    def for_engine(cls, engine: Any, api: VLLMApi) -> RendererPrompt | None:
        """The renderer path for ``engine``, or None when it (or this vLLM) has none."""
        renderer = getattr(engine, "renderer", None)
        if api.ChatParams is None or not hasattr(renderer, "render_chat_async"):
            return None
        tokenize = False
        if api.is_mistral_tokenizer is not None:
            tokenize = bool(api.is_mistral_tokenizer(getattr(renderer, "tokenizer", None)))
        model_config = getattr(engine, "model_config", None)
        tokenize = tokenize or bool(getattr(model_config, "enable_prompt_embeds", False))
        chat_params = api.ChatParams(
            chat_template_kwargs={
                "add_generation_prompt": True,
                "continue_final_message": False,
                "tokenize": tokenize,
            }
        )
        tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        return cls(renderer, chat_params, tok_params)

    async def __call__(self, request: GenerationRequest) -> Any:
        conversation = [vllm_chat_message(m) for m in self.guard.messages(request.messages)]
        _, engine_inputs = await self.renderer.render_chat_async(
            [conversation], self.chat_params, self.tok_params
        )
        (engine_input,) = engine_inputs
        return engine_input


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
    """GenerationRequest -> legacy vLLM prompt dict, rendered with the model's chat template.

    For engines without a renderer (vLLM before 0.2x); deprecated in 0.33, where
    ``RendererPrompt`` is the supported path. ``template_owner`` is the tokenizer (or, for
    models whose template lives only on the processor, the processor): anything with
    ``apply_chat_template``.
    """

    def __init__(self, template_owner: Any) -> None:
        self.template_owner = template_owner
        tokenizer = getattr(template_owner, "tokenizer", None) or template_owner
        self.guard = _guard_for(tokenizer, template_owner)

    def __call__(self, request: GenerationRequest) -> dict[str, Any]:
        messages = [hf_chat_message(m) for m in self.guard.messages(request.messages)]
        text = self.template_owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):
            raise ModelError(f"chat template returned {type(text).__name__}, expected text")
        prompt: dict[str, Any] = {"prompt": text}
        images = request.images
        if images:
            prompt["multi_modal_data"] = {"image": [img.image for img in images]}
            prompt["multi_modal_uuids"] = {"image": [img.sha256 for img in images]}
        return prompt


def _guard_for(tokenizer: Any, processor: Any | None = None) -> SpecialTokenGuard:
    """The special-token guard for ``tokenizer``; an empty one if it cannot tell its tokens."""
    if tokenizer is None:
        return SpecialTokenGuard(())
    try:
        return SpecialTokenGuard.for_tokenizer(tokenizer, processor)
    except Exception as exc:  # an exotic tokenizer (Mistral's) must not stop the backend
        log.warning("no special-token guard for %r: %r", tokenizer, exc)
        return SpecialTokenGuard(())


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
        self.adapters = frozenset(config.adapters)
        #: adapter name -> LoRARequest, built at start (ids from 1, in config order)
        self._lora: dict[str, Any] = {}
        self._api = api
        self._engine = engine
        self._owns_engine = engine is None
        self._tokenizer = tokenizer
        self._prompt_builder = prompt_builder
        self._sampling_defaults: dict[str, Any] = {}
        self._image_token_id: int | None = None
        self._takes_session_id = False
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
            self._takes_session_id = _accepts_keyword(self._engine.generate, "session_id")
            self._load_adapters()
            if self._prompt_builder is None:
                renderer_prompt = RendererPrompt.for_engine(self._engine, self._api)
                if renderer_prompt is not None:
                    self._prompt_builder = renderer_prompt
                    await self._load_tokenizer()  # for count_tokens only; never fatal
                else:
                    self._prompt_builder = ChatTemplatePrompt(await self._template_owner())
            self._started = True

    def _load_adapters(self) -> None:
        """One LoRARequest per configured adapter; a bad folder fails the start, not a call."""
        if not self.config.adapters:
            return
        self.config.check_adapter_paths()
        if self._api is None or self._api.LoRARequest is None:
            raise ModelLoadError("this vLLM has no LoRARequest: adapters are not supported")
        if not self.config.engine_args.get("enable_lora") and self._owns_engine:
            raise ModelLoadError(
                f"{self.model!r}: adapters need engine_args: {{enable_lora: true}} "
                "(and max_loras >= the adapters used at once)"
            )
        self._lora = {
            name: self._api.LoRARequest(name, i, str(path))
            for i, (name, path) in enumerate(self.config.adapters.items(), start=1)
        }

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

    async def _load_tokenizer(self) -> None:
        if self._tokenizer is not None:
            return
        get_tokenizer = getattr(self._engine, "get_tokenizer", None)
        if get_tokenizer is None:
            return
        try:
            self._tokenizer = await _maybe_await(get_tokenizer())
        except Exception as exc:  # e.g. skip_tokenizer_init: count_tokens approximates
            log.debug("%r: no tokenizer (%r)", self, exc)

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
        """vLLM's exceptions -> ours, by class name along the MRO (vLLM 0.33:
        ``vllm/exceptions.py``, ``vllm/v1/engine/exceptions.py``; the statuses its own server
        gives them: ``entrypoints/serve/exception_handling/error_response.py``)."""
        if isinstance(exc, ProReasonError):
            return exc
        names = {cls.__name__ for cls in type(exc).__mro__}
        message = str(exc) or type(exc).__name__
        if "EngineDeadError" in names:
            return ModelUnavailable(f"the vLLM engine for {self.model!r} is dead: {exc!r}")
        # Admission control (QueueOverflowError, MaxQueuedTokensError: 503) and a paused engine
        # (RetryableRequestError, a GenerationError with status 503): busy, retry later.
        if "GracefulHTTPError" in names or "RetryableRequestError" in names:
            status = _status_of(exc, default=503)
            if status in (429, 503):
                return ModelOverloaded(f"the vLLM engine for {self.model!r} is busy: {message}")
            if status >= 500:
                return ModelUnavailable(f"vLLM could not take the request: {message}")
            return ModelRejected(message, status_code=status)
        if "GenerationError" in names:  # finish_reason "error" surfaced as an exception
            return ModelError(f"vLLM failed on {self.model!r} while generating: {message}")
        # VLLMValidationError & co. are VLLMClientError, not ValueError, in 0.33 (prompt too
        # long, too many images, bad sampling values); vLLM still raises plain ValueError in
        # places, and a chat template's raise_exception() is a jinja2 TemplateError.
        if "VLLMClientError" in names or isinstance(exc, ValueError) or "TemplateError" in names:
            if is_context_length_error(message, getattr(exc, "parameter", None)):
                return ContextLengthExceeded(message, status_code=400)
            status = next((s for n, s in _CLIENT_ERROR_STATUS.items() if n in names), 400)
            return ModelRejected(message, status_code=status)
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
            prompt = await _maybe_await(self._prompt_builder(request))
            params = self._sampling_params(
                request, getattr(self._api.RequestOutputKind, output_kind_name)
            )
        except Exception as exc:
            raise self._map_error(exc) from exc
        # vLLM needs ids unique among running requests; a caller's id may be reused across rounds.
        request_id = f"{request.request_id or 'proreason'}-{uuid.uuid4().hex[:12]}"
        finished = False
        extra: dict[str, Any] = {}
        if request.session_id and self._takes_session_id:
            extra["session_id"] = request.session_id
        if request.adapter is not None:
            if request.adapter not in self._lora:
                raise ModelRejected(f"{self.model!r} serves no adapter {request.adapter!r}")
            extra["lora_request"] = self._lora[request.adapter]
        outputs = engine.generate(prompt, params, request_id, **extra)
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

    def _usage(
        self,
        prompt_token_ids: Sequence[int] | None,
        completion_tokens: int,
        cached_tokens: int | None = None,
    ) -> Usage:
        prompt_ids = list(prompt_token_ids or ())
        image_tokens = None
        if self._image_token_id is not None:
            image_tokens = prompt_ids.count(self._image_token_id)
        return Usage(len(prompt_ids), completion_tokens, image_tokens, cached_tokens)

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
            finish_reason=map_finish_reason(completion.finish_reason, model=self._who),
            usage=self._usage(
                last.prompt_token_ids, len(completion.token_ids), _cached_tokens(last)
            ),
            latency_s=time.perf_counter() - started,
            model=self.model,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        prompt_ids: Sequence[int] | None = None
        completion_tokens = 0
        cached: int | None = None
        finish: FinishReason | None = None
        async with contextlib.aclosing(self._outputs(request, "DELTA")) as outputs:
            async for output in outputs:
                if output.prompt_token_ids:
                    prompt_ids = output.prompt_token_ids
                if output.finished:
                    cached = _cached_tokens(output)
                for completion in output.outputs[:1]:
                    completion_tokens += len(completion.token_ids)
                    # the reason first: the text of a failed generation is not yielded
                    if completion.finish_reason is not None:
                        finish = map_finish_reason(completion.finish_reason, model=self._who)
                    if completion.text:
                        yield StreamDelta(text=completion.text)
        yield StreamDelta(
            finish_reason=finish or "stop",
            usage=self._usage(prompt_ids, completion_tokens, cached),
        )

    @property
    def _who(self) -> str:
        return f"vLLM ({self.model})"


def _accepts_keyword(func: Any, name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _status_of(exc: BaseException, default: int) -> int:
    """The HTTP status a vLLM exception carries (``http_status`` / ``status_code``)."""
    for name in ("http_status", "status_code"):
        value = getattr(exc, name, None)
        try:
            if value is not None:
                return int(value)
        except (TypeError, ValueError):
            continue
    return default


def _cached_tokens(output: Any) -> int | None:
    """``RequestOutput.num_cached_tokens`` (prefix-cache hits), None when not reported."""
    value = getattr(output, "num_cached_tokens", None)
    return value if isinstance(value, int) else None
