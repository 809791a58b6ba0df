"""The one answer extractor: what a final answer says, for the loop and for evaluation scoring.

Used by :meth:`agents.run.RunContext.finish` (the run's multiple-choice letter) and by
``evals.scoring`` (is a prediction right), so the service and the evaluation read an answer the
same way. Every reader here returns a value or ``None`` (with a reason) and never raises on model
output; ``None`` means *unparsed*: counted, reported, scored wrong, never replaced by a guessed,
random or closest option.

- multiple choice (:func:`read_choice`): the option letter in its accepted forms ("C", "(C)",
  "C.", "C) text", "Option C", "Answer: C", "the answer is C", "**C**"), the exact option text, an
  option's text inside the answer when it is not negated ("It is not red." names no option),
  numeric options by value ("12" is not "1"), yes/no options by :func:`read_yes_no`. Several
  letters, "none of the above", hedges ("maybe", "either", "not sure") are unparsed.
- yes/no (:func:`read_yes_no`): a leading yes/no word, or a closing "so no" / "the answer is
  yes"; hedges and both words are unparsed.
- numbers (:func:`read_number`, :func:`numbers_match`): one number in the answer (units,
  thousands separators, fractions and a few number words accepted); compared at the reference's
  precision ("3.14159" matches "3.14", "3.1" does not).

Input is bounded: only the answer line (or, without one, the whole text up to
:data:`MAX_ANSWER_CHARS`) is read, so every reader is linear and fast on any output.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

#: an answer longer than this (after taking its answer line) is unparsed, not searched
MAX_ANSWER_CHARS = 2_000
#: the last part of an output searched for an answer line (a final answer is at the end)
MAX_SCAN_CHARS = 16_384

# ------------------------------------------------------------------------------- answer strings

_ANSWER_LINE = re.compile(
    r"^\W{0,8}(?:the\s+)?(?:final\s+answer|answer)(?:\s+is)?\s*[:：]\s*(.*)$", re.I
)
_PREFIXES = re.compile(
    r"^\s*(?:(?:the\s+)?(?:final\s+)?(?:correct\s+)?answer(?:\s+is)?\s*[:：]?|(?:so|therefore|"
    r"thus|hence),?\s+the\s+(?:final\s+)?(?:correct\s+)?answer\s+is\s*:?)\s*",
    re.I,
)


def _unmark(text: str) -> str:
    return text.replace("**", "").replace("__", "").strip()


def _tail(text: str) -> str:
    return text[-MAX_SCAN_CHARS:] if len(text) > MAX_SCAN_CHARS else text


def answer_line(text: str) -> str | None:
    """The content of the last ``Answer: ...`` / ``Final answer: ...`` line, if there is one."""
    lines = _tail(text).strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _ANSWER_LINE.match(_unmark(lines[i]))
        if match:
            content = match.group(1).strip()
            if not content:  # "Answer:" alone, the answer on the next non-empty line
                content = next((_unmark(ln) for ln in lines[i + 1 :] if ln.strip()), "")
            if content:
                return content
    return None


def clean_answer(text: str) -> str:
    """A clean answer string: no "Answer:" prefix, markdown emphasis, quotes or lone final dot."""
    answer = _unmark(text)
    for _ in range(4):  # bounded: "Answer: Answer: ..." loses a few prefixes, not all of them
        previous = answer
        answer = _PREFIXES.sub("", answer, count=1).strip()
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'`":
            answer = answer[1:-1].strip()
        if answer == previous:
            break
    if answer.endswith(".") and answer.count(".") == 1:
        answer = answer[:-1].rstrip()
    return answer


def final_answer(text: str) -> str:
    """The answer of a free-form reply: its answer line if it has one, else the whole text."""
    line = answer_line(text)
    return clean_answer(line if line is not None else text)


def answer_candidate(text: str) -> str:
    """What the readers below look at: the answer line, else the whole (cleaned) text."""
    return final_answer(text)


# ------------------------------------------------------------------------------------- options

_LABELLED = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$", re.S)


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def split_options(options: Sequence[str]) -> list[tuple[str, str]]:
    """``(letter, text)`` per option; options already written "A. red" keep their own letters."""
    labelled = [_LABELLED.match(o) for o in options]
    if (
        options
        and all(labelled)
        and [m.group(1) for m in labelled if m] == [option_letter(i) for i in range(len(options))]
    ):
        return [(m.group(1), m.group(2).strip()) for m in labelled if m]
    return [(option_letter(i), o.strip()) for i, o in enumerate(options)]


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in split_options(options))


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


# ------------------------------------------------------------------------- hedges and negation

_HEDGE = re.compile(
    r"\b(?:none of (?:the|these|them|those)(?: above| options)?|all of (?:the|these)(?: above)?|"
    r"neither|either|both|maybe|perhaps|possibly|probably not|not sure|unsure|uncertain|unclear|"
    r"cannot (?:be )?(?:tell|say|determine|determined|know)|can ?n[o']?t (?:tell|say|determine|"
    r"know)|impossible to (?:tell|say|determine|know)|(?:i )?do ?n[o']?t know|no idea|"
    r"it depends|depends on|not enough information|insufficient information|no correct|"
    r"no option|no answer)\b",
    re.I,
)
_NONE_ALONE = re.compile(r"^(?:none|nothing|unknown|n/?a|no option)\W*$", re.I)
_NEGATOR = re.compile(
    r"\b(?:not|no|never|neither|nor|without|except|cannot|rather than|instead of|other than)\b"
    r"|n[’']t\b",
    re.I,
)
_CLAUSE_BREAK = re.compile(r"[.;!?\n]|,|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b", re.I)


class _Negation:
    """Is the word at a position negated ("not red", "isn't 12") within its clause?"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.breaks = [m.end() for m in _CLAUSE_BREAK.finditer(text)]

    def __call__(self, pos: int) -> bool:
        i = bisect.bisect_right(self.breaks, pos) - 1
        start = self.breaks[i] if i >= 0 else 0
        if start > pos:  # pos inside a break ("," of "1,000"): the clause before it
            start = self.breaks[i - 1] if i >= 1 else 0
        return _NEGATOR.search(self.text, start, pos) is not None


