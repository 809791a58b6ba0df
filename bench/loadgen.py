"""The load generator: questions sent to the service over HTTP from the bench's own process.

A closed loop of ``concurrency`` workers, each sending one question at a time to ``/v1/reason``.
It warms up until every worker has finished a question (steady state), then measures for a
window, then lets the questions in flight finish (not counted) so the next level starts clean.
Requests, time and connections are bounded; everything stays on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from bench.procs import Proc


def make_image(i: int, size: int = 64) -> str:
    """A small PNG data URL, different for every ``i`` (a coloured square and circle).

    Distinct images make every question pay its own image prefill once (prefix caching then
    reuses it across the question's perception rounds), as real traffic would.
    """
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    off = i % (size // 4)
    draw.rectangle((4 + off, 8, 24 + off, 28), fill=(200, i % 256, (i // 256) % 256))
    draw.ellipse((36 - off // 2, 34, 58 - off // 2, 56), fill=(30, (i // 65536) % 256, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Questions:
    """Builds ``/v1/reason`` bodies: question ``i`` carries the ``[q=<id>]`` marker of the sim."""

    scenario: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    prefix: str = "b"

    def text(self, i: int) -> str:
        tag = f" [scenario={self.scenario}]" if self.scenario else ""
        return (
            f"[q={self.prefix}{i}]{tag} Which shapes are in the picture, and what colours are they?"
        )

    def body(self, i: int) -> dict[str, Any]:
        return {"question": self.text(i), "images": [self.image(i)], **self.extra}

    def image(self, i: int) -> str:
        return make_image(i)


@dataclass
class Sample:
    start: float
    end: float
    status: int
    rounds: int | None = None
    stop_reason: str | None = None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end - self.start


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def ask(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        return Sample(start, time.perf_counter(), 0, error=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if response.status_code != 200:
        return Sample(start, end, response.status_code, error=response.text[:200])
    data = response.json()
    return Sample(start, end, 200, rounds=data.get("rounds"), stop_reason=data.get("stop_reason"))


@dataclass
class Window:
    """What one measured window produced."""

    concurrency: int
    samples: list[Sample]
    window_s: float
    warmup_s: float
    engine: dict[str, Any]
    cpu_s: dict[str, float]

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.status == 200]
        lat = [s.latency_s for s in ok]
        engine = self.engine
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "questions": len(ok),
            "errors": len(self.samples) - len(ok),
            "window_s": self.window_s,
            "warmup_s": self.warmup_s,
            "qps": len(ok) / self.window_s if self.window_s else 0.0,
            "p50_s": percentile(lat, 50),
            "p99_s": percentile(lat, 99),
            "mean_s": sum(lat) / len(lat) if lat else math.nan,
            "model_calls_per_s": engine.get("calls", 0) / self.window_s if self.window_s else 0.0,
            "engine_questions_per_s": engine.get("questions", 0) / self.window_s
            if self.window_s
            else 0.0,
            "bound_qps": engine.get("bound_qps"),
            "engine_mean_batch": engine.get("mean_batch"),
            "engine_max_waiting": engine.get("max_waiting"),
            "engine_lag_s": engine.get("lag_s"),
            "calls_per_question": (engine.get("per_question") or {}).get("calls"),
            "cpu_s": self.cpu_s,
        }
        bound = out["bound_qps"]
        out["fraction_of_bound"] = out["qps"] / bound if bound else None
        # the same from the engine's side: model calls/s vs the bound in calls/s (smooth across
        # the waves of a closed loop, where questions/s in a finite window is not)
        per_q = out["calls_per_question"]
        out["calls_fraction_of_bound"] = (
            out["model_calls_per_s"] / (bound * per_q) if bound and per_q else None
        )
        errors = [s.error for s in self.samples if s.error]
        if errors:
            out["first_error"] = errors[0]
        return out


def _window_stats(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Engine counters over the window (differences); the per-question profile and the bound
    from every question completed since the level started (warm-up included)."""
    out = dict(after)
    for key in ("calls", "questions", "steps", "batch_sum", "busy_s", "lag_s", "call_time_s"):
        out[key] = after[key] - before[key]
    out["mean_batch"] = out["batch_sum"] / out["steps"] if out["steps"] else 0.0
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


async def closed_loop(
    service_url: str,
    sim: Proc,
    questions: Questions,
    *,
    concurrency: int,
    window_s: float,
    max_warmup_s: float = 90.0,
    latencies: float = 1.5,
    max_window_s: float = 150.0,
    drain_timeout_s: float = 120.0,
    start_index: int = 0,
    watch: dict[str, int] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Window:
    """Run ``concurrency`` workers; measure ``window_s`` seconds after warm-up."""
    url = service_url + "/v1/reason"
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    timeout = httpx.Timeout(600.0, connect=10.0)
    counter = iter(range(start_index, 10**9))
    done: list[Sample] = []
    phase = {"stop": False}
    watch = watch or {}
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(timeout=30.0) as control,
    ):

        async def worker(k: int) -> None:
            await asyncio.sleep(min(1.0, 0.01 * concurrency) * k / concurrency)  # staggered start
            while not phase["stop"]:
                done.append(await ask(client, url, questions.body(next(counter))))

        await control.post(sim.url + "/sim/reset")
        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        t0 = time.perf_counter()
        while len(done) < concurrency and time.perf_counter() - t0 < max_warmup_s:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        warmup = time.perf_counter() - t0
        before = (await control.get(sim.url + "/sim/stats")).json()
        cpu0 = {name: cpu_seconds(pid) for name, pid in watch.items()}
        w0 = time.perf_counter()
        n0 = len(done)
        # a closed loop that starts together moves in waves about one latency long: measure over
        # at least ``latencies`` of them, or a short window samples one phase of a wave
        window_s = min(max(window_s, latencies * warmup), max_window_s)
        while time.perf_counter() - w0 < window_s:
            await asyncio.sleep(0.05)
            if on_tick is not None:
                on_tick()
        w1 = time.perf_counter()
        engine = _window_stats(before, (await control.get(sim.url + "/sim/stats")).json())
        cpu1 = {name: cpu_seconds(pid) for name, pid in watch.items()}
        window = [s for s in done[n0:] if w0 <= s.end <= w1]
        phase["stop"] = True
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # wait until the engine is idle again (nothing left over for the next level)
        for _ in range(200):
            stats = (await control.get(sim.url + "/sim/stats")).json()
            if stats["running"] == 0 and stats["waiting"] == 0:
                break
            await asyncio.sleep(0.1)
    return Window(
        concurrency=concurrency,
        samples=window,
        window_s=w1 - w0,
        warmup_s=warmup,
        engine=engine,
        cpu_s={name: cpu1[name] - cpu0[name] for name in cpu0},
    )


async def one_at_a_time(
    service_url: str,
    questions: Questions,
    n: int,
    *,
    start_index: int = 0,
    before: Callable[[int], Any] | None = None,
    after: Callable[[int, Sample, dict[str, Any]], Any] | None = None,
) -> list[tuple[Sample, dict[str, Any]]]:
    """Send ``n`` questions sequentially; return each sample with its full JSON response."""
    out: list[tuple[Sample, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        for i in range(start_index, start_index + n):
            if before is not None:
                await before(i)
            body = questions.body(i)
            start = time.perf_counter()
            response = await client.post(service_url + "/v1/reason", json=body)
            end = time.perf_counter()
            data = response.json() if response.status_code == 200 else {}
            sample = Sample(
                start,
                end,
                response.status_code,
                rounds=data.get("rounds"),
                stop_reason=data.get("stop_reason"),
                error=None if response.status_code == 200 else response.text[:300],
            )
            if after is not None:
                await after(i, sample, data)
            out.append((sample, data))
    return out
