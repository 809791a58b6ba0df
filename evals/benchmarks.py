"""The published benchmarks, read exactly as their authors publish them, from a local folder.

Nothing is fetched at run time. Download each once on a connected machine (``docs/evaluation.md``
has the commands), e.g.::

    from huggingface_hub import snapshot_download
    snapshot_download(repo_id="MMMU/MMMU", repo_type="dataset", local_dir="data/mmmu")

and pass the folder as ``--data-dir``. Each loader looks for its files anywhere below that folder
(``rglob``), so the snapshot's own layout works as it is.

- ``mmmu``: ``MMMU/MMMU``, ``<Subject>/validation-*.parquet``; ``options`` is the published
  Python-literal list string, images in ``image_1..image_7``, ``<image i>`` in the text.
- ``mathvista``: ``AI4Math/MathVista``, ``data/testmini-*.parquet`` (or its ``testmini.json``);
  ``query``, ``choices``, ``answer_type``, ``precision``, ``unit``.
- ``hallusionbench``: ``HallusionBench.json`` and the unzipped ``hallusion_bench/`` images.
- ``mme``: ``lmms-lab/MME`` parquet, or the original ``MME_Benchmark_release_version/`` folders.
- ``pope``: ``lmms-lab/POPE`` parquet, or the original ``coco_pope_*.json`` with COCO val2014.
- ``scienceqa-img``: ``derek-thomas/ScienceQA`` parquet (``test``), the items with an image.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agents.answers import option_letter
from evals.datasets import EvalItem
from models.errors import InvalidRequest

_IMAGE_TAG = re.compile(r"<image (\d+)>")


def _parquet_rows(files: list[Path]) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidRequest(
            "reading parquet needs pyarrow: pip install 'proreason[eval]'"
        ) from None
    for f in files:
        table = pq.read_table(f)
        yield from table.to_pylist()


def _find(data_dir: Path, pattern: str, what: str, *, required: bool = True) -> list[Path]:
    if not data_dir.is_dir():
        raise InvalidRequest(f"--data-dir {str(data_dir)!r} is not a folder")
    found = sorted(p for p in data_dir.rglob(pattern) if p.is_file())
    if not found and required:
        raise InvalidRequest(
            f"no {what} ({pattern}) below {str(data_dir)!r}: see docs/evaluation.md"
        )
    return found


def _image_bytes(value: Any) -> bytes | None:
    """An HF ``Image`` feature cell: ``{"bytes": ..., "path": ...}`` (or raw bytes), or None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    return None


def _literal_list(text: Any) -> list[str]:
    """MMMU's ``options``: the published Python-literal string, e.g. ``"['1', '2']"``."""
    if isinstance(text, list):
        return [str(o) for o in text]
    if not text:
        return []
    value = ast.literal_eval(str(text))
    return [str(o) for o in value] if isinstance(value, (list, tuple)) else [str(value)]


# ------------------------------------------------------------------------------------------ MMMU


def _mmmu(data_dir: Path, split: str) -> list[EvalItem]:
    split = "validation" if split == "test" else split  # MMMU's test answers are not published
    items = []
    for row in _parquet_rows(_find(data_dir, f"{split}-*.parquet", f"MMMU {split} parquet")):
        options = _literal_list(row.get("options"))
        columns = {
            i: data
            for i in range(1, 8)
            if (data := _image_bytes(row.get(f"image_{i}"))) is not None
        }
        # images in order of first mention in the question, then the options (as MMMU's own
        # inference code); an item that mentions none gets all of its images in column order
        mentioned: list[int] = []
        for text in [str(row["question"]), *options]:
            for m in _IMAGE_TAG.finditer(text):
                if (i := int(m.group(1))) in columns and i not in mentioned:
                    mentioned.append(i)
        order = mentioned or sorted(columns)
        position = {i: k + 1 for k, i in enumerate(order)}

        def renumber(text: str, position: dict[int, int] = position) -> str:
            def sub(tag: re.Match[str]) -> str:
                k = position.get(int(tag.group(1)))
                return f"[image {k}]" if k else tag.group(0)

            return _IMAGE_TAG.sub(sub, text)

        multiple_choice = row.get("question_type") == "multiple-choice" and options
        items.append(
            EvalItem(
                id=str(row["id"]),
                question=renumber(str(row["question"])),
                image_paths=(),
                image_data=tuple(columns[i] for i in order),
                answer=str(row["answer"]),
                options=tuple(renumber(o) for o in options) if multiple_choice else (),
                answer_type="choice" if multiple_choice else "open",
                meta={
                    "subject": "_".join(str(row["id"]).split("_")[1:-1]),
                    "question_type": row.get("question_type"),
                    "difficulty": row.get("topic_difficulty"),
                },
            )
        )
    return items


