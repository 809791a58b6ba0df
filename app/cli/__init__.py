"""The ``proreason`` command line: the terminal front end of the service.

    proreason ask --image cat.png "What is the cat sitting on?"   answer with a readable trace
    proreason ask --url http://localhost:8080 --image cat.png ... ask a running service instead
    proreason ask --video clip.mp4 "What happens after the door opens?"   a question about a video
    proreason serve [--profile vllm]                               run the HTTP service
    proreason eval --dataset easy-vqa --method proreason ...       evaluate methods on a dataset
    proreason reproduce --data-dir data/                           the paper's table
    proreason build-tiny                                           build the offline tiny models
    proreason profiles                                             list the configuration profiles
    proreason bench NAME ...                                       run a benchmark (see bench/)

Every failure a user can cause or meet (missing image, unknown profile, a model that cannot be
loaded, an unreachable server, a busy port) ends as one ``error: ...`` line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from app.cli.common import EXIT_FAILURE, EXIT_USAGE, CLIError
from models.errors import InvalidRequest, ProReasonError

METHODS = ["proreason", "direct", "cot", "ccot", "caption"]
MODES = ["pure", "assisted"]


def _with_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default=None,
        help="a bundled profile name (default, tiny, vllm, pure, ...; see `proreason profiles`) "
        "or a YAML file; default: $PROREASON_PROFILE or 'default'",
    )


def _with_run_options(p: argparse.ArgumentParser) -> None:
    """The options a run takes; unset ones come from the profile's agent section."""
    p.add_argument(
        "--mode",
        choices=MODES,
        help="pure: one LVLM plays every role; assisted: "
        "text roles on the text LLM (default: the profile's agent.mode)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        metavar="N",
        help="most dispatcher rounds before the fallback (default: agent.max_rounds)",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="parallel perception: the dispatcher may ask several visual "
        "sub-questions in one round (opt-in)",
    )
    p.add_argument(
        "--ocr",
        action="store_true",
        help="offer the dispatcher the OCR expert (the 'ocr' extra; default: agent.ocr)",
    )


def _with_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="the split (benchmarks: their published one)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="seeded random sample size (default: all of a benchmark, 100 of easy-vqa/JSONL)",
    )
    p.add_argument("--seed", type=int, default=0, help="the sample's random seed")
    p.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="repeat to compare methods side by side (default: the profile's)",
    )
    p.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        help="repeat for columns per mode: pure (one LVLM plays every role) and/or assisted "
        "(default: the profile's agent.mode)",
    )
    p.add_argument(
        "--prompts",
        action="append",
        metavar="SET",
        help="repeat for columns per prompt set: default, reference (default: the profile's)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        metavar="N",
        help="most dispatcher rounds before the fallback (default: agent.max_rounds)",
    )
    p.add_argument("--parallel", action="store_true", help="parallel perception (opt-in)")
    p.add_argument("--concurrency", type=int, default=8, help="questions in flight")
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="evaluate the service running at URL over /v1/chat/completions (default: "
        "the profile's models in-process)",
    )
    p.add_argument("--api-key", metavar="KEY", help="with --endpoint: the service's API key")
    p.add_argument(
        "--judge",
        action="store_true",
        help="also ask the profile's text model whether each answer agrees with the reference "
        "(its own column; the score stays the extractor's)",
    )
    p.add_argument(
        "--ray",
        type=int,
        metavar="WORKERS",
        help="shard the items over WORKERS Ray workers (ray.data), each calling --endpoint or "
        "running its own in-process pipeline; same resumable predictions (pip install "
        "'proreason[ray]')",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the report and predictions (default: results/<dataset>-<time>); "
        "the same --out resumes a run",
    )


