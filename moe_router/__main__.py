"""`python -m moe_router` (or `moe-router`): route Qwen3-30B-A3B-shaped batches and print the timing table."""

import argparse

from . import show_config
from ._bench import DEFAULT_BATCHES, main


def run(argv=None):
    parser = argparse.ArgumentParser(prog="moe-router", description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                        help="batch sizes to route (default: %(default)s)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds of timing per measurement (default: %(default)s)")
    parser.add_argument("--config", action="store_true", help="print show_config() and exit")
    args = parser.parse_args(argv)
    if args.config:
        show_config()
    else:
        main(args.batches, args.min_time)


if __name__ == "__main__":
    run()
