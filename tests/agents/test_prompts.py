"""Prompt templates are data, checked once at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.prompts import PROMPT_FIELDS, PromptError, PromptSet, default_prompts_dir

BUNDLED = default_prompts_dir()


def copy_prompts(tmp_path: Path, **changes: dict | None) -> Path:
    """The bundled prompts, merged into one file, with some entries changed (None: removed)."""
    merged: dict = {}
    for path in sorted(BUNDLED.glob("*.yaml")):
        merged.update(yaml.safe_load(path.read_text()))
    for name, entry in changes.items():
        if entry is None:
            merged.pop(name, None)
        else:
            merged[name] = entry
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(merged))
    return tmp_path


def test_bundled_prompts_are_complete_and_valid() -> None:
    prompts = PromptSet.load()
    for name, (required, optional) in PROMPT_FIELDS.items():
        assert required <= prompts[name].fields <= required | optional, name
    assert prompts["vision"].fields == {"sub_question"}


def test_a_copy_loads(tmp_path: Path) -> None:
    assert PromptSet.load(copy_prompts(tmp_path))["referee"].fields >= {"question", "memory"}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"referee": {"user": "Is it solvable? {memory}"}}, r"missing placeholder.*question"),
        ({"vision": {"user": "{question} {sub_question}"}}, r"unknown placeholder.*question"),
        ({"summarizer": None}, "missing from"),
        ({"judge": {"user": "x"}}, "unknown prompt 'judge'"),
        ({"insight": {"user": "{memory} {sub_question} {"}}, "bad template"),
        ({"insight": {"user": "{memory} {sub_question!r}"}}, "plain name"),
        ({"insight": {"user": "{memory} {sub_question.upper}"}}, "plain name"),
        ({"insight": {"system": "x"}}, "needs a 'user'"),
        ({"insight": {"user": "{memory} {sub_question}", "extra": 1}}, "unknown keys"),
        ({"insight": {"user": "{memory} {sub_question}", "system": ["x"]}}, "must be a string"),
    ],
)
def test_bad_templates_fail_at_load(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(PromptError, match=match):
        PromptSet.load(copy_prompts(tmp_path, **changes))


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    copy_prompts(tmp_path)
    (tmp_path / "more.yaml").write_text("vision:\n  user: 'look: {sub_question}'\n")
    with pytest.raises(PromptError, match="defined twice"):
        PromptSet.load(tmp_path)


def test_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("vision: [unclosed\n")
    with pytest.raises(PromptError, match="not valid YAML"):
        PromptSet.load(tmp_path)


def test_literal_braces_render(tmp_path: Path) -> None:
    prompts = PromptSet.load()
    text = prompts.text("dispatcher", question="Q", memory="M", last_expert="none", history="")
    assert '{"expert": "vision" or "insight", "question": "<the sub-question>"}' in text
