"""Evaluation datasets: the offline ``easy-vqa`` set, or any JSONL file.

JSONL format, one item per line (paths relative to the file)::

    {"id": "q1", "question": "Is the cat on the mat?", "images": ["img/1.png"], "answer": "yes"}
    {"id": "q2", "question": "Which shape is red?", "images": ["img/2.png"],
     "options": ["circle", "square", "triangle"], "answer": "B"}

``answer`` of a multiple-choice item is the option letter or the option text. MMMU, MathVista,
HallusionBench, MME, POPE and ScienceQA-IMG are read as published (:mod:`evals.benchmarks`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.errors import InvalidRequest
from models.types import ImageInput, Message

#: how an item is scored: ``choice`` (one of ``options``), ``yesno``, ``number`` (at
#: ``precision`` decimals when given), ``open`` (normalised text; a list reference: any of it)
AnswerType = Literal["auto", "choice", "yesno", "number", "open"]


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    image_paths: tuple[Path, ...]
    answer: str
    options: tuple[str, ...] = ()
    #: images carried inline (parquet benchmarks), after those in ``image_paths``
    image_data: tuple[bytes, ...] = ()
    answer_type: AnswerType = "auto"
    #: MathVista: decimals the numeric answer is compared at
    precision: int | None = None
    #: what the benchmark's metrics group by (HallusionBench set/figure ids, MME subtask ...);
    #: ``meta["history"]``: earlier chat turns about the same images, (question, answer) pairs
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def history(self, images: Sequence[ImageInput]) -> tuple[Message, ...]:
        """``meta["history"]`` as the chat endpoint passes earlier turns: each earlier question
        a user turn showing the item's images, each answer an assistant turn."""
        turns: list[Message] = []
        for question, answer in self.meta.get("history", ()):
            shown = images if not turns else ()  # the images came with the first turn
            turns += [Message.user(question, shown), Message.text("assistant", answer)]
        return tuple(turns)


def load_dataset(
    name: str,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> list[EvalItem]:
    """``easy-vqa``, a published benchmark read from ``data_dir`` (:mod:`evals.benchmarks`), or a
    path to a JSONL file; a seeded random sample of ``limit`` items."""
    from evals.benchmarks import BENCHMARKS, load_benchmark

    if name == "easy-vqa":
        items = _easy_vqa(split)
    elif name in BENCHMARKS:
        if data_dir is None:
            raise InvalidRequest(f"dataset {name!r} is read from a local copy: give --data-dir")
        items = load_benchmark(name, Path(data_dir).expanduser(), split=split)
    else:
        items = _jsonl(Path(name).expanduser())
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items


def _easy_vqa(split: str) -> list[EvalItem]:
    try:
        import easy_vqa
    except ImportError:
        raise InvalidRequest(
            "the easy-vqa dataset is not installed: pip install 'proreason[eval]'"
        ) from None
    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise InvalidRequest(f"easy-vqa has splits 'train' and 'test', not {split!r}")
    return [
        EvalItem(f"{split}-{i}", q, (Path(paths[image_id]),), a)
        for i, (q, a, image_id) in enumerate(zip(questions, answers, image_ids, strict=True))
    ]


def _jsonl(path: Path) -> list[EvalItem]:
    if not path.is_file():
        raise InvalidRequest(f"dataset {str(path)!r}: no such file (or use 'easy-vqa')")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            images = row.get("images", row.get("image", []))
            images = [images] if isinstance(images, str) else images
            items.append(
                EvalItem(
                    id=str(row.get("id", n)),
                    question=str(row["question"]),
                    image_paths=tuple(path.parent / p for p in images),
                    answer=str(row["answer"]),
                    options=tuple(str(o) for o in row.get("options", ())),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{path}:{n}: not a dataset item ({exc})") from None
    return items
