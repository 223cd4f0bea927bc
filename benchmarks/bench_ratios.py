"""The speed targets as ratios, timed interleaved so a noisy host cannot skew them.

    python benchmarks/bench_ratios.py [--rounds 40] [--only softmax|deepseek]

pytest-benchmark times one contender after another; on a shared host whose
speed drifts over seconds, two medians from the same run were seen to give
ratios anywhere from 7x to 16x for one pair.  Here every round times each
contender once, in turn (a calibrated loop of about 2 ms each), so a slow
phase of the host hits all of them alike; per contender the minimum over
rounds (and the median, for spread) is reported, and the ratios are taken
from the minima.  One thread throughout.
"""

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402
from moe_router import _core_baseline, _dispatch  # noqa: E402
from moe_router._bench import (
    DEEPSEEK_V3,
    calibrate,
    import_torch,  # noqa: E402
    numpy_route,
    torch_deepseek_v3,
    torch_route,
)


def interleaved(contenders, rounds, slice_s=0.002):
    """{name: (min, median)} seconds per call, each round running every contender once."""
    loops = {name: calibrate(fn, slice_s) for name, fn in contenders.items()}
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def _report(title, tokens, result, ours):
    print(f"\n{title}")
    scale, unit = (1e9 / tokens, "ns/token") if tokens > 1 else (1e6, "us/call ")
    best = result[ours][0]
    for name, (lo, med) in result.items():
        print(
            f"  {name:28s} {lo * scale:9.2f} {unit}  (median {med * scale:9.2f})"
            f"  {lo / best:6.2f}x {ours}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--only",
        choices=("softmax", "deepseek"),
        help="time only the softmax table or only the DeepSeek-V3 rows",
    )
    args = parser.parse_args()
    torch = import_torch()
    rng = np.random.default_rng(0)
    print(
        f"moe_router {mr.__version__}, kernel paths {_dispatch.paths_by_dtype}; "
        f"{args.rounds} interleaved rounds; ratios of minima"
    )

    # (experts, top-K, renormalised, logits dtype, batch): the table.
    shapes = [
        (128, 8, True, np.float32, 256),
        (128, 8, True, np.float32, 1),
        (128, 8, True, np.float32, 32),
        (128, 8, True, np.float32, 4096),
        (128, 8, False, np.float32, 256),
        (128, 8, True, np.float64, 256),
        (256, 8, True, np.float32, 256),
        (64, 4, True, np.float32, 256),
        (8, 2, True, np.float32, 256),
        # float32 logits holding bfloat16 values, as from a bfloat16
        # model: ties among the best experts in about half the rows
        (128, 8, True, "bfloat16", 256),
    ]
    for e, k, norm, dtype, batch in shapes if args.only != "deepseek" else ():
        z = rng.standard_normal((batch, e)).astype(np.float32 if dtype == "bfloat16" else dtype)
        if dtype == "bfloat16":  # round to the nearest bfloat16 (ties to even)
            bits = z.view(np.uint32)
            bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
            z = (bits & np.uint32(0xFFFF0000)).view(np.float32)
        router = mr.Router(e, k, norm, num_threads=1)
        out = mr.RouterOutput.empty()
        ids = np.empty(batch * k, np.int32)
        w = np.empty(batch * k, np.float32)
        c = {
            "Router": lambda: router(z),
            "route_into": lambda: mr.route_into(z, k, out, norm, num_threads=1),
            # the portable module's kernel, called directly (no Python layer)
            "SSE2 path (kernel call)": lambda: _core_baseline.route_rows(z, k, norm, ids, w, 1),
        }
        if dtype != np.float64:
            c["seed (scalar, same sources)"] = lambda: _core_baseline.route_rows_seed(
                z, k, norm, ids, w
            )
        c["numpy"] = lambda: numpy_route(z, k, norm)
        if torch is not None:
            t = torch.from_numpy(z)
            c["torch"] = lambda: torch_route(torch, t, k, norm)
        kind = "bfloat16 values in float32" if dtype == "bfloat16" else np.dtype(dtype).name
        title = (
            f"softmax {e}/{k}, {'renormalised' if norm else 'not renormalised'}, "
            f"{kind}, batch {batch}"
        )
        _report(title, batch, interleaved(c, args.rounds), "Router")

    e, k = DEEPSEEK_V3["num_experts"], DEEPSEEK_V3["top_k"]
    opts = {
        key: v
        for key, v in DEEPSEEK_V3.items()
        if key not in ("num_experts", "top_k", "norm_topk_prob")
    }
    rng = np.random.default_rng(1)  # (the same rows with or without --only)
    bias = rng.normal(-0.5, 1.0, e).astype(np.float32)
    for batch in (1, 256) if args.only != "softmax" else ():
        # Batch 1 cycles through 64 one-token rows, as a decode loop would:
        # a row whose group scores are too close to call takes the exact
        # path (about 1% of rows), and one fixed row could be such a row.
        pool = [
            rng.standard_normal((batch, e)).astype(np.float32)
            for _ in range(64 if batch == 1 else 1)
        ]
        ds = mr.Router(e, k, True, num_threads=1, e_score_correction_bias=bias, **opts)
        plain = mr.Router(e, k, True, num_threads=1)
        c = {
            "DeepSeek-V3 Router": lambda rows=itertools.cycle(pool): ds(next(rows)),
            "plain Router, same shape": lambda rows=itertools.cycle(pool): plain(next(rows)),
        }
        if torch is not None:
            tb = torch.from_numpy(bias)
            c["torch (transformers' router)"] = (
                lambda rows=itertools.cycle([torch.from_numpy(z) for z in pool]): torch_deepseek_v3(
                    torch, next(rows), tb
                )
            )
        _report(
            f"DeepSeek-V3 256/8, 8 groups keep 4, sigmoid + bias, scale 2.5, batch {batch}",
            batch,
            interleaved(c, args.rounds),
            "DeepSeek-V3 Router",
        )


if __name__ == "__main__":
    main()
