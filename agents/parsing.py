"""Tolerant readers for model output: JSON decisions, answer lines, multiple-choice options.

Models asked for JSON still answer with code fences, leading prose, Python dicts (single quotes,
``True``), trailing commas, ``key: value`` lines or synonyms ("visual", "reasoning", "yes"). The
readers accept all of these; what they still cannot read raises :class:`ParseError`, which the
loop records on the step (the round is spent, the run goes on). Nothing here raises anything else
for any model output.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Expert = Literal["vision", "insight"]


class ParseError(ValueError):
    """A model's output could not be read as the decision it was asked for."""


# ---------------------------------------------------------------------------------- JSON objects

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PAIR_LINE = re.compile(
    r"""^\s*[-*]?\s*["']?([A-Za-z][\w \-]{0,30}?)["']?\s*[:=]\s*(.+?)\s*,?\s*$"""
)


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span, honouring quoted strings (both quote styles)."""
    spans: list[str] = []
    depth, start, quote, escaped = 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'" and depth > 0:
            # an apostrophe inside prose ("don't") must not open a string: only after , : [ {
            prev = text[:i].rstrip()[-1:] if i else ""
            if ch == '"' or prev in ("", ",", ":", "[", "{"):
                quote = ch
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _load_object(candidate: str) -> dict[str, Any] | None:
    attempts = (
        lambda s: json.loads(s),
        lambda s: json.loads(_TRAILING_COMMA.sub(r"\1", s)),
        lambda s: ast.literal_eval(_TRAILING_COMMA.sub(r"\1", s)),
        lambda s: ast.literal_eval(
            re.sub(
                r"\b(true|false|null)\b",
                lambda m: {"true": "True", "false": "False", "null": "None"}[m.group(1)],
                _TRAILING_COMMA.sub(r"\1", s),
            )
        ),
        lambda s: yaml.safe_load(s),
    )
    for attempt in attempts:
        try:
            value = attempt(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, yaml.YAMLError):
            continue
        if isinstance(value, dict):
            return {_norm_key(k): v for k, v in value.items()}
    return None


def _loose_pairs(text: str) -> dict[str, Any]:
    """``key: value`` lines (YAML-ish answers without braces)."""
    pairs: dict[str, Any] = {}
    for line in text.splitlines():
        match = _PAIR_LINE.match(line)
        if match:
            pairs.setdefault(_norm_key(match.group(1)), match.group(2).strip().strip("\"'"))
    return pairs


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def extract_object(text: str) -> dict[str, Any]:
    """The first JSON-like object in ``text`` (keys lower-cased), else ``key: value`` lines."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for block in blocks:
        for span in _balanced_objects(block):
            obj = _load_object(span)
            if obj is not None:
                return obj
    pairs = _loose_pairs(_FENCE.sub(lambda m: m.group(1), text))
    if pairs:
        return pairs
    raise ParseError("no JSON object found in the output")


