"""Build the models a deployment runs on, once, and close them. Used by the server and the CLI."""

from __future__ import annotations

import asyncio
import logging

from agents.types import ModelSet
from app.settings import ModelsConfig
from models.base import ModelBackend
from models.factory import build_backend

log = logging.getLogger(__name__)


async def open_models(config: ModelsConfig) -> ModelSet:
    """Build and start the vision (and text) backends; on any failure close what was opened.

    Raises ``models.errors.ModelLoadError`` (one clear line) when a model cannot be loaded.
    """
    opened: list[ModelBackend] = []
    try:
        vision = build_backend(config.vision)
        opened.append(vision)
        text = None
        if config.text is not None:
            text = build_backend(config.text)
            opened.append(text)
        # Load both models concurrently (each backend loads off the event loop).
        await asyncio.gather(*(backend.start() for backend in opened))
        log.info("models ready: %s", ", ".join(f"{b.backend}:{b.model}" for b in opened))
        return ModelSet(vision=vision, text=text)
    except BaseException:
        await asyncio.gather(*(b.close() for b in opened), return_exceptions=True)
        raise


async def close_models(models: ModelSet) -> None:
    backends = [models.vision] + ([models.text] if models.text is not None else [])
    results = await asyncio.gather(*(b.close() for b in backends), return_exceptions=True)
    for backend, result in zip(backends, results, strict=True):
        if isinstance(result, Exception):
            log.warning("closing %r failed: %s", backend, result)
