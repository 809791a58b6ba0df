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

Role = Literal["system", "user", "assistant"]


class ImageInput:
    """A decoded, normalised RGB image plus a content hash.

    The hash keys caches (per-image preprocessing, encoded data URLs). The PNG/JPEG data URL is
    encoded lazily, once per image, and reused by every request that carries it (every perception
    round of a question reuses the same bytes, which also keeps vLLM's prefix cache warm).
    """

    __slots__ = ("_data_url", "_lock", "image", "sha256")

    def __init__(self, image: Image.Image, sha256: str | None = None) -> None:
        if image.mode != "RGB":
            image = image.convert("RGB")
        self.image = image
        self.sha256 = sha256 or hashlib.sha256(image.tobytes()).hexdigest()
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
    request_id: str | None = None

    @property
    def images(self) -> list[ImageInput]:
        return [img for m in self.messages for img in m.images]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int | None = None  # None: the backend cannot tell

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        if self.image_tokens is None and other.image_tokens is None:
            image_tokens = None
        else:
            image_tokens = (self.image_tokens or 0) + (other.image_tokens or 0)
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            image_tokens,
        )


FinishReason = Literal["stop", "length", "error", "cancelled"]

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "length": "length",
    "content_filter": "error",
    "error": "error",
    "abort": "cancelled",
    "cancelled": "cancelled",
}


def map_finish_reason(value: object) -> FinishReason:
    """A server's / engine's finish reason (OpenAI, vLLM) as ours; unknown or None -> "stop"."""
    return "stop" if value is None else _FINISH_REASONS.get(str(value), "stop")


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
