"""Tolerant readers: table-driven cases of what models actually write."""

from __future__ import annotations

import pytest

from agents.parsing import (
    ParseError,
    answer_line,
    clean_answer,
    extract_choice,
    extract_object,
    final_answer,
    format_options,
    normalize_expert,
    parse_dispatch,
    parse_verdict,
)

DISPATCH_CASES = [
    ('{"expert": "vision", "question": "What colour?"}', "vision", ("What colour?",)),
    ('```json\n{"expert": "insight", "question": "Count."}\n```', "insight", ("Count.",)),
    ("```\n{'expert': 'vision', 'question': 'Any text?'}\n```", "vision", ("Any text?",)),
    ("Sure! Here is my choice:\n{\"expert\": \"visual\", \"question\": \"Where?\"}\nThanks.",
     "vision", ("Where?",)),
    ('{"expert": "vision", "question": "Where?",}', "vision", ("Where?",)),
    ("{'Expert': 'Reasoning Expert', 'Sub-Question': \"Isn't it red?\"}", "insight",
     ("Isn't it red?",)),
    ('{"next_expert": "Vision_Expert", "query": "Size?"}', "vision", ("Size?",)),
    ("expert: insight\nquestion: What do the notes imply?", "insight",
     ("What do the notes imply?",)),
    ("{expert: vision, question: How many}", "vision", ("How many",)),
    ('I think we should look again. {"expert": "eyesight", "question": "Shape?"} done',
     "vision", ("Shape?",)),
    ('{"expert": "vision", "question": "He said \\"hi\\" {sic}"}', "vision",
     ('He said "hi" {sic}',)),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expert", "questions"), DISPATCH_CASES)
def test_parse_dispatch_tolerates(text: str, expert: str, questions: tuple[str, ...]) -> None:
    decision = parse_dispatch(text)
    assert decision.expert == expert
    assert decision.questions == questions


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no JSON"),
        ("I will ask the vision expert about the colour.", "no JSON"),
        ('{"expert": "oracle", "question": "x"}', "unknown expert"),
        ('{"expert": "visual reasoning", "question": "x"}', "unknown expert"),
        ('{"question": "x"}', "no 'expert'"),
        ('{"expert": "vision", "question": ""}', "no sub-question"),
        ('{"expert": "vision", "question": ', "no JSON"),  # cut at max_tokens
        ("[1, 2, 3]", "no JSON"),
    ],
)
def test_parse_dispatch_failures(text: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_dispatch(text)


def test_parse_dispatch_parallel() -> None:
    text = '{"expert": "vision", "questions": ["a?", "b?", "a?", "c?", "d?"]}'
    decision = parse_dispatch(text, parallel=True, max_questions=3)
    assert decision.questions == ("a?", "b?", "c?")
    assert decision.dropped == 1
    assert decision.as_dict() == {"expert": "vision", "questions": ["a?", "b?", "c?"]}
    # without parallel perception, or for the insight expert, one question only
    assert parse_dispatch(text).questions == ("a?",)
    insight = parse_dispatch('{"expert": "insight", "questions": ["x", "y"]}', parallel=True,
                             max_questions=3)  # fmt: skip
    assert insight.questions == ("x",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vision", "vision"), ("Visual Expert", "vision"), ("VISION_EXPERT", "vision"),
        ("perception", "vision"), ("insight", "insight"), ("reasoning", "insight"),
        ("Reasoning Expert", "insight"), ("wisdom", "insight"), ("summarizer", None),
        ("", None), (None, None), (3, None),
    ],
)  # fmt: skip
def test_normalize_expert(value: object, expected: str | None) -> None:
    assert normalize_expert(value) == expected


