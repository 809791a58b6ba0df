"""Configuration of one model backend (a section of the settings file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

#: the request fields an upstream cannot do without (``omit_fields`` may not name them)
REQUIRED_CHAT_FIELDS = frozenset({"model", "messages", "stream"})


class BackendConfig(BaseModel):
    """Which model, served how. One of these per role group (``vision`` and ``text``)."""

    backend: Literal["openai", "transformers", "vllm"] = "transformers"
    #: hub id or local folder (transformers, vllm); served model name (openai)
    model: str
    #: maximum prompt + completion tokens; None: ask the backend / model config
    context_length: int | None = None

    # --- openai (any OpenAI-compatible server, vLLM first) ---
    base_url: str = "http://localhost:8000/v1"
    api_key: SecretStr | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    #: concurrent requests to this upstream; set near vLLM's --max-num-seqs
    max_concurrency: int = 64
    #: largest answer body read from this upstream (bytes, after decompression); a larger one
    #: fails that call (model_error) instead of being buffered and parsed. Streams: total bytes
    max_response_bytes: int = Field(1_048_576, ge=1024)
    #: longest single line of an SSE stream from this upstream (bytes)
    max_stream_line_bytes: int = Field(262_144, ge=256)
    #: circuit breaker: after this many consecutive connection failures / 5xx the upstream is
    #: not called for ``breaker_cooldown_s`` (calls fail at once with 503); then one probe call
    #: decides. 0: no breaker
    breaker_failures: int = Field(5, ge=0)
    breaker_cooldown_s: float = Field(10.0, gt=0)
    #: send response_format=json_schema when the agents ask for structured output
    structured_output: bool = True
    #: give each image part its sha256 as ``uuid`` (vLLM's media id: an image it has seen is not
    #: processed again); off for strict servers that refuse unknown fields in content parts
    media_ids: bool = True
    #: request-body fields never sent to this upstream. For servers that refuse fields they do
    #: not know (``transformers serve`` answers 422 to vLLM's ``min_tokens``, ``top_k``, ...):
    #: the fields are hints, so dropping them beats failing every call. See docs/upstreams.md.
    omit_fields: list[str] = Field(default_factory=list)

    #: LoRA adapters, name -> local folder (transformers: PEFT adapters loaded once; vllm: a
    #: ``LoRARequest`` per call, needs ``engine_args: {enable_lora: true}``). For ``openai`` the
    #: name is the adapter's served model name (vLLM ``--lora-modules NAME=PATH``); its path is
    #: not read here and may be empty. Roles pick one with ``agent.adapters``.
    adapters: dict[str, str] = Field(default_factory=dict)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
                raise ValueError(f"adapter name {name!r}: letters, digits, '.', '_' or '-'")
        return value

    def check_adapter_paths(self) -> None:
        """Every adapter folder exists and holds ``adapter_config.json`` (ModelLoadError)."""
        from models.errors import ModelLoadError

        for name, path in self.adapters.items():
            folder = Path(path).expanduser()
            if not (folder / "adapter_config.json").is_file():
                raise ModelLoadError(
                    f"adapter {name!r}: {path!r} is not a LoRA adapter folder "
                    "(no adapter_config.json)"
                )

    @field_validator("omit_fields")
    @classmethod
    def _omittable(cls, value: list[str]) -> list[str]:
        required = sorted(REQUIRED_CHAT_FIELDS.intersection(value))
        if required:
            raise ValueError(f"omit_fields cannot drop {', '.join(required)}")
        return value

    # --- transformers (in-process) ---
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto", "float32", "bfloat16", "float16"
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    #: cache per-image preprocessing (pixel values) keyed by image hash; entries
    image_cache_size: int = Field(64, ge=0)
    #: let transformers download from the hub; False: local files / cache only
    allow_download: bool = True
    #: watchdog: a batch still running after this long means a hung worker: its callers (and
    #: the queue) fail with model_unavailable and health() is False until the worker returns
    batch_timeout_s: float = Field(600.0, gt=0)

    # --- vllm (in-process AsyncLLM) ---
    engine_args: dict[str, object] = Field(default_factory=dict)
