"""Runs survive: kill -9 mid-run, re-run, and only the unfinished items are answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agents import RunOptions
from evals.datasets import EvalItem
from evals.runner import Column, read_results, run_column
from tests.evals.test_benchmarks import Scripted

ROOT = Path(__file__).resolve().parents[2]
N = 40

CHILD = """
import asyncio, sys
from pathlib import Path
from agents import RunOptions
from evals.datasets import EvalItem
from evals.runner import Column, Outcome, run_column

class Slow:
    def resolve(self, options):
        return "direct", "pure"
    async def answer(self, item, options):
        await asyncio.sleep(0.05)
        return Outcome("yes", "direct", "pure", "baseline", 0, 1, 0, 1, 1, None, 0.05)

items = [EvalItem(f"q{i}", "Is it?", (), "yes") for i in range(N_ITEMS)]
column = Column(RunOptions(method="direct"), "direct", "pure")
asyncio.run(run_column(Slow(), items, column, Path(sys.argv[1]), concurrency=2))
""".replace("N_ITEMS", str(N))


def _items() -> list[EvalItem]:
    return [EvalItem(f"q{i}", "Is it?", (), "yes") for i in range(N)]


def _run_and_kill(results: Path) -> int:
    """Start a run in a child process, SIGKILL it once 6 items are written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(results)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if results.is_file() and len(results.read_text().splitlines()) >= 6:
                break
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    return child.returncode


async def test_kill_9_then_rerun_answers_only_the_rest(tmp_path: Path) -> None:
    results = tmp_path / "predictions-direct.jsonl"
    assert _run_and_kill(results) == -signal.SIGKILL
    before = read_results(results)
    assert 6 <= len(before) < N  # killed mid-run, the finished items kept
    answerer = Scripted({f"q{i}": "yes" for i in range(N)})
    column = Column(RunOptions(method="direct"), "direct", "pure")
    records, _ = await run_column(answerer, _items(), column, results)
    assert sorted(answerer.asked) == sorted(set(answerer.asked))
    assert not set(answerer.asked) & before.keys()  # nothing finished was asked again
    assert len(answerer.asked) == N - len(before)
    assert [r.id for r in records] == [i.id for i in _items()]
    assert all(r.verdict == "correct" for r in records)
    # a third run has nothing to do
    again = Scripted({})
    await run_column(again, _items(), column, results)
    assert again.asked == []
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert len({r["id"] for r in rows}) == N


async def test_an_error_is_recorded_and_tried_again(tmp_path: Path) -> None:
    results = tmp_path / "p.jsonl"
    items = [
        EvalItem("ok", "Is it?", (), "yes"),
        EvalItem("bad", "?", (tmp_path / "no.png",), "no"),
    ]

    class Reading(Scripted):
        async def answer(self, item, options):
            for p in item.image_paths:
                p.read_bytes()
            return await super().answer(item, options)

    column = Column(RunOptions(method="direct"), "direct", "pure")
    first = Reading({"ok": "yes", "bad": "no"})
    records, _ = await run_column(first, items, column, results)
    assert [r.verdict for r in records] == ["correct", "error"]
    assert "no.png" in records[1].error
    (tmp_path / "no.png").write_bytes(b"")
    second = Reading({"ok": "yes", "bad": "no"})
    records, _ = await run_column(second, items, column, results)
    assert second.asked == ["bad"] and [r.verdict for r in records] == ["correct", "correct"]
