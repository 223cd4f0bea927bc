"""Baselines and the timing table of the main job (`python -m moe_router`).

The baselines are what users run today: a float32 NumPy router, and
PyTorch's softmax + topk + renormalise as transformers writes it.  The
pytest-benchmark suite in benchmarks/ uses the same functions.

`paths_bench` (`moe-router bench --paths`) times every kernel path this CPU
runs against each other on the issue's shapes, so anyone can check which
path is fastest on their machine and whether the default is it.
"""

import platform
import statistics
import time

import numpy as np

from . import _dispatch
from . import reference as ref
from ._api import Router

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


DEEPSEEK_V3 = {
    "num_experts": 256,
    "top_k": 8,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
}


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
    print(
        f"moe_router {__import__('moe_router').__version__}: "
        f"kernel paths {_dispatch.paths_by_dtype}, "
        f"{platform.machine()}, {platform.processor() or platform.platform()}"
    )
    print(
        f"shape: {e} experts, top-{k}, norm_topk_prob={norm}, float32 logits, one thread"
        + ("" if torch else " (PyTorch not installed: no torch column)")
    )
    cols = ["batch", "moe_router/call", "ns/token", "numpy/call", "ns/token", "x numpy"]
    if torch:
        cols += ["torch/call", "ns/token", "x torch"]
    print(" | ".join(f"{c:>15}" for c in cols))
    for batch in batches:
        logits = rng.standard_normal((batch, e)).astype(np.float32)
        router = Router(num_experts=e, top_k=k, norm_topk_prob=norm, num_threads=1)
        out = router(logits)
        ref_ids, ref_w = ref.softmax_topk(logits, k, norm)
        if not (
            np.array_equal(out.expert_ids, ref_ids)
            and np.allclose(out.expert_weights, ref_w, rtol=0, atol=2e-6)
        ):
            raise SystemExit(f"moe_router disagrees with the reference at batch {batch}")
        t_ours = time_call(lambda: router(logits), min_time)
        t_np = time_call(lambda: numpy_route(logits, k, norm), min_time)
        row = [
            f"{batch:>15}",
            _fmt(t_ours),
            _fmt(t_ours / batch),
            _fmt(t_np),
            _fmt(t_np / batch),
            f"{t_np / t_ours:14.1f}x",
        ]
        if torch:
            tl = torch.from_numpy(logits)
            t_pt = time_call(lambda: torch_route(torch, tl, k, norm), min_time)
            row += [_fmt(t_pt), _fmt(t_pt / batch), f"{t_pt / t_ours:14.1f}x"]
        print(" | ".join(f"{c:>15}" for c in row))
    print("results checked against the float64 NumPy reference: ids equal, weights within 2e-6")


def bfloat16_values(z):
    """float32 array z rounded to the nearest bfloat16 value (ties to even), still float32.

    As from a bfloat16 model: ties among the best experts in about half the rows.
    """
    bits = np.ascontiguousarray(z, dtype=np.float32).view(np.uint32).copy()
    bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (bits & np.uint32(0xFFFF0000)).view(np.float32)


# The shapes of `paths_bench`: (name, experts, top-K, renormalised, logits kind, DeepSeek-V3).
# A kind is a NumPy dtype name or "bfloat16" (float32 logits holding bfloat16 values).
PATH_SHAPES = (
    ("softmax 128/8 f32", 128, 8, True, "float32", False),
    ("softmax 128/8 bf16 values", 128, 8, True, "bfloat16", False),
    ("softmax 256/8 f32", 256, 8, True, "float32", False),
    ("softmax 64/4 f32", 64, 4, True, "float32", False),
    ("softmax 128/8 f32 not renorm", 128, 8, False, "float32", False),
    ("softmax 128/8 f64", 128, 8, True, "float64", False),
    ("DeepSeek-V3 256/8", 256, 8, True, "float32", True),
)


def interleaved(contenders, rounds, slice_s=0.002):
    """{name: list of seconds per call}, each round running every contender once, in turn.

    Each contender runs a loop calibrated to about `slice_s` seconds per round,
    so a slow phase of the host hits all of them alike.  The order rotates
    from round to round, so no contender always runs first (or last).
    """
    names = list(contenders)
    loops = {name: calibrate(contenders[name], slice_s) for name in names}
    times = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            fn, n = contenders[name], loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def default_paths():
    """{logits dtype name: the path moe_router routes it on by default}.

    From `_dispatch.paths_by_dtype` when the dispatcher has it, else the one
    active path for both dtypes.
    """
    by_dtype = getattr(_dispatch, "paths_by_dtype", None)
    if by_dtype:
        return dict(by_dtype)
    return {"float32": _dispatch.path, "float64": _dispatch.path}


