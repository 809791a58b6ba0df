"""Micro-batching benchmark of the in-process transformers backend, on tiny random-weight models.

    python -m bench.micro_batching --json bench-results/micro_batching.json

Three measurements, all through ``TransformersBackend`` (the production code), greedy, fixed-length
generation (``min_tokens == max_tokens``) so that every call does the same work:

1. headline: N (16) concurrent perception calls (image + sub-question) through the micro-batcher
   vs the same N calls one after another on a backend without batching
   (``max_batch_size=1, max_wait_ms=0``: no waiting for companions);
2. sweep: calls/s at 1, 2, 4, 8, 16, 32 concurrent calls, micro-batched vs sequential;
3. the per-image preprocessing cache: R perception rounds on the same (large, user-sized) image,
   one after another as in the ProReason loop, cache on vs off.

The LVLM is the tiny LLaVA (SigLIP + Qwen2) from ``models.tiny``, widened by default (``--hidden``)
so that the timing is not pure Python overhead; its parameter count is reported with the results.
Batches 1 and 2 use ``image_cache_size=0`` so that they measure batching alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from models.config import BackendConfig
from models.tiny import TinySpec, build_tiny_models
from models.transformers_backend import TransformersBackend
from models.types import GenerationRequest, ImageInput, Message, SamplingParams

log = logging.getLogger("bench.micro_batching")

QUESTIONS = (
    "Answer step by step: what shapes are in the image?",
    "Answer step by step: what colour is the largest shape?",
    "Answer step by step: is there a circle, and where is it?",
    "Answer step by step: how many objects touch the border?",
)


def bench_spec(hidden: int, layers: int) -> TinySpec:
    """The tiny LLaVA, widened: Qwen2 ``hidden`` wide, SigLIP tower half as wide, 64x64 images."""
    return TinySpec(
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_layers=layers,
        num_heads=max(4, hidden // 64),
        num_kv_heads=max(2, hidden // 128),
        vision_hidden_size=max(32, hidden // 2),
        vision_intermediate_size=max(64, hidden * 2),
        vision_layers=layers,
        vision_heads=max(4, hidden // 128),
        image_size=64,
        patch_size=8,
    )


def make_images(n: int, side: int) -> list[ImageInput]:
    """Distinct deterministic RGB images (gradients with coloured bands)."""
    images = []
    for i in range(n):
        base = Image.linear_gradient("L").resize((side, side)).rotate(i * 37)
        img = Image.merge("RGB", (base, base.rotate(90), base.rotate(180 + i)))
        images.append(ImageInput(img))
    return images


def perception(image: ImageInput, i: int, tokens: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0)
    message = Message.user(QUESTIONS[i % len(QUESTIONS)], [image])
    return GenerationRequest(messages=(message,), sampling=params)


def backend_for(folder: Path, *, batch: int, wait_ms: float, cache: int) -> TransformersBackend:
    return TransformersBackend(
        BackendConfig(
            backend="transformers",
            model=str(folder),
            device="cpu",
            dtype="float32",
            allow_download=False,
            max_batch_size=batch,
            max_wait_ms=wait_ms,
            image_cache_size=cache,
        )
    )


async def run_sequential(
    backend: TransformersBackend, requests: Sequence[GenerationRequest]
) -> float:
    start = time.perf_counter()
    for request in requests:
        await backend.generate(request)
    return time.perf_counter() - start


async def run_concurrent(
    backend: TransformersBackend, requests: Sequence[GenerationRequest]
) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(backend.generate(r) for r in requests))
    return time.perf_counter() - start


async def best_of(repeats: int, fn: Any, *args: Any) -> float:
    """Median of ``repeats`` runs (the machine is shared: the median resists a noisy neighbour)."""
    return statistics.median([await fn(*args) for _ in range(repeats)])


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    tokens = args.tokens
    images = make_images(32, args.image_side)
    batched = backend_for(folder, batch=args.max_batch_size, wait_ms=args.max_wait_ms, cache=0)
    plain = backend_for(folder, batch=1, wait_ms=0, cache=0)
    await batched.start()
    await plain.start()
    lm = batched._lm
    params = sum(p.numel() for p in lm.model.parameters()) if lm is not None else 0

    warm = [perception(images[i], i, tokens) for i in range(4)]
    await run_concurrent(batched, warm)
    await run_sequential(plain, warm[:2])

    n = args.calls
    requests = [perception(images[i], i, tokens) for i in range(n)]
    seq_s = await best_of(args.repeats, run_sequential, plain, requests)
    sizes_before = len(batched.batcher.stats.batch_sizes)
    mb_s = await best_of(args.repeats, run_concurrent, batched, requests)
    sizes = batched.batcher.stats.batch_sizes[sizes_before:]
    sample = await batched.generate(requests[0])
    headline = {
        "calls": n,
        "max_new_tokens": tokens,
        "sequential_s": seq_s,
        "micro_batched_s": mb_s,
        "speedup": seq_s / mb_s,
        "batch_sizes": sizes,
        "prompt_tokens": sample.usage.prompt_tokens,
        "image_tokens": sample.usage.image_tokens,
    }
    log.info("headline: %s", headline)

    sweep = []
    for c in args.sweep:
        reqs = [perception(images[i % len(images)], i, tokens) for i in range(c)]
        s = await best_of(args.repeats, run_sequential, plain, reqs)
        b = await best_of(args.repeats, run_concurrent, batched, reqs)
        row = {
            "concurrency": c,
            "sequential_calls_per_s": c / s,
            "micro_batched_calls_per_s": c / b,
            "speedup": s / b,
        }
        log.info("sweep: %s", row)
        sweep.append(row)

    phases = await measure_phases(args, batched, plain, images)
    cache = await measure_cache(args, folder)
    await batched.close()
    await plain.close()
    return {
        "params": params,
        "headline": headline,
        "sweep": sweep,
        "phases": phases,
        "image_cache": cache,
    }


async def measure_phases(
    args: argparse.Namespace,
    batched: TransformersBackend,
    plain: TransformersBackend,
    images: list[ImageInput],
) -> dict[str, float]:
    """Where the time goes: 1 new token (~ prefill: vision tower + prompt) vs all new tokens,
    for one call and for ``calls`` concurrent calls (on CPU, batching helps decoding only)."""
    n, tokens = args.calls, args.tokens
    out: dict[str, float] = {}
    for label, count in (("prefill", 1), ("total", tokens)):
        reqs = [perception(images[i], i, count) for i in range(n)]
        out[f"single_{label}_ms"] = 1000 * await best_of(
            args.repeats, run_sequential, plain, reqs[:1]
        )
        out[f"batch_{label}_ms"] = 1000 * await best_of(args.repeats, run_concurrent, batched, reqs)
    out["single_decode_ms_per_token"] = (out["single_total_ms"] - out["single_prefill_ms"]) / max(
        1, tokens - 1
    )
    out["batch_decode_ms_per_step"] = (out["batch_total_ms"] - out["batch_prefill_ms"]) / max(
        1, tokens - 1
    )
    log.info("phases: %s", out)
    return out


async def measure_cache(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Perception rounds on one image, one after another (the ProReason loop), cache on vs off.

    On and off runs alternate (median of ``repeats``) so that a noisy neighbour hits both alike.
    Besides the end-to-end rounds, the input-preparation step alone (chat template, image
    processing, tokenisation) is timed for one request: that is the work a cache hit removes.
    """
    image = make_images(1, args.cache_image_side)[0]
    rounds = [perception(image, i, args.tokens) for i in range(args.rounds)]
    backends = {
        "off": backend_for(folder, batch=1, wait_ms=0, cache=0),
        "on": backend_for(folder, batch=1, wait_ms=0, cache=64),
    }
    times: dict[str, list[float]] = {"off": [], "on": []}
    for backend in backends.values():
        await backend.start()
        await backend.generate(perception(make_images(1, 32)[0], 0, 2))  # warm-up, other image
    for _ in range(args.repeats):
        for label, backend in backends.items():
            times[label].append(await run_sequential(backend, rounds))
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "image_size": list(image.size),
        "max_new_tokens": args.tokens,
    }
    for label, backend in backends.items():
        elapsed = statistics.median(times[label])
        result[f"cache_{label}_s"] = elapsed
        result[f"cache_{label}_per_round_ms"] = 1000 * elapsed / args.rounds
        result[f"cache_{label}_hits"] = backend.image_cache.hits
        result[f"encode_cache_{label}_ms"] = await encode_time(backend, rounds[0])
        await backend.close()
    result["speedup"] = result["cache_off_s"] / result["cache_on_s"]
    result["saved_per_round_ms"] = (
        result["cache_off_per_round_ms"] - result["cache_on_per_round_ms"]
    )
    return result


