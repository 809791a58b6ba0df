import json

import pytest

from evals.datasets import load_dataset
from evals.scoring import extract_option, normalize, score_choice, score_open
from models.errors import InvalidRequest


@pytest.mark.parametrize(
    ("prediction", "reference", "verdict"),
    [
        ("Red.", "red", "correct"),
        ("Answer: the circle", "circle", "correct"),
        ("yes, the square is red", "yes", "correct"),
        ("no", "yes", "wrong"),
        ("a blue triangle", "triangle", "wrong"),
        ("", "yes", "unparsed"),
        ("  ", "yes", "unparsed"),
    ],
)
def test_score_open(prediction: str, reference: str, verdict: str) -> None:
    assert score_open(prediction, reference) == verdict


OPTIONS = ("circle", "square", "triangle")


@pytest.mark.parametrize(
    ("prediction", "index"),
    [
        ("B", 1),
        ("(C)", 2),
        ("A. circle", 0),
        ("The answer is triangle.", 2),
        ("square", 1),
        ("circle or square", None),  # names two options: unparsed, never a guess
        ("hexagon", None),
        ("D", None),  # no option D
    ],
)
def test_extract_option(prediction: str, index: int | None) -> None:
    assert extract_option(prediction, OPTIONS) == index


@pytest.mark.parametrize(
    ("prediction", "reference", "options", "verdict"),
    [
        # the cases: negation, the article "A", "(C)" after "the answer is"
        ("It is not red.", "red", ("red", "blue"), "unparsed"),
        ("It is not red.", "blue", ("red", "blue"), "unparsed"),
        ("A cat sat on the mat.", "A", ("dog", "cat"), "wrong"),
        ("A cat sat on the mat.", "B", ("dog", "cat"), "correct"),
        ("The answer is (C).", "C", OPTIONS, "correct"),
        ("The answer is (C).", "triangle", OPTIONS, "correct"),
        ("A or B", "A", OPTIONS, "unparsed"),
        ("12", "B", ("1", "12"), "correct"),
        ("1", "B", ("1", "12"), "wrong"),
    ],
)
def test_score_choice_hard_cases(
    prediction: str, reference: str, options: tuple[str, ...], verdict: str
) -> None:
    assert score_choice(prediction, reference, options) == verdict


@pytest.mark.parametrize(
    ("prediction", "reference", "verdict"),
    [
        ("No, it is not.", "no", "correct"),
        ("Yes, it is not red.", "yes", "correct"),
        ("It is not red.", "no", "unparsed"),  # no yes/no: never inferred
        ("maybe", "yes", "unparsed"),
        ("12 apples", "12", "correct"),
        ("1", "12", "wrong"),
        ("12", "1", "wrong"),
        ("3.14159", "3.14", "correct"),
        ("3.1", "3.14", "wrong"),
        ("three", "3", "correct"),
        ("about 3 or 4", "3", "unparsed"),
        ("circle, I think", "circle", "correct"),
        ("circle is not right", "circle", "wrong"),
    ],
)
def test_score_open_hard_cases(prediction: str, reference: str, verdict: str) -> None:
    assert score_open(prediction, reference) == verdict


def test_score_choice_letter_or_text_reference() -> None:
    assert score_choice("B", "square", OPTIONS) == "correct"
    assert score_choice("square", "B", OPTIONS) == "correct"
    assert score_choice("A", "B", OPTIONS) == "wrong"
    assert score_choice("I cannot tell", "B", OPTIONS) == "unparsed"


def test_normalize() -> None:
    assert normalize("Final Answer: The Red Square!") == "red square"


def test_easy_vqa_sample_is_seeded_and_real() -> None:
    a = load_dataset("easy-vqa", limit=5, seed=1)
    b = load_dataset("easy-vqa", limit=5, seed=1)
    assert [i.id for i in a] == [i.id for i in b]
    assert all(i.image_paths[0].is_file() and i.answer for i in a)


def test_jsonl_dataset(tmp_path, shapes_png) -> None:
    (tmp_path / "img.png").write_bytes(shapes_png.read_bytes())
    rows = [
        {"id": "1", "question": "Which shape is red?", "images": ["img.png"], "answer": "square"},
        {"question": "Pick", "image": "img.png", "options": ["x", "y"], "answer": "A"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_dataset(str(path))
    assert items[0].image_paths == (tmp_path / "img.png",)
    assert items[1].options == ("x", "y") and items[1].id == "2"


def test_bad_datasets(tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="no such file"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answer"}\n')
    with pytest.raises(InvalidRequest, match=r"bad\.jsonl:1"):
        load_dataset(str(bad))
    with pytest.raises(InvalidRequest, match="splits"):
        load_dataset("easy-vqa", split="dev")
