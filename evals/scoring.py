"""Answer matching, with the service's own extractor (:mod:`agents.answers`).

Never guesses: an answer that names no option, or gives no yes/no or number where the reference
is one, is ``unparsed`` -- counted and reported apart, scored as not correct, never replaced by a
random or closest option.
"""

from __future__ import annotations

import ast
import re
import string
from typing import Literal

from agents.answers import (
    final_answer,
    numbers_match,
    option_letter,
    parse_number,
    read_choice,
    read_number,
    read_yes_no,
    yes_no_value,
)
from evals.datasets import EvalItem

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


def score_number(prediction: str, reference: str, precision: int | None) -> Verdict:
    """A numeric answer. With ``precision`` (MathVista's published field) both are compared at
    that many decimals: integers truncated as MathVista's ``int(float(x))``, floats rounded as
    its ``round(float(x), precision)``; without it, :func:`agents.answers.numbers_match`."""
    value = read_number(prediction)
    if value is None:
        return "unparsed"
    if precision is None:
        ref = parse_number(reference)
        if ref is None:
            return score_open(prediction, reference)
        return "correct" if numbers_match(value, ref) else "wrong"
    try:
        expected = float(reference)
    except ValueError:
        return score_open(prediction, reference)
    got = float(value.value)
    if precision == 0:
        return "correct" if int(got) == int(expected) else "wrong"
    return "correct" if round(got, precision) == round(expected, precision) else "wrong"


def _references(reference: str) -> list[str]:
    """MMMU's open answers may be a Python-literal list of accepted answers."""
    text = reference.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [reference]
        if isinstance(value, (list, tuple)) and value:
            return [str(v) for v in value]
    return [reference]


def parsed_answer(prediction: str | None, item: EvalItem) -> str | None:
    """What the extractor read from the prediction (``"yes"``, ``"B"``, ``"3.5"``), or None."""
    if prediction is None:
        return None
    kind = item.answer_type
    if kind == "choice" or (kind == "auto" and item.options):
        index = extract_option(prediction, item.options)
        return None if index is None else option_letter(index)
    if kind == "yesno" or (kind == "auto" and yes_no_value(item.answer) is not None):
        return read_yes_no(prediction)
    if kind == "number":
        number = read_number(prediction)
        return None if number is None else str(number.value)
    cleaned = final_answer(prediction).strip()
    return cleaned or None


def score_item(prediction: str, item: EvalItem) -> Verdict:
    """The verdict for one item, by its ``answer_type`` (``auto``: from the reference)."""
    kind = item.answer_type
    if kind == "choice" or (kind == "auto" and item.options):
        return score_choice(prediction, item.answer, item.options)
    if kind == "number":
        return score_number(prediction, item.answer, item.precision)
    if kind == "yesno":
        if yes_no_value(item.answer) is None:
            raise ValueError(f"item {item.id}: yes/no item with reference {item.answer!r}")
        return score_open(prediction, item.answer)
    verdicts = [score_open(prediction, ref) for ref in _references(item.answer)]
    if "correct" in verdicts:
        return "correct"
    return "wrong" if "wrong" in verdicts else "unparsed"
