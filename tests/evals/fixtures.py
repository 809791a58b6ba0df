"""Tiny benchmark folders in each publisher's format (images drawn with PIL)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw


def png(colour: str = "red", size: int = 32) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).rectangle((4, 4, size - 4, size - 4), fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _image(data: bytes | None, name: str = "x.png") -> dict | None:
    return None if data is None else {"bytes": data, "path": name}


def mmmu(root: Path) -> Path:
    """Two subjects; a multiple-choice item with two images mentioned out of order, an open one
    with a list-literal answer, and one whose image is not decodable."""
    blank = {f"image_{i}": None for i in range(1, 8)}
    _parquet(
        root / "Art" / "validation-00000-of-00001.parquet",
        [
            {
                "id": "validation_Art_1",
                "question": "Compare <image 2> with <image 1>. Which is red?",
                "options": "['<image 1>', '<image 2>', 'neither']",
                "explanation": "",
                **blank,
                "image_1": _image(png("blue")),
                "image_2": _image(png("red")),
                "img_type": "['Paintings']",
                "answer": "B",
                "topic_difficulty": "Easy",
                "question_type": "multiple-choice",
                "subfield": "Art",
            },
            {
                "id": "validation_Art_2",
                "question": "How many squares are in <image 1>?",
                "options": "[]",
                "explanation": "",
                **blank,
                "image_1": _image(png("red")),
                "img_type": "['Diagrams']",
                "answer": "['1', 'one']",
                "topic_difficulty": "Medium",
                "question_type": "open",
                "subfield": "Art",
            },
        ],
    )
    _parquet(
        root / "Math" / "validation-00000-of-00001.parquet",
        [
            {
                "id": "validation_Math_1",
                "question": "<image 1> What is 2+2?",
                "options": "['3', '4', '5']",
                "explanation": "",
                **blank,
                "image_1": _image(b"not an image"),
                "img_type": "['Other']",
                "answer": "B",
                "topic_difficulty": "Hard",
                "question_type": "multiple-choice",
                "subfield": "Math",
            }
        ],
    )
    return root


def mathvista(root: Path) -> Path:
    base = {"image": "images/1.jpg", "metadata": {"source": "x"}, "unit": None}
    _parquet(
        root / "data" / "testmini-00000-of-00001.parquet",
        [
            {**base, "pid": "1", "question": "Which?", "query": "Hint: choose.\nWhich?",
             "choices": ["red", "blue"], "answer": "red", "question_type": "multi_choice",
             "answer_type": "text", "precision": None, "decoded_image": _image(png())},
            {**base, "pid": "2", "question": "Length?", "query": "Hint: two decimals.\nLength?",
             "choices": None, "answer": "1.45", "question_type": "free_form",
             "answer_type": "float", "precision": 2.0, "unit": "cm",
             "decoded_image": _image(png())},
            {**base, "pid": "3", "question": "How many?", "query": "How many?",
             "choices": None, "answer": "3", "question_type": "free_form",
             "answer_type": "integer", "precision": None, "decoded_image": _image(png())},
        ],
    )  # fmt: skip
    return root


def hallusionbench(root: Path, rows: list[dict]) -> Path:
    """``rows``: (category, subcategory, set_id, figure_id, question_id, gt_answer) tuples."""
    data = []
    for cat, sub, set_id, fig, qid, gt in rows:
        visual = "0" if cat == "VS" and fig == "0" else "1" if fig == "0" else "2"
        filename = None if visual == "0" else f"./hallusion_bench/{cat}/{sub}/{set_id}_{fig}.png"
        if filename:
            path = root / filename.removeprefix("./")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png())
        data.append(
            {"category": cat, "subcategory": sub, "visual_input": visual, "set_id": set_id,
             "figure_id": fig, "sample_note": "", "question_id": qid, "question": f"Q{qid}?",
             "gt_answer_details": "", "gt_answer": gt, "filename": filename}
        )  # fmt: skip
    (root / "HallusionBench.json").write_text(json.dumps(data))
    return root


def mme(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """lmms-lab/MME parquet: (subtask, image file, question, answer)."""
    _parquet(
        root / "data" / "test-00000-of-00001.parquet",
        [
            {"question_id": f"{task}/{image}", "image": _image(png(), image),
             "question": q, "answer": a, "category": task}
            for task, image, q, a in rows
        ],
    )  # fmt: skip
    return root


def pope(root: Path, rows: list[tuple[str, str]]) -> Path:
    """The original release: coco_pope_<category>.json lines and the COCO images."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    for n, (category, label) in enumerate(rows, start=1):
        name = f"COCO_val2014_{n:012d}.jpg"
        Image.new("RGB", (16, 16), "gray").save(root / "val2014" / name, format="JPEG")
        row = {"question_id": n, "image": name, "text": f"Is there a thing {n}?", "label": label}
        lines.setdefault(category, []).append(json.dumps(row))
    for category, body in lines.items():
        (root / f"coco_pope_{category}.json").write_text("\n".join(body) + "\n")
    return root


def scienceqa(root: Path) -> Path:
    _parquet(
        root / "data" / "test-00000-of-00001.parquet",
        [
            {"image": _image(png()), "question": "Which colour?", "choices": ["red", "blue"],
             "answer": 0, "hint": "Look at the square.", "task": "closed choice",
             "grade": "grade2", "subject": "natural science"},
            {"image": None, "question": "No image here?", "choices": ["a", "b"], "answer": 1,
             "hint": "", "task": "closed choice", "grade": "grade2", "subject": "language"},
        ],
    )  # fmt: skip
    return root
