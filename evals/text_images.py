"""Images with rendered text: the OCR expert's world.

Signs, numbers, price lists and small tables drawn with PIL's bundled font
(``ImageFont.load_default(size=...)``, no system fonts, the same on every machine), each with
the text it shows row by row and the pixel box of every cell. Used by the OCR tests, by the demo
models' training data (``evals.demo``: questions whose answer is written in the image) and by
the with/without-OCR accuracy figure (``proreason demo-report --ocr``, docs/accuracy.md).

Four kinds of question, each answered by one cell:

- ``word``: a sign with one word or two ("What word is written in the image?" -> "North Exit");
- ``number``: one number ("What number is shown in the image?" -> "472");
- ``price``: a price list of 2-3 rows ("What is the price of Tea?" -> "3.40");
- ``table``: a header and 2 rows ("What is the Year of Rome?" -> "2022").

:func:`annotated_recognizer` reads these images from their annotations (an OCR engine that is
always right, in the real engine's output shape): the demo teacher's OCR expert.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from evals.datasets import EvalItem

Kind = Literal["word", "number", "price", "table"]
KINDS: tuple[Kind, ...] = ("word", "number", "price", "table")

SIGN_WORDS = ("OPEN", "CLOSED", "EXIT", "North", "South", "Station", "Market", "Garden",
              "Library", "Museum", "Platform", "Hotel", "Bakery", "Harbour")  # fmt: skip
ITEMS = ("Coffee", "Tea", "Bread", "Ticket", "Soup", "Cake", "Juice", "Salad", "Water", "Rice",
         "Pasta", "Milk")  # fmt: skip
CITIES = ("Paris", "Rome", "Berlin", "Madrid", "Oslo", "Vienna", "Lisbon", "Prague")
COLUMNS = ("Year", "Visitors", "Rooms", "Staff", "Floors")
#: every word a question or an answer may copy from the image (the demo tokenizers keep each
#: one a single token)
WORDS = (*SIGN_WORDS, *ITEMS, *CITIES, *COLUMNS, "City")

QUESTIONS: dict[Kind, tuple[str, ...]] = {
    "word": ("What word is written in the image?", "What does the sign say?"),
    "number": ("What number is shown in the image?", "What number is written in the image?"),
    "price": ("What is the price of {key}?", "How much does {key} cost?"),
    "table": ("What is the {column} of {key}?", "In the table, what is the {column} for {key}?"),
}


@dataclass(frozen=True)
class TextCase:
    name: str
    image: Image.Image
    #: the rows of text, top to bottom; each row's cells left to right
    rows: tuple[tuple[str, ...], ...]
    #: each cell's box (left, top, right, bottom) in pixels, in the shape of ``rows``
    boxes: tuple[tuple[tuple[int, int, int, int], ...], ...] = ()

    @property
    def cells(self) -> tuple[str, ...]:
        return tuple(cell for row in self.rows for cell in row)

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, format="PNG")
        return out.getvalue()


def draw(
    rows: Sequence[Sequence[str]],
    *,
    size: int = 28,
    col_width: int = 170,
    row_height: int = 56,
    margin: int = 24,
    grid: bool = False,
    name: str = "",
) -> TextCase:
    """Black text on white: ``rows`` of cells, each cell in its own column."""
    font = ImageFont.load_default(size=size)
    cols = max(len(r) for r in rows)
    width = 2 * margin + cols * col_width
    height = 2 * margin + len(rows) * row_height
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    boxes = []
    for r, row in enumerate(rows):
        row_boxes = []
        for c, cell in enumerate(row):
            at = (margin + c * col_width + 8, margin + r * row_height + 10)
            pen.text(at, cell, font=font, fill="black")
            left, top, right, bottom = pen.textbbox(at, cell, font=font)
            row_boxes.append((int(left) - 3, int(top) - 3, int(right) + 3, int(bottom) + 3))
        boxes.append(tuple(row_boxes))
    if grid:
        for r in range(len(rows) + 1):
            y = margin + r * row_height
            pen.line([(margin, y), (width - margin, y)], fill="gray", width=1)
        for c in range(cols + 1):
            x = margin + c * col_width
            pen.line([(x, margin), (x, height - margin)], fill="gray", width=1)
    return TextCase(name, image, tuple(tuple(r) for r in rows), tuple(boxes))


@dataclass(frozen=True)
class TextQuestion:
    """A question about a :class:`TextCase` whose answer is one of its cells."""

    id: str
    kind: Kind
    question: str
    answer: str
    case: TextCase
    #: the row the answer is in, by its first cell (price / table); None for word / number
    key: str | None = None
    #: the column asked about (table)
    column: str | None = None


def _price(rng: random.Random) -> str:
    return f"{rng.randint(1, 19)}.{rng.choice((0, 10, 20, 25, 40, 50, 75, 80, 90)):02d}"


def _value(column: str, rng: random.Random) -> str:
    if column == "Year":
        return str(rng.randint(1990, 2025))
    if column == "Visitors":
        return str(rng.randint(100, 9999))
    return str(rng.randint(2, 99))


def make_question(kind: Kind, rng: random.Random, name: str) -> TextQuestion:
    """One random case of ``kind`` and a question about it (seeded by ``rng``)."""
    size = rng.randint(22, 34)
    layout = {"size": size, "col_width": size * 7, "row_height": size * 2,
              "margin": rng.randint(12, 40), "name": name}  # fmt: skip
    template = rng.choice(QUESTIONS[kind])
    if kind == "word":
        words = rng.sample(SIGN_WORDS, rng.choice((1, 1, 2)))
        text = " ".join(words)
        case = draw([[text]], **{**layout, "col_width": size * 14})
        return TextQuestion(name, kind, template, text, case)
    if kind == "number":
        text = str(rng.randint(10, 9999)) if rng.random() < 0.6 else _price(rng)
        case = draw([[text]], **layout)
        return TextQuestion(name, kind, template, text, case)
    if kind == "price":
        items = rng.sample(ITEMS, rng.randint(2, 3))
        rows = [[item, _price(rng)] for item in items]
        r = rng.randrange(len(rows))
        case = draw(rows, grid=rng.random() < 0.3, **layout)
        key = rows[r][0]
        return TextQuestion(name, kind, template.format(key=key), rows[r][1], case, key=key)
    columns = rng.sample(COLUMNS, 2)
    cities = rng.sample(CITIES, 2)
    rows = [["City", *columns]] + [[city, *(_value(c, rng) for c in columns)] for city in cities]
    r, c = rng.randrange(1, 3), rng.randrange(1, 3)
    case = draw(rows, grid=rng.random() < 0.7, **layout)
    question = template.format(column=columns[c - 1], key=rows[r][0])
    return TextQuestion(name, kind, question, rows[r][c], case, key=rows[r][0],
                        column=columns[c - 1])  # fmt: skip


#: each split draws from its own seed, so no test image is a train image
_SPLIT_SEEDS = {"train": 1000, "test": 2000}


def text_questions(split: str, n: int, *, kinds: Iterable[Kind] = KINDS) -> list[TextQuestion]:
    """``n`` questions of the split, the kinds in turn (seeded: the same on every machine)."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"the text images have splits 'train' and 'test', not {split!r}")
    rng = random.Random(_SPLIT_SEEDS[split])
    kinds = tuple(kinds)
    return [
        make_question(kinds[i % len(kinds)], rng, f"text-{split}-{i:05d}") for i in range(n)
    ]


