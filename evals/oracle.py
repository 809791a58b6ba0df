"""The demo teacher: an easy-VQA "oracle" that plays every ProReason role correctly.

No big model is available offline, so the demo models learn from trajectories of the REAL
``agents.Reasoner`` loop in which every model call is answered by :class:`OracleBackend`. The
oracle knows, per item, the image's shape and colour, derived from the easy-VQA annotations of
that image (:func:`image_facts`: direct answers to "what shape / what colour" questions, plus what
the yes/no answers imply), and the question being solved.

Roles are recognised from the CURRENT prompt templates (their system texts, see
:func:`role_of_request`), never from hard-coded prompt text, so the training data follows
whatever ``configs/prompts`` says when it is regenerated. Facts already collected are read back
from the notes in the prompt (the oracle's own phrasings), so the referee's verdict and the
dispatcher's next step depend on the notes the loop actually shows, not on hidden state.

The policy (think-then-decide JSON decisions), the same for every easy-VQA question, so the
text roles learn one short protocol and the reasoning happens where the method puts it:

- the dispatcher asks the vision expert to describe the shape and its colour (one call:
  "What shape is in the image, and what colour is it?" -> "The shape is a red triangle.");
- the referee reasons from the question and the notes to the answer, thought first ("The
  question asks whether there is no green shape. The notes say the shape is a red triangle, and
  red is not green, so the answer is yes."), and says solvable; its reasoning joins the notes;
- the summarizer answers with the one word the referee's note concludes;
- if the notes do not describe the shape yet, the referee says not solvable and the dispatcher
  asks again; the insight expert (not needed on easy-VQA) says what the notes imply if asked;
- direct / cot / fallback (LVLM baselines): the answer, or one sentence of what is seen and an
  ``Answer:`` line.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from agents.prompts import PromptSet
from models.base import ModelBackend
from models.types import GenerationRequest, GenerationResult, Usage

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
Attribute = Literal["shape", "colour"]

#: the visual sub-questions the oracle dispatcher asks (its own wording, not a prompt template)
SUB_QUESTIONS: dict[str, str] = {
    "shape": "What shape is in the image?",
    "colour": "What colour is the shape?",
    "both": "What shape is in the image, and what colour is it?",
}


# ------------------------------------------------------------------------------ easy-VQA facts


@dataclass(frozen=True)
class ImageFacts:
    """What the annotations say about one image (None: not determined by them)."""

    shape: str | None = None
    colour: str | None = None

    def get(self, attribute: Attribute) -> str | None:
        return self.shape if attribute == "shape" else self.colour


@dataclass(frozen=True)
class ParsedQuestion:
    """An easy-VQA question: which attribute it is about, and for yes/no ones the value asked."""

    kind: Literal["what", "yesno"]
    attribute: Attribute
    value: str | None = None  # yes/no: the shape or colour asked about
    negated: bool = False

    def answer(self, facts: ImageFacts) -> str | None:
        known = facts.get(self.attribute)
        if known is None:
            return None
        if self.kind == "what":
            return known
        return "yes" if (known == self.value) != self.negated else "no"


_WORD = re.compile(r"[a-z]+")


def parse_question(text: str) -> ParsedQuestion | None:
    """Parse an easy-VQA question (its 24 templates); None for anything else."""
    words = _WORD.findall(text.lower())
    if not words:
        return None
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    if words[0] == "what":
        if "color" in words or "colour" in words:
            return ParsedQuestion("what", "colour")
        if "shape" in words:
            return ParsedQuestion("what", "shape")
        return None
    if words[0] not in ("is", "does", "are"):
        return None
    negated = "not" in words or "no" in words
    if colour is not None:
        return ParsedQuestion("yesno", "colour", colour, negated)
    if shape is not None:
        return ParsedQuestion("yesno", "shape", shape, negated)
    return None


def asks_both(text: str) -> bool:
    """A "what shape, and what colour" sub-question (the oracle dispatcher's description ask)."""
    words = _WORD.findall(text.lower())
    return (
        bool(words)
        and words[0] == "what"
        and "shape" in words
        and ("colour" in words or "color" in words)
        and ("and" in words)
    )


def facts_from_annotations(rows: Iterable[tuple[str, str, int]]) -> dict[int, ImageFacts]:
    """Per image id: the shape and colour the (question, answer) annotations determine.

    Direct answers ("what shape ..." -> circle) fix an attribute; yes/no answers fix it when they
    assert a value, or rule values out (a shape is known once two of the three are ruled out).
    """
    known: dict[int, dict[str, str]] = defaultdict(dict)
    ruled_out: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for question, answer, image_id in rows:
        parsed = parse_question(question)
        if parsed is None:
            continue
        if parsed.kind == "what":
            known[image_id][parsed.attribute] = answer
            continue
        present = (answer == "yes") != parsed.negated
        if present:
            known[image_id][parsed.attribute] = parsed.value or ""
        elif parsed.value:
            ruled_out[image_id][parsed.attribute].add(parsed.value)
    facts: dict[int, ImageFacts] = {}
    for image_id in set(known) | set(ruled_out):
        values = dict(known[image_id])
        for attribute, domain in (("shape", SHAPES), ("colour", COLOURS)):
            left = [v for v in domain if v not in ruled_out[image_id][attribute]]
            if attribute not in values and len(left) == 1:
                values[attribute] = left[0]
        facts[image_id] = ImageFacts(values.get("shape"), values.get("colour"))
    return facts


@lru_cache(maxsize=2)
def image_facts(split: str) -> dict[int, ImageFacts]:
    """Facts for every image of an easy-VQA split (``train`` or ``test``) from its annotations."""
    import easy_vqa

    if split == "train":
        rows = easy_vqa.get_train_questions()
    elif split == "test":
        rows = easy_vqa.get_test_questions()
    else:
        raise ValueError(f"easy-vqa has splits 'train' and 'test', not {split!r}")
    return facts_from_annotations(zip(*rows, strict=True))


# ------------------------------------------------------------------------- role recognition

#: prompt names the oracle answers, by the kind of reply
_TEXT_ROLES = ("dispatcher", "dispatcher_ocr", "insight", "referee", "summarizer")
_ANSWER_ROLES = ("direct", "cot", "fallback", "no_image")


def role_of_request(request: GenerationRequest, prompts: PromptSet) -> str:
    """The prompt a request was rendered from, recognised by the current templates.

    The system text names the prompt; prompts sharing one system text (the one-shot answering
    prompts) are told apart by the answer-format instruction their user turn contains.
    """
    system = next((m.text_content for m in request.messages if m.role == "system"), None)
    user = next((m.text_content for m in request.messages if m.role == "user"), "")
    names = [
        name for name in ("vision", *_TEXT_ROLES, *_ANSWER_ROLES) if prompts[name].system == system
    ]
    if len(names) == 1:
        return names[0]
    if "cot" in names and prompts.text("answer_step_open").strip() in user:
        return "cot"
    if request.images and "direct" in names:
        return "direct"  # direct and fallback are the same kind of call for the oracle
    if "no_image" in names:
        return "no_image"
    raise ValueError(f"cannot tell which prompt this request was rendered from: {names or system}")


# ---------------------------------------------------------------------------------- the oracle

_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(SHAPES)
#: the vision expert's statements: "The shape is a circle." / "... is red." / "... a red circle."
_NOTE_SHAPE = re.compile(rf"\bthe shape is an? (?:(?:{_COLOUR_RE}) )?({_SHAPE_RE})\b", re.I)
_NOTE_COLOUR = re.compile(rf"\bthe shape is (?:an? )?({_COLOUR_RE})\b", re.I)
#: the referee's (or insight expert's) conclusion: "..., so the answer is yes." (in the notes)
_NOTE_CONCLUSION = re.compile(rf"\bso the answer is (yes|no|{_COLOUR_RE}|{_SHAPE_RE})\b", re.I)


def template_field(prompts: PromptSet, name: str, field: str, user: str) -> str | None:
    """The value of ``{field}`` in a user turn rendered from prompt ``name`` (None: no match).

    Works for templates whose other placeholders are absent or empty (e.g. the vision prompt).
    """
    marker = "\x00"
    others = {f: "" for f in prompts[name].fields if f != field}
    prefix, _, suffix = prompts[name].render(**others, **{field: marker}).strip().partition(marker)
    if not (user.startswith(prefix) and user.endswith(suffix)):
        return None
    return user[len(prefix) : len(user) - len(suffix)].strip()


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def vision_statement(attribute: Attribute, value: str) -> str:
    """How the vision expert states an attribute ("The shape is a circle.")."""
    return f"The shape is {_article(value) if attribute == 'shape' else value}."


def description(shape: str, colour: str) -> str:
    """How the vision expert describes the shape and its colour ("The shape is a red circle.")."""
    return f"The shape is {_article(colour)} {shape}."


def _notes_facts(text: str) -> tuple[ImageFacts, str | None]:
    """The facts and the yes/no conclusion the notes in a prompt state (oracle phrasings)."""
    shape = _NOTE_SHAPE.search(text)
    colour = _NOTE_COLOUR.search(text)
    conclusion = _NOTE_CONCLUSION.findall(text)
    return (
        ImageFacts(
            shape.group(1).lower() if shape else None, colour.group(1).lower() if colour else None
        ),
        conclusion[-1].lower() if conclusion else None,
    )


def _json(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False)


class _RoleOracle(ModelBackend):
    """A teacher that answers each request by the prompt it was rendered from: ``_<role>(user
    turn)`` (the fallback answers like ``_direct``). ``ValueError`` for a role it does not play or
    a request it cannot recognise (a prompt set the oracle cannot read)."""

    backend = "oracle"
    prompts: PromptSet

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        role = role_of_request(request, self.prompts)
        user = next((m.text_content for m in request.messages if m.role == "user"), "")
        handler = getattr(self, "_direct" if role == "fallback" else f"_{role}", None)
        if handler is None:
            raise ValueError(f"{type(self).__name__} does not play {role!r}")
        text = handler(user)
        return GenerationResult(
            text=text, usage=Usage(len(user) // 4, len(text) // 4), model=self.model
        )

    def _no_image(self, user: str) -> str:
        return "I cannot tell without the image."


class OracleBackend(_RoleOracle):
    """Answers every ProReason role for ONE easy-VQA item, correctly (the demo teacher).

    ``question`` is the item's question; ``facts`` what the annotations say about its image.
    """

    def __init__(self, question: str, facts: ImageFacts, prompts: PromptSet) -> None:
        super().__init__("easy-vqa-oracle", context_length=None)
        self.question = question
        self.parsed = parse_question(question)
        self.facts = facts
        self.prompts = prompts

    # -- helpers

    def _need(self) -> ParsedQuestion:
        if self.parsed is None:
            raise ValueError(f"not an easy-VQA question: {self.question!r}")
        return self.parsed

    def _known(self, attribute: Attribute) -> str:
        value = self.facts.get(attribute)
        if value is None:
            raise ValueError(f"the annotations do not give the image's {attribute}")
        return value

    def _inference(self, parsed: ParsedQuestion, known: str) -> tuple[str, str, str]:
        """(chain of thought, yes/no, the finding) for a yes/no question given the fact."""
        asked = parsed.value or ""
        same = known == asked
        fact = vision_statement(parsed.attribute, known)[:-1]
        if parsed.attribute == "colour":
            link = f"{known} {'is' if same else 'is not'} {asked}"
            found = f"a {asked} shape" if same else f"no {asked} shape"
        else:
            link = f"{_article(known)} {'is' if same else 'is not'} {_article(asked)}"
            found = _article(asked) if same else f"no {asked}"
        thought = f"{fact}, and {link}, so there is {found}."
        # always state the polarity (one distinct word), so the yes/no is read off tokens
        thought += f" The question is {'negated' if parsed.negated else 'direct'}."
        answer = "yes" if same != parsed.negated else "no"
        return thought, answer, f"there is {found}"

    # -- the text roles

    def _dispatcher_ocr(self, user: str) -> str:
        return self._dispatcher(user)  # a shape question needs no text: the vision expert looks

    def _dispatcher(self, user: str) -> str:
        parsed = self._need()
        noted, _ = _notes_facts(user)
        value = noted.get(parsed.attribute)
        if value is None:
            return _json(
                {
                    "thought": "The notes do not describe the shape yet, so the vision expert "
                    "must look at it.",
                    "expert": "vision",
                    "question": SUB_QUESTIONS["both"],
                }
            )
        return _json(
            {
                "thought": "The notes describe the shape, so the insight expert can work out the "
                "answer.",
                "expert": "insight",
                "question": f"From the notes, answer: {self.question}",
            }
        )

    def _insight(self, user: str) -> str:
        parsed = self._need()
        noted, _ = _notes_facts(user)
        if noted.get(parsed.attribute) is None:
            return "The notes do not say enough.\nFinal answer: unknown"
        return f"{self._reasoning(parsed, noted)}\nFinal answer: {parsed.answer(noted)}"

    def _reasoning(self, parsed: ParsedQuestion, noted: ImageFacts) -> str:
        """From the question and the noted facts to the answer, one step per sentence."""
        known = noted.get(parsed.attribute) or ""
        seen = (
            f"The notes say {description(noted.shape, noted.colour)[0].lower()}"
            f"{description(noted.shape, noted.colour)[1:-1]}"
            if noted.shape and noted.colour
            else f"The notes say {vision_statement(parsed.attribute, known)[0].lower()}"
            f"{vision_statement(parsed.attribute, known)[1:-1]}"
        )
        thing = "shape" if parsed.attribute == "shape" else "colour"
        if parsed.kind == "what":
            return f"The question asks for the {thing}. {seen}, so the answer is {known}."
        asked = parsed.value or ""
        named = f"a {asked} shape" if parsed.attribute == "colour" else _article(asked)
        if parsed.negated:
            named = f"no {asked} shape" if parsed.attribute == "colour" else f"no {asked}"
        if parsed.attribute == "colour":
            link = f"{known} {'is' if known == asked else 'is not'} {asked}"
        else:
            link = f"{_article(known)} {'is' if known == asked else 'is not'} {_article(asked)}"
        answer = parsed.answer(noted)
        return (
            f"The question asks whether there is {named}. {seen}, and {link}, so the answer is "
            f"{answer}."
        )

    def _referee(self, user: str) -> str:
        parsed = self._need()
        noted, _ = _notes_facts(user)
        if noted.get(parsed.attribute) is None:
            return _json(
                {"reasoning": "The notes do not describe the shape yet.", "solvable": False}
            )
        return _json({"reasoning": self._reasoning(parsed, noted), "solvable": True})

    def _summarizer(self, user: str) -> str:
        _, conclusion = _notes_facts(user)
        return conclusion or "unknown"

    # -- the LVLM roles

    def _vision(self, user: str) -> str:
        """Answer a visual sub-question (shape, colour, both, presence) from the facts."""
        text = template_field(self.prompts, "vision", "sub_question", user) or ""
        sub = parse_question(text)
        if sub is None or asks_both(text):  # anything else: describe what is there
            return description(self._known("shape"), self._known("colour"))
        known = self._known(sub.attribute)
        statement = vision_statement(sub.attribute, known)
        if sub.kind == "what":
            return statement
        lead = "Yes" if known == sub.value else "No"
        return f"{lead}, {statement[0].lower()}{statement[1:]}"

    def _direct(self, user: str) -> str:
        answer = self._need().answer(self.facts)
        if answer is None:
            raise ValueError("the annotations do not answer this question")
        return answer

    def _cot(self, user: str) -> str:
        parsed = self._need()
        known = self._known(parsed.attribute)
        if parsed.kind == "what":
            return f"{vision_statement(parsed.attribute, known)}\nAnswer: {known}"
        thought, answer, _ = self._inference(parsed, known)
        return f"{thought}\nAnswer: {answer}"


class OracleVisionBackend(ModelBackend):
    """A perfect vision expert for any easy-VQA image it has facts for (looked up by image hash).

    For measuring the text roles alone: the text LM in the loop with exact perception.
    """

    backend = "oracle"

    def __init__(self, facts_by_sha256: dict[str, ImageFacts], prompts: PromptSet) -> None:
        super().__init__("easy-vqa-oracle-vision", context_length=None)
        self.facts = facts_by_sha256
        self.prompts = prompts

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        facts = self.facts.get(request.images[0].sha256, ImageFacts()) if request.images else None
        user = next((m.text_content for m in request.messages if m.role == "user"), "")
        question = user if role_of_request(request, self.prompts) != "vision" else ""
        oracle = OracleBackend(question, facts or ImageFacts(), self.prompts)
        return await oracle.generate(request)


# ------------------------------------------------------------------ questions about written text

#: what the oracle dispatcher asks the vision expert when it has no OCR expert
READ_QUESTION = "What text is written in the image?"
#: a cell of an OCR note's row: "[l,t,r,b] text", cells joined by " | " (agents.run.format_ocr)
_OCR_CELL = re.compile(r"\[\d+,\d+,\d+,\d+\] (.*?)(?= \| \[\d+,\d+,\d+,\d+\] |$)")
_OCR_ROW = re.compile(r"^\[\d+,\d+,\d+,\d+\] ")
#: the vision expert's reading: "The text reads, row by row: Tea | 3.40; Cake | 4.50."
_READING = "The text reads, row by row: "
_TEXT_CONCLUSION = re.compile(r'so the answer is "([^"]+)"')


def reading_statement(rows: Iterable[Iterable[str]]) -> str:
    """How the vision expert states the text it reads (rows "; ", cells " | ")."""
    return _READING + "; ".join(" | ".join(row) for row in rows) + "."


def rows_in_notes(text: str) -> list[tuple[str, ...]]:
    """The rows of text the notes in a prompt give: the OCR expert's rows, else the vision
    expert's reading (the oracle's phrasing); [] when the notes have none."""
    rows = [
        tuple(c.strip() for c in _OCR_CELL.findall(line))
        for line in text.splitlines()
        if _OCR_ROW.match(line)
    ]
    if rows:
        return rows
    for line in text.splitlines():
        at = line.find(_READING)
        if at >= 0:
            body = line[at + len(_READING) :].strip()
            body = body[:-1] if body.endswith(".") else body
            return [tuple(c.strip() for c in row.split(" | ")) for row in body.split("; ")]
    return []


class TextOracleBackend(_RoleOracle):
    """Plays every role for ONE question about written text (``evals.text_images``), correctly.

    With the OCR expert offered, the dispatcher asks it to read; without, it asks the vision
    expert to read ("What text is written in the image?"), which answers from the annotations.
    The referee finds the answer's cell in the rows the notes give, thought first, and the
    summarizer copies it.
    """

    def __init__(self, text_question: object, prompts: PromptSet) -> None:
        super().__init__("text-oracle", context_length=None)
        self.q = text_question  # an evals.text_images.TextQuestion
        self.prompts = prompts

    def _dispatcher_ocr(self, user: str) -> str:
        if rows_in_notes(user):
            return self._insight_decision()
        return _json(
            {
                "thought": "The answer is written in the image, so the OCR expert must read it.",
                "expert": "ocr",
                "question": "Read the text in the image.",
            }
        )

    def _dispatcher(self, user: str) -> str:
        if rows_in_notes(user):
            return self._insight_decision()
        return _json(
            {
                "thought": "The answer is written in the image, so the vision expert must read "
                "it.",
                "expert": "vision",
                "question": READ_QUESTION,
            }
        )

    def _insight_decision(self) -> str:
        return _json(
            {
                "thought": "The notes give the text, so the insight expert can find the answer.",
                "expert": "insight",
                "question": f"From the notes, answer: {self.q.question}",
            }
        )

    def _reasoning(self, rows: list[tuple[str, ...]]) -> str | None:
        """From the question and the rows read to the answer's cell (None: not in the rows)."""
        q = self.q
        if q.kind in ("word", "number"):
            if not rows or not rows[0]:
                return None
            text = rows[0][0]
            return (
                f'The question asks for the text in the image. The text reads "{text}", so the '
                f'answer is "{text}".'
            )
        row = next((r for r in rows if r and r[0] == q.key), None)
        if row is None:
            return None
        if q.kind == "price":
            if len(row) < 2:
                return None
            return (
                f'The question asks for the price of {q.key}. The row of {q.key} reads '
                f'"{" | ".join(row)}", so the answer is "{row[1]}".'
            )
        header = rows[0]
        if q.column not in header or header.index(q.column) >= len(row):
            return None
        k = header.index(q.column)
        return (
            f'The question asks for the {q.column} of {q.key}. The header reads '
            f'"{" | ".join(header)}" and the row of {q.key} reads "{" | ".join(row)}"; '
            f'{q.column} is column {k + 1}, so the answer is "{row[k]}".'
        )

    def _referee(self, user: str) -> str:
        reasoning = self._reasoning(rows_in_notes(user))
        if reasoning is None:
            return _json({"reasoning": "The notes do not give the text yet.", "solvable": False})
        return _json({"reasoning": reasoning, "solvable": True})

    def _insight(self, user: str) -> str:
        reasoning = self._reasoning(rows_in_notes(user))
        if reasoning is None:
            return "The notes do not say enough.\nFinal answer: unknown"
        return f"{reasoning}\nFinal answer: {_TEXT_CONCLUSION.findall(reasoning)[-1]}"

    def _summarizer(self, user: str) -> str:
        found = _TEXT_CONCLUSION.findall(user)
        return found[-1] if found else "unknown"

    def _vision(self, user: str) -> str:
        return reading_statement(self.q.case.rows)

    def _direct(self, user: str) -> str:
        return self.q.answer
