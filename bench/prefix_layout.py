"""Prompt layout vs the prefix cache: uncached prefill tokens per question, before and after.

    python -m bench prefix_layout               # ~1 min; writes docs/bench_prefix_layout.json
    python -m bench prefix_layout --before DIR  # compare another prompts folder

Commit 4a31bb9 moved the static instructions of the dispatcher, insight and referee templates
before the growing notes, so a prefix cache re-uses everything up to the newest note. This runs
the same question load through two services on ONE simulated engine (block-level prefix caching,
16-token blocks, images hashed): one with the previous layout (``configs/prompts`` as of
``4a31bb9^``, written into a temporary folder from git, or ``--before DIR``), one with the current
``configs/prompts``. Each layout gets fresh questions (distinct ids and images, so nothing of one
layout's questions is cached for the other) after the same warm-up; the engine's call log then
gives, per role and per question, the prompt tokens, the cached tokens and the uncached rest.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.loadgen import Questions, Sample, ask
from bench.procs import ROOT, Proc, running, service_proc, sim_proc
from bench.sim_core import TERMINAL_ROLES

#: the commit that changed the layout; the "before" prompts are its parent's
LAYOUT_COMMIT = "4a31bb9"
#: the prompt files that commit changed
CHANGED = ("proreason.yaml", "ocr.yaml")
#: question kinds: 2 rounds, 3 rounds with an insight, 8 rounds then the fallback
SCENARIOS = ("solve2", "insight", "max_rounds")
QUESTIONS_PER_SCENARIO = 8
QUICK_QUESTIONS_PER_SCENARIO = 2
CONCURRENCY = 8
WARM_UP = 2

# --------------------------------------------------------------------------- counting


def layout_profile(call_log: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per question: calls, prompt, cached and uncached tokens, by role and in total.

    Only COMPLETE questions count (their terminal call, summarizer / fallback / direct, is in
    the log); aborted calls are left out. ``uncached = prompt - cached`` (what must be prefilled).
    """
    calls = [c for c in call_log if c.get("finish_reason") != "abort" and c.get("qid")]
    done = {c["qid"] for c in calls if c["role"] in TERMINAL_ROLES}
    n = len(done)
    by_role: dict[str, dict[str, float]] = {}
    for c in calls:
        if c["qid"] not in done:
            continue
        row = by_role.setdefault(c["role"], {"calls": 0, "prompt": 0, "cached": 0})
        row["calls"] += 1
        row["prompt"] += c["prompt_tokens"]
        row["cached"] += c["cached_tokens"]
    roles = {role: _per_question(row, n) for role, row in sorted(by_role.items())}
    total = {
        key: float(sum(row[key] for row in by_role.values()))
        for key in ("calls", "prompt", "cached")
    }
    return {"questions": n, "by_role": roles, "total": _per_question(total, n)}


