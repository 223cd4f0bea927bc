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
    # float32 stays on the avx2 module until avx512 is measured as fast.
    assert preferred["float32"] == ("avx2" if "avx2" in AVAILABLE else "baseline")
    widest = "avx512" if "avx512" in AVAILABLE else "avx2" if "avx2" in AVAILABLE else "baseline"
    assert preferred["float64"] == widest


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


@pytest.mark.skipif("avx2" not in AVAILABLE, reason="needs two compiled paths")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_split_dtypes_route_each_dtype_to_its_module(dtype):
    # float32 on baseline, float64 on avx2: each call goes to its dtype's
    # module, and float16 (converted by the API) ends up routed as float32.
    old = _dispatch.select({"float32": "baseline", "float64": "avx2"})
    try:
        kernel = _dispatch.kernel
        assert isinstance(kernel, _dispatch.KernelByDtype)
        assert kernel.kernel_f32 is _dispatch.load("baseline")
        assert kernel.kernel_f64 is _dispatch.load("avx2")
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
        for router, kwargs in (
            (plain, {}),
            (
                deepseek,
                dict(scoring_func="sigmoid", n_group=8, topk_group=4, e_score_correction_bias=bias),
            ),
        ):
            out = router(logits)
            want_ids, want_w = ref.route_reference(logits.astype(np.float64), 6, **kwargs)
            np.testing.assert_array_equal(out.expert_ids, want_ids)
            np.testing.assert_allclose(out.expert_weights, want_w, rtol=2e-6, atol=1e-7)
    finally:
        _dispatch.select(old)