def _path_case(rng, bias_rng, batch, e, k, kind, deepseek):
    """Logits and route_rows keywords for one shape of PATH_SHAPES."""
    if deepseek:
        opts = {
            key: v
            for key, v in DEEPSEEK_V3.items()
            if key not in ("num_experts", "top_k", "norm_topk_prob", "scoring_func")
        }
        bias = bias_rng.normal(-0.5, 1.0, e).astype(np.float32)
        z = bias_rng.standard_normal((batch, e)).astype(np.float32)
        return z, dict(sigmoid=True, bias=bias, **opts)
    z = rng.standard_normal((batch, e)).astype(np.float32 if kind == "bfloat16" else kind)
    if kind == "bfloat16":
        z = bfloat16_values(z)
    return z, {}


def paths_bench(batch=256, rounds=40, slice_s=0.002, print_out=True):
    """Time every kernel path this CPU runs on PATH_SHAPES, interleaved, one thread.

    Each path's module is called directly (`route_rows`, no Python layer), the
    paths taking turns within every round.  Returns a dict:
    {"batch", "rounds", "paths": the timed paths, "default_paths": logits dtype ->
    default path, "shapes": {shape name: {"default": its default path,
    "times": {path: {"min": ns/token, "median": ns/token}}, "fastest": path,
    "default_over_fastest": ratio of minima (1.0 when the default is fastest)}}}.
    Raises RuntimeError when a path refuses a call or leaves rows unrouted,
    and when two paths pick different experts.
    """
    if batch < 1 or rounds < 1:
        raise ValueError(f"batch and rounds must be >= 1, got batch={batch}, rounds={rounds}")
    paths = tuple(_dispatch.available_paths())
    modules = {p: _dispatch.load(p) for p in paths}
    defaults = default_paths()
    rng = np.random.default_rng(0)
    bias_rng = np.random.default_rng(1)
    shapes = {}
    for name, e, k, norm, kind, deepseek in PATH_SHAPES:
        z, opts = _path_case(rng, bias_rng, batch, e, k, kind, deepseek)
        args = dict(
            num_threads=1,
            num_experts=e,
            sigmoid=opts.get("sigmoid", False),
            n_group=opts.get("n_group", 1),
            topk_group=opts.get("topk_group", 1),
            routed_scaling_factor=opts.get("routed_scaling_factor", 1.0),
            bias=opts.get("bias"),
        )
        contenders, outputs = {}, {}
        for p in paths:
            ids = np.empty(batch * k, np.int32)
            w = np.empty(batch * k, np.float32)
            route_rows = modules[p].route_rows
            rc = route_rows(z, k, norm, ids, w, **args)
            if rc != 0:
                what = "refused the call (-1)" if rc < 0 else f"left {rc} of {batch} rows unrouted"
                raise RuntimeError(f"kernel path {p} {what} on {name}")
            outputs[p] = ids.copy()
            contenders[p] = lambda f=route_rows, ids=ids, w=w: f(z, k, norm, ids, w, **args)
        first = paths[0]
        for p in paths[1:]:
            if not np.array_equal(outputs[p], outputs[first]):
                rows = np.flatnonzero((outputs[p] != outputs[first]).reshape(batch, k).any(1))
                raise RuntimeError(
                    f"kernel paths {first} and {p} pick different experts on "
                    f"{name} (rows {rows[:8].tolist()})"
                )
        times = interleaved(contenders, rounds, slice_s)
        per_token = {
            p: {"min": min(ts) * 1e9 / batch, "median": statistics.median(ts) * 1e9 / batch}
            for p, ts in times.items()
        }
        default = defaults.get("float64" if kind == "float64" else "float32", _dispatch.path)
        fastest = min(paths, key=lambda p: per_token[p]["min"])
        ratio = (
            per_token[default]["min"] / per_token[fastest]["min"]
            if default in per_token
            else float("nan")
        )
        shapes[name] = {
            "default": default,
            "times": per_token,
            "fastest": fastest,
            "default_over_fastest": ratio,
        }
    result = {
        "batch": batch,
        "rounds": rounds,
        "paths": paths,
        "default_paths": defaults,
        "shapes": shapes,
    }
    if print_out:
        print_paths_table(result)
    return result


