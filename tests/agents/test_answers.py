"""The one answer extractor (agents.answers): a table of hard cases, shared by loop and scoring."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.answers import (
    numbers_match,
    parse_number,
    read_choice,
    read_number,
    read_yes_no,
)
from evals.scoring import extract_option

COLOURS = ("red", "dark red", "blue")
SHAPES = ("circle", "square", "triangle")
ANIMALS = ("dog", "cat", "bird")
NUMBERS = ("1", "12", "120")
YES_NO = ("yes", "no")

CHOICE_CASES = [
    # letters in their accepted forms
    (SHAPES, "C", 2), (SHAPES, "(C)", 2), (SHAPES, "C.", 2), (SHAPES, "c", 2),
    (SHAPES, "Answer: C", 2), (SHAPES, "the answer is C", 2), (SHAPES, "The answer is (C).", 2),
    (SHAPES, "**C**", 2), (SHAPES, "The answer is **C**.", 2), (SHAPES, "C) triangle", 2),
    (SHAPES, "C. triangle", 2), (SHAPES, "Option C: triangle", 2), (SHAPES, "[B]", 1),
    (SHAPES, "I pick option B here", 1), (SHAPES, "The correct option is b", 1),
    (SHAPES, "Thought: the notes say three sides.\nAnswer: C", 2),
    (SHAPES, "Answer:\n\n(A)", 0), (SHAPES, "The answer is A.", 0),
    # exact option text, and text inside the answer when not negated
    (SHAPES, "triangle", 2), (SHAPES, "Triangle.", 2), (SHAPES, "The answer is triangle.", 2),
    (COLOURS, "It is dark red.", 1), (COLOURS, "A red square", 0), (COLOURS, "dark red", 1),
    (COLOURS, "It is not red, it is blue.", 2), (COLOURS, "Not red but blue", 2),
    # the article "A" is no letter; several letters / options, hedges, none: unparsed
    (SHAPES, "A cat sat on the mat.", None), (ANIMALS, "A cat sat on the mat.", 1),
    (COLOURS, "It is not red.", None), (COLOURS, "It isn't blue", None),
    (SHAPES, "A or B", None), (SHAPES, "A, C", None), (SHAPES, "(A) and (C)", None),
    (SHAPES, "The answer is A or maybe C", None), (SHAPES, "B, but I am not sure", None),
    (SHAPES, "None of the above", None), (SHAPES, "none", None), (SHAPES, "Both A and B", None),
    (SHAPES, "circle or square", None), (SHAPES, "Either the circle or the square", None),
    (SHAPES, "I cannot tell from the notes", None), (SHAPES, "hexagon", None),
    (SHAPES, "D", None), (SHAPES, "(D)", None), (SHAPES, "", None), (SHAPES, "shape(s)", None),
    # numbers: by value, and "12" is not "1"
    (NUMBERS, "12", 1), (NUMBERS, "There are 12 apples.", 1), (NUMBERS, "1", 0),
    (NUMBERS, "120 in total", 2), (NUMBERS, "1.5", None), (NUMBERS, "12 or 120", None),
    (NUMBERS, "not 12", None), (NUMBERS, "B", 1), (NUMBERS, "Answer: 1,200", None),
    # yes/no options
    (YES_NO, "No.", 1), (YES_NO, "Yes, it is red.", 0), (YES_NO, "No, it is not red", 1),
    (YES_NO, "yes or no", None), (YES_NO, "maybe", None), (YES_NO, "B", 1),
]  # fmt: skip


@pytest.mark.parametrize(("options", "text", "index"), CHOICE_CASES)
def test_read_choice(options: tuple[str, ...], text: str, index: int | None) -> None:
    assert read_choice(text, options).index == index


@pytest.mark.parametrize(("options", "text", "index"), CHOICE_CASES)
def test_scoring_and_the_loop_read_the_same(
    options: tuple[str, ...], text: str, index: int | None
) -> None:
    assert extract_option(text, options) == index


def test_none_of_the_above_is_read_when_it_is_an_option() -> None:
    options = ("red", "blue", "None of the above")
    assert read_choice("None of the above", options).index == 2
    assert read_choice("C", options).index == 2


def test_unparsed_says_why() -> None:
    assert "several" in read_choice("A or B", SHAPES).how
    assert "no option D" in read_choice("D", SHAPES).how
    assert read_choice("(B)", SHAPES).how == "letter"


YES_NO_CASES = [
    ("Yes", "yes"), ("yes.", "yes"), ("**No**", "no"), ("No, the square is red.", "no"),
    ("Yes, it is not red.", "yes"), ("Answer: no", "no"), ("The answer is yes.", "yes"),
    ("The square is left of the circle, so yes.", "yes"), ("Thought: ...\nAnswer: No", "no"),
    ("True", "yes"), ("false", "no"), ("Nope", "no"),
    ("Maybe", None), ("yes or no", None), ("Yes and no.", None), ("It is not red.", None),
    ("I am not sure", None), ("There is no doubt about it", None), ("", None),
    ("Not enough information to say yes", None), ("Correct me if I am wrong, it's red", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value"), YES_NO_CASES)
def test_read_yes_no(text: str, value: str | None) -> None:
    assert read_yes_no(text) == value


NUMBER_CASES = [
    ("12", "12"), ("12 apples", "12"), ("There are 12 apples.", "12"), ("Answer: 3.5 cm", "3.5"),
    ("1,000", "1000"), ("-3", "-3"), ("1/2", "0.5"), ("50%", "50"), ("Three.", "3"),
    ("three circles", "3"), (".5", "0.5"),
    ("3 cats and 12 dogs", None), ("one of them", None), ("not 12", None), ("maybe 3", None),
    ("no number", None), ("H2O", None), ("", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value"), NUMBER_CASES)
def test_read_number(text: str, value: str | None) -> None:
    number = read_number(text)
    assert (None if number is None else number.value) == (None if value is None else Decimal(value))


@pytest.mark.parametrize(
    ("predicted", "reference", "match"),
    [
        ("3.14159", "3.14", True), ("3.1", "3.14", False), ("3.0", "3", True),
        ("3.4", "3", False), ("12", "1", False), ("1", "12", False), ("1,000", "1000", True),
        ("0.50", "0.5", True), ("2.675", "2.68", True), ("-2", "2", False),
    ],
)  # fmt: skip
def test_numbers_match_at_the_references_precision(
    predicted: str, reference: str, match: bool
) -> None:
    p, r = parse_number(predicted), parse_number(reference)
    assert p is not None and r is not None
    assert numbers_match(p, r) is match


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=300), st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=6))
def test_the_readers_never_raise(text: str, options: list[str]) -> None:
    choice = read_choice(text, options)
    assert choice.index is None or 0 <= choice.index < len(options)
    read_yes_no(text)
    read_number(text)
