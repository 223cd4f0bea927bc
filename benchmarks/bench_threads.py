"""Thread scaling of the router: where a second thread starts to pay.

    python benchmarks/bench_threads.py [--experts 128] [--top-k 8]

Prints, for a range of batch sizes, the time per call with 1 thread and with
all OpenMP threads, measured in the same run.  PARALLEL_MIN_ROWS (in
moe_router/_router_kernels.pxi) is set from this: the smallest batch where
the threaded call is clearly faster.  The kernel's own threshold is lowered
for the run, so the threads are used at every batch and the crossover shows.
"""

import argparse
import os

# NumPy's OpenBLAS threads spin on the cores the router's threads need
# (measured: 2-thread speed-up 1.5x with them, 1.85x without); the router
# never calls BLAS, so keep OpenBLAS to one thread here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402
from moe_router import _dispatch  # noqa: E402
from moe_router._bench import time_call  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    kernel = _dispatch.kernel
    threads = _dispatch.default_threads
    print(
        f"kernel paths {_dispatch.paths_by_dtype}, {threads} OpenMP threads, "
        f"{args.experts} experts, top-{args.top_k}; PARALLEL_MIN_ROWS={mr.PARALLEL_MIN_ROWS}"
    )
    print(f"{'batch':>7} | {'1 thread':>12} | {f'{threads} threads':>12} | speed-up")
    rng = np.random.default_rng(0)
    old = kernel.set_parallel_min_rows(1)
    try:
        for batch in (16, 32, 64, 128, 256, 512, 1024, 4096, 16384):
            z = rng.standard_normal((batch, args.experts)).astype(np.float32)
            ids = np.empty(batch * args.top_k, np.int32)
            w = np.empty(batch * args.top_k, np.float32)
            t1 = time_call(lambda: kernel.route_rows(z, args.top_k, True, ids, w, 1), args.min_time)
            tn = time_call(
                lambda: kernel.route_rows(z, args.top_k, True, ids, w, threads), args.min_time
            )
            print(f"{batch:>7} | {t1 * 1e6:>9.1f} us | {tn * 1e6:>9.1f} us | {t1 / tn:6.2f}x")
    finally:
        kernel.set_parallel_min_rows(old)


if __name__ == "__main__":
    main()
