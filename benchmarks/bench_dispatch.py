"""Dispatch speed (plan, permute, combine) as ratios to baselines timed in the same run.

    python benchmarks/bench_dispatch.py [--rounds 15] [--only plan|permute|combine|threads|block]

Every round times each contender once, in turn (moe_router._bench.interleaved),
so a slow phase of a shared host hits all of them alike; medians over the
rounds are reported, and the ratios are taken from the medians.  One thread
(torch too) unless a line says otherwise.  128 experts, top-8, hidden 2048.

  plan     mr.plan_into vs torch (torch.sort + float histc + int32 cumsum, as
           transformers' grouped_mm) and NumPy (stable argsort + bincount + cumsum)
  permute  mr.permute(out=) vs a plain copy of the same bytes (the memory
           limit), np.take(out=) and torch.index_select(out=), float32 / bfloat16
  combine  mr.combine(out=) vs index_add_ (as the eager experts) and
           transformers' grouped_mm recombination (weight, inverse
           permutation, view(T, K, H).sum(1)), float32 / bfloat16
  threads  permute / combine at T = 4096 with 2 threads vs 1, and the bound a
           plain memcpy of permute's bytes sets: the same copy split over
           2 threads vs 1 (NumPy copies without the GIL)
  block    the whole MoE block at Qwen3-30B-A3B sizes: experts_implementation
           "moe_router" vs "eager" and "grouped_mm" (needs transformers)
"""

import argparse
import os
import statistics
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402
from moe_router._bench import import_torch, interleaved  # noqa: E402

E, K, H = 128, 8, 2048


def routed_ids(rng, T):
    return np.argsort(rng.random((T, E)), axis=1)[:, :K].astype(np.int64)


def medians(times):
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title, med, ours, unit_scale=1e6, unit="us"):
    print(f"\n{title}")
    for name, t in med.items():
        ratio = t / med[ours]
        print(f"  {name:34s} {t * unit_scale:10.2f} {unit}   {ratio:6.2f}x {ours}")


def bench_plan(rounds, torch):
    rng = np.random.default_rng(0)
    for T in (1, 32, 256, 4096):
        ids = routed_ids(rng, T)
        p = mr.DispatchPlan.empty()
        c = {"moe_router plan_into": lambda: mr.plan_into(ids, E, p)}

        def numpy_plan():
            flat = ids.reshape(-1)
            order = np.argsort(flat, kind="stable")
            counts = np.bincount(flat, minlength=E)
            return order, np.cumsum(counts)

        c["numpy argsort+bincount+cumsum"] = numpy_plan
        if torch is not None:
            tids = torch.from_numpy(ids)

            def torch_plan():
                flat = tids.reshape(-1)
                sorted_ids, perm = torch.sort(flat)
                counts = torch.histc(sorted_ids.float(), bins=E, min=0, max=E - 1)
                return perm, torch.cumsum(counts, dim=0, dtype=torch.int32)

            c["torch sort+histc+cumsum"] = torch_plan
        report(f"plan, T={T}", medians(interleaved(c, rounds)), "moe_router plan_into")


def _bf16(torch):
    try:
        import ml_dtypes

        return ml_dtypes.bfloat16
    except ImportError:
        return None


def bench_permute(rounds, torch, Ts=(1, 32, 256, 4096), threads=1):
    rng = np.random.default_rng(1)
    for dtype_name in ("float32", "bfloat16"):
        dt = np.float32 if dtype_name == "float32" else _bf16(torch)
        if dt is None:
            print("\n(bfloat16 skipped: ml_dtypes not installed)")
            continue
        for T in Ts:
            ids = routed_ids(rng, T)
            p = mr.plan(ids, E)
            hidden = rng.standard_normal((T, H)).astype(dt)
            # One output buffer per contender (written once: no zero pages):
            # a buffer another contender has just written sits in the cache
            # in another state, which skewed the mid-sized rows by up to 1.7x.
            out, out_copy, out_take = (np.ones((p.num_rows, H), dt) for _ in range(3))
            src = np.ones_like(out)
            idx = p.sorted_token_ids.copy()
            c = {
                "moe_router permute": lambda: mr.permute(hidden, p, out, num_threads=threads),
                "memcpy of the same bytes": lambda: np.copyto(out_copy, src),
                "np.take(out=)": lambda: np.take(hidden, idx, axis=0, out=out_take),
            }
            if torch is not None:
                th = (
                    torch.from_numpy(hidden.view(np.uint16)).view(torch.bfloat16)
                    if (dtype_name == "bfloat16")
                    else torch.from_numpy(hidden)
                )
                tout = torch.empty((p.num_rows, H), dtype=th.dtype)
                tidx = torch.from_numpy(idx)
                c["torch.index_select(out=)"] = lambda: torch.index_select(th, 0, tidx, out=tout)
            med = medians(interleaved(c, rounds))
            report(f"permute, {dtype_name}, T={T}", med, "moe_router permute")


