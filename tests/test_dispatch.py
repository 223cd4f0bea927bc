"""The per-dtype dispatch and what each compiled path reports of itself."""

import numpy as np
import pytest

import moe_router as mr
from moe_router import _dispatch
from moe_router import reference as ref

AVAILABLE = _dispatch.available_paths()
TUNED_AVX2 = {"sort_networks", "byte_id_gather", "put8", "sigmoid_approx"}


def test_preferred_paths_float32_avx2_float64_widest():
    preferred = _dispatch.preferred_paths()
    # float32: the avx2 module first (until avx512 is measured as fast),
    # float64: the widest vectors first.
    f32 = next(p for p in ("avx2", "avx512", "baseline") if p in AVAILABLE)
    f64 = next(p for p in ("avx512", "avx2", "baseline") if p in AVAILABLE)
    assert preferred == {"float32": f32, "float64": f64}


@pytest.mark.parametrize("path", AVAILABLE)
def test_build_info_reports_tuned_routines(path):
    info = _dispatch.load(path).build_info()
    features = set(info["features"])
    bits = info["vector_bits"]
    if path == "baseline":
        assert not features & TUNED_AVX2
        assert bits == {"float32": 128, "float64": 128}
    else:  # avx2, and avx512, which inherits the AVX2 float32 code
        assert TUNED_AVX2 <= features
        assert bits["float32"] == 256
        assert bits["float64"] == (512 if path == "avx512" else 256)


def test_select_forces_one_path_and_restores():
    before = dict(_dispatch.paths_by_dtype)
    old = _dispatch.select("baseline")
    try:
        assert _dispatch.paths_by_dtype == {"float32": "baseline", "float64": "baseline"}
        assert _dispatch.kernel is _dispatch.load("baseline")
    finally:
        _dispatch.select(old)
    assert _dispatch.paths_by_dtype == before


class _CountingKernel:
    """A real kernel module, counting the route_rows calls it is given."""

    def __init__(self, module):
        self.module = module
        self.dtypes = []

    def route_rows(self, logits, *args):
        self.dtypes.append(getattr(logits, "dtype", None))
        return self.module.route_rows(logits, *args)

    def __getattr__(self, name):
        return getattr(self.module, name)


@pytest.mark.skipif("avx2" not in AVAILABLE, reason="needs two compiled paths")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_split_dtypes_route_each_dtype_to_its_module(dtype, monkeypatch):
    # float32 on baseline, float64 on avx2: each call goes to its dtype's
    # module (float16, converted by the API, as float32), with the
    # reference's results.
    f32 = _CountingKernel(_dispatch.load("baseline"))
    f64 = _CountingKernel(_dispatch.load("avx2"))
    monkeypatch.setattr(_dispatch, "kernel", _dispatch.KernelByDtype(f32, f64))
    logits = np.random.default_rng(3).standard_normal((33, 64)).astype(dtype)
    bias = np.linspace(-1, 1, 64)
    plain = mr.Router(top_k=6, num_experts=64)
    deepseek = mr.Router(
        top_k=6,
        num_experts=64,
        scoring_func="sigmoid",
        n_group=8,
        topk_group=4,
        e_score_correction_bias=bias,
    )
    sigmoid_kwargs = dict(
        scoring_func="sigmoid", n_group=8, topk_group=4, e_score_correction_bias=bias
    )
    for router, kwargs in ((plain, {}), (deepseek, sigmoid_kwargs)):
        out = router(logits)
        want_ids, want_w = ref.route_reference(logits.astype(np.float64), 6, **kwargs)
        np.testing.assert_array_equal(out.expert_ids, want_ids)
        np.testing.assert_allclose(out.expert_weights, want_w, rtol=2e-6, atol=1e-7)
    routed = f64.dtypes if dtype == np.float64 else f32.dtypes
    idle = f32.dtypes if dtype == np.float64 else f64.dtypes
    assert routed and not idle
    # (float16 logits are read as given, by the float32 module: no conversion)
    assert set(routed) == {np.dtype(dtype)}


@pytest.mark.skipif(
    not {"avx2", "avx512"} <= set(AVAILABLE), reason="needs a CPU with AVX-512 (and AVX2)"
)
@pytest.mark.parametrize("norm", [True, False])
def test_avx512_float32_is_the_avx2_code(norm):
    # An AVX-512 build runs the AVX2 float32 traits and tuned routines: the
    # same bits as the avx2 module, on the shapes of every float32 path.
    rng = np.random.default_rng(11)
    avx2, avx512 = _dispatch.load("avx2"), _dispatch.load("avx512")
    cases = [
        (128, 8, {}),
        (256, 8, {}),
        (64, 4, {}),
        (60, 5, {}),
        (128, 20, {}),
        (
            256,
            8,
            dict(
                sigmoid=True,
                n_group=8,
                topk_group=4,
                routed_scaling_factor=2.5,
                bias=rng.standard_normal(256).astype(np.float32) * 0.1,
            ),
        ),
    ]
    for n, k, kw in cases:
        logits = rng.standard_normal((65, n)).astype(np.float32)
        logits[3] = np.round(logits[3], 1)  # ties
        results = []
        for module in (avx2, avx512):
            ids = np.empty(65 * k, np.int32)
            w = np.empty(65 * k, np.float32)
            rc = module.route_rows(
                logits,
                k,
                norm,
                ids,
                w,
                1,
                n,
                kw.get("sigmoid", False),
                kw.get("n_group", 1),
                kw.get("topk_group", 1),
                kw.get("routed_scaling_factor", 1.0),
                kw.get("bias"),
            )
            results.append((rc, ids, w.view(np.uint32)))
        assert results[0][0] == results[1][0] == 0
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_array_equal(results[0][2], results[1][2])
