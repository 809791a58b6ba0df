"""The simulated continuous-batching engine: a cost model and one shared step loop (like vLLM).

One asyncio task ticks engine steps for every running sequence at once, the way vLLM's scheduler
re-forms its batch each step:

- up to ``max_num_seqs`` sequences run at once; the rest wait in FIFO order (queueing is real);
- a newly admitted sequence first prefills its prompt (chunked: at most ``max_num_batched_tokens``
  tokens per step across the batch, decode tokens included), and the step that finishes its
  prefill also yields its first token;
- every later step yields one token for every decoding sequence;
- a step lasts ``step_base_ms + step_per_seq_ms * decoding + prefill_per_token_ms * prefill``.

Prompt tokens are counted like a tokenizer would roughly do (``len(text) / 4``) plus a fixed
``image_tokens`` per image part; with prefix caching on, an image (and the text before it) that an
earlier request already sent costs no prefill again.

The step clock does not drift: when the (shared, busy) CPU wakes the loop late, the next steps are
shortened until the engine is back on its ideal time line (at most ``max_catchup_ms`` of debt), so
the engine models a GPU whose speed does not depend on this process's wake-up jitter. The lag is
reported in the statistics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CostModel:
    """How long the simulated engine takes. Defaults: a 7B model on one fast GPU, scaled down."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    step_base_ms: float = 6.0
    step_per_seq_ms: float = 0.1
    prefill_per_token_ms: float = 0.02
    image_tokens: int = 1024
    prefix_caching: bool = True
    #: prefix-cache capacity in 16-token blocks (LRU), about the KV cache a GPU has left
    prefix_cache_blocks: int = 50_000
    chars_per_token: int = 4
    max_catchup_ms: float = 25.0

    def step_s(self, decoding: int, prefill_tokens: int) -> float:
        ms = (
            self.step_base_ms
            + self.step_per_seq_ms * decoding
            + self.prefill_per_token_ms * prefill_tokens
        )
        return ms / 1000.0

    def text_tokens(self, text: str) -> int:
        return max(1, math.ceil(len(text) / self.chars_per_token)) if text else 0

    def bound_qps(self, decode_tokens_per_q: float, prefill_tokens_per_q: float) -> float:
        """Questions/s at saturation: full batches of ``max_num_seqs`` decoding sequences.

        Every step serves ``max_num_seqs`` decode tokens; prefill adds its per-token time.
        An upper bound: a real run also spends steps below a full batch.
        """
        b = self.max_num_seqs
        per_q = decode_tokens_per_q / b * self.step_s(b, 0) + (
            prefill_tokens_per_q * self.prefill_per_token_ms / 1000.0
        )
        return 1.0 / per_q if per_q > 0 else math.inf

    def single_call_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Time of one call alone in the engine (batch of one)."""
        steps = math.ceil(max(prompt_tokens, 1) / self.max_num_batched_tokens)
        prefill = prompt_tokens * self.prefill_per_token_ms / 1000.0 + steps * self.step_s(0, 0)
        return prefill + max(completion_tokens - 1, 0) * self.step_s(1, 0)


@dataclass
class CallRecord:
    """One finished (or aborted) call, as the engine saw it. Times: seconds on the engine clock."""

    id: int
    model: str
    role: str
    qid: str | None
    arrival: float
    admitted: float = 0.0
    first_token: float = 0.0
    finished: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    @property
    def duration_s(self) -> float:
        return self.finished - self.arrival


@dataclass
class Sequence:
    record: CallRecord
    chunks: list[str]  # the output, one element per token
    prefill_left: int
    emitted: int = 0
    aborted: bool = False
    stream: asyncio.Queue[str | None] | None = None
    done: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        return self.emitted >= len(self.chunks)


@dataclass
class EngineStats:
    steps: int = 0
    busy_s: float = 0.0
    decode_tokens: int = 0
    prefill_tokens: int = 0
    batch_sum: int = 0
    max_running: int = 0
    max_waiting: int = 0
    lag_s: float = 0.0
    max_lag_s: float = 0.0
    aborted: int = 0
    #: chat requests timed at the ASGI edge (request received -> last byte sent), seconds
    http_s: float = 0.0
    http_calls: int = 0
    calls_by_role: Counter[str] = field(default_factory=Counter)


class SimEngine:
    """The shared step loop. ``submit`` a prompt's token counts and scripted output chunks."""

    def __init__(self, cost: CostModel, *, log_size: int = 200_000) -> None:
        self.cost = cost
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats()
        self.log: deque[CallRecord] = deque(maxlen=log_size)
        self._next_id = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._prefix_cache: dict[str, None] = {}  # insertion-ordered LRU of prompt prefixes
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-step-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def now(self) -> float:
        return time.monotonic() - self._t0

    def reset_stats(self) -> None:
        self.stats = EngineStats()
        self.log.clear()

    # ------------------------------------------------------------------ requests

    def prefix_hit(self, keys: list[str]) -> list[bool]:
        """Which of the given cumulative prompt-prefix keys are cached; records them all."""
        hits = []
        for key in keys:
            hit = self.cost.prefix_caching and key in self._prefix_cache
            hits.append(hit)
            self._prefix_cache.pop(key, None)
            self._prefix_cache[key] = None
        while len(self._prefix_cache) > self.cost.prefix_cache_blocks:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        return hits

    def submit(
        self,
        *,
        model: str,
        role: str,
        qid: str | None,
        prompt_tokens: int,
        cached_tokens: int,
        chunks: list[str],
        finish_reason: str,
        stream: bool,
    ) -> Sequence:
        self._next_id += 1
        record = CallRecord(
            id=self._next_id,
            model=model,
            role=role,
            qid=qid,
            arrival=self.now(),
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=len(chunks),
            finish_reason=finish_reason,
        )
        loop = asyncio.get_running_loop()
        seq = Sequence(
            record=record,
            chunks=chunks,
            prefill_left=max(1, prompt_tokens - cached_tokens),
            stream=asyncio.Queue() if stream else None,
            done=None if stream else loop.create_future(),
        )
        self.waiting.append(seq)
        self.stats.max_waiting = max(self.stats.max_waiting, len(self.waiting))
        self._wake.set()
        return seq

    async def wait(self, seq: Sequence) -> None:
        if seq.done is None:
            raise ValueError("wait() is for non-streaming sequences")
        try:
            await asyncio.shield(seq.done)
        except asyncio.CancelledError:
            self.abort(seq)
            raise

    async def tokens(self, seq: Sequence) -> AsyncIterator[str]:
        if seq.stream is None:
            raise ValueError("tokens() is for streaming sequences")
        try:
            while True:
                chunk = await seq.stream.get()
                if chunk is None:
                    return
                yield chunk
        finally:
            if not seq.finished:
                self.abort(seq)

    def abort(self, seq: Sequence) -> None:
        if seq.aborted or seq.record.finished:
            return
        seq.aborted = True
        if seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self.running = [s for s in self.running if s is not seq]
        seq.record.finished = self.now()
        seq.record.finish_reason = "abort"
        seq.record.completion_tokens = seq.emitted
        self.stats.aborted += 1
        self.log.append(seq.record)

    # ------------------------------------------------------------------ the step loop

    def _schedule(self) -> tuple[list[Sequence], list[tuple[Sequence, int]]]:
        now = self.now()
        while self.waiting and len(self.running) < self.cost.max_num_seqs:
            seq = self.waiting.popleft()
            seq.record.admitted = now
            self.running.append(seq)
        self.stats.max_running = max(self.stats.max_running, len(self.running))
        decoding = [s for s in self.running if s.prefill_left == 0]
        budget = self.cost.max_num_batched_tokens - len(decoding)
        prefill: list[tuple[Sequence, int]] = []
        for seq in self.running:
            if seq.prefill_left > 0 and budget > 0:
                take = min(seq.prefill_left, budget)
                budget -= take
                prefill.append((seq, take))
        return decoding, prefill

    def _emit(self, seq: Sequence, now: float) -> None:
        chunk = seq.chunks[seq.emitted]
        seq.emitted += 1
        if seq.emitted == 1:
            seq.record.first_token = now
        if seq.stream is not None:
            seq.stream.put_nowait(chunk)

    def _finish(self, seq: Sequence, now: float) -> None:
        seq.record.finished = now
        self.stats.calls_by_role[seq.record.role] += 1
        self.log.append(seq.record)
        if seq.stream is not None:
            seq.stream.put_nowait(None)
        if seq.done is not None and not seq.done.done():
            seq.done.set_result(None)

    async def _loop(self) -> None:
        ideal_end = self.now()
        catchup = self.cost.max_catchup_ms / 1000.0
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                ideal_end = self.now()
            decoding, prefill = self._schedule()
            prefill_tokens = sum(take for _, take in prefill)
            duration = self.cost.step_s(len(decoding), prefill_tokens)
            now = self.now()
            lag = now - ideal_end
            if lag > 0:
                self.stats.lag_s += lag
                self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
            start = max(ideal_end, now - catchup)
            ideal_end = start + duration
            delay = ideal_end - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let request handlers run between steps
            done_at = self.now()
            self.stats.steps += 1
            self.stats.busy_s += duration
            self.stats.batch_sum += len(decoding)
            self.stats.decode_tokens += len(decoding)
            self.stats.prefill_tokens += prefill_tokens
            finished: list[Sequence] = []
            for seq in decoding:
                if seq.aborted:  # aborted during the step
                    continue
                self._emit(seq, done_at)
                if seq.finished:
                    finished.append(seq)
            for seq, take in prefill:
                if seq.aborted:
                    continue
                seq.prefill_left -= take
                if seq.prefill_left == 0:
                    self._emit(seq, done_at)
                    if seq.finished:
                        finished.append(seq)
            if finished:
                gone = {id(s) for s in finished}
                self.running = [s for s in self.running if id(s) not in gone]
                for seq in finished:
                    self._finish(seq, done_at)

    # ------------------------------------------------------------------ reporting

    def summary(self, *, include_calls: bool = False) -> dict[str, Any]:
        """Aggregates over the call log since the last reset, and the bound they imply."""
        calls = [r for r in self.log if r.finish_reason != "abort"]
        questions = sum(1 for r in calls if r.role in TERMINAL_ROLES)
        by_role: dict[str, dict[str, float]] = {}
        for r in calls:
            entry = by_role.setdefault(
                r.role,
                {"calls": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0},
            )
            entry["calls"] += 1
            entry["prompt_tokens"] += r.prompt_tokens
            entry["cached_tokens"] += r.cached_tokens
            entry["completion_tokens"] += r.completion_tokens
        s = self.stats
        out: dict[str, Any] = {
            "cost_model": asdict(self.cost),
            "calls": len(calls),
            "questions": questions,
            "call_time_s": sum(r.duration_s for r in calls),
            "http_time_s": s.http_s,
            "http_calls": s.http_calls,
            "queue_time_s": sum(r.admitted - r.arrival for r in calls),
            "by_role": by_role,
            "steps": s.steps,
            "busy_s": s.busy_s,
            "mean_batch": s.batch_sum / s.steps if s.steps else 0.0,
            "batch_sum": s.batch_sum,
            "decode_tokens": s.decode_tokens,
            "prefill_tokens": s.prefill_tokens,
            "max_running": s.max_running,
            "max_waiting": s.max_waiting,
            "lag_s": s.lag_s,
            "max_lag_s": s.max_lag_s,
            "aborted": s.aborted,
            "running": len(self.running),
            "waiting": len(self.waiting),
        }
        profile = question_profile(calls)
        if profile is not None:
            out["per_question"] = profile
            out["bound_qps"] = self.cost.bound_qps(
                profile["decode_tokens"], profile["prefill_tokens"]
            )
        if include_calls:
            out["call_log"] = [{**asdict(r), "duration_s": r.duration_s} for r in self.log]
        return out


#: roles that end a question (used to count questions in the call log)
TERMINAL_ROLES = frozenset({"summarizer", "fallback", "direct"})


def question_profile(calls: list[CallRecord]) -> dict[str, float] | None:
    """Mean calls, decode and uncached prefill tokens per COMPLETE question in ``calls``.

    A question is complete when its terminal call (summarizer / fallback / direct) is in the log;
    calls are grouped by question id, so questions cut by the start of the log do not count.
    Without question ids, every call counts and questions are the terminal calls.
    """
    done = {r.qid for r in calls if r.role in TERMINAL_ROLES and r.qid is not None}
    if done:
        mine = [r for r in calls if r.qid in done]
        n = len(done)
    else:
        mine = calls
        n = sum(1 for r in calls if r.role in TERMINAL_ROLES)
    if not n:
        return None
    return {
        "questions": float(n),
        "calls": len(mine) / n,
        "decode_tokens": sum(max(r.completion_tokens - 1, 0) for r in mine) / n,
        "prefill_tokens": sum(max(r.prompt_tokens - r.cached_tokens, 1) for r in mine) / n,
    }
