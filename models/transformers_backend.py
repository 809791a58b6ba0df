"""In-process Hugging Face ``transformers`` backend with dynamic micro-batching.

Life cycle
    ``TransformersBackend(config)`` is cheap (no torch import). ``await start()`` loads the model
    in the backend's single worker thread (the event loop stays free); ``generate`` / ``stream``
    call it lazily, so start-up may skip it. A load failure raises ``ModelLoadError`` with one
    clear line and is remembered (later calls raise it again without retrying a slow download).

Which model class
    Decided from ``AutoConfig``: a config with a ``vision_config`` loads as
    ``AutoModelForImageTextToText`` + ``AutoProcessor`` (LVLM), anything else as
    ``AutoModelForCausalLM`` + ``AutoTokenizer`` (text-only; requests with images are rejected).
    A cached model is loaded with ``local_files_only=True`` first; the hub is asked only when that
    fails and ``allow_download`` is true.

Batching
    ``generate`` submits to a :class:`~models.batcher.MicroBatcher`: concurrent requests are
    collected (up to ``max_batch_size`` or ``max_wait_ms``) and run as ONE left-padded
    ``model.generate`` call in the worker thread, one batch at a time. A batch only mixes requests
    that generate alike: same "has images", temperature, top_p, seed and min_tokens. ``max_tokens``
    may differ: the batch generates up to the largest and each result is cut to its own limit
    (greedy outputs are identical to single runs; a short request may wait for a long one).
    Seeds: the global torch RNG is seeded once per batch, so a seeded sampled answer is reproducible
    for the same batch composition only; use ``max_batch_size: 1`` for strict per-request seeds.
    Stop strings are applied after generation (the text is cut at the first stop string).
    ``json_schema`` is not enforced (``supports_json_schema = False``); callers parse tolerantly.

LoRA adapters
    ``BackendConfig.adapters`` (name -> PEFT adapter folder) are loaded once, at start, onto the
    model (``PeftModel``). A request picks one with ``GenerationRequest.adapter`` (None: the base
    model). Requests for different adapters share a micro-batch: PEFT's mixed-adapter batching
    (``generate(adapter_names=[...])``, ``"__base__"`` for the base model) runs each row through
    its own adapter. A missing folder or an unknown request adapter is a clear error.

Image cache
    Image preprocessing (resize + normalise into ``pixel_values``) is cached per
    ``ImageInput.sha256`` (LRU, ``image_cache_size`` entries): every perception round of a question
    reuses the same image. The cached path assembles the batch from per-image processor outputs; it
    is checked once against the processor's own output on the first image batch and switched off
    (logged) if they differ for this processor.

Streaming
    ``stream`` runs ONE request (it bypasses the batcher, but shares its worker thread, so it waits
    for the running batch) with a ``transformers`` ``AsyncTextIteratorStreamer``; closing the
    stream stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from models.base import ModelBackend
from models.batcher import BatcherStalled, MicroBatcher
from models.config import BackendConfig
from models.errors import InvalidRequest, ModelLoadError, ModelUnavailable
from models.special_tokens import SpecialTokenGuard
from models.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    StreamDelta,
    Usage,
)

logger = logging.getLogger(__name__)

_HF_EXTRA = "pip install 'proreason[hf]'"
#: temperatures below this are greedy (vLLM's ``_SAMPLING_EPS``)
_SAMPLING_EPS = 1e-5
#: processor output keys that belong to the text, not to an image
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})


#: Loading is not thread-safe in transformers (lazy imports; concurrent from_pretrained calls in
#: two threads were seen to break weight tying), so backends load one at a time in a process.
_LOAD_LOCK = threading.Lock()


def _unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """The hub's host if a TCP connection to it cannot be opened quickly, else None."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return host
    return None


