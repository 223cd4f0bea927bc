"""`python -m moe_router` (or `moe-router`): the main job's timing table.

Routes Qwen3-30B-A3B-shaped batches, checks them against the NumPy
reference and prints time per call and per token next to NumPy (and
PyTorch, if installed).

`moe-router bench --paths` times every kernel path this CPU runs instead,
interleaved, on the shapes of the speed targets.
"""

import argparse
import math

from . import show_config
from ._bench import DEFAULT_BATCHES, main, paths_bench


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _main_job_options(parser, prefix=""):
    # Defaults are filled in by run(): None here tells "not given" apart.
    batches = " ".join(map(str, DEFAULT_BATCHES))
    parser.add_argument(
        "--batches",
        dest=prefix + "batches",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help=f"batch sizes to route (default: {batches})",
    )
    parser.add_argument(
        "--min-time",
        dest=prefix + "min_time",
        type=_seconds,
        metavar="SECONDS",
        help="seconds of timing per measurement (default: 0.2)",
    )


def run(argv=None):
    parser = argparse.ArgumentParser(
        prog="moe-router", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _main_job_options(parser)
    parser.add_argument("--config", action="store_true", help="print show_config() and exit")
    sub = parser.add_subparsers(dest="command", metavar="{bench}")
    bench = sub.add_parser(
        "bench",
        help="the main job's table, or with --paths every kernel path",
        description="Without --paths: the main job (as plain moe-router). "
        "With --paths: time every kernel path this CPU runs, "
        "interleaved, one thread, calling the kernels directly.",
    )
    bench.add_argument(
        "--paths", action="store_true", help="time every kernel path against each other"
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="with --paths: interleaved rounds (default: 40)",
    )
    bench.add_argument(
        "--batch",
        type=_positive_int,
        metavar="N",
        help="with --paths: tokens per call (default: 256)",
    )
    _main_job_options(bench, prefix="bench_")
    args = parser.parse_args(argv)
    in_bench = args.command == "bench"
    batches, min_time = args.batches, args.min_time
    if in_bench and args.bench_batches is not None:
        batches = args.bench_batches
    if in_bench and args.bench_min_time is not None:
        min_time = args.bench_min_time
    if args.config:
        show_config()
    elif in_bench and args.paths:
        if batches is not None or min_time is not None:
            bench.error(
                "--batches and --min-time are the main job's; --paths takes --batch and --rounds"
            )
        paths_bench(batch=args.batch or 256, rounds=args.rounds or 40)
    else:
        if in_bench and (args.rounds is not None or args.batch is not None):
            bench.error("--rounds and --batch go with --paths")
        main(batches or list(DEFAULT_BATCHES), 0.2 if min_time is None else min_time)


if __name__ == "__main__":
    run()
