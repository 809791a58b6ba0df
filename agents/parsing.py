"""Tolerant readers for model output: dispatcher decisions and referee verdicts.

Models asked for JSON still answer with code fences, leading prose, Python dicts (single quotes,
``True``), trailing commas, ``key: value`` lines or synonyms ("visual", "reasoning", "yes"); the
``reference`` prompt set asks for the authors' text protocol (a curly-brace block with
``'Thought'``, ``'EXPERT name'``, ``'Question'``; a ``Thought: ...`` / ``Answer: CAN_SOLVE`` or
``UNSOLVABLE`` verdict). The readers accept all of these, with the thought before or after the
decision. What they cannot read raises :class:`ParseError`, which the loop records on the step
(the round is spent, the run goes on). Nothing here raises anything else for any model output.

Safety rules (a cut-off or malformed output is never read as its opposite):

- an object that starts but never closes (``{"solvable": false, "reasoning": "we still ...``) is
  cut off: nothing inside it is read, neither as JSON nor as ``key: value`` lines;
- a verdict value is read only when it is one of a closed vocabulary ("true", "no", "CAN_SOLVE",
  "not solvable" ...): "f", "CAN", "perhaps" are unreadable, never a guess; several verdict lines
  that disagree are unreadable;
- the prose fallback reads only a reply that *starts* with "Yes," / "No." / "Solvable." /
  "UNSOLVABLE" ...: never a JSON key name, never a word in the middle of a sentence, and never a
  "yes" whose first sentence says the notes are insufficient;
- the loop (not this module) treats any decision cut at max_tokens as unreadable.

Parsing is linear and bounded: at most :data:`MAX_DECISION_CHARS` characters are read (a longer
reply is unreadable), at most :data:`MAX_CANDIDATES` ``{...}`` spans are tried, and the slow YAML
attempt only on spans up to :data:`MAX_YAML_CHARS`.

The final-answer readers (answer lines, options) live in :mod:`agents.answers`, re-exported here.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from agents.answers import (
    answer_line,
    clean_answer,
    extract_choice,
    final_answer,
    format_options,
    option_letter,
    read_choice,
    split_options,
)

__all__ = [
    "DispatchDecision",
    "ParseError",
    "Verdict",
    "answer_line",
    "clean_answer",
    "extract_choice",
    "extract_object",
    "final_answer",
    "format_options",
    "normalize_expert",
    "option_letter",
    "parse_dispatch",
    "parse_verdict",
    "read_choice",
    "split_options",
]

Expert = Literal["vision", "insight", "ocr"]

#: a decision longer than this is not read at all (unreadable): ~4k tokens, 8x the default
#: max_tokens of a call. The scan costs ~0.5 µs per brace / quote, so this bounds a parse to
#: ~10 ms on any input (and a 1 MB reply is refused at once)
MAX_DECISION_CHARS = 16_384
#: at most this many complete ``{...}`` spans are tried per reply
MAX_CANDIDATES = 8
#: YAML (pure Python, slow) is tried only on spans up to this size
MAX_YAML_CHARS = 4_096


class ParseError(ValueError):
    """A model's output could not be read as the decision it was asked for."""


# ---------------------------------------------------------------------------------- JSON objects

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_SPECIAL = re.compile(r"[{}\"'\\]")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PAIR_KEY = re.compile(r"""(?:[-*]\s*)?["']?([A-Za-z][\w \-]{0,30}?)["']?\s*[:=：]""")
_OPENS_LIKE_JSON = re.compile(r"\{\s*[\"']")
_LITERALS = re.compile(r"\b(true|false|null)\b")


@dataclass(frozen=True)
class _Scan:
    spans: list[tuple[int, int]]  # complete top-level {...} spans (start, end)
    open_at: int | None  # where an object starts that never closes (cut off), if any


def _scan_objects(text: str) -> _Scan:
    """Top-level ``{...}`` spans, honouring quoted strings (both quote styles). Linear: it jumps
    from one brace, quote or backslash to the next and never looks back past the previous one."""
    spans: list[tuple[int, int]] = []
    depth, start, quote, skip, pos = 0, -1, "", -1, 0
    last = ""  # the last brace / quote outside strings
    for match in _SPECIAL.finditer(text):
        i = match.start()
        if i < skip:  # escaped by the backslash before it
            continue
        ch = text[i]
        if quote:
            if ch == "\\":
                skip = i + 2
            elif ch == quote:
                quote = ""
                last, pos = ch, i + 1
            continue
        if ch in "\"'":
            if depth > 0:
                # an apostrophe in prose ("don't") does not open a string: only after , : [ {
                j = i - 1
                while j >= pos and text[j] in " \t\r\n":
                    j -= 1
                before = text[j] if j >= pos else last
                if ch == '"' or before in ",:[{":
                    quote = ch
            last, pos = ch, i + 1
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
                if len(spans) >= MAX_CANDIDATES:
                    return _Scan(spans, None)
        last, pos = ch, i + 1
    # an unclosed object that opens like JSON ({"... / {'...) is a cut-off decision; a stray "{"
    # in prose ("the set {a, b") is not, and the text after it is still read
    cut = depth > 0 and _OPENS_LIKE_JSON.match(text, start) is not None
    return _Scan(spans, start if cut else None)