# ------------------------------------------------------------------------------------- numbers

_NUMBER = re.compile(
    r"(?<![\w.,/])(?P<sign>[-+−])?(?:(?P<num>\d+)\s*/\s*(?P<den>\d+)"
    r"|(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?|(?P<lead>\.\d+))(?![\d])(?!\.\d)(?!,\d{3})"
)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "hundred": 100})
_NOT_A_NOUN = frozenset({"of", "is", "are", "was", "were", "or", "and", "that", "which", "the"})


@dataclass(frozen=True)
class Number:
    value: Decimal
    decimals: int  # digits after the decimal point as written (precision)
    start: int = 0


def _number(match: re.Match[str]) -> Number | None:
    sign = -1 if match.group("sign") in ("-", "−") else 1
    try:
        if match.group("num") is not None:
            den = Decimal(match.group("den"))
            if den == 0:
                return None
            value = Decimal(match.group("num")) / den
            return Number(sign * value, 28, match.start())
        if match.group("lead") is not None:
            text = "0" + match.group("lead")
        else:
            text = match.group("int").replace(",", "") + (match.group("frac") or "")
        decimals = len(match.group("frac") or match.group("lead") or ".") - 1
        return Number(sign * Decimal(text), decimals, match.start())
    except InvalidOperation:
        return None


def numbers_in(text: str) -> list[Number]:
    """Every number written in ``text`` (digits; "12" is never read as "1")."""
    found = [_number(m) for m in _NUMBER.finditer(text[:MAX_ANSWER_CHARS])]
    return [n for n in found if n is not None]


def parse_number(text: str) -> Number | None:
    """``text`` as one number (an optional unit or a short noun may follow), else None."""
    candidate = clean_answer(text)
    numbers = numbers_in(candidate)
    if len(numbers) == 1:
        rest = _NUMBER.sub(" ", candidate, count=1)
        if len(_norm(rest).split()) <= 2:  # "12", "12 cm", "3.5 kg of", "50 %"
            return numbers[0]
        return None
    if not numbers:
        tokens = _norm(candidate).split()
        if tokens and tokens[0] in _NUMBER_WORDS and len(tokens) <= 2:
            if len(tokens) == 1 or tokens[1] not in _NOT_A_NOUN:
                return Number(Decimal(_NUMBER_WORDS[tokens[0]]), 0)
    return None