def print_paths_table(result):
    """Print paths_bench's result: min ns/token per shape and path (median in parentheses)."""
    paths, shapes = result["paths"], result["shapes"]
    print(
        f"moe_router {__import__('moe_router').__version__}: every kernel path this CPU runs, "
        f"{platform.machine()}, {platform.processor() or platform.platform()}"
    )
    print(
        f"batch {result['batch']}, one thread, {result['rounds']} interleaved rounds; "
        f"ns/token: min over rounds (median); default paths by logits dtype: "
        + ", ".join(f"{d} {p}" for d, p in result["default_paths"].items())
    )
    name_w = max(len("shape"), *(len(n) for n in shapes))
    cells = {
        n: {p: f"{r['times'][p]['min']:.2f} ({r['times'][p]['median']:.2f})" for p in paths}
        for n, r in shapes.items()
    }
    col_w = {p: max(len(p), *(len(cells[n][p]) for n in shapes)) for p in paths}
    ratios = {
        n: f"{r['default_over_fastest']:.2f}x ({r['default']} / {r['fastest']})"
        for n, r in shapes.items()
    }
    ratio_head = "default / fastest"
    ratio_w = max(len(ratio_head), *(len(c) for c in ratios.values()))
    header = (
        [f"{'shape':<{name_w}}"]
        + [f"{p:>{col_w[p]}}" for p in paths]
        + [f"{ratio_head:>{ratio_w}}"]
    )
    print(" | ".join(header))
    print("-+-".join("-" * len(h) for h in header))
    for n in shapes:
        row = (
            [f"{n:<{name_w}}"]
            + [f"{cells[n][p]:>{col_w[p]}}" for p in paths]
            + [f"{ratios[n]:>{ratio_w}}"]
        )
        print(" | ".join(row))
    print("every path's expert ids checked equal to the first path's on every shape")


# --- the scoring rules of issue 15: each model's router, from its logits ----
# PyTorch transcriptions of the transformers 5.23 router modules after their
# linear layer (benchmarks/bench_rules.py checks each against the module
# itself before timing it): the baselines of the rules' benchmark table.
# (model, Router options, PyTorch form): shape from the model's config.


def torch_ernie4_5_moe(torch, logits, bias, top_k, norm_min=1e-12):
    """Ernie4_5_MoeTopKRouter: softmax, top-K of p + moe_statics, clamp-renormalise."""
    p = torch.softmax(logits, dim=1, dtype=torch.float)
    ids = torch.topk(p + bias, top_k, dim=-1)[1]
    w = torch.gather(p, dim=-1, index=ids)
    return ids, w / torch.clamp(w.sum(dim=-1, keepdim=True), min=norm_min)


def torch_longcat_flash(torch, logits, bias, top_k, scale):
    """LongcatFlashTopkRouter: softmax, top-K of p + bias (unsorted), w * scale."""
    p = logits.softmax(dim=-1)
    ids = torch.topk(p + bias.unsqueeze(0), k=top_k, dim=-1, sorted=False)[1]
    return ids, p.gather(1, ids) * scale


def torch_laguna(torch, logits, bias, top_k, cap):
    """LagunaTopKRouter: tanh soft-cap, sigmoid, top-K of s + bias, renormalise."""
    if cap > 0:
        logits = torch.tanh(logits / cap) * cap
    s = torch.sigmoid(logits)
    ids = torch.topk(s + bias, top_k, dim=-1)[1]
    w = s.gather(-1, ids)
    return ids, w / w.sum(dim=-1, keepdim=True)


def torch_dbrx(torch, logits, top_k, p_norm):
    """DbrxFFN.route_tokens_to_experts: softmax, top-K, w / ||w||_p."""
    p = torch.softmax(logits, dim=1, dtype=logits.dtype)
    w, ids = torch.topk(p, top_k, dim=-1)
    if p_norm is not None:
        w = w / torch.norm(w, p=p_norm, dim=-1, keepdim=True)
    return ids, w


def torch_deepseek_v4(torch, logits, bias, top_k, scale):
    """DeepseekV4TopKRouter: sqrt(softplus), top-K of s + bias, renormalise, scale."""
    s = torch.nn.functional.softplus(logits).sqrt()
    ids = torch.topk(s + bias, top_k, dim=-1, sorted=False).indices
    w = s.gather(1, ids)
    return ids, w / (w.sum(dim=-1, keepdim=True) + 1e-20) * scale


def torch_deepseek_v4_hash(torch, logits, tid2eid, input_ids, scale):
    """DeepseekV4HashRouter: the ids from tid2eid[input_ids], weights as the top-K router's."""
    s = torch.nn.functional.softplus(logits).sqrt()
    ids = tid2eid[input_ids.reshape(-1)].long()
    w = s.gather(1, ids)
    return ids, w / (w.sum(dim=-1, keepdim=True) + 1e-20) * scale


def torch_phimoe(torch, logits, jitter_eps):
    """PhiMoE's own sparsemixer (transformers' function itself), eval mode."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    w, ids = sparsemixer(logits, jitter_eps=jitter_eps, training=False)
    return ids, w