VERDICT_CASES = [
    ('{"solvable": true, "reasoning": "All there."}', True, "All there."),
    ('{"solvable": false, "reasoning": "Need the colour."}', False, "Need the colour."),
    ("{'solvable': True, 'reasoning': 'ok'}", True, "ok"),
    ('```json\n{"solvable": "yes", "reason": "ok"}\n```', True, "ok"),
    ('{"solvable": "No", "explanation": "missing"}', False, "missing"),
    ('{"Solvable": "not solvable"}', False, ""),
    ('{"verdict": "solvable", "rationale": "fine"}', True, "fine"),
    ('{"solvable": 0, "reasoning": "x",}', False, "x"),
    ("solvable: yes\nreasoning: the notes suffice", True, "the notes suffice"),
    ("Yes, the notes show two shapes.", True, "the notes show two shapes."),
    ("No. The colour is unknown.", False, "The colour is unknown."),
    ('{"reasoning": "The notes suffice.", "solvable": true}', True, "The notes suffice."),
]


@pytest.mark.parametrize(("text", "solvable", "reasoning"), VERDICT_CASES)
def test_parse_verdict_tolerates(text: str, solvable: bool, reasoning: str) -> None:
    verdict = parse_verdict(text)
    assert verdict.solvable is solvable
    assert verdict.reasoning == reasoning


@pytest.mark.parametrize(
    "text",
    ["", "Maybe.", '{"solvable": "perhaps", "reasoning": "x"}', '{"reasoning": "x"}',
     "It depends on the image."],
)  # fmt: skip
def test_parse_verdict_failures(text: str) -> None:
    with pytest.raises(ParseError):
        parse_verdict(text)


def test_extract_object_prefers_fenced_json_and_lowercases_keys() -> None:
    text = 'Plan {not json}.\n```json\n{"Expert": "vision", "Question": "q"}\n```'
    assert extract_object(text) == {"expert": "vision", "question": "q"}


def test_extract_object_never_raises_other_errors_on_garbage() -> None:
    for garbage in ["{" * 500, "}" * 50 + "{", "{'a': [" + "[" * 300, "{\x00}", "{: :}"]:
        try:
            extract_object(garbage)
        except ParseError:
            pass


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("thinking\nAnswer: B", "B"),
        ("thinking\n**Final answer:** two shapes", "two shapes"),
        ("Answer:\n\nC", "C"),
        ("The answer is: 4", "4"),
        ("no marker here", None),
        ("Answer: A\nmore thought\nFinal Answer: B", "B"),
    ],
)
def test_answer_line(text: str, line: str | None) -> None:
    assert answer_line(text) == line


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Answer: Yes.", "Yes"),
        ("**Yes**", "Yes"),
        ("  'red'  ", "red"),
        ("Final answer: the U.S.", "the U.S."),
        ("3.5", "3.5"),
        ("So the answer is 7.", "7"),
        ("`blue`", "blue"),
    ],
)
def test_clean_answer(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


def test_final_answer_falls_back_to_the_whole_text() -> None:
    assert final_answer("Two shapes.") == "Two shapes"
    assert final_answer("They are two.\nAnswer: 2") == "2"


OPTIONS = ("red", "dark red", "blue")


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("B", 1), ("(c)", 2), ("b.", 1), ("Answer: A", 0), ("A. red", 0), ("(B) dark red", 1),
        ("C) blue", 2), ("Option C: blue", 2), ("I pick option B here", 1), ("blue", 2),
        ("Dark red.", 1), ("It is dark red.", 1), ("Answer: the blue one", 2),
        ("D", None), ("red or blue", None), ("none", None), ("", None),
        ("A red square", 0),
    ],
)  # fmt: skip
def test_extract_choice(text: str, index: int | None) -> None:
    assert extract_choice(text, OPTIONS) == index


def test_options_already_labelled_keep_their_letters() -> None:
    labelled = ("A. cat", "B. dog")
    assert format_options(labelled) == "A. cat\nB. dog"
    assert extract_choice("dog", labelled) == 1
    assert extract_choice("Answer: A", labelled) == 0
    assert format_options(("cat", "dog")) == "A. cat\nB. dog"