def bench_combine(rounds, torch, Ts=(1, 32, 256, 4096)):
    if torch is None:
        print("\ncombine: torch not installed, skipped")
        return
    rng = np.random.default_rng(2)
    for dtype_name in ("float32", "bfloat16"):
        tdt = torch.float32 if dtype_name == "float32" else torch.bfloat16
        for T in Ts:
            ids = routed_ids(rng, T)
            p = mr.plan(ids, E)
            w = torch.rand(T, K)
            expert_out = torch.randn(p.num_rows, H).to(tdt)
            out, out_add = torch.ones(T, H, dtype=tdt), torch.ones(T, H, dtype=tdt)
            tok = torch.from_numpy(p.sorted_token_ids.copy())
            slot = torch.from_numpy(p.sorted_slot_ids.copy())
            w_flat = w.reshape(-1)
            w_sorted = w_flat[slot].to(tdt)[:, None]

            def index_add():
                out_add.zero_()
                out_add.index_add_(0, tok, expert_out * w_sorted)

            def grouped_mm_recombine():
                weighted = expert_out * w_sorted
                inv = torch.empty_like(slot)
                inv[slot] = torch.arange(slot.numel())
                return weighted[inv].view(T, K, H).sum(dim=1).to(tdt)

            c = {
                "moe_router combine": lambda: mr.combine(expert_out, p, w, out, num_threads=1),
                "index_add_ (eager)": index_add,
                "grouped_mm recombination": grouped_mm_recombine,
            }
            med = medians(interleaved(c, rounds))
            report(f"combine, {dtype_name}, T={T}", med, "moe_router combine")


