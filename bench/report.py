"""Tables, JSON files and plots of the benchmarks."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": cores,
        "gpu": None,
        "load_avg_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "note": "cores shared with other work; absolute times are noise, ratios are the point",
    }


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [
        [c if isinstance(c, str) else fmt(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_{name}.json"
    payload = {
        "bench": name,
        "command": "python -m bench " + " ".join(sys.argv[1:]) if sys.argv else "",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install '.[bench]'): no plot")
        return None
    return plt


def plot_throughput(
    out: Path, levels: list[dict[str, Any]], baseline_qps: float | None = None
) -> Path | None:
    """Questions/s (with the engine's bound) and p50/p99 latency vs questions in flight."""
    plt = _pyplot()
    if plt is None or not levels:
        return None
    conc = [lv["concurrency"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(conc, [lv["qps"] for lv in levels], "o-", label="service (questions/s)")
    bounds = [lv.get("bound_qps") for lv in levels if lv.get("bound_qps")]
    if bounds:
        left.axhline(max(bounds), color="grey", linestyle="--", label="engine bound")
    if baseline_qps:
        left.plot([1], [baseline_qps], "s", color="tab:red", label="reference way (1 at a time)")
    left.set_xscale("log", base=2)
    left.set_xlabel("questions in flight")
    left.set_ylabel("questions / s")
    left.set_title("Throughput")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    for key, label in (("p50_s", "p50"), ("p99_s", "p99")):
        points = [(c, lv[key]) for c, lv in zip(conc, levels, strict=True) if _positive(lv[key])]
        right.plot([c for c, _ in points], [v for _, v in points], "o-", label=label)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("questions in flight")
    right.set_ylabel("latency per question (s)")
    right.set_title("Latency")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bars(
    out: Path, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str
) -> Path | None:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    plt = _pyplot()
    if plt is None or not groups:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.3 * len(series), 3.6))
    if len(series) == 1:
        axes = [axes]
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        ax.bar(range(len(groups)), values, color=["tab:blue", "tab:orange"] * len(groups))
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=7, rotation=20)
        ax.set_title(name, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