def _load_object(candidate: str) -> dict[str, Any] | None:
    without_commas = _TRAILING_COMMA.sub(r"\1", candidate)
    attempts = [
        lambda: json.loads(candidate),
        lambda: json.loads(without_commas),
        lambda: ast.literal_eval(without_commas),
        lambda: ast.literal_eval(
            _LITERALS.sub(
                lambda m: {"true": "True", "false": "False", "null": "None"}[m.group(1)],
                without_commas,
            )
        ),
    ]
    if len(candidate) <= MAX_YAML_CHARS:
        attempts.append(lambda: yaml.safe_load(candidate))
    for attempt in attempts:
        try:
            value = attempt()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, yaml.YAMLError):
            continue
        if isinstance(value, dict) and any(v is not None for v in value.values()):
            return {_norm_key(k): v for k, v in value.items()}  # ({prose} reads as {k: None})
    return None


def _loose_pairs(text: str) -> dict[str, list[str]]:
    """``key: value`` lines (YAML-ish answers, the authors' ``'Key':'value',`` block lines, the
    ``Thought: ...`` / ``Answer: ...`` text protocol). Every value of a key, in order."""
    pairs: dict[str, list[str]] = {}
    for line in text.replace("```", "\n").splitlines():
        line = line.replace("**", "").replace("__", "").lstrip(" \t#>")  # markdown emphasis
        match = _PAIR_KEY.match(line)
        if not match:
            continue
        value = line[match.end() :].strip()
        if value.endswith(","):
            value = value[:-1].rstrip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.strip("\"'")
        pairs.setdefault(_norm_key(match.group(1)), []).append(value.strip())
    return pairs


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _bounded(text: str) -> str:
    if not isinstance(text, str):
        raise ParseError("the output is not text")
    if len(text) > MAX_DECISION_CHARS:
        raise ParseError(f"the output is too long to be a decision ({len(text)} characters)")
    return text


@dataclass(frozen=True)
class _Found:
    fields: dict[str, Any]
    #: "object" (a JSON / Python dict), "block" (an unloadable {...} read line by line), "lines"
    source: str
    #: the text the fields were read from (for the text protocol's reasoning)
    text: str


def _candidates(text: str, scan: _Scan) -> Iterator[_Found]:
    """Every readable field set, best first: loaded objects, unloadable blocks read line by line,
    then ``key: value`` lines outside any object. Nothing from an object that is cut off."""
    fences = [m.span(1) for m in _FENCE.finditer(text)]
    blocks: list[str] = []
    # objects inside a code fence first ("Plan {x}. ```json {...}```")
    ordered = sorted(scan.spans, key=lambda s: not any(a <= s[0] < b for a, b in fences))
    for start, end in ordered:
        span = text[start:end]
        obj = _load_object(span)
        if obj is not None:
            yield _Found(obj, "object", span)
        else:
            blocks.append(span)
    for block in blocks:
        pairs = _loose_pairs(block[1:-1])
        if pairs:
            yield _Found({k: v[0] for k, v in pairs.items()}, "block", block)
    # the prose outside objects; a cut-off object (and everything after it) is never read
    outside, cursor = [], 0
    for start, end in scan.spans:
        outside.append(text[cursor:start])
        cursor = end
    outside.append(text[cursor : scan.open_at if scan.open_at is not None else len(text)])
    rest = "\n".join(outside)
    pairs = _loose_pairs(rest)
    if pairs:
        yield _Found({k: (v if len(v) > 1 else v[0]) for k, v in pairs.items()}, "lines", rest)


def _no_object_error(scan: _Scan) -> ParseError:
    if scan.open_at is not None:
        return ParseError("no JSON object found (one starts but is cut off)")
    return ParseError("no JSON object found in the output")


def extract_object(text: str) -> dict[str, Any]:
    """The first JSON-like object in ``text`` (keys lower-cased), else ``key: value`` lines."""
    scan = _scan_objects(_bounded(text))
    for found in _candidates(text, scan):
        return found.fields
    raise _no_object_error(scan)


