"""Answer matching, with the service's own extractor (:mod:`agents.answers`).

Never guesses: an answer that names no option, or gives no yes/no or number where the reference
is one, is ``unparsed`` -- counted and reported apart, scored as not correct, never replaced by a
random or closest option.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from agents.answers import (
    final_answer,
    numbers_match,
    parse_number,
    read_choice,
    read_number,
    read_yes_no,
    yes_no_value,
)

Verdict = Literal["correct", "wrong", "unparsed"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NEGATION = re.compile(r"\b(not|no|never|neither|nor)\b|n't\b")


def normalize(text: str) -> str:
    text = final_answer(text).lower()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_open(prediction: str, reference: str) -> Verdict:
    """A yes/no reference needs a yes/no answer, a numeric one a number (compared at the
    reference's precision); otherwise exact match after normalisation, or a one-word reference
    leading the prediction's first clause unnegated ("circle, I think" matches "circle")."""
    if not prediction.strip():
        return "unparsed"
    expected = yes_no_value(reference)
    if expected is not None:
        said = read_yes_no(prediction)
        return "unparsed" if said is None else "correct" if said == expected else "wrong"
    number = parse_number(reference)
    if number is not None:
        value = read_number(prediction)
        if value is None:
            return "unparsed"
        return "correct" if numbers_match(value, number) else "wrong"
    pred, ref = normalize(prediction), normalize(reference)
    if not pred:
        return "unparsed"
    if pred == ref:
        return "correct"
    first_clause = re.split(r"[,;.!?]", final_answer(prediction).lower(), maxsplit=1)[0]
    words = normalize(first_clause).split()
    if " " not in ref and words and words[0] == ref and not _NEGATION.search(first_clause):
        return "correct"
    return "wrong"


def extract_option(prediction: str, options: tuple[str, ...]) -> int | None:
    """The index of the option the prediction names, or None (the loop's own extractor)."""
    return read_choice(prediction, options).index


def score_choice(prediction: str, reference: str, options: tuple[str, ...]) -> Verdict:
    chosen = extract_option(prediction, options)
    if chosen is None:
        return "unparsed"
    ref = extract_option(reference, options)
    if ref is None:  # a dataset whose reference is not one of its options: compare text
        return score_open(options[chosen], reference)
    return "correct" if chosen == ref else "wrong"