def _first(obj: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in obj and obj[key] not in (None, ""):
            return obj[key]
    return None


# ------------------------------------------------------------------------- dispatcher decisions

_EXPERT_KEYS = ("expert", "next_expert", "selected_expert", "expert_name", "agent", "role", "tool")
_QUESTION_KEYS = ("question", "sub_question", "subquestion", "query", "sub_query", "task", "prompt")
_QUESTIONS_KEYS = ("questions", "sub_questions", "subquestions", "queries", "sub_queries")
_VISION_WORDS = frozenset(
    {"vision", "visual", "eyesight", "perception", "perceive", "image", "see", "look", "observe",
     "observer", "eye", "eyes", "lvlm", "vlm"}
)  # fmt: skip
_INSIGHT_WORDS = frozenset(
    {"insight", "reasoning", "reason", "reasoner", "wisdom", "think", "thinking", "logic",
     "analysis", "analyze", "inference", "llm", "text"}
)  # fmt: skip


def normalize_expert(value: Any) -> Expert | None:
    words = set(re.sub(r"[^a-z]+", " ", str(value).lower()).split())
    vision, insight = bool(words & _VISION_WORDS), bool(words & _INSIGHT_WORDS)
    if vision and not insight:
        return "vision"
    if insight and not vision:
        return "insight"
    return None


@dataclass(frozen=True)
class DispatchDecision:
    expert: Expert
    questions: tuple[str, ...]  # one, or up to max_questions visual ones in parallel mode
    dropped: int = 0  # extra parallel sub-questions beyond the limit

    @property
    def question(self) -> str:
        return self.questions[0]

    def as_dict(self) -> dict[str, Any]:
        if len(self.questions) == 1:
            return {"expert": self.expert, "question": self.questions[0]}
        return {"expert": self.expert, "questions": list(self.questions)}


def _as_questions(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if isinstance(v, (str, int, float))]
        return [item for item in items if item]
    return []


def parse_dispatch(
    text: str, *, parallel: bool = False, max_questions: int = 1
) -> DispatchDecision:
    """Read the dispatcher's choice. Raises ParseError (unreadable, unknown expert, no question)."""
    obj = extract_object(text)
    raw_expert = _first(obj, _EXPERT_KEYS)
    if raw_expert is None:
        raise ParseError(f"no 'expert' field in {sorted(obj)}")
    expert = normalize_expert(raw_expert)
    if expert is None:
        raise ParseError(f"unknown expert {str(raw_expert)[:60]!r}")
    questions = _as_questions(_first(obj, _QUESTIONS_KEYS)) + _as_questions(
        _first(obj, _QUESTION_KEYS)
    )
    questions = list(dict.fromkeys(questions))  # de-duplicate, keep order
    if not questions:
        raise ParseError(f"no sub-question for the {expert} expert")
    limit = max(1, max_questions) if (parallel and expert == "vision") else 1
    return DispatchDecision(expert, tuple(questions[:limit]), max(0, len(questions) - limit))


# ------------------------------------------------------------------------------ referee verdicts

_VERDICT_KEYS = ("solvable", "solved", "answerable", "sufficient", "can_answer", "verdict",
                 "decision", "judgement", "judgment", "is_solvable", "enough")  # fmt: skip
_REASON_KEYS = ("reasoning", "reason", "explanation", "rationale", "thought", "thoughts",
                "analysis", "justification", "why")  # fmt: skip
_TRUE = frozenset({"true", "yes", "y", "1", "solvable", "solved", "sufficient", "answerable",
                   "enough", "can answer", "yes solvable"})  # fmt: skip
_FALSE = frozenset({"false", "no", "n", "0", "unsolvable", "not solvable", "insufficient",
                    "not sufficient", "not yet", "not enough", "unanswerable", "cannot answer",
                    "no not solvable"})  # fmt: skip


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    words = " ".join(re.sub(r"[^a-z0-9]+", " ", str(value).lower()).split())
    if words in _TRUE:
        return True
    if words in _FALSE:
        return False
    return None


@dataclass(frozen=True)
class Verdict:
    solvable: bool
    reasoning: str

    def as_dict(self) -> dict[str, Any]:
        return {"solvable": self.solvable, "reasoning": self.reasoning}


def parse_verdict(text: str) -> Verdict:
    """Read the referee's verdict. Raises ParseError when it states none."""
    try:
        obj: dict[str, Any] | None = extract_object(text)
    except ParseError:
        obj = None
    if obj is not None:
        raw = _first(obj, _VERDICT_KEYS)
        if raw is not None:
            solvable = _as_bool(raw)
            if solvable is None:
                raise ParseError(f"verdict {str(raw)[:60]!r} is neither yes nor no")
            reasoning = _first(obj, _REASON_KEYS)
            return Verdict(solvable, str(reasoning).strip() if reasoning is not None else "")
    # prose: "Yes, the notes show ..." / "No. We still need ..."
    lead = re.match(r"\W*(yes|no|solvable|unsolvable|not solvable)\b[\s.,:;!-]*", text, re.I)
    if lead:
        solvable = _as_bool(lead.group(1))
        if solvable is not None:
            return Verdict(solvable, text[lead.end() :].strip())
    raise ParseError("no solvable/unsolvable verdict in the output")


# ------------------------------------------------------------------------------- answer strings

_ANSWER_LINE = re.compile(
    r"^\W*(?:the\s+)?(?:final\s+answer|answer)(?:\s+is)?\s*[:：]\s*(.*)$", re.I
)
_PREFIXES = re.compile(
    r"^\s*(?:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:：]?|(?:so|therefore|thus),?\s+the\s+"
    r"(?:final\s+)?answer\s+is\s*:?)\s*",
    re.I,
)


def _unmark(text: str) -> str:
    return text.replace("**", "").replace("__", "").strip()


def answer_line(text: str) -> str | None:
    """The content of the last ``Answer: ...`` / ``Final answer: ...`` line, if there is one."""
    lines = [_unmark(line) for line in text.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        match = _ANSWER_LINE.match(lines[i])
        if match:
            content = match.group(1).strip()
            if not content:  # "Answer:" alone, the answer on the next non-empty line
                content = next((ln for ln in lines[i + 1 :] if ln.strip()), "")
            if content:
                return content
    return None


def clean_answer(text: str) -> str:
    """A clean answer string: no "Answer:" prefix, markdown emphasis, quotes or lone final dot."""
    answer = _unmark(text)
    previous = None
    while previous != answer:
        previous = answer
        answer = _PREFIXES.sub("", answer, count=1).strip()
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'`":
            answer = answer[1:-1].strip()
    if answer.endswith(".") and answer.count(".") == 1:
        answer = answer[:-1].rstrip()
    return answer


def final_answer(text: str) -> str:
    """The answer of a free-form reply: its answer line if it has one, else the whole text."""
    line = answer_line(text)
    return clean_answer(line if line is not None else text)


# ------------------------------------------------------------------------------ multiple choice

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


def _norm_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def extract_choice(text: str, options: Sequence[str]) -> int | None:
    """Index of the option the reply names (by letter or by text), or None. Never guesses."""
    if not options:
        return None
    pairs = split_options(options)
    letters = [letter for letter, _ in pairs]
    line = answer_line(text)
    candidate = clean_answer(line if line is not None else text)

    def by_letter(letter: str) -> int | None:
        letter = letter.upper()
        return letters.index(letter) if letter in letters else None

    # "B", "(B)", "b." -- the whole candidate is a letter
    match = re.fullmatch(r"\(?([A-Za-z])\)?[.:)]?", candidate)
    if match:
        return by_letter(match.group(1))
    # "B. blue", "(B) blue", "B) blue", "Option B: blue"
    match = re.match(r"(?i:option\s+)?(?:\(([A-Z])\)|([A-Z])[.:)])(?:\s|$)", candidate)
    if match:
        return by_letter(match.group(1) or match.group(2))
    # "... option B ...", "... (B) ..." -- when exactly one letter is named
    named = {
        (word or paren).upper()
        for word, paren in re.findall(r"\b(?i:option)\s+([A-Za-z])\b|\(([A-Z])\)", candidate)
    }
    if len(named) == 1:
        found = by_letter(named.pop())
        if found is not None:
            return found
    # the option's text
    norm = _norm_text(candidate)
    texts = [_norm_text(t) for _, t in pairs]
    if norm in texts and texts.count(norm) == 1:
        return texts.index(norm)
    hits = [i for i, t in enumerate(texts) if t and re.search(rf"\b{re.escape(t)}\b", norm)]
    hits = [i for i in hits if not any(j != i and texts[i] in texts[j] for j in hits)]
    if len(hits) == 1:
        return hits[0]
    return None
