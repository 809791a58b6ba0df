"""``python -m bench <name>`` (also ``proreason bench <name>``): run the benchmarks.

    python -m bench all --quick          # smoke run of every benchmark (~1-2 min), results in /tmp
    python -m bench all                  # the full suite; writes docs/bench_<name>.{json,png}
    python -m bench throughput --levels 1,16,64 --window 10
    python -m bench sim --port 8000 --scenario solve2   # just the simulated engine
    python -m bench scaling              # questions/min on H100s from docs/bench_throughput.json
    python -m bench prefix_layout        # uncached prefill per question: prompt layout before/after

Names: overhead, throughput, baseline, parallel, memory, all, sim, scaling, prefix_layout. Every
benchmark starts its own simulated engine and service processes on free loopback ports and stops
them at the end; ``scaling`` only reads a throughput result (the call profile) and estimates
real-GPU capacity; ``prefix_layout`` runs two services (two prompt folders) on one engine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.procs import ROOT, ProcessError
from bench.sim_script import SCENARIOS
from bench.suite import ALL_ORDER, BENCHES, LEVELS, QUICK_COST, QUICK_LEVELS, Context, run


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels takes integers like 1,4,16: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("--levels needs positive integers")
    return levels


def _cost(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--sim takes key=value, got {item!r}")
        key = key.strip().replace("-", "_")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="ProReason service benchmarks against a simulated continuous-batching engine.",
    )
    parser.add_argument(
        "name", choices=[*BENCHES, "all", "sim", "scaling", "prefix_layout"], help="which benchmark"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds per bench)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where bench_<name>.json/.png go (default: docs/, or a temp dir with --quick)",
    )
    parser.add_argument(
        "--scenario",
        default="solve2",
        choices=[*SCENARIOS, "mixed"],
        help="the engine's default scenario",
    )
    parser.add_argument("--profile", default="vllm", help="the service profile (default: vllm)")
    parser.add_argument(
        "--levels", type=_levels, default=None, help="questions in flight, e.g. 1,4,16"
    )
    parser.add_argument("--window", type=float, default=None, help="measured seconds per level")
    parser.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine cost-model override, e.g. --sim max_num_seqs=128 --sim step_base_ms=4",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=ROOT / "docs" / "bench_throughput.json",
        help="scaling: the throughput results to take the call profile from",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="prefix_layout: the 'before' prompts folder (default: configs/prompts before the "
        "layout commit, from git)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from bench.sim_engine import main as sim_main

        return sim_main(argv[1:])
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.name == "scaling":
        from bench.scaling import main as scaling_main

        return scaling_main(args.source, args.out or ROOT / "docs")
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="proreason-bench-")) if args.quick else ROOT / "docs"
    ctx = Context(
        out=out,
        quick=args.quick,
        scenario=args.scenario,
        profile=args.profile,
        cost={**(QUICK_COST if args.quick else {}), **_cost(args.sim)},
        levels=args.levels or (QUICK_LEVELS if args.quick else LEVELS),
        window_s=args.window or (3.0 if args.quick else 15.0),
        plot=not args.no_plot,
    )
    names = list(ALL_ORDER) if args.name == "all" else [args.name]
    try:
        if args.name == "prefix_layout":
            from bench.prefix_layout import run as prefix_layout

            prefix_layout(out, before_dir=args.before, quick=args.quick)
        else:
            run(names, ctx)
    except ProcessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