def _first(obj: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in obj and obj[key] not in (None, ""):
            return obj[key]
    return None


# ------------------------------------------------------------------------- dispatcher decisions

_EXPERT_KEYS = ("expert", "expert_name", "next_expert", "selected_expert", "agent", "role", "tool")
_QUESTION_KEYS = ("question", "sub_question", "subquestion", "query", "sub_query", "task", "prompt")
_QUESTIONS_KEYS = ("questions", "sub_questions", "subquestions", "queries", "sub_queries")
_THOUGHT_KEYS = ("thought", "thoughts", "reasoning", "analysis", "rationale", "thinking")
_VISION_WORDS = frozenset(
    {"vision", "visual", "eyesight", "perception", "perceive", "image", "see", "look", "observe",
     "observer", "eye", "eyes", "lvlm", "vlm"}
)  # fmt: skip
_INSIGHT_WORDS = frozenset(
    {"insight", "reasoning", "reason", "reasoner", "wisdom", "think", "thinking", "logic",
     "analysis", "analyze", "inference", "llm", "text"}
)  # fmt: skip
#: the OCR expert (only when the run enables it): "ocr", "OCR Expert", "text reader", "read text"
_OCR_WORDS = frozenset({"ocr", "reader", "read", "transcribe", "transcriber", "transcription"})
#: the sub-question of an OCR decision that names none (OCR reads all the text anyway)
OCR_DEFAULT_QUESTION = "Read the text in the image."


def normalize_expert(value: Any, *, ocr: bool = False) -> Expert | None:
    """The expert a decision names. "ocr" only when ``ocr``: otherwise the words are read as
    before and an OCR expert is unknown (None)."""
    if not isinstance(value, str):
        return None
    words = set(re.sub(r"[^a-z]+", " ", value[:200].lower()).split())
    if ocr and words & _OCR_WORDS:
        # "OCR Expert", "text reader": OCR words win over "text" and "image", not over the others
        others = words & (_VISION_WORDS | _INSIGHT_WORDS) - {"text", "image"}
        return None if others else "ocr"
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
    thought: str = ""  # what the dispatcher wrote before deciding, if anything

    @property
    def question(self) -> str:
        return self.questions[0]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"thought": self.thought} if self.thought else {}
        out["expert"] = self.expert
        if len(self.questions) == 1:
            out["question"] = self.questions[0]
        else:
            out["questions"] = list(self.questions)
        return out


def _as_questions(value: Any) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):  # "['a?', 'b?']" from a line
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return [text]
            return _as_questions(value) if isinstance(value, list) else [text]
        return [text] if text else []
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if isinstance(v, (str, int, float))]
        return [item for item in items if item]
    return []


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return str(value).strip() if value is not None else ""


def parse_dispatch(
    text: str, *, parallel: bool = False, max_questions: int = 1, ocr: bool = False
) -> DispatchDecision:
    """Read the dispatcher's choice. Raises ParseError (unreadable, unknown expert, no question).

    ``ocr``: the run offers the OCR expert, so "ocr" is a known expert (its sub-question is
    optional); without it, a decision for the OCR expert names an unknown expert."""
    scan = _scan_objects(_bounded(text))
    candidates = list(_candidates(text, scan))
    found = next((f for f in candidates if _first(f.fields, _EXPERT_KEYS) is not None), None)
    if found is None:
        if not candidates:
            raise _no_object_error(scan)
        raise ParseError(f"no 'expert' field in {sorted(candidates[0].fields)[:10]}")
    obj = found.fields
    raw_expert = _first(obj, _EXPERT_KEYS)
    if isinstance(raw_expert, list):  # the same key on several lines
        experts = {normalize_expert(v, ocr=ocr) for v in raw_expert}
        raw_expert = raw_expert[0] if len(experts) == 1 else " ".join(raw_expert)
    expert = normalize_expert(raw_expert, ocr=ocr)
    if expert is None:
        raise ParseError(f"unknown expert {str(raw_expert)[:60]!r}")
    questions = _as_questions(_first(obj, _QUESTIONS_KEYS)) + _as_questions(
        _first(obj, _QUESTION_KEYS)
    )
    questions = list(dict.fromkeys(questions))  # de-duplicate, keep order
    if not questions and expert == "ocr":
        questions = [OCR_DEFAULT_QUESTION]
    if not questions:
        raise ParseError(f"no sub-question for the {expert} expert")
    limit = max(1, max_questions) if (parallel and expert == "vision") else 1
    thought = _text(_first(obj, _THOUGHT_KEYS))
    return DispatchDecision(
        expert, tuple(questions[:limit]), max(0, len(questions) - limit), thought
    )


# ------------------------------------------------------------------------------ referee verdicts

_VERDICT_KEYS = ("solvable", "solved", "answerable", "sufficient", "can_answer", "verdict",
                 "decision", "judgement", "judgment", "is_solvable", "enough", "can_solve",
                 "answer")  # fmt: skip
