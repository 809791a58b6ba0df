"""The truncation policy of agents.memory, on its own."""

from __future__ import annotations

import pytest

from agents.memory import CLIP_MARK, Memory, clip_text, fit_lines
from agents.prompts import PromptSet


def words(text: str) -> int:
    """A simple, exact token counter for these tests: one token per word."""
    return len(text.split())


def gap(k: int) -> str:
    return f"[{k} omitted]"


LINES = [f"line{i} " + "w " * 9 for i in range(10)]  # 10 tokens each (+1 per newline)


def test_everything_fits() -> None:
    fitted = fit_lines(LINES, 200, words, keep_first=True, gap=gap)
    assert fitted.text == "\n".join(LINES)
    assert not fitted.truncated


def test_keeps_first_and_most_recent_and_marks_the_gap() -> None:
    fitted = fit_lines(LINES, 50, words, keep_first=True, gap=gap)
    kept = fitted.text.splitlines()
    assert kept[0].startswith("line0 ")
    assert kept[1] == f"[{fitted.omitted} omitted]"
    assert [ln.split()[0] for ln in kept[2:]] == [f"line{i}" for i in range(10 - len(kept) + 2, 10)]
    assert fitted.omitted == 10 - (len(kept) - 1)
    assert words(fitted.text) + len(kept) <= 50


def test_history_policy_keeps_only_the_most_recent() -> None:
    fitted = fit_lines(LINES, 40, words, keep_first=False, gap=gap)
    kept = fitted.text.splitlines()
    assert kept[0] == f"[{fitted.omitted} omitted]"
    assert kept[-1].startswith("line9 ")
    assert not any(ln.startswith("line0 ") for ln in kept)


def test_first_entry_dropped_when_first_and_newest_do_not_fit() -> None:
    lines = ["first " + "w " * 30, "mid " + "w " * 5, "newest " + "w " * 20]
    fitted = fit_lines(lines, 30, words, keep_first=True, gap=gap)
    assert fitted.text.splitlines() == ["[2 omitted]", lines[2]]


def test_newest_entry_clipped_when_alone_too_long() -> None:
    lines = ["old", "newest " + "w " * 100]
    fitted = fit_lines(lines, 20, words, keep_first=True, gap=gap)
    assert fitted.clipped and fitted.omitted == 1
    assert fitted.text.startswith("[1 omitted]\nnewest w")
    assert fitted.text.endswith(CLIP_MARK)
    assert words(fitted.text) <= 20


@pytest.mark.parametrize("budget", [1, 5, 50])
def test_clip_text_respects_the_budget(budget: int) -> None:
    text = "w " * 200
    clipped = clip_text(text, budget, words)
    assert words(clipped) <= max(budget, words(CLIP_MARK))
    assert clip_text("short", 10, words) == "short"


def test_memory_renders_numbered_structured_entries() -> None:
    prompts = PromptSet.load()
    memory = Memory()
    assert memory.render(prompts, 100, words).text == "(no notes yet)"
    memory.add("vision", "  a red square  ", sub_question="What is there?", round=1)
    memory.add("insight", "one shape", sub_question="How many?", round=2)
    memory.add("referee", "The notes suffice.", round=2)
    assert [e.role for e in memory.entries] == ["vision", "insight", "referee"]
    assert memory.entries[0].content == "a red square"
    text = memory.render(prompts, 1000, words).text
    assert text.splitlines() == [
        "1. Seen in the image (asked: What is there?): a red square",
        "2. Inferred (asked: How many?): one shape",
        "3. Judge's assessment: The notes suffice.",
    ]
    small = memory.render(prompts, 20, words)
    assert small.truncated
    assert "earlier notes omitted]" in small.text
    assert small.text.splitlines()[-1].startswith("3. ")
