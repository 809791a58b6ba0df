"""The report of a run: per benchmark x column (method, mode, prompt set), accuracy with its
bootstrap 95% interval, unparsed, errors, stop reasons, fallbacks, costs per question, the
benchmark's own metrics, a paired McNemar test against ``direct``; markdown, JSON and plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evals.metrics import mcnemar
from evals.runner import ItemRecord, MethodReport


def compare_with_direct(
    reports: list[MethodReport], records: dict[tuple[str | None, str], list[ItemRecord]]
) -> None:
    """Fill ``vs_direct`` of every non-direct column: McNemar against the ``direct`` column of
    the same benchmark and mode (or any ``direct`` column of the benchmark)."""
    for report in reports:
        if report.method == "direct":
            continue
        candidates = [
            r for r in reports if r.method == "direct" and r.benchmark == report.benchmark
        ]
        same_mode = [r for r in candidates if r.mode == report.mode] or candidates
        if not same_mode:
            continue
        base = same_mode[0]
        ours = records[(report.benchmark, report.column)]
        theirs = records[(base.benchmark, base.column)]
        result = mcnemar(
            {r.id: r.verdict == "correct" for r in theirs},
            {r.id: r.verdict == "correct" for r in ours},
        )
        report.vs_direct = {"direct_column": base.column, **result}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(reports: list[MethodReport], meta: dict[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items() if v is not None]
    lines += [
        "",
        "| benchmark | column | mode | n | acc % | 95% CI | unparsed | errors | fallback % "
        "| parse fail/q | rounds/q | calls/q | tokens/q | p50 s | judge % "
        "| vs direct (b01/b10, p) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        lo, hi = r.accuracy_ci95
        vs = r.vs_direct
        versus = f"{vs['b01']}/{vs['b10']}, p={vs['p_value']:.3g}" if vs else "-"
        lines.append(
            f"| {r.benchmark or meta.get('dataset', '-')} | {r.column} | {r.mode} | {r.n} "
            f"| {_pct(r.accuracy)} | {_pct(lo)}–{_pct(hi)} | {r.unparsed} | {r.errors} "
            f"| {_pct(r.fallback_rate)} | {r.parse_failures_per_question:.2f} "
            f"| {r.rounds_per_question:.2f} | {r.model_calls_per_question:.2f} "
            f"| {r.tokens_per_question:.0f} | {r.latency_p50_s:.2f} | {_pct(r.judge_accuracy)} "
            f"| {versus} |"
        )
    lines += ["", "## Stop reasons", ""]
    for r in reports:
        mix = ", ".join(f"{k}: {v}" for k, v in sorted(r.stop_reasons.items())) or "-"
        lines.append(f"- {r.benchmark or '-'} / {r.column}: {mix}")
    official = [r for r in reports if r.official]
    if official:
        lines += ["", "## The benchmarks' own metrics", ""]
        for r in official:
            lines.append(f"### {r.benchmark} / {r.column}")
            lines += ["", "```json", json.dumps(r.official, indent=1), "```", ""]
    lines += [
        "",
        "Unparsed answers (no option, yes/no or number could be read) are scored wrong and "
        "counted apart; errors are items that could not be run (e.g. a missing image). "
        "b01: items direct got wrong and this column right; b10: the reverse (exact McNemar).",
    ]
    return "\n".join(lines) + "\n"


def plots(reports: list[MethodReport], out: Path) -> list[Path]:
    """``accuracy.png`` (accuracy with its 95% interval per column) and ``calls.png`` (model
    calls per question); none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    labels = [f"{r.benchmark}\n{r.column}" if r.benchmark else r.column for r in reports]
    xs = range(len(reports))
    written = []
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(reports)), 3.5))
    acc = [100 * r.accuracy for r in reports]
    err = [
        [100 * (r.accuracy - r.accuracy_ci95[0]) for r in reports],
        [100 * (r.accuracy_ci95[1] - r.accuracy) for r in reports],
    ]
    ax.bar(xs, acc, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("accuracy % (95% bootstrap CI)")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    written.append(out / "accuracy.png")
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(reports)), 3.5))
    ax.bar(xs, [r.model_calls_per_question for r in reports], color="#dd8452")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("model calls per question")
    fig.tight_layout()
    fig.savefig(out / "calls.png", dpi=120)
    plt.close(fig)
    written.append(out / "calls.png")
    return written


def write_report(out: Path, reports: list[MethodReport], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "reports": [asdict(r) for r in reports]}
    (out / "report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (out / "report.md").write_text(markdown(reports, meta), encoding="utf-8")
    plots(reports, out)
