"""``proreason eval``: methods side by side on a dataset, a table on stdout, files in ``--out``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from app.cli.common import CLIError, load_settings, open_models


def default_out(dataset: str) -> Path:
    """``results/<dataset>-<UTC time>``: every run is kept unless told otherwise."""
    name = Path(dataset).stem if dataset != "easy-vqa" else dataset
    return Path("results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


async def evaluate(args: argparse.Namespace) -> int:
    from agents import Reasoner, RunOptions
    from app.backends import close_models
    from evals.datasets import load_dataset
    from evals.runner import evaluate as run_method
    from evals.runner import format_reports, write_outputs
    from models.images import ImageDecoder

    settings = load_settings(args)
    items = load_dataset(args.dataset, split=args.split, limit=args.limit, seed=args.seed)
    if not items:
        raise CLIError(f"dataset {args.dataset!r} has no items")
    out = Path(args.out) if args.out else default_out(args.dataset)
    m = settings.media
    decoder = ImageDecoder(
        max_bytes=m.max_image_bytes, max_pixels=m.max_pixels, max_side=m.max_side
    )
    models = await open_models(settings)
    reports, records = [], {}
    try:
        reasoner = Reasoner(models, settings.agent)
        for method in args.method or [None]:
            options = RunOptions(
                method=method,
                mode=args.mode,
                max_rounds=args.max_rounds,
                parallel_perception=args.parallel or None,
            )
            report, rows = await run_method(
                reasoner, items, options, decoder, concurrency=args.concurrency
            )
            records[report.method] = rows
            reports.append(report)
            print(
                f"done: {report.method} ({report.n} items, accuracy {report.accuracy:.1%})",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await close_models(models)
    print(format_reports(reports))
    meta = {
        "dataset": args.dataset,
        "split": args.split,
        "limit": args.limit,
        "seed": args.seed,
        "profile": settings.profile,
        "vision_model": settings.models.vision.model,
        "text_model": settings.models.text.model if settings.models.text else None,
    }
    await asyncio.to_thread(write_outputs, out, reports, records, meta)
    print(f"report.json and predictions written to {out}", file=sys.stderr)
    return 0
