"""The benchmarks of issue #4: overhead, throughput, baseline, parallel perception, memory.

Every benchmark runs the real processes: the simulated engine (``python -m bench.sim_engine``)
and the service (``proreason serve --profile vllm`` with both upstreams on the engine). The load
comes from this process (its own event loop, over loopback HTTP). ``run_all`` shares one engine
and one service across the benchmarks, so ratios are measured side by side in one run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.loadgen import Questions, Sample, closed_loop, one_at_a_time, percentile
from bench.procs import Proc, rss_mb, running, service_proc, sim_proc
from bench.reference import ReferenceClient

log = logging.getLogger(__name__)

LEVELS = (1, 4, 16, 64, 256)
QUICK_LEVELS = (1, 4, 16)
#: --quick: a 4x faster engine so short windows still see whole questions
QUICK_COST: dict[str, Any] = {"step_base_ms": 1.5, "step_per_seq_ms": 0.025}


@dataclass
class Context:
    """Configuration and the processes shared by the benchmarks of one run."""

    out: Path
    quick: bool = False
    scenario: str = "solve2"
    profile: str = "vllm"
    cost: dict[str, Any] = field(default_factory=dict)
    levels: tuple[int, ...] = LEVELS
    window_s: float = 15.0
    plot: bool = True
    sim: Proc | None = None
    service: Proc | None = None
    rss_cold: dict[str, float] = field(default_factory=dict)
    rss_idle: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next_q: int = 0

    def q_index(self, n: int) -> int:
        """Fresh question ids (the sim keeps per-question state)."""
        start = self._next_q
        self._next_q += n
        return start

    def config(self) -> dict[str, Any]:
        sim_cfg = httpx.get(self.sim_proc.url + "/sim/config").json()
        return {
            "profile": self.profile,
            "scenario": self.scenario,
            "quick": self.quick,
            "cost_model": sim_cfg["cost_model"],
            "service_pid": self.service_proc.pid,
            "sim_pid": self.sim_proc.pid,
        }

    @property
    def sim_proc(self) -> Proc:
        if self.sim is None:
            raise RuntimeError("the engine is not running")
        return self.sim

    @property
    def service_proc(self) -> Proc:
        if self.service is None:
            raise RuntimeError("the service is not running")
        return self.service

    def emit(self, name: str, payload: dict[str, Any], text: str) -> Path:
        payload = {"machine": report.machine(), "config": self.config(), **payload}
        self.results[name] = payload
        path = report.write_json(self.out, name, payload)
        print(f"\n## {name}\n\n{text}\n\n(written: {path})", flush=True)
        return path


def sim_stats(ctx: Context, *, calls: bool = False) -> dict[str, Any]:
    return httpx.get(ctx.sim_proc.url + "/sim/stats" + ("?calls=1" if calls else "")).json()


def sim_reset(ctx: Context) -> None:
    httpx.post(ctx.sim_proc.url + "/sim/reset").raise_for_status()


async def _warm(ctx: Context) -> None:
    """One question through everything (connections, lazy imports, caches)."""
    q = Questions(scenario=ctx.scenario, prefix="warm")
    results = await one_at_a_time(ctx.service_proc.url, q, 2, start_index=ctx.q_index(2))
    for sample, _ in results:
        if sample.status != 200:
            raise RuntimeError(f"the service failed a warm-up question: {sample.error}")


# --------------------------------------------------------------------------- 1. overhead

OVERHEAD_SCENARIOS = ("solve2", "insight", "parse_fail", "max_rounds")


def run_overhead(ctx: Context) -> dict[str, Any]:
    """One question at a time through the whole service vs the engine's own call times."""
    per_scenario = 1 if ctx.quick else 3
    rows: list[dict[str, Any]] = []
    current = {"scenario": ""}

    async def before(_i: int) -> None:
        async with httpx.AsyncClient() as c:
            await c.post(ctx.sim_proc.url + "/sim/reset")

    async def after(_i: int, sample: Sample, data: dict[str, Any]) -> None:
        async with httpx.AsyncClient() as c:
            stats = (await c.get(ctx.sim_proc.url + "/sim/stats")).json()
        timings = data.get("timings") or {}
        rows.append(
            {
                "scenario": current["scenario"],
                "status": sample.status,
                "stop_reason": sample.stop_reason,
                "rounds": sample.rounds,
                "calls": stats["calls"],
                "e2e_s": sample.latency_s,
                "engine_s": stats["call_time_s"],
                "engine_http_s": stats["http_time_s"],
                "service_total_s": timings.get("total_s"),
                "service_model_s": sum((timings.get("by_role_s") or {}).values()),
            }
        )

    for scenario in OVERHEAD_SCENARIOS:
        current["scenario"] = scenario
        q = Questions(scenario=scenario, prefix="ov")
        asyncio.run(
            one_at_a_time(
                ctx.service_proc.url,
                q,
                per_scenario,
                start_index=ctx.q_index(per_scenario),
                before=before,
                after=after,
            )
        )
    floor_ms = asyncio.run(_http_floor_ms(ctx.sim_proc.url + "/health"))
    ok = [r for r in rows if r["status"] == 200]
    for r in ok:
        r["overhead_s"] = r["e2e_s"] - r["engine_s"]
        r["overhead_ms_per_call"] = 1000 * r["overhead_s"] / r["calls"]
        r["overhead_pct"] = 100 * r["overhead_s"] / r["e2e_s"]
    summary: dict[str, Any] = {
        "questions": len(ok),
        "failed": len(rows) - len(ok),
        "targets": {"ms_per_call": 2.0, "pct": 3.0},
        "http_floor_ms": floor_ms,
    }
    text = report.table(
        ["scenario", "stop", "calls", "e2e s", "engine s", "overhead ms/call", "overhead %"],
        [
            [
                r["scenario"],
                r["stop_reason"],
                r["calls"],
                r["e2e_s"],
                r["engine_s"],
                r["overhead_ms_per_call"],
                r["overhead_pct"],
            ]
            for r in ok
        ],
    )
    if ok:
        e2e = sum(r["e2e_s"] for r in ok)
        engine = sum(r["engine_s"] for r in ok)
        engine_http = sum(r["engine_http_s"] for r in ok)
        calls = sum(r["calls"] for r in ok)
        total = sum(r["service_total_s"] or 0.0 for r in ok)
        model = sum(r["service_model_s"] for r in ok)
        summary.update(
            calls=calls,
            e2e_s=e2e,
            engine_s=engine,
            overhead_ms_per_call=1000 * (e2e - engine) / calls,
            overhead_pct=100 * (e2e - engine) / e2e,
            # what the service adds on top of an engine that answers over HTTP
            overhead_ms_per_call_vs_engine_http=1000 * (e2e - engine_http) / calls,
            overhead_pct_vs_engine_http=100 * (e2e - engine_http) / e2e,
            breakdown_ms_per_call={
                "engine_http_edge": 1000 * (engine_http - engine) / calls,
                "upstream_hop": 1000 * (model - engine_http) / calls,
                "app_and_agents": 1000 * (total - model) / calls,
                "inbound_http_and_client": 1000 * (e2e - total) / calls,
            },
        )
        b = summary["breakdown_ms_per_call"]
        text += (
            f"\n\nall: {summary['overhead_ms_per_call']:.2f} ms added per model call, "
            f"{summary['overhead_pct']:.2f}% of end-to-end time (targets: <= 2 ms, <= 3%); "
            f"{summary['overhead_ms_per_call_vs_engine_http']:.2f} ms/call and "
            f"{summary['overhead_pct_vs_engine_http']:.2f}% over the engine's HTTP-inclusive "
            f"time\nper call: engine HTTP edge {b['engine_http_edge']:.2f} ms, upstream hop "
            f"(service client + loopback) {b['upstream_hop']:.2f} ms, app + agents "
            f"{b['app_and_agents']:.2f} ms, inbound HTTP + load client "
            f"{b['inbound_http_and_client']:.2f} ms; one loopback HTTP round trip on this "
            f"machine now: {floor_ms:.2f} ms (median)"
        )
    else:
        text += "\n\nno question succeeded"
    payload = {"summary": summary, "questions": rows}
    ctx.emit("overhead", payload, text)
    return payload