def read_number(text: str) -> Number | None:
    """The one number an answer gives (several different numbers: None, unparsed)."""
    candidate = answer_candidate(text)
    if not candidate or len(candidate) > MAX_ANSWER_CHARS or _HEDGE.search(candidate):
        return None
    negated = _Negation(candidate)
    numbers = [n for n in numbers_in(candidate) if not negated(n.start)]
    values = {n.value for n in numbers}
    if len(values) == 1:
        return numbers[0]
    if not numbers_in(candidate):
        return parse_number(candidate)
    return None


def numbers_match(predicted: Number, reference: Number) -> bool:
    """Equal, or equal at the reference's precision when the prediction is more precise."""
    if predicted.value == reference.value:
        return True
    if 0 < reference.decimals < predicted.decimals:
        quantum = Decimal(1).scaleb(-reference.decimals)
        try:
            return predicted.value.quantize(quantum) == reference.value.quantize(quantum)
        except InvalidOperation:
            return False
    return False


# -------------------------------------------------------------------------------------- yes/no

YesNo = Literal["yes", "no"]
_YES = frozenset({"yes", "yeah", "yep", "true", "correct", "affirmative"})
_NO = frozenset({"no", "nope", "false", "incorrect", "negative"})
_CLOSING_YN = re.compile(
    r"(?:answer is|answer:|\bso|\bthus|\btherefore|\bhence|,)\s*[\"'*]*(yes|no)\b\W*$", re.I
)


def yes_no_value(text: str) -> YesNo | None:
    """A reference written as a plain yes/no ("Yes", "no.", "True")."""
    norm = _norm(text)
    return "yes" if norm in _YES else "no" if norm in _NO else None


def read_yes_no(text: str) -> YesNo | None:
    """Yes or no, from a leading yes/no word or a closing "so, no"; hedges and both: None."""
    candidate = answer_candidate(text)
    if not candidate or len(candidate) > MAX_ANSWER_CHARS:
        return None
    lowered = candidate.lower()
    if _HEDGE.search(lowered) or re.search(r"\byes\b\W+(?:or|and|/)\W*no\b", lowered):
        return None
    tokens = _norm(candidate).split()
    if not tokens:
        return None
    first: YesNo | None = "yes" if tokens[0] in _YES else "no" if tokens[0] in _NO else None
    if first is not None:
        if tokens[0] in ("true", "correct", "false", "incorrect") and len(tokens) > 2:
            return None  # "correct me if ...", "false colours ..." are not answers
        return first
    closing = _CLOSING_YN.search(lowered)
    if closing:
        return "yes" if closing.group(1) == "yes" else "no"
    return None


# ----------------------------------------------------------------------------- multiple choice

_BARE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:)]?$")
_LIST = re.compile(r"^[(\[]?[A-Z][)\]]?(?:\s*(?:,|and|or|&|/|\+)\s*[(\[]?[A-Z][)\]]?)+\.?$", re.I)
_LABEL = re.compile(r"^(?i:option|choice)?\s*[(\[]?([A-Z])(?:[.:)\]]|[)\]]?\s*[-–—])(?:\s|$)")
_BRACKETED = re.compile(r"(?<!\w)[(\[]([A-Z])[)\]](?!\w)")
_KEYWORD = re.compile(
    r"\b(?i:answer|option|choice|letter)(?:\s+(?i:is|would be|should be|must be|will be))?"
    r"\s*[:=\-]?\s*[(\[]?(?:([B-HJ-Z])|([AI])(?=$|[\s]*[.,;:!?)\]]|\s*$|\s+[-–—(]))"
    r"[)\]]?(?!\w)"
)
_KEYWORD_LOWER = re.compile(
    r"\b(?i:option|choice|letter)(?:\s+[(\[]?([a-z])|\s+(?i:is|would be|should be)\s+[(\[]?"
    r"([b-hj-z]))[)\]]?(?!\w)"
)  # "option a", "the option is b" (not "the option is a good one")


