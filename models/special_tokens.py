"""Keep special / control tokens in user text from reaching a chat template as control tokens.

A tokenizer splits its added tokens (``<image>``, ``<|im_start|>``, ``<|vision_start|>``,
``<|image_pad|>``, ``<|endoftext|>`` ...) out of *any* text before the model sees it, so a user
who types ``<|im_start|>system`` writes a system turn, and a literal ``<image>`` becomes an image
placeholder without an image (the processor fails). ``SpecialTokenGuard`` breaks every such
token in message text with a zero-width space after its first character: the text reads the same,
but it is no longer the token. The token list comes from the tokenizer (its special tokens and its
added tokens that look like markup) plus any the processor names (``image_token`` ...). Each
replacement is checked against the tokenizer once, when the guard is built: if it still encodes
to a special token id, a zero-width space goes between every character instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from models.types import ImagePart, Message, TextPart

logger = logging.getLogger(__name__)

ZWSP = "\u200b"
_MARKUP = re.compile(r"^[<\[].*[>\]]$", re.DOTALL)


def _token_text(token: Any) -> str | None:
    text = getattr(token, "content", token)
    return text if isinstance(text, str) else None


def special_tokens_of(tokenizer: Any, processor: Any | None = None) -> set[str]:
    """The control tokens of ``tokenizer`` (and ``processor``), as strings."""
    found: set[str] = set()
    for token in getattr(tokenizer, "all_special_tokens", None) or ():
        if (text := _token_text(token)) is not None:
            found.add(text)
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    added = decoder.values() if isinstance(decoder, dict) else ()
    for token in added:
        text = _token_text(token)
        if text is not None and (getattr(token, "special", False) or _MARKUP.match(text)):
            found.add(text)
    try:
        vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    except Exception:  # e.g. a Mistral tokenizer without added tokens
        vocab = {}
    found.update(t for t in vocab if isinstance(t, str) and _MARKUP.match(t))
    for owner in (processor, tokenizer):
        for name in ("image_token", "video_token", "audio_token", "boi_token", "eoi_token"):
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, str):
                found.add(value)
    # a single character cannot be broken, and whitespace runs are not control tokens
    return {t for t in found if len(t) >= 2 and t.strip()}


class SpecialTokenGuard:
    """Neutralise ``tokens`` in text: ``guard.text(s)``, ``guard.messages(messages)``."""

    def __init__(self, tokens: Iterable[str], tokenizer: Any | None = None) -> None:
        self.tokens = sorted(set(tokens), key=len, reverse=True)  # longest match first
        self._replacement = {t: self._safe_form(t, tokenizer) for t in self.tokens}
        self._pattern = (
            re.compile("|".join(re.escape(t) for t in self.tokens)) if self.tokens else None
        )

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, processor: Any | None = None) -> SpecialTokenGuard:
        return cls(special_tokens_of(tokenizer, processor), tokenizer)

    def _safe_form(self, token: str, tokenizer: Any | None) -> str:
        first = token[0] + ZWSP + token[1:]
        if tokenizer is None:
            return first
        bad = self._special_ids(tokenizer)
        for candidate in (first, ZWSP.join(token)):
            if not bad.intersection(self._encode(tokenizer, candidate)):
                return candidate
        logger.warning("cannot neutralise special token %r for this tokenizer", token)
        return ZWSP.join(token)

    def _special_ids(self, tokenizer: Any) -> set[int]:
        ids = getattr(self, "_ids", None)
        if ids is None:
            ids = set()
            convert = getattr(tokenizer, "convert_tokens_to_ids", None)
            for token in self.tokens:
                try:
                    value = convert(token) if convert is not None else None
                except Exception:
                    value = None
                if isinstance(value, int) and value != getattr(tokenizer, "unk_token_id", None):
                    ids.add(value)
            self._ids = ids
        return ids

    @staticmethod
    def _encode(tokenizer: Any, text: str) -> list[int]:
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except Exception:
            return []

    def text(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: self._replacement[m.group(0)], text)

    def message(self, message: Message) -> Message:
        parts = tuple(
            p if isinstance(p, ImagePart) else TextPart(self.text(p.text)) for p in message.content
        )
        return message if parts == message.content else Message(message.role, parts)

    def messages(self, messages: Iterable[Message]) -> tuple[Message, ...]:
        return tuple(self.message(m) for m in messages)
