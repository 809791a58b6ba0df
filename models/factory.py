"""Build a backend from its configuration. Heavy imports happen only for the backend chosen."""

from __future__ import annotations

from models.base import ModelBackend
from models.config import BackendConfig


def build_backend(config: BackendConfig) -> ModelBackend:
    if config.backend == "openai":
        from models.openai_backend import OpenAIBackend

        return OpenAIBackend(config)
    if config.backend == "transformers":
        from models.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    if config.backend == "vllm":
        from models.vllm_backend import VLLMBackend

        return VLLMBackend(config)
    raise ValueError(f"unknown backend {config.backend!r}")
