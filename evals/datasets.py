"""Evaluation datasets: the offline ``easy-vqa`` set, or any JSONL file.

JSONL format, one item per line (paths relative to the file)::

    {"id": "q1", "question": "Is the cat on the mat?", "images": ["img/1.png"], "answer": "yes"}
    {"id": "q2", "question": "Which shape is red?", "images": ["img/2.png"],
     "options": ["circle", "square", "triangle"], "answer": "B"}

``answer`` of a multiple-choice item is the option letter or the option text. Convert MMMU,
HallusionBench, MathVista or MME to this format on a connected machine.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from models.errors import InvalidRequest


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    image_paths: tuple[Path, ...]
    answer: str
    options: tuple[str, ...] = ()


def load_dataset(
    name: str, *, split: str = "test", limit: int | None = None, seed: int = 0
) -> list[EvalItem]:
    """``easy-vqa`` or a path to a JSONL file; a seeded random sample of ``limit`` items."""
    items = _easy_vqa(split) if name == "easy-vqa" else _jsonl(Path(name).expanduser())
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
