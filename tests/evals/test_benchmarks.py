"""Each benchmark read from a fixture in its published format; the official metrics equal
hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import RunOptions
from evals.benchmarks import load_benchmark
from evals.datasets import EvalItem
from evals.metrics import bootstrap_interval, hallusionbench, mcnemar, mme, pope
from evals.runner import Column, Outcome, run_column, summarize
from evals.scoring import score_item
from models.errors import InvalidRequest
from tests.evals import fixtures

pytest.importorskip("pyarrow")


class Scripted:
    """An answerer that says what it is told per item id (default: nothing parseable)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.asked = answers, []

    def resolve(self, options: RunOptions) -> tuple[str, str]:
        return options.method or "direct", "pure"

    async def answer(self, item: EvalItem, options: RunOptions) -> Outcome:
        self.asked.append(item.id)
        return Outcome(
            self.answers.get(item.id, "hmm"), "direct", "pure", "baseline", 0, 1, 0, 10, 2,
            None, 0.01,
        )  # fmt: skip


async def _score(benchmark: str, items: list[EvalItem], answers: dict[str, str]):
    column = Column(RunOptions(method="direct"), "direct", "pure", benchmark)
    records, wall = await run_column(Scripted(answers), items, column, None)
    return records, summarize(records, column, wall)


def test_mmmu_reads_options_images_and_placeholders(tmp_path: Path) -> None:
    items = {i.id: i for i in load_benchmark("mmmu", fixtures.mmmu(tmp_path))}
    art = items["validation_Art_1"]
    # images in order of first mention: <image 2> first, renumbered to [image 1]
    assert art.question == "Compare [image 1] with [image 2]. Which is red?"
    assert art.options == ("[image 2]", "[image 1]", "neither")
    assert [fixtures.png("red"), fixtures.png("blue")] == list(art.image_data)
    assert art.answer == "B" and art.answer_type == "choice"
    assert art.meta["subject"] == "Art"
    open_item = items["validation_Art_2"]
    assert open_item.options == () and open_item.answer_type == "open"
    assert score_item("The answer is one.", open_item) == "correct"  # any of ['1', 'one']
    assert score_item("1", open_item) == "correct"
    assert score_item("2", open_item) == "wrong"
    assert items["validation_Math_1"].options == ("3", "4", "5")


async def test_mmmu_bad_image_is_an_error_and_the_run_goes_on(tmp_path: Path) -> None:
    from evals.runner import InProcess

    class Reasoner:  # the decoder fails before any model is asked
        def resolve(self, options):  # pragma: no cover - not used
            raise AssertionError

    from models.images import ImageDecoder

    items = load_benchmark("mmmu", fixtures.mmmu(tmp_path))
    bad = [i for i in items if i.id == "validation_Math_1"]
    answerer = InProcess(Reasoner(), ImageDecoder(max_bytes=10**6, max_pixels=10**6, max_side=512))
    column = Column(RunOptions(), "proreason", "pure", "mmmu")
    records, _ = await run_column(answerer, bad, column, None)
    assert records[0].verdict == "error" and "image" in records[0].error


def test_mathvista_fields_and_precision(tmp_path: Path) -> None:
    items = {i.id: i for i in load_benchmark("mathvista", fixtures.mathvista(tmp_path))}
    choice, length, count = items["1"], items["2"], items["3"]
    assert choice.question == "Hint: choose.\nWhich?"  # the published query
    assert choice.options == ("red", "blue") and choice.answer_type == "choice"
    assert score_item("red", choice) == "correct" and score_item("B", choice) == "wrong"
    assert length.precision == 2 and length.meta["unit"] == "cm"
    assert score_item("1.449 cm", length) == "correct"  # round(1.449, 2) == 1.45
    assert score_item("1.4", length) == "wrong"
    assert score_item("about 1.4 or 1.5", length) == "unparsed"
    assert count.precision == 0
    assert score_item("3", count) == "correct" and score_item("3.0", count) == "correct"
    assert score_item("4", count) == "wrong"


HB_ROWS = [
    ("VD", "ocr", "1", "0", "0", "1"),
    ("VD", "ocr", "1", "0", "1", "0"),
    ("VD", "ocr", "1", "1", "0", "0"),
    ("VD", "ocr", "1", "1", "1", "1"),
    ("VS", "chart", "2", "0", "0", "1"),  # no figure (visual_input 0)
    ("VS", "chart", "2", "1", "0", "0"),
]


async def test_hallusionbench_metrics_by_hand(tmp_path: Path) -> None:
    items = load_benchmark("hallusionbench", fixtures.hallusionbench(tmp_path, HB_ROWS))
    by_id = {i.id: i for i in items}
    assert by_id["VS_chart_2_0_0"].image_paths == ()  # no visual input
    assert by_id["VD_ocr_1_1_0"].image_paths[0].is_file()
    answers = {
        "VD_ocr_1_0_0": "Yes.",  # right
        "VD_ocr_1_0_1": "No",  # right
        "VD_ocr_1_1_0": "Yes, it is.",  # wrong
        "VD_ocr_1_1_1": "yes",  # right
        "VS_chart_2_0_0": "yes",  # right
        "VS_chart_2_1_0": "I cannot tell",  # unparsed: wrong
    }
    records, report = await _score("hallusionbench", items, answers)
    assert report.unparsed == 1 and report.correct == 4
    m = hallusionbench(records)
    assert m["aAcc"] == round(100 * 4 / 6, 4)
    # figures: VD_1_0 (both right), VD_1_1 (one wrong), VS_2_1 (wrong); VS figure 0 left out
    assert m["figures"] == 3 and m["fAcc"] == round(100 / 3, 4)
    # question pairs: VD q0 (right, wrong), VD q1 (right, right), VS q0 (right, wrong)
    assert m["question_pairs"] == 3 and m["qAcc"] == round(100 / 3, 4)
    assert m["easy_aAcc"] == 100.0  # figure 0: all three right
    assert m["hard_aAcc"] == round(100 / 3, 4)  # edited figures: only VD q1
    assert report.official == m