def bench_threads(rounds, torch):
    from moe_router import _dispatch

    rng = np.random.default_rng(3)
    T = 4096
    ids = routed_ids(rng, T)
    p = mr.plan(ids, E)
    hidden = rng.standard_normal((T, H)).astype(np.float32)
    x = np.empty((p.num_rows, H), np.float32)
    y = np.empty((T, H), np.float32)
    w = rng.random((T, K)).astype(np.float32)
    q = mr.DispatchPlan.empty()
    src = np.ones_like(x)  # written: no shared zero pages behind the copy
    halves = [
        (x[: x.shape[0] // 2], src[: x.shape[0] // 2]),
        (x[x.shape[0] // 2 :], src[x.shape[0] // 2 :]),
    ]
    pool = ThreadPoolExecutor(2)

    def memcpy_2_threads():
        for f in [pool.submit(np.copyto, d, s) for d, s in halves]:
            f.result()

    c = {
        "memcpy 1 thread": lambda: np.copyto(x, src),
        "memcpy 2 threads": memcpy_2_threads,
        "plan 1 thread": lambda: mr.plan_into(ids, E, q, num_threads=1),
        "plan 2 threads": lambda: mr.plan_into(ids, E, q, num_threads=2),
        "permute 1 thread": lambda: mr.permute(hidden, p, x, num_threads=1),
        "permute 2 threads": lambda: mr.permute(hidden, p, x, num_threads=2),
        "combine 1 thread": lambda: mr.combine(x, p, w, y, num_threads=1),
        "combine 2 threads": lambda: mr.combine(x, p, w, y, num_threads=2),
    }
    times = interleaved(c, rounds, slice_s=0.05)
    pool.shutdown()
    med = medians(times)
    # The minima too: on a shared host a round where both threads ran shows
    # what the memory system allows; the medians what a busy host gives.
    low = {name: min(ts) for name, ts in times.items()}
    print(f"\nthreads, float32, T={T} (openmp: {_dispatch.kernel.build_info()['openmp']})")
    for op in ("memcpy", "plan", "permute", "combine"):
        one, two = med[f"{op} 1 thread"], med[f"{op} 2 threads"]
        lo1, lo2 = low[f"{op} 1 thread"], low[f"{op} 2 threads"]
        print(
            f"  {op}: 1 thread {one * 1e3:.2f} ms, 2 threads {two * 1e3:.2f} ms: {one / two:.2f}x"
            f" (minima {lo1 * 1e3:.2f} / {lo2 * 1e3:.2f} ms: {lo1 / lo2:.2f}x)"
        )
    # The threshold: the smallest batches where 2 threads pay.
    kernel = _dispatch.kernel
    old = kernel.set_dispatch_parallel_min_bytes(1)
    try:
        for T in (16, 32, 64, 128, 256):
            ids = routed_ids(rng, T)
            p = mr.plan(ids, E)
            hidden = rng.standard_normal((T, H)).astype(np.float32)
            x = np.empty((p.num_rows, H), np.float32)
            y = np.empty((T, H), np.float32)
            w = rng.random((T, K)).astype(np.float32)
            c = {
                "p1": lambda: mr.permute(hidden, p, x, num_threads=1),
                "p2": lambda: mr.permute(hidden, p, x, num_threads=2),
                "c1": lambda: mr.combine(x, p, w, y, num_threads=1),
                "c2": lambda: mr.combine(x, p, w, y, num_threads=2),
            }
            med = medians(interleaved(c, rounds))
            print(
                f"  T={T:4d} ({x.nbytes / 2**20:.1f} MiB permuted): permute 2 threads "
                f"{med['p1'] / med['p2']:.2f}x, combine 2 threads {med['c1'] / med['c2']:.2f}x"
            )
    finally:
        kernel.set_dispatch_parallel_min_bytes(old)


def bench_block(rounds, torch):
    try:
        import transformers
    except ImportError:
        print("\nblock: transformers not installed, skipped")
        return
    import moe_router.hf as mh

    config = transformers.Qwen3MoeConfig(
        hidden_size=2048,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        num_hidden_layers=1,
        vocab_size=16,
    )
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(config).eval()  # 2.4 GB of float32 expert weights
    with torch.no_grad():
        for prm in block.parameters():
            prm.normal_(0, 0.02)
    mh.register()
    hf_gate = block.gate
    mr_gate = mh.MoeRouterGate(hf_gate, config)

    def run(impl, gate, h):
        block.gate = gate
        block.experts.config._experts_implementation = impl
        with torch.no_grad():
            return block(h)

    for T in (1, 32, 256):
        h = torch.randn(1, T, 2048)
        # The share outside the expert matmuls: the same matmuls on the plan's rows alone.
        p = mr.plan(mr_gate.route(h.reshape(-1, 2048))[1], 128)
        x = mr.permute(h.reshape(-1, 2048), p)

        def matmuls_only():
            with torch.no_grad():
                mh._run_experts(block.experts, x, p, block.experts.gate_up_proj, None)

        y_rows = torch.randn(p.num_rows, 2048)

        def dispatch_only():  # everything of the moe_router path but the expert matmuls
            with torch.no_grad():
                logits, ids, weights = mr_gate.route(h.reshape(-1, 2048))
                q = mh._plan_of(block.experts, ids)
                mr.permute(h.reshape(-1, 2048), q)
                mr.combine(y_rows, q, weights)

        c = {
            "moe_router (+ its router)": lambda: run("moe_router", mr_gate, h),
            "moe_router experts": lambda: run("moe_router", hf_gate, h),
            "eager": lambda: run("eager", hf_gate, h),
            "grouped_mm": lambda: run("grouped_mm", hf_gate, h),
            "expert matmuls alone": matmuls_only,
            "router+plan+permute+combine alone": dispatch_only,
        }
        med = medians(interleaved(c, rounds, slice_s=0.05))
        title = f"Qwen3-30B-A3B MoE block, float32, T={T}"
        report(title, med, "moe_router (+ its router)", 1e3, "ms")
        share = med["router+plan+permute+combine alone"] / med["moe_router (+ its router)"]
        print(f"  outside the expert matmuls: {share:.2%} of moe_router's time")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", choices=["plan", "permute", "combine", "threads", "block"])
    args = ap.parse_args()
    torch = import_torch()
    steps = {
        "plan": bench_plan,
        "permute": bench_permute,
        "combine": bench_combine,
        "threads": bench_threads,
        "block": bench_block,
    }
    for name, fn in steps.items():
        if args.only in (None, name):
            fn(args.rounds, torch)


if __name__ == "__main__":
    main()