def _import_hf() -> tuple[Any, SimpleNamespace]:
    """(torch, a namespace with the transformers classes used here); call under ``_LOAD_LOCK``."""
    try:
        import torch
        from transformers import (
            AsyncTextIteratorStreamer,
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
            StoppingCriteriaList,
        )
    except ImportError as exc:
        raise ModelLoadError(
            f"the transformers backend needs torch and transformers ({exc.name or exc} is "
            f"missing): {_HF_EXTRA}"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars; hub download bars stay
    hf = SimpleNamespace(
        AsyncTextIteratorStreamer=AsyncTextIteratorStreamer,
        AutoConfig=AutoConfig,
        AutoModelForCausalLM=AutoModelForCausalLM,
        AutoModelForImageTextToText=AutoModelForImageTextToText,
        AutoProcessor=AutoProcessor,
        AutoTokenizer=AutoTokenizer,
        StoppingCriteriaList=StoppingCriteriaList,
    )
    return torch, hf


@dataclass
class _Loaded:
    """Everything the worker thread needs to run the model."""

    torch: Any
    hf: SimpleNamespace
    model: Any
    processor: Any | None  # LVLM processor; None for a text-only LM
    tokenizer: Any
    device: Any
    dtype: Any
    eos_ids: frozenset[int]
    pad_id: int
    image_token: str | None
    image_token_id: int | None
    #: a private copy for ``count_tokens`` on the event loop: a fast tokenizer used from two
    #: threads at once while one changes its padding fails with "Already borrowed"
    count_tokenizer: Any
    #: breaks the model's special tokens in message text (they are never control tokens there)
    guard: SpecialTokenGuard

    @property
    def is_vision(self) -> bool:
        return self.processor is not None


@dataclass(frozen=True)
class _ImageEntry:
    """The processor's output for one image: its tensors and the text its placeholder becomes."""

    features: dict[str, Any]
    expansion: str


class ImageCache:
    """A small LRU of per-image preprocessing, keyed by image hash (used from one thread)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _ImageEntry] = OrderedDict()

    def get(self, key: str) -> _ImageEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: _ImageEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def _batch_key(request: GenerationRequest) -> Hashable:
    """Requests that may share one ``generate`` call (see the module docstring)."""
    s = request.sampling
    return (bool(request.images), s.temperature, s.top_p, s.seed, s.min_tokens)


def _first_line(text: object, limit: int = 200) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class TransformersBackend(ModelBackend):
    """A local Hugging Face model (LVLM or text LM) behind the async backend interface."""

    backend = "transformers"
    supports_json_schema = False

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config.model, context_length=config.context_length)
        self.config = config
        self.adapters = frozenset(config.adapters)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proreason-hf")
        self.batcher: MicroBatcher[GenerationRequest, GenerationResult] = MicroBatcher(
            self._generate,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            key=_batch_key,
            executor=self._executor,
            name=f"batcher[{config.model}]",
            batch_timeout_s=config.batch_timeout_s,
        )
        self.image_cache = ImageCache(config.image_cache_size)
        #: None: not yet verified; True/False: the cached path matches the processor / does not
        self._image_cache_ok: bool | None = None if config.image_cache_size > 0 else False
        self._lm: _Loaded | None = None
        self._load_error: ModelLoadError | None = None
        self._load_lock: asyncio.Lock | None = None
        self._closed = False

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Load the model in the worker thread (idempotent). Raises ``ModelLoadError``."""
        if self._lm is not None:
            return
        if self._closed:
            raise ModelUnavailable(f"model {self.model!r}: backend is closed")
        if self._load_error is not None:
            raise self._load_error
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if self._lm is not None:
                return
            if self._load_error is not None:
                raise self._load_error
            self.config.check_adapter_paths()  # a bad folder fails here, before the weights
            loop = asyncio.get_running_loop()
            try:
                self._lm = await loop.run_in_executor(self._executor, self._load)
            except ModelLoadError as exc:
                self._load_error = exc
                raise

    async def health(self) -> bool:
        """Loaded, open, and the worker alive (not stuck in a batch past ``batch_timeout_s``)."""
        return self._lm is not None and not self._closed and self.batcher.healthy

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.batcher.close(ModelUnavailable(f"model {self.model!r}: backend is closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._lm = None
        self.image_cache.clear()

    def count_tokens(self, text: str) -> int:
        """Exact count with the model's tokenizer once loaded (called on the event loop thread)."""
        if self._lm is None:
            return super().count_tokens(text)
        return len(self._lm.count_tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ requests

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await self.start()
        self._check(request)
        started = time.perf_counter()
        try:
            result = await self.batcher.submit(request)
        except BatcherStalled as exc:
            raise ModelUnavailable(f"model {self.model!r}: {exc}") from None
        result.latency_s = time.perf_counter() - started
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        await self.start()
        self._check(request)
        lm = self._require_loaded()
        started = time.perf_counter()
        streamer = lm.hf.AsyncTextIteratorStreamer(
            lm.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._stream_job, request, streamer, stop)
        stops = request.sampling.stop
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may still be forming
        text, sent = "", 0
        try:
            async for piece in streamer:
                text += piece
                cut = _find_stop(text, stops)
                if cut is not None:
                    stop.set()
                    text = text[:cut]
                safe = len(text) if cut is not None else len(text) - hold
                if safe > sent:
                    yield StreamDelta(text=text[sent:safe])
                    sent = safe
                if cut is not None:
                    break
            result = await job
        finally:
            stop.set()  # the consumer went away or a stop string matched: end generation
        tail = result.text[sent:] if result.text.startswith(text[:sent]) else ""
        result.latency_s = time.perf_counter() - started
        yield StreamDelta(text=tail, finish_reason=result.finish_reason, usage=result.usage)

    def _check(self, request: GenerationRequest) -> None:
        if request.images and not self.supports_images:
            raise InvalidRequest(f"model {self.model!r} is text-only and does not accept images")
        if not request.messages:
            raise InvalidRequest("a request needs at least one message")
        if request.adapter is not None and request.adapter not in self.adapters:
            raise InvalidRequest(
                f"model {self.model!r} has no adapter {request.adapter!r}", param="adapter"
            )
        s = request.sampling
        if s.max_tokens < 1 or (s.min_tokens is not None and s.min_tokens > s.max_tokens):
            raise InvalidRequest("need 1 <= min_tokens <= max_tokens", param="max_tokens")

    def _require_loaded(self) -> _Loaded:
        if self._lm is None:
            raise ModelUnavailable(f"model {self.model!r} is not loaded")
        return self._lm

    # ------------------------------------------------------------------ loading (worker thread)

    def _source(self) -> tuple[str, bool]:
        """(what to pass to from_pretrained, whether it is a local folder)."""
        raw = self.config.model
        path = Path(raw).expanduser()
        looks_local = raw.startswith(("/", "./", "../", "~")) or path.is_dir()
        return (str(path), True) if looks_local else (raw, False)

    def _load(self) -> _Loaded:
        with _LOAD_LOCK:
            return self._load_locked()

    def _load_locked(self) -> _Loaded:
        torch, transformers = _import_hf()
        source, local = self._source()
        if local and not Path(source).is_dir():
            raise ModelLoadError(f"cannot load model {self.model!r}: no such folder")
        started = time.perf_counter()
        try:
            lm = self._load_from(torch, transformers, source, local_files_only=True)
        except ModelLoadError:
            raise
        except Exception as exc:  # from_pretrained raises many types; all mean "cannot load"
            if local or not self.config.allow_download:
                raise self._load_failure(exc, local=local, downloading=False) from None
            hub = _unreachable_hub()
            if hub is not None:  # fail in one line now, not after the hub client's retries
                raise ModelLoadError(
                    f"cannot load model {self.model!r}: not in the local cache and the hub "
                    f"({hub}) is unreachable (offline?)"
                ) from None
            logger.info("model %r not in the local cache: downloading", self.model)
            try:
                lm = self._load_from(torch, transformers, source, local_files_only=False)
            except ModelLoadError:
                raise
            except Exception as exc2:
                raise self._load_failure(exc2, local=False, downloading=True) from None
        logger.info(
            "loaded %s model %r on %s (%s) in %.2f s",
            "vision" if lm.is_vision else "text",
            self.model,
            lm.device,
            str(lm.dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )
        return lm

    def _load_failure(self, exc: Exception, *, local: bool, downloading: bool) -> ModelLoadError:
        logger.debug("loading %r failed", self.model, exc_info=exc)
        prefix = f"cannot load model {self.model!r}"
        try:
            from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            GatedRepoError = RepositoryNotFoundError = ()  # type: ignore[assignment,misc]
        if isinstance(exc, GatedRepoError):
            reason = "the repository is gated: accept its licence and log in (hf auth login)"
        elif isinstance(exc, RepositoryNotFoundError):
            reason = "no such model on the Hugging Face hub (or it is private)"
        elif local:
            reason = f"the folder is not a loadable model ({_first_line(exc)})"
        elif not downloading:
            reason = "not in the local cache and downloads are disabled (allow_download: false)"
        elif "connect" in str(exc).lower() or isinstance(exc, ConnectionError):
            reason = "not in the local cache and the hub is unreachable (offline?)"
        else:
            reason = _first_line(exc)
        return ModelLoadError(f"{prefix}: {reason}")

    def _load_from(self, torch: Any, transformers: Any, source: str, **kw: Any) -> _Loaded:
        hf_config = transformers.AutoConfig.from_pretrained(source, **kw)
        device = self._device(torch)
        dtype = self._dtype(torch, device)
        is_vision = getattr(hf_config, "vision_config", None) is not None
        if is_vision:
            processor = transformers.AutoProcessor.from_pretrained(source, **kw)
            tokenizer = processor.tokenizer
            model_cls = transformers.AutoModelForImageTextToText
            template = getattr(processor, "chat_template", None)
        else:
            processor = None
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kw)
            model_cls = transformers.AutoModelForCausalLM
            template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ModelLoadError(
                f"cannot load model {self.model!r}: it has no chat template (not a chat model?)"
            )
        model = model_cls.from_pretrained(source, dtype=dtype, **kw)
        model = self._with_adapters(model)
        model.to(device)
        model.eval()
        tokenizer.padding_side = "left"  # right padding silently corrupts batched generation
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        if pad is None:
            pad = min(eos_ids) if eos_ids else 0
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = pad
        image_token = getattr(processor, "image_token", None) if processor is not None else None
        image_token_id = getattr(processor, "image_token_id", None)
        if image_token is not None and image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.context_length is None:
            text_config = getattr(hf_config, "text_config", None) or hf_config
            self.context_length = getattr(text_config, "max_position_embeddings", None)
        self.supports_images = is_vision
        return _Loaded(
            torch=torch,
            hf=transformers,
            model=model,
            processor=processor,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            eos_ids=eos_ids,
            pad_id=int(pad),
            image_token=image_token,
            image_token_id=image_token_id,
            count_tokenizer=copy.deepcopy(tokenizer),
            guard=SpecialTokenGuard.for_tokenizer(tokenizer, processor),
        )

    def _with_adapters(self, model: Any) -> Any:
        """``model`` with every configured LoRA adapter loaded (PEFT), or ``model`` itself."""
        if not self.config.adapters:
            return model
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ModelLoadError(
                f"model {self.model!r}: adapters need PEFT: pip install 'proreason[lora]'"
            ) from exc
        items = list(self.config.adapters.items())
        name, path = items[0]
        try:
            with warnings.catch_warnings():
                # PEFT (0.21) calls transformers 5's deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
                peft = PeftModel.from_pretrained(
                    model, path, adapter_name=name, is_trainable=False
                )
                for name, path in items[1:]:
                    peft.load_adapter(path, adapter_name=name, is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.model!r}: adapter {name!r} ({path}) does not load: "
                f"{_first_line(exc)}"
            ) from exc
        logger.info("model %s: adapters %s loaded", self.model, ", ".join(n for n, _ in items))
        return peft

    def _device(self, torch: Any) -> Any:
        name = self.config.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise ModelLoadError(f"bad device {name!r}: {_first_line(exc)}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r} requested but CUDA is not available here")
        return device

    def _dtype(self, torch: Any, device: Any) -> Any:
        name = self.config.dtype
        if name == "auto":
            if device.type != "cuda":
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ModelLoadError(f"bad dtype {name!r} (use auto, float32, bfloat16 or float16)")
        return dtype

    # ------------------------------------------------------------------ generation (worker thread)

    def _stream_job(
        self, request: GenerationRequest, streamer: Any, stop: threading.Event
    ) -> GenerationResult:
        try:
            return self._generate([request], streamer=streamer, stop=stop)[0]
        except BaseException as exc:
            streamer.end()  # wake the consumer; the error is raised by awaiting the job
            if isinstance(exc, StopIteration | StopAsyncIteration):  # asyncio cannot carry these
                raise RuntimeError(f"generation failed: {exc!r}") from exc
            raise

    def _generate(
        self,
        requests: list[GenerationRequest],
        *,
        streamer: Any | None = None,
        stop: threading.Event | None = None,
    ) -> list[GenerationResult]:
        """Run ``requests`` as one left-padded ``model.generate`` call (the batch function)."""
        lm = self._require_loaded()
        torch = lm.torch
        enc = self._encode(lm, requests)
        enc = {
            k: v.to(lm.device, dtype=lm.dtype if v.is_floating_point() else None)
            if isinstance(v, torch.Tensor)
            else v
            for k, v in enc.items()
        }
        sampling = requests[0].sampling  # identical within a batch, but for max_tokens
        kwargs = self._generation_kwargs(lm, sampling, max(r.sampling.max_tokens for r in requests))
        if streamer is not None:
            kwargs["streamer"] = streamer
        if stop is not None:
            kwargs["stopping_criteria"] = lm.hf.StoppingCriteriaList([_EventStop(stop, torch)])
        if self.adapters:  # mixed-adapter batching: each row through its own adapter
            kwargs["adapter_names"] = [r.adapter or "__base__" for r in requests]
        if sampling.seed is not None and kwargs.get("do_sample"):
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = lm.model.generate(**enc, **kwargs)
        input_ids = enc["input_ids"]
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        if lm.image_token_id is not None:
            image_tokens = (input_ids == lm.image_token_id).sum(dim=1).tolist()
        else:
            image_tokens = [0] * len(requests)
        return [
            self._result(lm, req, new_tokens[i], int(prompt_tokens[i]), int(image_tokens[i]))
            for i, req in enumerate(requests)
        ]

    def _generation_kwargs(self, lm: _Loaded, s: SamplingParams, max_new: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "pad_token_id": lm.pad_id,
        }
        if s.min_tokens:
            kwargs["min_new_tokens"] = s.min_tokens
        if s.temperature is not None:
            # below vLLM's _SAMPLING_EPS, logits / temperature overflow to inf/nan: greedy
            kwargs["do_sample"] = s.temperature >= _SAMPLING_EPS
            if kwargs["do_sample"]:
                kwargs["temperature"] = s.temperature
        sampling = kwargs.get("do_sample", bool(lm.model.generation_config.do_sample))
        if sampling and s.top_p is not None:
            kwargs["top_p"] = s.top_p
        return kwargs

    def _result(
        self,
        lm: _Loaded,
        request: GenerationRequest,
        tokens: list[int],
        prompt_tokens: int,
        image_tokens: int,
    ) -> GenerationResult:
        limit = request.sampling.max_tokens
        tokens = tokens[:limit]
        reason: FinishReason = "stop"
        end = next((j + 1 for j, t in enumerate(tokens) if t in lm.eos_ids), None)
        if end is not None:
            tokens = tokens[:end]
        elif len(tokens) >= limit:
            reason = "length"
        text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _find_stop(text, request.sampling.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        return GenerationResult(
            text=text,
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=len(tokens),
                image_tokens=image_tokens,
            ),
            model=self.model,
        )

    # ------------------------------------------------------------------ prompts (worker thread)

    def _render(self, lm: _Loaded, messages: tuple[Message, ...]) -> str:
        messages = lm.guard.messages(messages)  # user text never carries control tokens
        if lm.processor is not None:
            conversation = [
                {"role": m.role, "content": [_part_dict(p) for p in m.content]} for m in messages
            ]
            render = lm.processor.apply_chat_template
        else:
            conversation = [{"role": m.role, "content": m.text_content} for m in messages]
            render = lm.tokenizer.apply_chat_template
        return render(conversation, add_generation_prompt=True, tokenize=False)

    def _encode(self, lm: _Loaded, requests: list[GenerationRequest]) -> dict[str, Any]:
        """Prompts -> left-padded model inputs (text + pixel values) for one batch."""
        texts = [self._render(lm, r.messages) for r in requests]
        common = {"padding": True, "return_tensors": "pt", "add_special_tokens": False}
        images = [img for r in requests for img in r.images]
        if lm.processor is None:
            return dict(lm.tokenizer(texts, **common))
        if not images or self._image_cache_ok is False or lm.image_token is None:
            return self._processor_encode(lm, texts, images)
        cached = self._cached_encode(lm, texts, images)
        if self._image_cache_ok is None:  # first image batch: check against the processor
            plain = self._processor_encode(lm, texts, images)
            self._image_cache_ok = _same_inputs(lm.torch, cached, plain)
            if not self._image_cache_ok:
                logger.info("image cache off for %r: cached inputs differ", self.model)
                self.image_cache.clear()
                return plain
        return cached

    def _processor_encode(
        self, lm: _Loaded, texts: list[str], images: list[ImageInput]
    ) -> dict[str, Any]:
        return dict(
            lm.processor(
                text=texts,
                images=[img.image for img in images] or None,
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            )
        )

    def _image_entry(self, lm: _Loaded, image: ImageInput) -> _ImageEntry:
        entry = self.image_cache.get(image.sha256)
        if entry is None:
            out = lm.processor(
                text=[lm.image_token],
                images=[image.image],
                return_tensors="pt",
                add_special_tokens=False,
            )
            expansion = lm.tokenizer.decode(out["input_ids"][0], skip_special_tokens=False)
            features = {k: v for k, v in out.items() if k not in _TEXT_KEYS}
            entry = _ImageEntry(features=features, expansion=expansion)
            self.image_cache.put(image.sha256, entry)
        return entry

    def _cached_encode(
        self, lm: _Loaded, texts: list[str], images: list[ImageInput]
    ) -> dict[str, Any]:
        torch = lm.torch
        entries = [self._image_entry(lm, img) for img in images]
        placeholders = sum(text.count(lm.image_token) for text in texts)
        if placeholders != len(entries):
            raise InvalidRequest(
                f"the prompt has {placeholders} image placeholders for {len(entries)} images"
            )
        it = iter(entries)
        expanded = []
        for text in texts:
            pieces = text.split(lm.image_token)
            out = [pieces[0]]
            for piece in pieces[1:]:
                out.append(next(it).expansion)
                out.append(piece)
            expanded.append("".join(out))
        enc = dict(
            lm.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False)
        )
        for key in entries[0].features:
            enc[key] = torch.cat([e.features[key] for e in entries], dim=0)
        return enc


def _part_dict(part: Any) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        return {"type": "image"}
    return {"type": "text", "text": part.text}


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _same_inputs(torch: Any, a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = {k for k in b if k != "token_type_ids"}
    if keys - set(a):
        return False
    return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in keys)


class _EventStop:
    """A stopping criterion: stop every sequence once ``event`` is set (cancelled stream)."""

    def __init__(self, event: threading.Event, torch: Any) -> None:
        self._event = event
        self._torch = torch

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = self._event.is_set()
        return self._torch.full(
            (input_ids.shape[0],), done, dtype=self._torch.bool, device=input_ids.device
        )
