"""Small internal types every backend takes and returns.

Wire formats (OpenAI JSON, multipart uploads) are converted into these once, at the edge (``app/``).
Backends never see HTTP request bodies; agents never see wire formats.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from models.errors import ModelRejected, ModelUnavailable

Role = Literal["system", "user", "assistant"]


class ImageInput:
    """A decoded, normalised RGB image plus a content hash.

    The hash keys caches (per-image preprocessing, encoded data URLs) and is the media id vLLM
    gets (``uuid`` / ``multi_modal_uuids``), so it covers the size as well as the pixels: two
    images with the same bytes but another shape must not share processed features. The PNG data
    URL is encoded lazily, once per image, and reused by every request that carries it (every
    perception round of a question reuses the same bytes, which also keeps vLLM's prefix cache
    warm).
    """

    __slots__ = ("_data_url", "_lock", "image", "sha256")

    def __init__(self, image: Image.Image, sha256: str | None = None) -> None:
        if image.mode != "RGB":
            image = image.convert("RGB")
        self.image = image
        if sha256 is None:
            w, h = image.size
            digest = hashlib.sha256(f"RGB {w}x{h}\n".encode("ascii"))
            digest.update(image.tobytes())
            sha256 = digest.hexdigest()
        self.sha256 = sha256
        self._data_url: str | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def encoded(self) -> bool:
        """Whether ``data_url()`` is already cached (free to call on the event loop)."""
        return self._data_url is not None

    def data_url(self) -> str:
        """``data:image/png;base64,...`` encoded once and cached (thread-safe)."""
        if self._data_url is None:
            with self._lock:
                if self._data_url is None:
                    buf = io.BytesIO()
                    self.image.save(buf, format="PNG")
                    self._data_url = "data:image/png;base64," + base64.b64encode(
                        buf.getvalue()
                    ).decode("ascii")
        return self._data_url

    def __repr__(self) -> str:
        w, h = self.image.size
        return f"ImageInput({w}x{h}, sha256={self.sha256[:12]})"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: ImageInput


ContentPart = TextPart | ImagePart


@dataclass(frozen=True)
class VideoInput:
    """Frames sampled from a video (``models.video``), in order, each with its timestamp.

    ``timestamps[i]`` is the presentation time of ``frames[i]`` in seconds from the start of the
    video; ``size`` is the video's own width x height (the frames may be downscaled).
    """

    frames: tuple[ImageInput, ...]
    timestamps: tuple[float, ...]
    duration_s: float
    sampling: str = "uniform"
    size: tuple[int, int] = (0, 0)
    fps: float | None = None

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.timestamps) or not self.frames:
            raise ValueError("a VideoInput needs one timestamp per frame, and a frame")

    def __repr__(self) -> str:
        times = ", ".join(f"{t:.2f}" for t in self.timestamps)
        return f"VideoInput({len(self.frames)} frames at [{times}] s of {self.duration_s:.2f} s)"


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...]

    @classmethod
    def text(cls, role: Role, text: str) -> Message:
        return cls(role=role, content=(TextPart(text),))

    @classmethod
    def user(cls, text: str, images: Sequence[ImageInput] = ()) -> Message:
        """A user turn with the images FIRST, then the text (prefix-cache friendly)."""
        parts: list[ContentPart] = [ImagePart(img) for img in images]
        parts.append(TextPart(text))
        return cls(role="user", content=tuple(parts))

    @property
    def images(self) -> list[ImageInput]:
        return [p.image for p in self.content if isinstance(p, ImagePart)]

    @property
    def text_content(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 512
    temperature: float | None = None  # None: the backend's / model's default
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int | None = None  # mostly for fixed-length benchmarks and tests


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: dict[str, Any] | None = None  # ask for structured JSON output when supported
    #: this call's id (one per model call; sent as ``X-Request-Id``)
    request_id: str | None = None
    #: the id shared by every call of one question (the run id): sent as ``X-Session-ID`` so a
    #: consistent-hash balancer keeps the question on one server (and its prefix cache); vLLM
    #: in-process takes it as ``session_id``
    session_id: str | None = None
    #: the LoRA adapter to answer with (a name from the backend's ``adapters``); None: the base
    adapter: str | None = None

    @property
    def images(self) -> list[ImageInput]:
        return [img for m in self.messages for img in m.images]


def _add_optional(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int | None = None  # None: the backend cannot tell
    #: prompt tokens served from the prefix cache (vLLM's ``num_cached_tokens``, OpenAI's
    #: ``usage.prompt_tokens_details.cached_tokens``); None: the backend cannot tell
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            _add_optional(self.image_tokens, other.image_tokens),
            _add_optional(self.cached_tokens, other.cached_tokens),
        )


#: how a generation that produced an answer ended. A generation that failed ("error", "abort",
#: "content_filter") has no FinishReason: ``map_finish_reason`` raises instead.
FinishReason = Literal["stop", "length"]

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "length": "length",
    # vLLM >= 0.3x: repetitive token pattern detected; the text was cut short, as by max_tokens
    "repetition": "length",
}


def map_finish_reason(value: object, *, model: str = "the model") -> FinishReason:
    """A server's / engine's finish reason (OpenAI, vLLM) as ours; unknown or None -> "stop".

    The one place both HTTP and in-process backends decide whether a generation is an answer.
    Failures raise, so their partial text never becomes an answer (or enters an agent's memory):

    - ``error`` (vLLM: a request-level internal error; its own server answers 500) and ``abort``
      / ``cancelled`` (the engine dropped the request: paused, draining, shutting down)
      -> ``ModelUnavailable``;
    - ``content_filter`` (OpenAI) -> ``ModelRejected``.

    vLLM 0.33's reasons: ``FINISH_REASON_STRINGS`` in ``vllm/v1/engine/__init__.py``
    (stop, length, abort, error, repetition); its server raises on ``error`` in
    ``GenerateBaseServing._raise_if_error`` (``vllm/entrypoints/generate/base/serving.py``).
    """
    if value is None:
        return "stop"
    reason = str(value)
    if reason == "error":
        raise ModelUnavailable(f"{model} failed while generating (finish_reason=error)")
    if reason in ("abort", "cancelled"):
        raise ModelUnavailable(f"{model} aborted the generation (finish_reason={reason})")
    if reason == "content_filter":
        raise ModelRejected(f"{model} withheld the answer (finish_reason=content_filter)")
    return _FINISH_REASONS.get(reason, "stop")


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    model: str = ""


@dataclass
class StreamDelta:
    """One piece of a streamed generation. The last delta has ``finish_reason`` and ``usage``."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
