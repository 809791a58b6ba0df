"""Questions/min on real GPUs, estimated from the measured call profile (``docs/scaling.md``).

    python -m bench scaling [--from docs/bench_throughput.json]

The profile (model calls, prompt and cached tokens per question and role) comes from a measured
run against the simulated engine: the prompts are the project's real templates, filled by the
agents; only the answers' lengths and the image size are the simulator's. Those two are replaced
here by realistic values for Qwen2.5-VL-7B + Qwen2.5-7B, and the GPU time per question is summed
from a simple roofline model of one H100 running vLLM. Every assumption is a field below.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report


def _completion() -> dict[str, int]:
    return {
        "dispatcher": 40,
        "vision": 200,
        "insight": 200,
        "referee": 80,
        "summarizer": 30,
        "fallback": 30,
        "direct": 30,
    }


@dataclass(frozen=True)
class H100Assumptions:
    """One H100 80GB SXM serving a 7B LVLM and a 7B LLM with vLLM (bf16)."""

    #: decode step of a 7B model: ~15 GB of weights read per step at ~3 TB/s, plus overheads
    decode_base_ms: float = 7.0
    #: extra step time per running sequence (KV reads of ~1-3k-token contexts, sampling)
    decode_per_seq_ms: float = 0.06
    #: running sequences per model (``--max-num-seqs``)
    batch: int = 128
    #: prefill throughput of a 7B model with chunked prefill (~40% of bf16 peak)
    prefill_tokens_per_s: float = 25_000.0
    #: Qwen2.5-VL vision encoder time per image at the service's max_side (1536)
    vit_ms_per_image: float = 35.0
    #: Qwen2.5-VL tokens for a 1536x1152 image: one token per 28x28 pixels -> 55 x 41
    image_tokens: int = 2255
    #: what the simulated engine charged per image in the measured run
    sim_image_tokens: int = 1024
    #: realistic answer lengths per role (tokens)
    completion: dict[str, int] = field(default_factory=_completion)

    def decode_tokens_per_s(self) -> float:
        step_s = (self.decode_base_ms + self.decode_per_seq_ms * self.batch) / 1000.0
        return self.batch / step_s


def profile_from(bench: dict[str, Any], concurrency: int = 64) -> dict[str, dict[str, float]]:
    """Per question and role: calls, prompt tokens, cached tokens (from a throughput run)."""
    levels = bench["levels"]
    level = next((lv for lv in levels if lv["concurrency"] == concurrency), levels[-1])
    by_role = level["engine_by_role"]
    questions = max(
        sum(v["calls"] for k, v in by_role.items() if k in ("summarizer", "fallback", "direct")),
        1,
    )
    # the window cuts questions at both ends: rescale the role mix to the calls per COMPLETE
    # question the engine measured (per-call token means are unaffected)
    window_calls = sum(v["calls"] for v in by_role.values()) / questions
    scale = (level.get("calls_per_question") or window_calls) / window_calls
    out: dict[str, dict[str, float]] = {}
    for role, v in by_role.items():
        calls = v["calls"] / questions * scale
        n = max(v["calls"], 1)
        out[role] = {
            "calls": calls,
            "prompt_tokens": v["prompt_tokens"] / n * calls,
            "cached_tokens": v["cached_tokens"] / n * calls,
            "sim_completion_tokens": v["completion_tokens"] / n * calls,
        }
    return out


def estimate(
    profile: dict[str, dict[str, float]], gpu: H100Assumptions, *, service_cpu_ms: float
) -> dict[str, Any]:
    """GPU seconds per question and questions/min for one H100 and for replicas."""
    images = profile.get("vision", {}).get("calls", 0.0) and 1.0  # one image per question
    decode = sum(p["calls"] * gpu.completion.get(role, 50) for role, p in profile.items())
    # uncached prompt tokens, with the simulator's image tokens swapped for the real ones
    uncached = sum(max(p["prompt_tokens"] - p["cached_tokens"], 0.0) for p in profile.values())
    uncached += images * (gpu.image_tokens - gpu.sim_image_tokens)
    decode_s = decode / gpu.decode_tokens_per_s()
    prefill_s = uncached / gpu.prefill_tokens_per_s
    vit_s = images * gpu.vit_ms_per_image / 1000.0
    gpu_s = decode_s + prefill_s + vit_s
    qps = 1.0 / gpu_s
    return {
        "calls_per_question": sum(p["calls"] for p in profile.values()),
        "decode_tokens_per_question": decode,
        "uncached_prompt_tokens_per_question": uncached,
        "gpu_s_per_question": {"decode": decode_s, "prefill": prefill_s, "vit": vit_s},
        "questions_per_min_one_h100": 60.0 * qps,
        "replicas": {
            n: {
                "questions_per_min": 60.0 * qps * n,
                # stateless service replicas: CPU cores the service itself needs at that rate
                "service_cores": qps * n * service_cpu_ms / 1000.0,
            }
            for n in (1, 2, 4, 8)
        },
        "decode_tokens_per_s_at_batch": gpu.decode_tokens_per_s(),
    }


def main(source: Path, out_dir: Path) -> int:
    bench = json.loads(source.read_text())
    profile = profile_from(bench)
    level = next((lv for lv in bench["levels"] if lv["concurrency"] == 64), bench["levels"][-1])
    gpu = H100Assumptions()
    result = estimate(profile, gpu, service_cpu_ms=level["service_cpu_ms_per_question"])
    rows = [
        [
            role,
            p["calls"],
            p["prompt_tokens"] / max(p["calls"], 1e-9),
            p["cached_tokens"] / max(p["calls"], 1e-9),
            gpu.completion.get(role, 50),
        ]
        for role, p in sorted(profile.items())
    ]
    text = report.table(
        [
            "role",
            "calls/question",
            "prompt tokens/call (sim)",
            "cached/call (sim)",
            "completion tokens/call (assumed)",
        ],
        rows,
    )
    g = result["gpu_s_per_question"]
    text += (
        f"\n\nper question: {result['decode_tokens_per_question']:.0f} decode tokens, "
        f"{result['uncached_prompt_tokens_per_question']:.0f} uncached prompt tokens; GPU time "
        f"{1000 * g['decode']:.0f} ms decode + {1000 * g['prefill']:.0f} ms prefill + "
        f"{1000 * g['vit']:.0f} ms vision encoder\none H100 (both models): "
        f"{result['questions_per_min_one_h100']:.0f} questions/min"
    )
    text += "\n\n" + report.table(
        ["vLLM replicas (H100)", "questions/min", "service CPU cores needed"],
        [[n, r["questions_per_min"], r["service_cores"]] for n, r in result["replicas"].items()],
    )
    payload = {
        "source": str(source),
        "assumptions": asdict(gpu),
        "profile": profile,
        "estimate": result,
    }
    path = report.write_json(out_dir, "scaling", payload)
    print(f"\n## scaling\n\n{text}\n\n(written: {path})")
    return 0 if math.isfinite(result["questions_per_min_one_h100"]) else 1