_REASON_KEYS = ("reasoning", "reason", "explanation", "rationale", "thought", "thoughts",
                "analysis", "justification", "why")  # fmt: skip
_TRUE = frozenset({"true", "yes", "y", "1", "solvable", "solved", "sufficient", "answerable",
                   "enough", "can answer", "yes solvable", "can solve"})  # fmt: skip
_FALSE = frozenset({"false", "no", "n", "0", "unsolvable", "not solvable", "insufficient",
                    "not sufficient", "not yet", "not enough", "unanswerable", "cannot answer",
                    "no not solvable", "cannot solve", "can not solve", "cant solve",
                    "not solved", "not answerable"})  # fmt: skip
#: a prose reply that starts with its verdict: "Yes, ..." / "No." / "Solvable." / "UNSOLVABLE"
_PROSE_LEAD = re.compile(
    r"(yes|no)\s*[.,:;!\n\-–—]|(solvable|not solvable)\s*[.!\n]"
    r"|(can_solve|unsolvable|cannot_solve)(?!\w)",
    re.I,
)
#: a "yes" whose first sentence says the opposite is no verdict
_INSUFFICIENT = re.compile(
    r"\b(?:not|cannot|can ?n[o']?t|insufficient|unsolvable|unanswerable|missing|lack|lacking|"
    r"need more|still need|unclear|unknown)\b",
    re.I,
)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str) or len(value) > 40:
        return None
    words = " ".join(re.sub(r"[^a-z0-9]+", " ", value.lower()).split())
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
        return {"reasoning": self.reasoning, "solvable": self.solvable}


_REASON_LABEL = re.compile(
    r"^\W{0,4}(?:thought|thoughts|reasoning|reason|analysis|rationale)\W{0,4}\s*[:：]\s*", re.I
)
_VERDICT_LINE = re.compile(
    r"^\W{0,4}(?:answer|verdict|decision|judge?ment|solvable)\W{0,4}\s*[:=：]", re.I | re.M
)


def _line_reasoning(found: _Found, obj: dict[str, Any]) -> str:
    """The reasoning of a text-protocol verdict: what precedes the verdict line (its "Thought:"
    label removed), else a reasoning line, else what follows the verdict line."""
    text = found.text
    line = _VERDICT_LINE.search(text)
    if line is not None:
        before = text[: line.start()].replace("**", "").strip()
        before = _REASON_LABEL.sub("", before, count=1).strip()
        if before:
            return before
    reason = _text(_first(obj, _REASON_KEYS))
    if reason:
        return reason
    if line is not None:
        after = text[line.end() :].split("\n", 1)
        return after[1].strip() if len(after) > 1 else ""
    return ""


def _verdict_from(found: _Found) -> Verdict | None:
    obj = found.fields
    raw = _first(obj, _VERDICT_KEYS)
    if raw is None:
        return None
    values = raw if isinstance(raw, list) else [raw]
    readings = {_as_bool(v) for v in values}
    if None in readings and found.source != "lines":
        raise ParseError(f"verdict {str(raw)[:60]!r} is neither yes nor no")
    readings.discard(None)
    if not readings:
        raise ParseError(f"verdict {str(values[-1])[:60]!r} is neither yes nor no")
    if len(readings) > 1:
        raise ParseError("the output states both verdicts")
    solvable = readings.pop()
    if found.source == "lines":
        return Verdict(solvable, _line_reasoning(found, obj))
    return Verdict(solvable, _text(_first(obj, _REASON_KEYS)))


def parse_verdict(text: str) -> Verdict:
    """Read the referee's verdict. Raises ParseError when it states none (or both)."""
    scan = _scan_objects(_bounded(text))
    for found in _candidates(text, scan):
        verdict = _verdict_from(found)
        if verdict is not None:
            return verdict
    # prose: "Yes, the notes show ..." / "No. We still need ..." -- a reply that STARTS with it
    body = text.lstrip().lstrip("*#>_ \t").lstrip()
    lead = _PROSE_LEAD.match(body)
    if lead:
        solvable = _as_bool(next(g for g in lead.groups() if g).replace("_", " "))
        rest = body[lead.end() :].strip()
        first_sentence = re.split(r"(?<=[.!?])\s|\n", rest, maxsplit=1)[0]
        if solvable and _INSUFFICIENT.search(first_sentence):
            raise ParseError("the output says yes but also that the notes are insufficient")
        if solvable is not None:
            return Verdict(solvable, rest)
    if scan.open_at is not None:
        raise ParseError("no verdict found (an object starts but is cut off)")
    raise ParseError("no solvable/unsolvable verdict in the output")
