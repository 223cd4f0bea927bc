"""Tensors as an inference loop has them (issue 14), timed interleaved.

    python benchmarks/bench_tensors.py [--rounds 60]

At 128 experts, top-8, one thread: `Router.__call__` on
  - bfloat16 logits read natively (an ml_dtypes array, a torch tensor)
    against the same values given as float32, and against the conversion a
    user made before (`t.float().numpy()` per call);
  - float16 logits read natively against the same values as float32 and
    against a float32 copy per call;
  - a torch tensor against a NumPy array of the same data (batch 1: the
    per-call cost of taking tensors in and giving tensors out).
Every round times each contender once, in turn (moe_router._bench.interleaved);
the ratios are taken from the medians over rounds.  Each contender has a
Router of its own, as a loop has: one Router fed NumPy arrays and torch
tensors in turn would remake its output views at every switch.
"""

import argparse
import os
import statistics

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402
from moe_router._bench import import_torch, interleaved, torch_route  # noqa: E402


def _table(title, tokens, times, baseline):
    print(f"\n{title}")
    scale, unit = (1e9 / tokens, "ns/token") if tokens > 1 else (1e9, "ns/call ")
    base = statistics.median(times[baseline])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:44s} {med * scale:10.1f} {unit}  {med / base:6.3f}x {baseline}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    torch = import_torch()
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    rng = np.random.default_rng(0)

    def router():
        return mr.Router(128, 8, num_threads=1)

    for batch in (1, 256):
        z = rng.standard_normal((batch, 128)).astype(np.float32)
        c = {}
        if ml_dtypes is not None:
            bf = z.astype(ml_dtypes.bfloat16)
            bf_as_f32 = bf.astype(np.float32)
            c["float32 (the bfloat16 values)"] = lambda a=bf_as_f32, r=router(): r(a)
            c["bfloat16 ndarray (ml_dtypes)"] = lambda a=bf, r=router(): r(a)
        f16 = z.astype(np.float16)
        f16_as_f32 = f16.astype(np.float32)
        c["float32 (the float16 values)"] = lambda a=f16_as_f32, r=router(): r(a)
        c["float16 ndarray"] = lambda a=f16, r=router(): r(a)
        c["float16 -> float32 copy per call"] = lambda a=f16, r=router(): r(a.astype(np.float32))
        if torch is not None:
            t32 = torch.from_numpy(z.copy())
            tbf = t32.to(torch.bfloat16)
            c["float32 ndarray"] = lambda a=z, r=router(): r(a)
            c["torch float32 tensor"] = lambda t=t32, r=router(): r(t)
            c["torch bfloat16 tensor"] = lambda t=tbf, r=router(): r(t)
            c["torch bfloat16 -> .float().numpy() per call"] = lambda t=tbf, r=router(): r(
                t.float().numpy()
            )
            c["PyTorch softmax+topk on the bfloat16 tensor"] = lambda t=tbf: torch_route(
                torch, t, 8
            )
        times = interleaved(c, args.rounds)
        baseline = next(iter(c))
        _table(f"128/8, batch {batch}, one thread", batch, times, baseline)
        if torch is not None:
            tt, tn = (
                statistics.median(times[k]) for k in ("torch float32 tensor", "float32 ndarray")
            )
            print(f"  torch tensor - ndarray, per call: {(tt - tn) * 1e9:+.0f} ns")


if __name__ == "__main__":
    main()