MME_ROWS = [
    ("existence", "1.png", "Is there a square?", "Yes"),
    ("existence", "1.png", "Is there a circle?", "No"),
    ("existence", "2.png", "Is there a square?", "Yes"),
    ("existence", "2.png", "Is there a circle?", "No"),
    ("count", "3.png", "Is there one square?", "Yes"),
    ("count", "3.png", "Are there two squares?", "No"),
    ("code_reasoning", "4.png", "Does it print 3?", "Yes"),
    ("code_reasoning", "4.png", "Does it print 4?", "No"),
]


async def test_mme_metrics_by_hand(tmp_path: Path) -> None:
    items = load_benchmark("mme", fixtures.mme(tmp_path, MME_ROWS))
    assert len(items) == 8 and {i.answer for i in items} == {"yes", "no"}
    said = ["yes", "no", "yes", "yes", "maybe", "no", "Yes", "No"]
    records, _ = await _score("mme", items, {i.id: s for i, s in zip(items, said, strict=True)})
    m = mme(records)
    assert m["subtasks"]["existence"] == {
        "acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4, "images": 2
    }  # fmt: skip
    assert m["subtasks"]["count"]["acc"] == 50.0 and m["subtasks"]["count"]["acc_plus"] == 0.0
    assert m["perception"] == 175.0 and m["cognition"] == 200.0
    assert "OCR" in m["missing_subtasks"]


def test_mme_original_folders(tmp_path: Path) -> None:
    (tmp_path / "artwork" / "images").mkdir(parents=True)
    (tmp_path / "artwork" / "questions_answers_YN").mkdir()
    (tmp_path / "artwork" / "images" / "10.jpg").write_bytes(fixtures.png())
    (tmp_path / "artwork" / "questions_answers_YN" / "10.txt").write_text(
        "Is this by Monet?\tYes\nIs this by Dali?\tNo\n"
    )
    (tmp_path / "OCR").mkdir()
    (tmp_path / "OCR" / "a.png").write_bytes(fixtures.png())
    (tmp_path / "OCR" / "a.txt").write_text("Does it say A?\tYes\nDoes it say B?\tNo\n")
    items = load_benchmark("mme", tmp_path)
    assert {(i.meta["subtask"], i.meta["image"]) for i in items} == {
        ("artwork", "artwork/10.jpg"), ("OCR", "OCR/a.png")
    }  # fmt: skip
    assert all(i.image_paths[0].is_file() for i in items) and len(items) == 4


async def test_pope_metrics_by_hand(tmp_path: Path) -> None:
    rows = [("random", "yes"), ("random", "yes"), ("random", "no"), ("random", "no"),
            ("popular", "yes"), ("popular", "no")]  # fmt: skip
    items = load_benchmark("pope", fixtures.pope(tmp_path, rows))
    said = {"random-1": "Yes", "random-2": "No", "random-3": "yes", "random-4": "no",
            "popular-5": "unclear", "popular-6": "No."}  # fmt: skip
    assert {i.id for i in items} == said.keys()
    records, _ = await _score("pope", items, said)
    m = pope(records)["overall"]  # TP 1, FP 1, TN 2, FN 2 (one unparsed)
    assert m["accuracy"] == 50.0 and m["precision"] == 50.0
    assert m["recall"] == round(100 / 3, 4) and m["f1"] == 40.0
    assert m["yes_ratio"] == round(100 / 3, 4) and m["unparsed"] == 1
    random_split = pope(records)["categories"]["random"]
    assert random_split["accuracy"] == random_split["f1"] == random_split["yes_ratio"] == 50.0


def test_scienceqa_img_keeps_the_image_items(tmp_path: Path) -> None:
    (item,) = load_benchmark("scienceqa-img", fixtures.scienceqa(tmp_path))
    assert item.question == "Context: Look at the square.\nWhich colour?"
    assert item.options == ("red", "blue") and item.answer == "A" and item.image_data


def test_missing_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"HallusionBench\.json"):
        load_benchmark("hallusionbench", tmp_path)
    with pytest.raises(InvalidRequest, match="unknown benchmark"):
        load_benchmark("vqav9", tmp_path)


def test_mcnemar_and_bootstrap_by_hand() -> None:
    a = {"1": True, "2": False, "3": False, "4": True}
    b = {"1": True, "2": True, "3": True, "4": False, "5": True}  # "5" is not paired
    assert mcnemar(a, b) == {"n": 4, "b01": 2, "b10": 1, "p_value": 1.0}
    five = mcnemar({str(i): False for i in range(5)}, {str(i): True for i in range(5)})
    assert five["p_value"] == 2 / 32
    assert bootstrap_interval([True] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_interval([True, False] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.25
