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
    assert '{"thought": "<what is known, what is missing>", "expert": "vision" or' in text


def test_decision_prompts_ask_for_the_thought_first() -> None:
    prompts = PromptSet.load()
    fields = {"question": "Q", "memory": "M", "last_expert": "none", "history": ""}
    for name in ("dispatcher", "dispatcher_parallel"):
        text = prompts.text(name, max_questions=3, **fields)
        assert text.index('"thought"') < text.index('"expert"') < text.index('"question')
    referee = prompts.text("referee", **fields)
    assert referee.index('"reasoning"') < referee.index('"solvable"')


def test_prompt_sets_load_and_validate() -> None:
    sets = PromptSet.load_sets()
    assert set(sets) >= {"default", "reference"}
    default, reference = sets["default"], sets["reference"]
    assert default.structured and not reference.structured
    assert reference.description
    # the reference set overrides the loop's prompts and inherits the baselines
    assert reference["dispatcher"].user != default["dispatcher"].user
    assert reference["ccot_graph"] is default["ccot_graph"]
    for name, (required, optional) in PROMPT_FIELDS.items():
        assert required <= reference[name].fields <= required | optional, name
    text = reference.text("dispatcher", question="Q", memory="M", last_expert="vision", history="")
    assert "'Thought'" in text and text.index("'Thought'") < text.index("'EXPERT name'")
    referee = reference.text("referee", question="Q", memory="M", history="")
    assert "CAN_SOLVE" in referee and "UNSOLVABLE" in referee
    assert "Final Answer:" in (reference["insight"].system or "")
    # as the authors' code: no system prompt but the reasoning expert's, unlabelled memory
    assert reference["dispatcher"].system is None and reference["referee"].system is None
    assert reference.text("memory_vision", n=1, content="x", sub_question="q") == "x"


def _set_folder(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    base = copy_prompts(tmp_path)
    folder = base / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return base


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"x.yaml": "judge:\n  user: x\n"}, "unknown prompt 'judge'"),
        ({"x.yaml": "vision:\n  user: '{question}'\n"}, "unknown placeholder"),
        ({"set.yaml": "structured: no\n", "x.yaml": "vision:\n  user: '{sub_question}'\n"},
         "unknown keys"),
        ({"set.yaml": "description: only\n"}, "no templates"),
        ({"a.yaml": "vision:\n  user: '{sub_question}'\n",
          "b.yaml": "vision:\n  user: '{sub_question}'\n"}, "defined twice"),
    ],
)  # fmt: skip
def test_bad_prompt_sets_fail_at_load(tmp_path: Path, files: dict[str, str], match: str) -> None:
    with pytest.raises(PromptError, match=match):
        PromptSet.load_sets(_set_folder(tmp_path, "mine", files))


def test_a_set_overlays_the_default(tmp_path: Path) -> None:
    base = _set_folder(tmp_path, "terse", {"v.yaml": "vision:\n  user: 'Look: {sub_question}'\n"})
    sets = PromptSet.load_sets(base)
    assert sets["terse"].text("vision", sub_question="q") == "Look: q"
    assert sets["terse"].structured and sets["terse"]["referee"] is sets["default"]["referee"]
