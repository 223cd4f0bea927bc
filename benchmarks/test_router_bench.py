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
from moe_router._bench import numpy_route, torch_route

# (num_experts, top_k, norm_topk_prob, dtype, batch)
SHAPES = [
    (128, 8, True, "float32", 1),
    (128, 8, True, "float32", 32),
    (128, 8, True, "float32", 256),
    (128, 8, True, "float32", 4096),
    (128, 8, False, "float32", 256),
    (128, 8, True, "float64", 256),
    (256, 8, True, "float32", 1),
    (256, 8, True, "float32", 256),
    (64, 4, True, "float32", 256),
    (8, 2, True, "float32", 256),
]


def _id(shape):
    e, k, norm, dtype, batch = shape
    return f"E{e}-K{k}-{'norm' if norm else 'raw'}-{dtype}-B{batch}"


@pytest.fixture(params=SHAPES, ids=_id)
def shape(request, benchmark):
    e, k, norm, dtype, batch = request.param
    benchmark.group = _id(request.param)
    benchmark.extra_info["tokens"] = batch
    logits = np.random.default_rng(0).standard_normal((batch, e)).astype(dtype)
    return logits, k, norm


def test_router_call(benchmark, shape, kernel_path):
    logits, k, norm = shape
    router = mr.Router(num_experts=logits.shape[1], top_k=k, norm_topk_prob=norm, num_threads=1)
    benchmark(router, logits)


def test_route_into(benchmark, shape, kernel_path):
    logits, k, norm = shape
    out = mr.RouterOutput.empty()
    benchmark(mr.route_into, logits, k, out, norm, num_threads=1)


def test_seed_scalar(benchmark, shape):
    logits, k, norm = shape
    if logits.dtype != np.float32:
        pytest.skip("the seed routes float32 only")
    ids = np.empty(logits.shape[0] * k, np.int32)
    w = np.empty(logits.shape[0] * k, np.float32)
    benchmark(_core_baseline.route_rows_seed, logits, k, norm, ids, w)


def test_numpy(benchmark, shape):
    logits, k, norm = shape
    benchmark(numpy_route, logits, k, norm)


def test_torch(benchmark, shape, torch):
    logits, k, norm = shape
    t = torch.from_numpy(logits)
    benchmark(torch_route, torch, t, k, norm)