async def _http_floor_ms(url: str, n: int = 60) -> float:
    """Median round trip of a trivial GET over a pooled loopback connection (ms)."""
    times = []
    async with httpx.AsyncClient() as client:
        await client.get(url)
        for _ in range(n):
            t0 = time.perf_counter()
            await client.get(url)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# --------------------------------------------------------------------------- 2. throughput


def _rss_sampler(ctx: Context, peaks: dict[str, float]) -> Any:
    pid = ctx.service_proc.pid

    def tick() -> None:
        rss = rss_mb(pid)["VmRSS"]
        peaks["max"] = max(peaks.get("max", 0.0), rss)

    return tick


def measure_level(
    ctx: Context,
    concurrency: int,
    *,
    scenario: str | None = None,
    extra: dict[str, Any] | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """One closed-loop window at ``concurrency`` questions in flight."""
    q = Questions(scenario=scenario or ctx.scenario, prefix=f"c{concurrency}-", extra=extra or {})
    peaks: dict[str, float] = {}
    window = asyncio.run(
        closed_loop(
            ctx.service_proc.url,
            ctx.sim_proc,
            q,
            concurrency=concurrency,
            window_s=window_s or ctx.window_s,
            start_index=ctx.q_index(10**6),
            watch={"service": ctx.service_proc.pid, "sim": ctx.sim_proc.pid},
            on_tick=_rss_sampler(ctx, peaks),
        )
    )
    out = window.summary()
    out["service_rss_peak_mb"] = peaks.get("max")
    out["engine_by_role"] = window.engine.get("by_role")
    out["engine_questions"] = window.engine.get("questions")
    n = max(out["questions"], 1)
    out["service_cpu_ms_per_question"] = 1000 * window.cpu_s.get("service", 0.0) / n
    return out


def run_throughput(ctx: Context) -> dict[str, Any]:
    """Questions/s, latency and model calls/s vs questions in flight, against the bound."""
    levels = [measure_level(ctx, c) for c in ctx.levels]
    top = max(levels, key=lambda lv: lv["concurrency"])
    rows = [
        [
            lv["concurrency"],
            lv["questions"],
            lv["errors"],
            lv["qps"],
            lv["p50_s"],
            lv["p99_s"],
            lv["model_calls_per_s"],
            lv["bound_qps"],
            100 * lv["fraction_of_bound"] if lv["fraction_of_bound"] else None,
            100 * lv["calls_fraction_of_bound"] if lv["calls_fraction_of_bound"] else None,
            lv["engine_mean_batch"],
            lv["service_cpu_ms_per_question"],
        ]
        for lv in levels
    ]
    text = report.table(
        [
            "in flight",
            "questions",
            "errors",
            "q/s",
            "p50 s",
            "p99 s",
            "calls/s",
            "bound q/s",
            "% of bound",
            "% of bound (calls)",
            "engine batch",
            "service CPU ms/q",
        ],
        rows,
    )
    frac = top["fraction_of_bound"]
    calls_frac = top["calls_fraction_of_bound"]
    text += (
        f"\n\nat {top['concurrency']} in flight: {100 * frac:.1f}% of the engine's bound in "
        f"questions/s, {100 * (calls_frac or 0):.1f}% in model calls/s "
        "(target >= 90% at saturation)"
        if frac
        else ""
    )
    payload: dict[str, Any] = {
        "levels": levels,
        "saturation": {
            "concurrency": top["concurrency"],
            "qps": top["qps"],
            "bound_qps": top["bound_qps"],
            "fraction_of_bound": frac,
            "calls_fraction_of_bound": calls_frac,
            "target": 0.9,
        },
    }
    baseline = ctx.results.get("baseline", {}).get("reference", {}).get("qps")
    if ctx.plot:
        png = report.plot_throughput(ctx.out / "bench_throughput.png", levels, baseline)
        payload["plot"] = str(png) if png else None
    ctx.emit("throughput", payload, text)
    return payload


# --------------------------------------------------------------------------- 3. baseline


def run_baseline(ctx: Context) -> dict[str, Any]:
    """The reference way (blocking calls, a new client per call) vs the service at 64 in flight."""
    n = 1 if ctx.quick else 4
    ref = ReferenceClient(
        ctx.sim_proc.url + "/v1",
        vision_model="sim-vision",
        text_model="sim-text",
        max_rounds=8,
    )
    q = Questions(scenario=ctx.scenario, prefix="ref")
    start = ctx.q_index(n + 1)
    ref.run(q.text(start), q.image(start))  # warm-up (imports, first connection)
    sim_reset(ctx)
    runs = [ref.run(q.text(i), q.image(i)) for i in range(start + 1, start + n + 1)]
    stats = sim_stats(ctx)
    wall = sum(r.latency_s for r in runs)
    reference = {
        "questions": len(runs),
        "qps": len(runs) / wall,
        "mean_latency_s": wall / len(runs),
        "calls_per_question": sum(r.calls for r in runs) / len(runs),
        "engine_s_per_question": stats["call_time_s"] / len(runs),
        "client_overhead_ms_per_call": 1000
        * (wall - stats["call_time_s"])
        / sum(r.calls for r in runs),
        "stop_reasons": sorted({r.stop_reason for r in runs}),
    }
    at = 64 if not ctx.quick else max(ctx.levels)
    level = next(
        (
            lv
            for lv in ctx.results.get("throughput", {}).get("levels", [])
            if lv["concurrency"] == at
        ),
        None,
    )
    if level is None:
        level = measure_level(ctx, at, window_s=ctx.window_s)
    ratio = level["qps"] / reference["qps"] if reference["qps"] else None
    engine_only_qps = 1.0 / reference["engine_s_per_question"]
    text = report.table(
        ["way", "in flight", "q/s", "mean latency s", "calls/q", "client overhead ms/call"],
        [
            [
                "reference (blocking, new client per call)",
                1,
                reference["qps"],
                reference["mean_latency_s"],
                reference["calls_per_question"],
                reference["client_overhead_ms_per_call"],
            ],
            [
                "service (/v1/reason)",
                at,
                level["qps"],
                level["mean_s"],
                level["calls_per_question"],
                None,
            ],
        ],
    )
    text += (
        f"\n\nratio: {ratio:.1f}x at {at} in flight (target >= 20x); of it, "
        f"{level['qps'] / engine_only_qps:.1f}x vs the engine's own time for one question at a "
        "time (no client overhead)"
    )
    payload = {
        "reference": reference,
        "service": {"concurrency": at, "qps": level["qps"], "mean_s": level["mean_s"]},
        "ratio": ratio,
        "ratio_vs_engine_only_sequential": level["qps"] / engine_only_qps,
        "target": 20.0,
    }
    ctx.emit("baseline", payload, text)
    return payload


# --------------------------------------------------------------------------- 4. parallel


PARALLEL_SCENARIOS = ("multi_fact", "multi_fact4")


def run_parallel(ctx: Context) -> dict[str, Any]:
    """Parallel perception vs the faithful loop on questions that need several visual facts."""
    n = 1 if ctx.quick else 4
    results: list[dict[str, Any]] = []
    for scenario in PARALLEL_SCENARIOS:
        for parallel in (False, True):
            q = Questions(
                scenario=scenario,
                prefix=f"pp{int(parallel)}-",
                extra={"parallel_perception": parallel},
            )
            sim_reset(ctx)
            samples = asyncio.run(
                one_at_a_time(ctx.service_proc.url, q, n, start_index=ctx.q_index(n))
            )
            stats = sim_stats(ctx)
            ok = [(s, d) for s, d in samples if s.status == 200]
            lat = [s.latency_s for s, _ in ok]
            results.append(
                {
                    "scenario": scenario,
                    "mode": "parallel" if parallel else "faithful",
                    "questions": len(ok),
                    "failed": len(samples) - len(ok),
                    "rounds": statistics.mean(d["rounds"] for _, d in ok) if ok else None,
                    "calls": stats["calls"] / len(ok) if ok else None,
                    "calls_by_role": {
                        k: v["calls"] / max(len(ok), 1) for k, v in stats["by_role"].items()
                    },
                    "latency_s": statistics.mean(lat) if lat else None,
                    "p50_s": percentile(lat, 50),
                    "tokens": statistics.mean(d["usage"]["total_tokens"] for _, d in ok)
                    if ok
                    else None,
                    "stop_reasons": sorted({d["stop_reason"] for _, d in ok}),
                }
            )
    text = report.table(
        ["scenario", "mode", "questions", "rounds", "model calls", "latency s", "tokens"],
        [
            [
                r["scenario"],
                r["mode"],
                r["questions"],
                r["rounds"],
                r["calls"],
                r["latency_s"],
                r["tokens"],
            ]
            for r in results
        ],
    )
    payload: dict[str, Any] = {"results": results}
    if ctx.plot and results:
        groups = [f"{r['scenario']}\n{r['mode']}" for r in results]
        png = report.plot_bars(
            ctx.out / "bench_parallel.png",
            "Parallel perception vs the faithful loop (one question at a time)",
            groups,
            {
                "latency per question (s)": [r["latency_s"] or 0.0 for r in results],
                "model calls per question": [r["calls"] or 0.0 for r in results],
                "rounds per question": [r["rounds"] or 0.0 for r in results],
            },
            "",
        )
        payload["plot"] = str(png) if png else None
    ctx.emit("parallel", payload, text)
    return payload


# --------------------------------------------------------------------------- 6. memory


def run_memory(ctx: Context) -> dict[str, Any]:
    """Service RSS at idle and under 256 questions in flight (from /proc/<pid>/status)."""
    at = 256 if not ctx.quick else max(ctx.levels)
    level = next(
        (
            lv
            for lv in ctx.results.get("throughput", {}).get("levels", [])
            if lv["concurrency"] == at
        ),
        None,
    )
    if level is None:
        level = measure_level(ctx, at, window_s=min(ctx.window_s, 10.0))
    after = rss_mb(ctx.service_proc.pid)
    peak = level["service_rss_peak_mb"]
    growth = peak - ctx.rss_idle["VmRSS"] if peak else None
    summary = {
        "concurrency": at,
        "rss_cold_mb": ctx.rss_cold.get("VmRSS"),
        "rss_idle_mb": ctx.rss_idle.get("VmRSS"),
        "rss_peak_under_load_mb": peak,
        "rss_after_load_mb": after["VmRSS"],
        "vmhwm_mb": after.get("VmHWM"),
        "growth_mb": growth,
        "target_growth_mb": 300.0,
        "questions_in_window": level["questions"],
        "errors_in_window": level["errors"],
    }
    text = report.table(
        ["state", "RSS MB"],
        [
            ["just started", summary["rss_cold_mb"]],
            ["idle (after warm-up)", summary["rss_idle_mb"]],
            [f"peak with {at} questions in flight", peak],
            ["after the load", summary["rss_after_load_mb"]],
            ["VmHWM (lifetime peak)", summary["vmhwm_mb"]],
        ],
    )
    if growth is not None:
        text += f"\n\ngrowth under load: {growth:.1f} MB (target <= 300 MB)"
    ctx.emit("memory", {"summary": summary}, text)
    return summary


# --------------------------------------------------------------------------- running


BENCHES = {
    "overhead": run_overhead,
    "throughput": run_throughput,
    "baseline": run_baseline,
    "parallel": run_parallel,
    "memory": run_memory,
}
#: the order of ``all``: throughput first so baseline and memory reuse its levels
ALL_ORDER = ("overhead", "throughput", "baseline", "parallel", "memory")


def run(names: list[str], ctx: Context) -> dict[str, dict[str, Any]]:
    """Start the engine and the service once, run the benchmarks in order, stop them."""
    sim = sim_proc(ctx.scenario, ctx.cost)
    with running(sim) as _:
        ctx.sim = sim
        service = service_proc(sim.url, profile=ctx.profile)
        with running(service):
            ctx.service = service
            ctx.rss_cold = rss_mb(service.pid)
            asyncio.run(_warm(ctx))
            time.sleep(0.5)
            ctx.rss_idle = rss_mb(service.pid)
            for name in names:
                t0 = time.perf_counter()
                BENCHES[name](ctx)
                log.info("%s took %.1fs", name, time.perf_counter() - t0)
    return ctx.results


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
