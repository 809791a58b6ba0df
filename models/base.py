"""The one async interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from models.types import GenerationRequest, GenerationResult, StreamDelta


class ModelBackend(ABC):
    """A chat model. Implementations: ``openai`` (HTTP), ``transformers``, ``vllm`` (in-process).

    - ``generate`` answers one request; concurrent calls are how batching happens (vLLM's
      continuous batching over HTTP, our micro-batcher in-process).
    - ``stream`` yields text deltas; the default produces one delta from ``generate``.
    - Cancelling the awaiting task cancels the model-side work where the backend can.
    """

    #: short backend name for logs and metrics ("openai", "transformers", "vllm", ...)
    backend: str = "base"

    def __init__(self, model: str, *, context_length: int | None = None) -> None:
        self.model = model
        self.context_length = context_length

    #: whether ``GenerationRequest.json_schema`` is enforced by the backend (structured output)
    supports_json_schema: bool = False
    #: whether the model accepts images
    supports_images: bool = True
    #: the LoRA adapters ``GenerationRequest.adapter`` may name (``BackendConfig.adapters``)
    adapters: frozenset[str] = frozenset()

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        result = await self.generate(request)
        yield StreamDelta(text=result.text, finish_reason=result.finish_reason, usage=result.usage)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights / open clients before the first request (called once by the owner).

        Raises ``models.errors.ModelLoadError`` with one clear line when the model cannot be had.
        Backends that load lazily may leave this as a no-op.
        """

    async def health(self) -> bool:
        """True when the backend can serve (model loaded / upstream reachable)."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients, threads and models."""

    def count_tokens(self, text: str) -> int:
        """Approximate token count for prompt budgeting (backends with a tokenizer override)."""
        return max(1, len(text) // 4)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