async def encode_time(
    backend: TransformersBackend, request: GenerationRequest, n: int = 20
) -> float:
    """ms to turn ``request`` into model inputs (the step the image cache shortens)."""
    lm = backend._lm

    def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            backend._encode(lm, [request])
        return 1000 * (time.perf_counter() - start) / n

    return await asyncio.to_thread(run)


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
    }


def table(results: dict[str, Any]) -> str:
    h = results["headline"]
    lines = [
        f"LVLM: tiny LLaVA (SigLIP + Qwen2), {results['params'] / 1e6:.1f} M parameters, "
        f"{h['prompt_tokens']} prompt tokens ({h['image_tokens']} image tokens), "
        f"{h['max_new_tokens']} new tokens per call",
        "",
        f"{h['calls']} perception calls: sequential {h['sequential_s']:.2f} s, micro-batched "
        f"{h['micro_batched_s']:.2f} s -> {h['speedup']:.1f}x (batches: {h['batch_sizes']})",
        "",
        "| concurrent calls | sequential calls/s | micro-batched calls/s | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for row in results["sweep"]:
        lines.append(
            f"| {row['concurrency']} | {row['sequential_calls_per_s']:.1f} | "
            f"{row['micro_batched_calls_per_s']:.1f} | {row['speedup']:.1f}x |"
        )
    ph = results["phases"]
    lines += [
        "",
        f"Where the time goes ({h['calls']} calls): 1 call = prefill {ph['single_prefill_ms']:.0f}"
        f" ms + {ph['single_decode_ms_per_token']:.1f} ms/token; one batch of {h['calls']} = "
        f"prefill {ph['batch_prefill_ms']:.0f} ms + {ph['batch_decode_ms_per_step']:.1f} ms/step",
    ]
    c = results["image_cache"]
    w, ht = c["image_size"]
    lines += [
        "",
        f"Image cache, {c['rounds']} sequential rounds on one {w}x{ht} image: "
        f"off {c['cache_off_per_round_ms']:.1f} ms/round, on {c['cache_on_per_round_ms']:.1f} "
        f"ms/round ({c['speedup']:.2f}x, {c['cache_on_hits']} hits); preparing one request's "
        f"inputs: {c['encode_cache_off_ms']:.1f} ms without, {c['encode_cache_on_ms']:.1f} ms "
        f"with a cache hit",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no plot (pip install 'proreason[bench]')")
        return False
    sweep = results["sweep"]
    xs = [r["concurrency"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["micro_batched_calls_per_s"] for r in sweep], "o-", label="micro-batched")
    ax.plot(xs, [r["sequential_calls_per_s"] for r in sweep], "s--", label="sequential")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent perception calls")
    ax.set_ylabel("calls / s")
    ax.set_title(
        f"transformers backend, tiny LLaVA {results['params'] / 1e6:.1f} M params, "
        f"{results['headline']['max_new_tokens']} new tokens",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.micro_batching", description=__doc__.split("\n")[0]
    )
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--plot", type=Path, default=Path("docs/micro_batching.png"), help="PNG plot")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--models-dir", type=Path, help="where to build the models (default: a temp dir)"
    )
    p.add_argument("--hidden", type=int, default=512, help="LVLM text hidden size (tests use 64)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--calls", type=int, default=16, help="headline: concurrent calls")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per call (fixed)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--rounds", type=int, default=8, help="image cache: rounds on one image")
    p.add_argument("--image-side", type=int, default=256, help="input image side (batching)")
    p.add_argument("--cache-image-side", type=int, default=1024, help="input image side (cache)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    spec = bench_spec(args.hidden, args.layers)
    with tempfile.TemporaryDirectory(prefix="proreason-bench-") as tmp:
        root = args.models_dir or Path(tmp)
        started = time.perf_counter()
        folders = build_tiny_models(root, spec=spec)
        log.info("models ready in %.1f s", time.perf_counter() - started)
        results = asyncio.run(measure(args, folders["vision"]))
    results["spec"] = asdict(spec)
    results["machine"] = machine()
    results["command"] = " ".join(["python -m bench.micro_batching", *argv])
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if not args.no_plot and plot(results, args.plot):
        log.info("plot written to %s", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