def build_parser() -> argparse.ArgumentParser:
    from app.cli.ask import ask
    from app.cli.evaluate import evaluate, reproduce
    from app.cli.serve import build_tiny, profiles, serve

    parser = argparse.ArgumentParser(
        prog="proreason",
        description="ProReason visual reasoning: proactive perception by an LVLM, reasoning by a "
        "text LLM. Configuration: a YAML profile (--profile or PROREASON_PROFILE) overridden by "
        "PROREASON_<SECTION>__<FIELD> environment variables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser(
        "ask",
        help="answer a question about images, with a readable trace",
        description="Answer one question. In-process on the profile's models (loads them), or "
        "with --url by a running service (nothing is loaded). The trace goes to stderr, the "
        "answer to stdout.",
    )
    _with_profile(a)
    a.add_argument("question", help="the question")
    a.add_argument(
        "--image",
        "-i",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="an image file, http(s) URL or data URL (repeat for several images)",
    )
    a.add_argument(
        "--video",
        metavar="PATH_OR_URL",
        help="a video file, http(s) URL or data URL instead of images: its sampled frames are "
        "what the vision expert sees",
    )
    a.add_argument("--video-frames", type=int, metavar="N", help="frames sampled from --video")
    a.add_argument(
        "--video-sampling",
        choices=("uniform", "scene"),
        help="how the frames are chosen: evenly spaced or at scene changes",
    )
    a.add_argument(
        "--url",
        metavar="URL",
        help="ask the service running at URL (e.g. http://localhost:8080) over its "
        "API instead of loading the models in this process",
    )
    a.add_argument("--api-key", metavar="KEY", help="with --url: the service's API key")
    a.add_argument(
        "--method",
        choices=METHODS,
        help="proreason (default) or a baseline: direct, cot, ccot, caption",
    )
    _with_run_options(a)
    a.add_argument(
        "--choice",
        action="append",
        default=[],
        metavar="OPTION",
        help="a multiple-choice option (repeat); makes the question multiple-choice",
    )
    a.add_argument("--max-tokens", type=int, metavar="N", help="most new tokens per model call")
    a.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    a.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a.add_argument("--quiet", "-q", action="store_true", help="print only the answer")
    a.set_defaults(func=lambda args: asyncio.run(ask(args)))

    e = sub.add_parser(
        "eval",
        help="evaluate methods on a benchmark (MMMU, MathVista, HallusionBench, MME, POPE, "
        "ScienceQA-IMG from --data-dir), easy-vqa or a JSONL file",
        description="Accuracy with a bootstrap 95%% interval, unparsed and errors, the "
        "stop-reason mix, fallback rate, parse failures, rounds/calls/tokens/latency per "
        "question, the benchmark's own metrics and a McNemar test against direct, per method x "
        "mode x prompt set; report.md, report.json, accuracy.png, calls.png and "
        "predictions-<column>.jsonl in --out. Resumable: re-run the same command to finish.",
    )
    _with_profile(e)
    e.add_argument(
        "--dataset",
        default="easy-vqa",
        help="mmmu, mathvista, hallusionbench, mme, pope, scienceqa-img (read from --data-dir), "
        "'easy-vqa' or a JSONL file",
    )
    e.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the benchmark as downloaded from its publisher (docs/evaluation.md)",
    )
    _with_eval_options(e)
    e.set_defaults(func=evaluate)

    r = sub.add_parser(
        "reproduce",
        help="the paper's table: MMMU, MathVista, HallusionBench, MME from --data-dir/<name>, "
        "proreason and direct, pure and assisted (docs/evaluation.md)",
    )
    _with_profile(r)
    r.add_argument(
        "--data-dir",
        required=True,
        metavar="DIR",
        help="a folder with one subfolder per benchmark: mmmu/, mathvista/, hallusionbench/, mme/",
    )
    r.add_argument(
        "--benchmark",
        action="append",
        choices=["mmmu", "mathvista", "hallusionbench", "mme", "pope", "scienceqa-img"],
        help="repeat to choose the benchmarks (default: the paper's four)",
    )
    _with_eval_options(r)
    r.set_defaults(func=reproduce)

    s = sub.add_parser("serve", help="run the HTTP service (OpenAI-compatible + /v1/reason)")
    _with_profile(s)
    s.add_argument("--host", help="bind address (default: the profile's server.host)")
    s.add_argument("--port", type=int, help="port (default: the profile's server.port)")
    s.set_defaults(func=serve)

    t = sub.add_parser(
        "build-tiny",
        help="build tiny random-weight models offline for the 'tiny' profile (like vLLM's "
        "--load-format dummy: real code paths, gibberish answers)",
    )
    t.add_argument(
        "dir",
        nargs="?",
        default="~/.cache/proreason/tiny",
        help="where to write them (the tiny profile reads ~/.cache/proreason/tiny)",
    )
    t.add_argument("--force", action="store_true", help="rebuild even if present")
    t.set_defaults(func=build_tiny)

    _add_demo_commands(sub)

    p = sub.add_parser("profiles", help="list the configuration profiles")
    p.set_defaults(func=profiles)

    # dispatched in main() before parsing; listed here for --help
    sub.add_parser("bench", help="run a benchmark (proreason bench --help lists them)")
    return parser


