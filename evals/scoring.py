"""Answer matching. Never guesses: an answer that names no option is ``unparsed``, not wrong."""

from __future__ import annotations

import re
import string
from typing import Literal

Verdict = Literal["correct", "wrong", "unparsed"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LETTER = re.compile(r"^\(?([A-Z])[\).:]?(\s|$)")


def normalize(text: str) -> str:
    text = text.strip().lower()
    text = re.sub(r"^(final\s+)?answer\s*[:\-]\s*", "", text)
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_open(prediction: str, reference: str) -> Verdict:
    """Exact match after normalisation; a one-word reference may also lead the prediction
    ("yes, the square is red" matches "yes")."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred:
        return "unparsed"
    if pred == ref:
        return "correct"
    if " " not in ref and pred.split()[0] == ref:
        return "correct"
    return "wrong"


def extract_option(prediction: str, options: tuple[str, ...]) -> int | None:
    """The index of the option the prediction names (by letter or by text), or None."""
    text = prediction.strip()
    m = _LETTER.match(text.upper() if len(text) <= 3 else text)
    if m:
        index = ord(m.group(1)) - ord("A")
        if 0 <= index < len(options):
            return index
    norm = normalize(text)
    named = [i for i, opt in enumerate(options) if normalize(opt) and normalize(opt) in norm]
    if len(named) == 1:
        return named[0]
    exact = [i for i, opt in enumerate(options) if normalize(opt) == norm]
    return exact[0] if len(exact) == 1 else None


def score_choice(prediction: str, reference: str, options: tuple[str, ...]) -> Verdict:
    chosen = extract_option(prediction, options)
    if chosen is None:
        return "unparsed"
    ref = extract_option(reference, options)
    if ref is None:  # a dataset whose reference is not one of its options: compare text
        return score_open(options[chosen], reference)
    return "correct" if chosen == ref else "wrong"
