"""Baselines and the timing table of the main job (`python -m moe_router`).

The baselines are what users run today: a float32 NumPy router, and
PyTorch's softmax + topk + renormalise as transformers writes it.  The
pytest-benchmark suite in benchmarks/ uses the same functions.
"""

import platform
import statistics
import time

import numpy as np

from . import _dispatch
from . import reference as ref
from ._api import Router, RouterOutput, route_into

QWEN3_30B_A3B = {"num_experts": 128, "top_k": 8, "norm_topk_prob": True}
DEFAULT_BATCHES = (1, 32, 256, 4096)


def numpy_route(logits, top_k, norm_topk_prob=True):
    """A float32 NumPy router, as a NumPy user would write it."""
    m = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - m)
    p = e / e.sum(axis=-1, keepdims=True)
    part = np.argpartition(-p, top_k - 1, axis=-1)[..., :top_k]
    pw = np.take_along_axis(p, part, axis=-1)
    order = np.argsort(-pw, axis=-1, kind="stable")
    ids = np.take_along_axis(part, order, axis=-1)
    w = np.take_along_axis(pw, order, axis=-1)
    if norm_topk_prob:
        w = w / w.sum(axis=-1, keepdims=True)
    return ids, w


def torch_route(torch, logits, top_k, norm_topk_prob=True):
    """transformers' Qwen3-MoE / Mixtral router: softmax, topk, renormalise."""
    routing_weights = torch.softmax(logits, dim=-1, dtype=torch.float)
    routing_weights, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
    if norm_topk_prob:
        routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
    return selected_experts, routing_weights


DEEPSEEK_V3 = {"num_experts": 256, "top_k": 8, "norm_topk_prob": True, "scoring_func": "sigmoid",
               "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}


def torch_deepseek_v3(torch, logits, bias, top_k=8, n_group=8, topk_group=4, scale=2.5):
    """transformers' DeepseekV3TopkRouter (group mask -inf, as vLLM / SGLang)."""
    n = logits.shape[0]
    scores = logits.sigmoid()
    choice = scores + bias.unsqueeze(0)
    group_scores = choice.view(n, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(n, n_group, logits.shape[1] // n_group)
    tmp = choice.masked_fill(~score_mask.reshape(n, -1).bool(), float("-inf"))
    ids = torch.topk(tmp, k=top_k, dim=-1, sorted=False)[1]
    w = scores.gather(1, ids)
    w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, w * scale


def import_torch():
    """torch with one intra-op thread (a fair one-thread comparison), or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def calibrate(fn, seconds):
    """How many calls of fn() take at least `seconds` (after one warm-up call)."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n
        n *= 2 if dt == 0 else max(2, int(seconds / dt) + 1)


def time_call(fn, min_time=0.2, repeats=5):
    """Median seconds per call of fn() over `repeats` timed runs of >= min_time/repeats each."""
    n = calibrate(fn, min_time / repeats)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


def _fmt(seconds):
    if seconds < 1e-6:
        return f"{seconds * 1e9:7.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:7.2f} us"
    return f"{seconds * 1e3:7.2f} ms"


def main(batches=DEFAULT_BATCHES, min_time=0.2):
    """Route Qwen3-30B-A3B-shaped batches, check them, and print the timing table."""
    cfg = QWEN3_30B_A3B
    e, k, norm = cfg["num_experts"], cfg["top_k"], cfg["norm_topk_prob"]
    torch = import_torch()
    rng = np.random.default_rng(0)
    print(f"moe_router {__import__('moe_router').__version__}: kernel path {_dispatch.path}, "
          f"{platform.machine()}, {platform.processor() or platform.platform()}")
    print(f"shape: {e} experts, top-{k}, norm_topk_prob={norm}, float32 logits, one thread"
          + ("" if torch else " (PyTorch not installed: no torch column)"))
    cols = ["batch", "moe_router/call", "ns/token", "numpy/call", "ns/token", "x numpy"]
    if torch:
        cols += ["torch/call", "ns/token", "x torch"]
    print(" | ".join(f"{c:>15}" for c in cols))
    for batch in batches:
        logits = rng.standard_normal((batch, e)).astype(np.float32)
        router = Router(num_experts=e, top_k=k, norm_topk_prob=norm, num_threads=1)
        out = router(logits)
        ref_ids, ref_w = ref.softmax_topk(logits, k, norm)
        if not (np.array_equal(out.expert_ids, ref_ids)
                and np.allclose(out.expert_weights, ref_w, rtol=0, atol=2e-6)):
            raise SystemExit(f"moe_router disagrees with the reference at batch {batch}")
        t_ours = time_call(lambda: router(logits), min_time)
        t_np = time_call(lambda: numpy_route(logits, k, norm), min_time)
        row = [f"{batch:>15}", _fmt(t_ours), _fmt(t_ours / batch), _fmt(t_np),
               _fmt(t_np / batch), f"{t_np / t_ours:14.1f}x"]
        if torch:
            tl = torch.from_numpy(logits)
            t_pt = time_call(lambda: torch_route(torch, tl, k, norm), min_time)
            row += [_fmt(t_pt), _fmt(t_pt / batch), f"{t_pt / t_ours:14.1f}x"]
        print(" | ".join(f"{c:>15}" for c in row))
    print("results checked against the float64 NumPy reference: ids equal, weights within 2e-6")