def _add_demo_commands(sub: argparse._SubParsersAction) -> None:
    from app.cli.demo import build_demo, demo_report, distill, trajectories

    j = sub.add_parser(
        "trajectories",
        help="record every role call of real runs as chat-format SFT records (JSONL)",
        description="Run a method over a dataset with the profile's models and write one record "
        "per role call (the exact messages, the reply, the role, the item, solved, correct): "
        "docs/trajectories.md.",
    )
    _with_profile(j)
    j.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    j.add_argument("--dataset", default="easy-vqa", help="'easy-vqa' or a JSONL file")
    j.add_argument("--split", default="train", help="easy-vqa split: train or test")
    j.add_argument("--limit", type=int, default=100, help="seeded random sample size")
    j.add_argument("--seed", type=int, default=0, help="the sample's random seed")
    j.add_argument("--method", choices=METHODS, help="default: the profile's")
    _with_run_options(j)
    j.add_argument("--concurrency", type=int, default=8, help="questions in flight")
    j.add_argument("--solved-only", action="store_true", help="keep runs that ended 'solved'")
    j.add_argument("--correct-only", action="store_true", help="keep runs answered correctly")
    j.set_defaults(func=lambda args: asyncio.run(trajectories(args)))

    d = sub.add_parser(
        "distill",
        help="fine-tune a text model on trajectory records (full, or LoRA with --lora)",
    )
    d.add_argument("records", help="a JSONL file from `proreason trajectories`")
    d.add_argument("--model", required=True, help="a local model folder (transformers)")
    d.add_argument("--out", required=True, help="where the fine-tuned model goes")
    d.add_argument("--role", action="append", help="train on these roles only (repeat)")
    d.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    d.add_argument("--batch-size", type=int, default=16, help="records per step")
    d.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    d.add_argument("--lora", action="store_true", help="train LoRA adapters (PEFT), merged on save")
    d.set_defaults(func=distill)

    b = sub.add_parser(
        "build-demo",
        help="train the offline demo models (an LVLM and a text LM on easy-VQA; ~15 min on CPU)",
    )
    b.add_argument(
        "dir",
        nargs="?",
        default="~/.cache/proreason/demo",
        help="where to write them (the demo profile reads ~/.cache/proreason/demo)",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if present")
    b.set_defaults(func=build_demo)

    r = sub.add_parser(
        "demo-report", help="the demo models on easy-VQA test: accuracy, solved, perception"
    )
    _with_profile(r)
    r.add_argument("--limit", type=int, default=300, help="test questions (0: all 9,673)")
    r.add_argument("--seed", type=int, default=0, help="the sample's random seed")
    r.add_argument(
        "--method", action="append", choices=METHODS, help="repeat; default: proreason, direct, cot"
    )
    r.add_argument("--pure", action="store_true", help="also run proreason in pure mode (one LVLM)")
    r.add_argument(
        "--follow-up", action="store_true",
        help="also ask the questions as a chat's second turn (an earlier question as history)",
    )  # fmt: skip
    r.add_argument(
        "--text", type=int, default=0, metavar="N",
        help="also N questions about written text, with and without the OCR expert",
    )  # fmt: skip
    r.add_argument("--out", metavar="FILE", help="also write the figures as JSON")
    r.set_defaults(func=lambda args: asyncio.run(demo_report(args)), profile="demo")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmarks own their arguments (and --help)
        from bench.__main__ import main as bench_main

        return int(bench_main(argv[1:], prog="proreason bench") or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except InvalidRequest as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ProReasonError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
