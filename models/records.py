"""The chat-format SFT record: one model call as JSON (``messages`` with images by reference,
``reply``, ``role`` ...). Written by ``evals.trajectories``, read by ``models.training``; the
format is described in docs/trajectories.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.types import ImagePart, Message

ImageRefs = dict[str, dict[str, Any]]  # ImageInput.sha256 -> {"path": ..., "image_id": ...}


def message_dicts(messages: Sequence[Message], image_refs: ImageRefs | None = None) -> list[dict]:
    """Messages as JSON: parts in order; an image as a reference (path / image id / sha256)."""
    refs = image_refs or {}
    out = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                parts.append({"type": "image", **refs.get(part.image.sha256, {}),
                              "sha256": part.image.sha256})  # fmt: skip
            else:
                parts.append({"type": "text", "text": part.text})
        out.append({"role": message.role, "content": parts})
    return out


def message_text(message: dict[str, Any]) -> str:
    """The text of a recorded message (its text parts joined, as the text backends render it)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def message_images(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [] if isinstance(content, str) else [p for p in content if p.get("type") == "image"]