# ------------------------------------------------------------------------------------- MathVista


def _mathvista(data_dir: Path, split: str) -> list[EvalItem]:
    split = "testmini" if split == "test" else split  # test answers are not published
    rows: list[dict[str, Any]] = []
    files = _find(data_dir, f"{split}-*.parquet", "MathVista parquet", required=False)
    if files:
        rows = list(_parquet_rows(files))
    else:
        for path in _find(data_dir, f"{split}.json", f"MathVista {split}.json or parquet"):
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = [{**v, "pid": v.get("pid", k)} for k, v in data.items()]
    items = []
    for row in rows:
        data = _image_bytes(row.get("decoded_image"))
        paths: tuple[Path, ...] = ()
        if data is None and row.get("image"):
            paths = (_resolve(data_dir, str(row["image"])),)
        choices = [str(c) for c in (row.get("choices") or [])]
        answer_type = str(row.get("answer_type") or "text")
        precision = row.get("precision")
        kind = "choice" if choices else "number" if answer_type in ("integer", "float") else "open"
        items.append(
            EvalItem(
                id=str(row["pid"]),
                # ``query`` is the published prompt: the question with its hint and choices
                question=str(row.get("query") or row["question"]),
                image_paths=paths,
                image_data=() if data is None else (data,),
                answer=str(row["answer"]),
                options=tuple(choices),
                answer_type=kind,
                precision=(
                    0
                    if answer_type == "integer"
                    else int(precision)
                    if answer_type == "float" and precision is not None
                    else None
                ),
                meta={
                    "answer_type": answer_type,
                    "unit": row.get("unit"),
                    "question_type": row.get("question_type"),
                },
            )
        )
    return items


def _resolve(data_dir: Path, name: str) -> Path:
    """A file the benchmark names relative to its own root: the first existing candidate below
    ``data_dir`` (a missing one is returned as is, and becomes that item's error)."""
    rel = Path(name.removeprefix("./"))
    for base in (data_dir, *sorted(p for p in data_dir.iterdir() if p.is_dir())):
        if (base / rel).is_file():
            return base / rel
    return data_dir / rel


# -------------------------------------------------------------------------------- HallusionBench


def _hallusionbench(data_dir: Path, split: str) -> list[EvalItem]:
    (path, *_) = _find(data_dir, "HallusionBench.json", "HallusionBench.json")
    items = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        visual = str(row.get("visual_input", "1"))
        paths: tuple[Path, ...] = ()
        if visual != "0" and row.get("filename"):
            paths = (_resolve(data_dir, str(row["filename"])),)
        key = [str(row[k]) for k in ("category", "subcategory", "set_id")]
        items.append(
            EvalItem(
                id="_".join([*key, str(row["figure_id"]), str(row["question_id"])]),
                question=str(row["question"]),
                image_paths=paths,
                answer="yes" if str(row["gt_answer"]) == "1" else "no",
                answer_type="yesno",
                meta={
                    "category": str(row["category"]),
                    "subcategory": str(row["subcategory"]),
                    "set_id": str(row["set_id"]),
                    "figure_id": str(row["figure_id"]),
                    "question_id": str(row["question_id"]),
                    "visual_input": visual,
                },
            )
        )
    return items


# ------------------------------------------------------------------------------------------- MME


