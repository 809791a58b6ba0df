"""``proreason trajectories``, ``distill``, ``build-demo`` and ``demo-report``: the distillation
pipeline (record the loop's role calls as SFT data, fine-tune a model on them) and the offline
demo models it makes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from app.cli.common import CLIError, load_settings, open_models, report_built


async def trajectories(args: argparse.Namespace) -> int:
    """Run a method over a dataset with the profile's models, recording every role call."""
    from agents import Reasoner, RunOptions
    from app.backends import close_models
    from evals.datasets import load_dataset
    from evals.trajectories import RunSpec, read_records, record_runs, write_records
    from models.images import ImageDecoder

    settings = load_settings(args)
    items = load_dataset(args.dataset, split=args.split, limit=args.limit, seed=args.seed)
    if not items:
        raise CLIError(f"dataset {args.dataset!r} has no items")
    decoder = ImageDecoder(max_pixels=settings.media.max_pixels, max_side=settings.media.max_side)
    models = await open_models(settings)
    try:
        records, results = await record_runs(
            items,
            lambda item: RunSpec(models.vision, models.text),
            lambda model_set: Reasoner(model_set, settings.agent),
            RunOptions(method=args.method, mode=args.mode, max_rounds=args.max_rounds,
                       parallel_perception=args.parallel or None, ocr=args.ocr or None),
            lambda path: decoder.decode_sync(Path(path).read_bytes()),
            concurrency=args.concurrency,
        )
    finally:
        await close_models(models)
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".all")
    write_records(tmp, records)
    kept = read_records(tmp, solved_only=args.solved_only, correct_only=args.correct_only)
    n = write_records(out, kept)
    tmp.unlink()
    solved = sum(r.stop_reason == "solved" for r in results)
    print(f"{n} records ({len(records)} role calls of {len(results)} runs, {solved} solved) "
          f"written to {out}", file=sys.stderr)  # fmt: skip
    return 0


def distill(args: argparse.Namespace) -> int:
    """Fine-tune a text model (a folder transformers can load) on trajectory records."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise CLIError("distill needs the training extra: pip install 'proreason[train]'") from None
    from evals.trajectories import read_records
    from models.records import message_images
    from models.training import LoraSettings, TrainConfig, encode_records, train

    records = read_records(Path(args.records), roles=args.role or None)
    records = [r for r in records if not any(message_images(m) for m in r["messages"])]
    if not records:
        raise CLIError(f"{args.records}: no text-only records to train on")
    model_dir = Path(args.model).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot load model {args.model!r}: {exc}") from None
    examples = encode_records(records, tokenizer)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(100, args.steps // 10),
                      lora=LoraSettings() if args.lora else None)  # fmt: skip
    out = Path(args.out).expanduser()
    model, summary = train(model, examples, cfg, out / "run", pad_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({k: summary[k] for k in summary if k != "losses"}, default=str))
    print(f"model written to {out}; loss curve in {out / 'run'}", file=sys.stderr)
    return 0


def build_demo(args: argparse.Namespace) -> int:
    from evals.demo import build_demo as build

    return report_built(build(Path(args.dir).expanduser(), force=args.force), "demo")


async def demo_report(args: argparse.Namespace) -> int:
    """The demo models on easy-VQA test (and, asked for, as follow-up turns and on questions
    about written text): accuracy, solved rate, parse failures, perception."""
    from app.backends import close_models
    from evals.demo import evaluate_demo

    settings = load_settings(args)
    models = await open_models(settings)
    try:
        reports = await evaluate_demo(
            models, settings.agent, limit=args.limit or None, seed=args.seed,
            methods=tuple(args.method or ("proreason", "direct", "cot")), pure=args.pure,
            follow_up=args.follow_up, text=args.text,
        )  # fmt: skip
    finally:
        await close_models(models)
    payload = [asdict(r) for r in reports]
    print(json.dumps(payload, indent=2))
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, json.dumps(payload, indent=2))
    return 0
