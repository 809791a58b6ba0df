"""The benchmarks' official metrics, and the statistics of a comparison.

Every metric takes the run's records (``verdict``, ``parsed``, ``reference``, ``meta``); an
unparsed answer or an error is a wrong answer everywhere (never a guessed yes/no or option).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class Scored(Protocol):
    id: str
    verdict: str
    parsed: str | None
    reference: str
    meta: dict[str, Any]


def _correct(r: Scored) -> bool:
    return r.verdict == "correct"


def bootstrap_interval(
    outcomes: Sequence[bool], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``outcomes`` (seeded: reproducible)."""
    n = len(outcomes)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    hits = [1 if o else 0 for o in outcomes]
    means = sorted(sum(rng.choices(hits, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """The exact (binomial) McNemar test on the items both runs answered.

    ``b01``: items ``a`` got wrong and ``b`` right; ``b10``: the reverse. Two-sided p-value:
    ``min(1, 2 * P[X <= min(b01, b10)])`` for ``X ~ Binomial(b01 + b10, 1/2)``.
    """
    common = sorted(a.keys() & b.keys())
    b01 = sum(1 for k in common if not a[k] and b[k])
    b10 = sum(1 for k in common if a[k] and not b[k])
    n = b01 + b10
    if n == 0:
        p = 1.0
    else:
        tail = sum(math.comb(n, i) for i in range(min(b01, b10) + 1)) / 2**n
        p = min(1.0, 2 * tail)
    return {"n": len(common), "b01": b01, "b10": b10, "p_value": p}


# -------------------------------------------------------------------------------- HallusionBench


def _all_correct(groups: dict[str, list[bool]]) -> tuple[int, int]:
    return sum(all(v) for v in groups.values()), len(groups)


def hallusionbench(records: Iterable[Scored]) -> dict[str, Any]:
    """HallusionBench's leaderboard metrics, as its ``utils.py`` computes them:

    - ``aAcc``: question accuracy, over every question;
    - ``fAcc``: figure accuracy: a figure (category, subcategory, set_id, figure_id) counts when
      every question on it is right; Visual-Supplement questions without a figure (figure_id 0
      in VS) are left out;
    - ``qAcc``: question-pair accuracy: a question (category, subcategory, set_id, question_id)
      counts when it is right on every figure it is asked about;
    - ``easy_aAcc``: the same grouping over the original figures only (figure_id 0), i.e. the
      accuracy on easy questions; ``hard_aAcc``: over the edited figures (figure_id != 0).
    All in percent.
    """
    rows = list(records)
    figures: dict[str, list[bool]] = defaultdict(list)
    pairs: dict[str, list[bool]] = defaultdict(list)
    easy: dict[str, list[bool]] = defaultdict(list)
    hard: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        m, ok = r.meta, _correct(r)
        base = "_".join([m["category"], m["subcategory"], str(m["set_id"])])
        if not (m["category"] == "VS" and str(m["figure_id"]) == "0"):
            figures[f"{base}_{m['figure_id']}"].append(ok)
        question = f"{base}_{m['question_id']}"
        pairs[question].append(ok)
        (easy if str(m["figure_id"]) == "0" else hard)[question].append(ok)

    def pct(hit_total: tuple[int, int]) -> float | None:
        hit, total = hit_total
        return round(100 * hit / total, 4) if total else None

    return {
        "aAcc": pct((sum(map(_correct, rows)), len(rows))),
        "fAcc": pct(_all_correct(figures)),
        "qAcc": pct(_all_correct(pairs)),
        "easy_aAcc": pct(_all_correct(easy)),
        "hard_aAcc": pct(_all_correct(hard)),
        "questions": len(rows),
        "figures": len(figures),
        "question_pairs": len(pairs),
    }


# ------------------------------------------------------------------------------------------- MME

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
    "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)  # fmt: skip


def mme(records: Iterable[Scored]) -> dict[str, Any]:
    """MME's scores: per subtask ``acc`` (questions right, %) and ``acc_plus`` (images with both
    questions right, %), ``score = acc + acc_plus`` (at most 200); ``perception`` is the sum over
    the 10 perception subtasks (at most 2000), ``cognition`` over the 4 cognition ones (800)."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[r.meta["subtask"]][r.meta["image"]].append(_correct(r))
    subtasks = {}
    for task, images in sorted(by_task.items()):
        answers = [ok for oks in images.values() for ok in oks]
        acc = 100 * sum(answers) / len(answers)
        acc_plus = 100 * sum(all(oks) for oks in images.values()) / len(images)
        subtasks[task] = {
            "acc": round(acc, 4),
            "acc_plus": round(acc_plus, 4),
            "score": round(acc + acc_plus, 4),
            "questions": len(answers),
            "images": len(images),
        }

    def total(names: tuple[str, ...]) -> float:
        return round(sum(subtasks[t]["score"] for t in names if t in subtasks), 4)

    return {
        "perception": total(MME_PERCEPTION),
        "cognition": total(MME_COGNITION),
        "subtasks": subtasks,
        "missing_subtasks": [t for t in (*MME_PERCEPTION, *MME_COGNITION) if t not in subtasks],
    }


# ------------------------------------------------------------------------------------------ POPE


def _pope(rows: list[Scored]) -> dict[str, Any]:
    tp = sum(1 for r in rows if r.parsed == "yes" and r.reference == "yes")
    fp = sum(1 for r in rows if r.parsed == "yes" and r.reference == "no")
    tn = sum(1 for r in rows if r.parsed == "no" and r.reference == "no")
    fn = sum(1 for r in rows if r.parsed != "yes" and r.reference == "yes")
    n = len(rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": round(100 * (tp + tn) / n, 4) if n else None,
        "precision": round(100 * precision, 4),
        "recall": round(100 * recall, 4),
        "f1": round(100 * f1, 4),
        "yes_ratio": round(100 * sum(r.parsed == "yes" for r in rows) / n, 4) if n else None,
        "unparsed": sum(r.parsed not in ("yes", "no") for r in rows),
        "n": n,
    }


def pope(records: Iterable[Scored]) -> dict[str, Any]:
    """POPE's metrics with "yes" as the positive class (%), overall and per split (random,
    popular, adversarial). An unparsed answer is neither yes nor no: wrong for accuracy, a false
    negative when the truth is yes, and not counted in the yes-ratio."""
    rows = list(records)
    by_category: dict[str, list[Scored]] = defaultdict(list)
    for r in rows:
        by_category[str(r.meta.get("category"))].append(r)
    return {
        "overall": _pope(rows),
        "categories": {c: _pope(v) for c, v in sorted(by_category.items())},
    }


OFFICIAL = {"hallusionbench": hallusionbench, "mme": mme, "pope": pope}


def official_metrics(benchmark: str | None, records: Sequence[Scored]) -> dict[str, Any] | None:
    """The benchmark's own metrics over ``records``, or None for accuracy-only benchmarks."""
    metric = OFFICIAL.get(benchmark or "")
    return metric(records) if metric and records else None
