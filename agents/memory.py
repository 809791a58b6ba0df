"""The run's memory (structured notes) and the policy fitting notes and chat history into prompts.

Entries are structured: ``(role, sub_question, content, round)``. They are numbered from 1 when
rendered, and the numbers stay stable when entries are omitted, so a gap is visible.

Truncation policy (applied per prompt, only when the rendered block exceeds its token budget):

1. Memory keeps its FIRST entry (usually the first look at the image) and then as many of the MOST
   RECENT entries as fit; the oldest middle entries are dropped and replaced by one marker line
   ``[k earlier notes omitted]``.
2. If the first entry and the newest entry do not both fit, the first entry is dropped too.
3. If even the newest entry alone does not fit, its text is clipped to the budget (``… [clipped]``).
4. Chat history keeps the MOST RECENT turns that fit, with ``[k earlier turns omitted]`` in front.

Budgets come from the caller (the model's context length minus ``max_tokens`` minus the rest of the
prompt); token counts come from ``ModelBackend.count_tokens``. Every truncation is logged by the
caller and reported in ``RunResult.notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents.prompts import PromptSet

CountTokens = Callable[[str], int]

CLIP_MARK = " … [clipped]"


@dataclass(frozen=True)
class MemoryEntry:
    role: str  # "vision" | "insight" | "ocr" | "referee"
    content: str
    sub_question: str | None = None
    round: int = 0


@dataclass(frozen=True)
class Fitted:
    """A rendered block and what was left out to make it fit."""

    text: str
    omitted: int = 0
    clipped: bool = False

    @property
    def truncated(self) -> bool:
        return self.omitted > 0 or self.clipped


def clip_text(text: str, budget: int, count_tokens: CountTokens) -> str:
    """The longest head of ``text`` (plus a clip mark) within ``budget`` tokens."""
    if count_tokens(text) <= budget:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # largest prefix length that fits, by bisection
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid] + CLIP_MARK) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + CLIP_MARK if lo > 0 else CLIP_MARK.strip()


def fit_lines(
    lines: Sequence[str],
    budget: int,
    count_tokens: CountTokens,
    *,
    keep_first: bool,
    gap: Callable[[int], str],
) -> Fitted:
    """Join ``lines`` with newlines within ``budget`` tokens, following the module's policy."""
    if not lines:
        return Fitted("")
    costs = [count_tokens(line) + 1 for line in lines]  # +1: the newline (a safe over-estimate)
    if sum(costs) <= budget:
        return Fitted("\n".join(lines))
    n = len(lines)
    gap_cost = count_tokens(gap(n)) + 1
    avail = budget - gap_cost
    tail: list[int] = []  # indices of the most recent lines kept
    used = 0
    head = keep_first and costs[0] + costs[-1] <= avail
    if head:
        used = costs[0]
    for i in range(n - 1, 0 if head else -1, -1):
        if used + costs[i] > avail:
            break
        tail.append(i)
        used += costs[i]
    tail.reverse()
    kept = ([0] if head else []) + tail
    if not tail:  # even the newest line alone does not fit: clip it
        newest = clip_text(lines[-1], max(1, avail - 1), count_tokens)
        omitted = n - 1
        return Fitted("\n".join(([gap(omitted)] if omitted else []) + [newest]), omitted, True)
    omitted = n - len(kept)
    out = [lines[0]] if head else []
    if omitted:
        out.append(gap(omitted))
    out.extend(lines[i] for i in tail)
    return Fitted("\n".join(out), omitted)


@dataclass
class Memory:
    """What the experts found and the referee concluded, in order."""

    entries: list[MemoryEntry] = field(default_factory=list)

    def add(
        self, role: str, content: str, *, sub_question: str | None = None, round: int = 0
    ) -> MemoryEntry:
        entry = MemoryEntry(
            role=role, content=content.strip(), sub_question=sub_question, round=round
        )
        self.entries.append(entry)
        return entry

    def __len__(self) -> int:
        return len(self.entries)

    def lines(self, prompts: PromptSet) -> list[str]:
        return [
            prompts.text(
                f"memory_{entry.role}",
                n=i,
                sub_question=entry.sub_question or "",
                content=entry.content,
            )
            for i, entry in enumerate(self.entries, start=1)
        ]

    def render(self, prompts: PromptSet, budget: int, count_tokens: CountTokens) -> Fitted:
        """The memory block for a prompt, within ``budget`` tokens (see the module docstring)."""
        if not self.entries:
            return Fitted(prompts.text("memory_empty").strip())
        return fit_lines(
            self.lines(prompts),
            budget,
            count_tokens,
            keep_first=True,
            gap=lambda k: prompts.text("omitted_notes", count=k),
        )