def _mme(data_dir: Path, split: str) -> list[EvalItem]:
    files = _find(data_dir, "*.parquet", "MME parquet", required=False)
    items = []
    if files:
        for n, row in enumerate(_parquet_rows(files)):
            image = str(row["question_id"])  # "<subtask>/<image file>"
            items.append(
                EvalItem(
                    id=f"{image}#{n}",
                    question=str(row["question"]),
                    image_paths=(),
                    image_data=tuple(d for d in [_image_bytes(row.get("image"))] if d),
                    answer=str(row["answer"]).strip().lower(),
                    answer_type="yesno",
                    meta={"subtask": str(row["category"]), "image": image},
                )
            )
        return items
    # the original release: <subtask>/{images,questions_answers_YN}/ or <subtask>/*.{png,txt}
    for txt in _find(data_dir, "*.txt", "MME parquet or the original MME folders"):
        folder = txt.parent
        subtask = (folder.parent if folder.name == "questions_answers_YN" else folder).name
        image_dir = folder.parent / "images" if folder.name == "questions_answers_YN" else folder
        image = next(
            (
                p
                for ext in (".png", ".jpg", ".jpeg")
                if (p := image_dir / (txt.stem + ext)).is_file()
            ),
            image_dir / (txt.stem + ".png"),
        )
        for k, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
            if "\t" not in line:
                continue
            question, answer = line.rsplit("\t", 1)
            items.append(
                EvalItem(
                    id=f"{subtask}/{image.name}#{k}",
                    question=question.strip(),
                    image_paths=(image,),
                    answer=answer.strip().lower(),
                    answer_type="yesno",
                    meta={"subtask": subtask, "image": f"{subtask}/{image.name}"},
                )
            )
    return items


# ------------------------------------------------------------------------------------------ POPE


def _pope(data_dir: Path, split: str) -> list[EvalItem]:
    files = _find(data_dir, "*.parquet", "POPE parquet", required=False)
    items = []
    if files:
        for row in _parquet_rows(files):
            items.append(
                EvalItem(
                    id=f"{row.get('category')}-{row['question_id']}",
                    question=str(row["question"]),
                    image_paths=(),
                    image_data=tuple(d for d in [_image_bytes(row.get("image"))] if d),
                    answer=str(row["answer"]).strip().lower(),
                    answer_type="yesno",
                    meta={"category": str(row.get("category"))},
                )
            )
        return items
    # the original release: coco_pope_{random,popular,adversarial}.json, one JSON object a line
    for path in _find(data_dir, "*_pope_*.json", "POPE parquet or *_pope_*.json"):
        category = path.stem.rsplit("_", 1)[-1]
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            items.append(
                EvalItem(
                    id=f"{category}-{row['question_id']}",
                    question=str(row["text"]),
                    image_paths=(_find_image(data_dir, str(row["image"])),),
                    answer=str(row["label"]).strip().lower(),
                    answer_type="yesno",
                    meta={"category": category},
                )
            )
    return items


def _find_image(data_dir: Path, name: str) -> Path:
    direct = _resolve(data_dir, name)
    if direct.is_file():
        return direct
    return next(iter(data_dir.rglob(Path(name).name)), direct)


# --------------------------------------------------------------------------------- ScienceQA-IMG


def _scienceqa_img(data_dir: Path, split: str) -> list[EvalItem]:
    items = []
    for n, row in enumerate(_parquet_rows(_find(data_dir, f"{split}-*.parquet", "ScienceQA"))):
        image = _image_bytes(row.get("image"))
        if image is None:  # ScienceQA-IMG: the questions that come with an image
            continue
        hint = str(row.get("hint") or "").strip()
        question = str(row["question"])
        choices = [str(c) for c in row["choices"]]
        items.append(
            EvalItem(
                id=str(row.get("id", n)),
                question=f"Context: {hint}\n{question}" if hint else question,
                image_paths=(),
                image_data=(image,),
                answer=option_letter(int(row["answer"])),
                options=tuple(choices),
                answer_type="choice",
                meta={"subject": row.get("subject"), "grade": row.get("grade")},
            )
        )
    return items


BENCHMARKS: dict[str, Callable[[Path, str], list[EvalItem]]] = {
    "mmmu": _mmmu,
    "mathvista": _mathvista,
    "hallusionbench": _hallusionbench,
    "mme": _mme,
    "pope": _pope,
    "scienceqa-img": _scienceqa_img,
}


def load_benchmark(name: str, data_dir: Path, *, split: str = "test") -> list[EvalItem]:
    try:
        loader = BENCHMARKS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}"
        ) from None
    items = loader(data_dir, split)
    if not items:
        raise InvalidRequest(f"{name}: no items below {str(data_dir)!r}")
    return items