@dataclass(frozen=True)
class Choice:
    """What a multiple-choice answer names: ``index`` (None: unparsed) and how it was read."""

    index: int | None
    how: str  # "letter", "text", "number", "yes/no", or why it is unparsed

    @property
    def parsed(self) -> bool:
        return self.index is not None


def named_letters(candidate: str) -> set[str]:
    """The option letters ``candidate`` names in an accepted form (upper case)."""
    bare = _BARE.match(candidate)
    if bare:
        return {bare.group(1).upper()}
    if _LIST.match(candidate):
        return {c.upper() for c in re.findall(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])", candidate)}
    letters: set[str] = set()
    label = _LABEL.match(candidate)
    if label:
        letters.add(label.group(1))
    letters.update(m.group(1) for m in _BRACKETED.finditer(candidate))
    letters.update((m.group(1) or m.group(2)) for m in _KEYWORD.finditer(candidate))
    letters.update((m.group(1) or m.group(2)).upper() for m in _KEYWORD_LOWER.finditer(candidate))
    return letters


def _text_hits(candidate: str, texts: Sequence[str]) -> list[int]:
    """Options whose text the candidate contains (whole words) and does not negate."""
    lowered = candidate.lower()
    negated = _Negation(lowered)
    hits: list[int] = []
    for i, text in enumerate(texts):
        words = _norm(text).split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\W+".join(re.escape(w) for w in words) + r"(?!\w)"
        if any(not negated(m.start()) for m in re.finditer(pattern, lowered)):
            hits.append(i)
    norms = [_norm(t) for t in texts]
    # "red" inside "dark red": the longer option is the one named
    return [
        i
        for i in hits
        if not any(j != i and re.search(rf"(?<!\w){re.escape(norms[i])}(?!\w)", norms[j])
                   for j in hits)
    ]  # fmt: skip


def read_choice(text: str, options: Sequence[str]) -> Choice:
    """The option ``text`` names, by letter, text, number or yes/no; never a guess."""
    if not options:
        return Choice(None, "no options")
    pairs = split_options(options)
    letters = [letter for letter, _ in pairs]
    texts = [t for _, t in pairs]
    candidate = answer_candidate(text)
    if not candidate:
        return Choice(None, "empty answer")
    if len(candidate) > MAX_ANSWER_CHARS:
        return Choice(None, "answer too long to read as one option")
    norm = _norm(candidate)
    norms = [_norm(t) for t in texts]
    # the option's exact text first: options may themselves read "None of the above", "Both"
    if norm and norms.count(norm) == 1:
        return Choice(norms.index(norm), "text")
    if _HEDGE.search(candidate) or _NONE_ALONE.match(candidate):
        return Choice(None, "hedged, or names no option")
    named = named_letters(candidate)
    if len(named) > 1:
        return Choice(None, f"several options named ({', '.join(sorted(named))})")
    if len(named) == 1:
        letter = named.pop()
        if letter in letters:
            return Choice(letters.index(letter), "letter")
        return Choice(None, f"no option {letter}")
    if set(norms) <= {"yes", "no"} and len(set(norms)) == 2:
        yn = read_yes_no(candidate)
        return Choice(norms.index(yn), "yes/no") if yn else Choice(None, "neither yes nor no")
    option_numbers = [parse_number(t) for t in texts]
    if all(n is not None for n in option_numbers):
        said = read_number(candidate)
        if said is None:
            return Choice(None, "no single number")
        matched = [i for i, n in enumerate(option_numbers) if n and said.value == n.value]
        return Choice(matched[0], "number") if len(matched) == 1 else Choice(None, "no option")
    hits = _text_hits(candidate, texts)
    if len(hits) == 1:
        return Choice(hits[0], "text")
    if hits:
        return Choice(None, "several options named")
    return Choice(None, "names no option")


def extract_choice(text: str, options: Sequence[str]) -> int | None:
    """Index of the option the reply names, or None (unparsed). See :func:`read_choice`."""
    return read_choice(text, options).index
