"""pytest-benchmark comparison: moe_router against NumPy, PyTorch and the seed's algorithm.

    pytest benchmarks/ --benchmark-group-by=group --benchmark-columns=median,ops
    pytest benchmarks/ --benchmark-autosave   # then --benchmark-compare

Every benchmark of one shape shares a group, so the table reads as ratios
against the baselines measured in the same run.  One thread throughout
(the thread-scaling benchmark is bench_threads.py).
"""

import numpy as np
import pytest

import moe_router as mr
from moe_router import _core_baseline
from moe_router._bench import DEEPSEEK_V3, numpy_route, torch_deepseek_v3, torch_route

# (router, num_experts, top_k, norm_topk_prob, dtype, batch)
SHAPES = [
    ("softmax", 128, 8, True, "float32", 1),
    ("softmax", 128, 8, True, "float32", 32),
    ("softmax", 128, 8, True, "float32", 256),
    ("softmax", 128, 8, True, "float32", 4096),
    ("softmax", 128, 8, False, "float32", 256),
    ("softmax", 128, 8, True, "float64", 256),
    ("softmax", 256, 8, True, "float32", 1),
    ("softmax", 256, 8, True, "float32", 256),
    ("softmax", 64, 4, True, "float32", 256),
    ("softmax", 8, 2, True, "float32", 256),
    ("deepseek_v3", 256, 8, True, "float32", 1),
    ("deepseek_v3", 256, 8, True, "float32", 256),
]


def _id(shape):
    kind, e, k, norm, dtype, batch = shape
    return f"{kind}-E{e}-K{k}-{'norm' if norm else 'raw'}-{dtype}-B{batch}"


@pytest.fixture(params=SHAPES, ids=_id)
def shape(request, benchmark):
    kind, e, k, norm, dtype, batch = request.param
    benchmark.group = _id(request.param)
    benchmark.extra_info["tokens"] = batch
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((batch, e)).astype(dtype)
    options = {}
    if kind == "deepseek_v3":
        options = {
            key: v
            for key, v in DEEPSEEK_V3.items()
            if key not in ("num_experts", "top_k", "norm_topk_prob")
        }
        options["e_score_correction_bias"] = rng.normal(-0.5, 1.0, e).astype(np.float32)
    return kind, logits, k, norm, options


def test_router_call(benchmark, shape, kernel_path):
    kind, logits, k, norm, options = shape
    router = mr.Router(logits.shape[1], k, norm, num_threads=1, **options)
    benchmark(router, logits)


def test_route_into(benchmark, shape, kernel_path):
    kind, logits, k, norm, options = shape
    out = mr.RouterOutput.empty()
    if options:
        pytest.skip("a variant in a loop is a Router: route_into validates its options per call")
    benchmark(mr.route_into, logits, k, out, norm, num_threads=1)


def test_plain_router_same_shape(benchmark, shape):
    """The plain softmax router on a variant's shape: the within-2x reference."""
    kind, logits, k, norm, options = shape
    if kind == "softmax":
        pytest.skip("is test_router_call")
    router = mr.Router(logits.shape[1], k, norm, num_threads=1)
    benchmark(router, logits)


def test_seed_scalar(benchmark, shape):
    kind, logits, k, norm, options = shape
    if kind != "softmax" or logits.dtype != np.float32:
        pytest.skip("the seed routes float32 softmax only")
    ids = np.empty(logits.shape[0] * k, np.int32)
    w = np.empty(logits.shape[0] * k, np.float32)
    benchmark(_core_baseline.route_rows_seed, logits, k, norm, ids, w)


def test_numpy(benchmark, shape):
    kind, logits, k, norm, options = shape
    if kind != "softmax":
        pytest.skip("no NumPy baseline for this router")
    benchmark(numpy_route, logits, k, norm)


def test_torch(benchmark, shape, torch):
    kind, logits, k, norm, options = shape
    t = torch.from_numpy(logits)
    if kind == "deepseek_v3":
        bias = torch.from_numpy(options["e_score_correction_bias"])
        benchmark(torch_deepseek_v3, torch, t, bias)
    else:
        benchmark(torch_route, torch, t, k, norm)