def as_items(questions: Sequence[TextQuestion], image_dir: Path | None = None) -> list[EvalItem]:
    """EvalItems (``meta``: kind, the question) with the images written to ``image_dir`` (what
    training records refer to), or carried inline as PNG bytes (``image_data``) without one."""
    if image_dir is not None:
        Path(image_dir).mkdir(parents=True, exist_ok=True)
    items = []
    for q in questions:
        meta = {"kind": q.kind, "text": q}
        if image_dir is None:
            items.append(EvalItem(q.id, q.question, (), q.answer, image_data=(q.case.png(),),
                                  answer_type="open", meta=meta))  # fmt: skip
            continue
        path = Path(image_dir) / f"{q.id}.png"
        if not path.exists():
            path.write_bytes(q.case.png())
        items.append(EvalItem(q.id, q.question, (path,), q.answer, answer_type="open", meta=meta))
    return items


def pixels_key(image: Image.Image) -> str:
    """What :func:`annotated_recognizer` looks images up by (their pixels, not their file)."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def annotated_recognizer(cases: Iterable[TextCase]):
    """An OCR recogniser (``models.ocr.Recognize``) that reads ``cases`` from their annotations:
    every cell with score 1.0 and its drawn box; an unknown image has no text."""
    known = {pixels_key(case.image): case for case in cases}

    def recognize(image: Image.Image) -> list[tuple[str, float, tuple[int, int, int, int]]]:
        case = known.get(pixels_key(image))
        if case is None:
            return []
        return [
            (cell, 1.0, box)
            for row, boxes in zip(case.rows, case.boxes, strict=True)
            for cell, box in zip(row, boxes, strict=True)
        ]

    recognize.name = "annotations"  # type: ignore[attr-defined]
    return recognize
