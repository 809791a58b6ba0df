"""The counting of ``python -m bench prefix_layout``: per-question prompt, cached and uncached
tokens from the engine's call log, and the folder of the previous prompt layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.prefix_layout import CHANGED, LAYOUT_COMMIT, before_prompts, compare, layout_profile


def call(qid: str | None, role: str, prompt: int, cached: int, finish: str = "stop") -> dict:
    return {
        "qid": qid,
        "role": role,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "finish_reason": finish,
    }


LOG = [
    # question a: complete (dispatcher, vision, referee, summarizer)
    call("a", "dispatcher", 100, 60),
    call("a", "vision", 1100, 1000),
    call("a", "referee", 120, 20),
    call("a", "summarizer", 80, 0),
    # question b: complete, two dispatcher rounds, ends in the fallback
    call("b", "dispatcher", 100, 60),
    call("b", "dispatcher", 140, 100),
    call("b", "fallback", 60, 10),
    # question c: cut by the end of the log (no terminal call): not counted
    call("c", "dispatcher", 5000, 0),
    # an aborted call of a complete question and a call without a question id: not counted
    call("a", "referee", 9000, 0, finish="abort"),
    call(None, "summarizer", 7000, 0),
]


def test_only_complete_questions_and_finished_calls_count() -> None:
    profile = layout_profile(LOG)
    assert profile["questions"] == 2
    d = profile["by_role"]["dispatcher"]
    assert d["calls"] == 1.5  # 3 calls over 2 questions
    assert d["prompt_tokens"] == 170.0  # (100 + 100 + 140) / 2
    assert d["cached_tokens"] == 110.0
    assert d["uncached_tokens"] == 60.0
    assert d["cached_fraction"] == pytest.approx(110 / 170)
    assert profile["by_role"]["referee"]["prompt_tokens"] == 60.0  # the aborted call left out
    total = profile["total"]
    assert total["calls"] == 3.5
    assert total["prompt_tokens"] == (1400 + 300) / 2
    assert total["cached_tokens"] == (1080 + 170) / 2
    assert total["uncached_tokens"] == total["prompt_tokens"] - total["cached_tokens"]
    assert set(profile["by_role"]) == {"dispatcher", "vision", "referee", "summarizer", "fallback"}


def test_an_empty_log_counts_nothing() -> None:
    profile = layout_profile([call("x", "dispatcher", 10, 0)])
    assert profile["questions"] == 0 and profile["by_role"] == {}
    assert profile["total"]["uncached_tokens"] == 0.0


def test_compare_gives_after_over_before_of_the_uncached_tokens() -> None:
    before = layout_profile(LOG)
    after_log = [dict(c) for c in LOG]
    for c in after_log:
        if c["role"] == "dispatcher":
            c["cached_tokens"] = c["prompt_tokens"] - 10  # the new layout re-uses all but 10
    rows = {r["role"]: r for r in compare(before, layout_profile(after_log))}
    assert rows["dispatcher"]["uncached_ratio"] == pytest.approx(10 / 40)
    assert rows["vision"]["uncached_ratio"] == 1.0
    all_before = before["total"]["uncached_tokens"]
    assert rows["all"]["uncached_ratio"] == pytest.approx((all_before - 60 + 15) / all_before)
    # a role only one layout has: no ratio rather than a division by zero
    only_after = layout_profile([*LOG, call("a", "insight", 50, 0)])
    assert {r["role"]: r for r in compare(before, only_after)}["insight"]["uncached_ratio"] is None


def test_the_before_folder_is_the_current_one_with_the_changed_files_from_git(
    tmp_path: Path,
) -> None:
    current = tmp_path / "current"
    (current / "reference").mkdir(parents=True)
    for name in (*CHANGED, "blocks.yaml", "reference/set.yaml"):
        (current / name).write_text(f"now: {name}\n")
    asked: list[str] = []

    def show(rev_path: str) -> str:
        asked.append(rev_path)
        return f"then: {rev_path}\n"

    folder = before_prompts(tmp_path / "before", current, show)
    assert asked == [f"{LAYOUT_COMMIT}^:configs/prompts/{name}" for name in CHANGED]
    assert (folder / "proreason.yaml").read_text().startswith("then: ")
    assert (folder / "blocks.yaml").read_text() == "now: blocks.yaml\n"
    assert (folder / "reference" / "set.yaml").read_text() == "now: reference/set.yaml\n"
    assert (current / "proreason.yaml").read_text() == "now: proreason.yaml\n"  # untouched