def _per_question(row: Mapping[str, float], n: int) -> dict[str, float]:
    q = max(n, 1)
    prompt, cached = row["prompt"] / q, row["cached"] / q
    return {
        "calls": row["calls"] / q,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "uncached_tokens": prompt - cached,
        "cached_fraction": cached / prompt if prompt else 0.0,
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per role (and ``all``): both layouts' figures and after/before of uncached."""
    rows = []
    roles = sorted(set(before["by_role"]) | set(after["by_role"]))
    empty = _per_question({"calls": 0, "prompt": 0, "cached": 0}, 1)
    for role in [*roles, "all"]:
        b = before["total"] if role == "all" else before["by_role"].get(role, empty)
        a = after["total"] if role == "all" else after["by_role"].get(role, empty)
        ratio = a["uncached_tokens"] / b["uncached_tokens"] if b["uncached_tokens"] else None
        rows.append({"role": role, "before": b, "after": a, "uncached_ratio": ratio})
    return rows


# --------------------------------------------------------------------------- the prompts


def git_show(rev_path: str) -> str:
    return subprocess.run(
        ["git", "show", rev_path], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def before_prompts(
    dest: Path,
    current: Path = ROOT / "configs" / "prompts",
    show: Callable[[str], str] = git_show,
) -> Path:
    """The prompts folder as before the layout commit: the current folder with the files that
    commit changed replaced by their parent's versions."""
    shutil.copytree(current, dest, dirs_exist_ok=True)
    for name in CHANGED:
        (dest / name).write_text(show(f"{LAYOUT_COMMIT}^:configs/prompts/{name}"))
    return dest


# --------------------------------------------------------------------------- the run


async def _ask_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[Sample]:
    """POST every body to /v1/reason, ``concurrency`` at a time (``loadgen.ask``)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(body: dict[str, Any]) -> Sample:
            async with gate:
                return await ask(client, url + "/v1/reason", body)

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def _measure(sim: Proc, service: Proc, label: str, start: int, per_scenario: int) -> dict:
    """Warm-up (the static prompt prefixes), then the measured questions; the call log."""
    warm = [Questions("solve2", prefix=f"{label}-warm-").body(start + i) for i in range(WARM_UP)]
    asyncio.run(_ask_all(service.url, warm, 1))
    httpx.post(sim.url + "/sim/reset").raise_for_status()
    bodies = [
        Questions(scenario, prefix=f"{label}-{scenario}-").body(start + WARM_UP + k * 100 + i)
        for k, scenario in enumerate(SCENARIOS)
        for i in range(per_scenario)
    ]
    samples = asyncio.run(_ask_all(service.url, bodies, CONCURRENCY))
    stats = httpx.get(sim.url + "/sim/stats?calls=1").json()
    failed = [s for s in samples if s.status != 200]
    if failed:
        raise RuntimeError(
            f"{label}: {len(failed)} of {len(samples)} questions failed ({failed[0].error})"
        )
    by_scenario = {}
    for scenario in SCENARIOS:
        mine = [c for c in stats["call_log"] if f"-{scenario}-" in (c.get("qid") or "")]
        by_scenario[scenario] = layout_profile(mine)
    return {"all": layout_profile(stats["call_log"]), "by_scenario": by_scenario}


def run(out: Path, *, before_dir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    per_scenario = QUICK_QUESTIONS_PER_SCENARIO if quick else QUESTIONS_PER_SCENARIO
    current = ROOT / "configs" / "prompts"
    with tempfile.TemporaryDirectory(prefix="proreason-prompts-before-") as tmp:
        before = before_dir or before_prompts(Path(tmp))
        sim = sim_proc("solve2")
        results: dict[str, Any] = {}
        with running(sim):
            for i, (label, folder) in enumerate((("before", before), ("after", current))):
                env = {"PROREASON_AGENT__PROMPTS_DIR": str(folder)}
                service = service_proc(sim.url, env=env)
                with running(service):
                    results[label] = _measure(sim, service, label, i * 10_000, per_scenario)
            cost = httpx.get(sim.url + "/sim/config").json()["cost_model"]
    rows = compare(results["before"]["all"], results["after"]["all"])
    scenario_rows = [
        {"scenario": s, **compare(results["before"]["by_scenario"][s],
                                  results["after"]["by_scenario"][s])[-1]}
        for s in SCENARIOS
    ]  # fmt: skip
    text = _table(rows, "role") + "\n\n" + _table(scenario_rows, "scenario")
    payload = {
        "machine": report.machine(),
        "config": {
            "before": str(before_dir) if before_dir else f"git {LAYOUT_COMMIT}^:configs/prompts",
            "after": "configs/prompts",
            "scenarios": list(SCENARIOS),
            "questions_per_scenario": per_scenario,
            "concurrency": CONCURRENCY,
            "warm_up_questions": WARM_UP,
            "cost_model": cost,
        },
        "results": results,
        "by_role": rows,
        "by_scenario": scenario_rows,
    }
    path = report.write_json(out, "prefix_layout", payload)
    print(f"\n## prefix_layout\n\n{text}\n\n(written: {path})", flush=True)
    return payload


def _table(rows: list[dict[str, Any]], key: str) -> str:
    return report.table(
        [
            key,
            "calls/q",
            "prompt before",
            "cached before",
            "uncached before",
            "prompt after",
            "cached after",
            "uncached after",
            "uncached after/before",
        ],
        [
            [
                r[key],
                r["after"]["calls"],
                r["before"]["prompt_tokens"],
                r["before"]["cached_tokens"],
                r["before"]["uncached_tokens"],
                r["after"]["prompt_tokens"],
                r["after"]["cached_tokens"],
                r["after"]["uncached_tokens"],
                r["uncached_ratio"],
            ]
            for r in rows
        ],
    )
