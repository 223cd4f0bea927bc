"""Property tests: the compiled kernels against the float64 NumPy reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import moe_router as mr
from moe_router import reference as ref

WEIGHT_ATOL = 2e-6

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def routing_problems(draw):
    """(logits, top_k, norm): shapes up to 64 x 512, values from tiny to huge."""
    batch = draw(st.integers(0, 64))
    num_experts = draw(st.integers(1, 512))
    top_k = draw(st.integers(1, num_experts))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    norm = draw(st.booleans())
    kind = draw(st.sampled_from(["normal", "scaled", "few_values", "elements"]))
    if kind == "elements" and batch * num_experts <= 4096:
        bound = float(np.finfo(np.float32).max) if dtype == np.float32 else 1e300
        z = draw(
            hnp.arrays(
                dtype,
                (batch, num_experts),
                elements=st.floats(-bound, bound, width=32 if dtype == np.float32 else 64),
            )
        )
    else:
        gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        scale = 10.0 ** draw(st.integers(-30, 30))
        if kind == "few_values":  # many exact ties
            z = gen.integers(-2, 3, (batch, num_experts)) * min(scale, 1e30)
        else:
            z = gen.standard_normal((batch, num_experts)) * (scale if kind == "scaled" else 3)
        z = z.astype(dtype)
    return z, top_k, norm


@SETTINGS
@given(problem=routing_problems())
def test_matches_reference(kernel_path, problem):
    z, top_k, norm = problem
    out = mr.route(z, top_k, norm)
    ref_ids, ref_w = ref.softmax_topk(z, top_k, norm)
    # Selection is on the logits, exactly as the reference's: ids always equal.
    np.testing.assert_array_equal(out.expert_ids, ref_ids)
    np.testing.assert_allclose(out.expert_weights, ref_w, rtol=0, atol=WEIGHT_ATOL)
    ids = out.expert_ids
    assert ((ids >= 0) & (ids < z.shape[1])).all()
    assert all(len(set(row)) == top_k for row in ids.tolist())
    if norm and z.shape[0]:
        np.testing.assert_allclose(out.expert_weights.sum(axis=1), 1.0, atol=1e-6)


@SETTINGS
@given(problem=routing_problems(), threads=st.integers(2, 4))
def test_float64_weights_and_threads(kernel_path, problem, threads):
    z, top_k, norm = problem
    out = mr.route(
        z, top_k, norm, ids_dtype=np.int64, weights_dtype=np.float64, num_threads=threads
    )
    ref_ids, ref_w = ref.softmax_topk(z, top_k, norm)
    np.testing.assert_array_equal(out.expert_ids, ref_ids)
    atol = 1e-12 if z.dtype == np.float64 else WEIGHT_ATOL
    np.testing.assert_allclose(out.expert_weights, ref_w, rtol=0, atol=atol)


@SETTINGS
@given(num_experts=st.integers(1, 300), data=st.data())
def test_neg_inf_masks(kernel_path, num_experts, data):
    # -inf masks everything but a few experts: those are picked first, then
    # the masked ones by index, with weight 0.
    gen = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    keep = data.draw(st.integers(1, num_experts))
    top_k = data.draw(st.integers(1, num_experts))
    z = np.full((3, num_experts), -np.inf, np.float32)
    for row in z:
        cols = gen.choice(num_experts, keep, replace=False)
        row[cols] = gen.standard_normal(keep)
    out = mr.route(z, top_k, norm_topk_prob=data.draw(st.booleans()))
    ref_ids, ref_w = ref.softmax_topk(z, top_k, False)
    np.testing.assert_array_equal(out.expert_ids, ref_ids)
    assert (out.expert_weights[:, keep:] == 0).all()


# --- adversarial rows, every variant -------------------------------------------

ADVERSARIAL_VARIANTS = {
    "softmax": {},
    "softmax_raw": {"norm_topk_prob": False},
    "scaled_grouped": dict(n_group=4, topk_group=2, routed_scaling_factor=2.5),
    "gpt_oss": dict(topk_on_logits=True),
    "llama4": dict(scoring_func="sigmoid", topk_on_logits=True, norm_topk_prob=False),
    "sigmoid_bias_grouped": dict(scoring_func="sigmoid", n_group=4, topk_group=2, bias=True),
}


@st.composite
def adversarial_rows(draw):
    group = draw(st.integers(2, 24))
    num_experts = 4 * group
    top_k = draw(st.integers(1, 2 * group))
    batch = draw(st.integers(1, 12))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(
        st.sampled_from(
            ["all_equal", "two_values", "mask_all_but_k", "near_max", "denormal", "huge_spread"]
        )
    )
    fmax = float(np.finfo(np.float32).max)
    if kind == "all_equal":
        z = np.full((batch, num_experts), draw(st.sampled_from([0.0, -5.0, 1e30, -1e30])))
    elif kind == "two_values":
        z = np.where(gen.random((batch, num_experts)) < 0.5, 1.0, 2.0)
    elif kind == "mask_all_but_k":
        z = np.full((batch, num_experts), -np.inf)
        for row in z:
            keep = gen.choice(num_experts, top_k, replace=False)
            row[keep] = gen.standard_normal(top_k)
    elif kind == "near_max":
        z = (
            fmax
            * (1 - gen.random((batch, num_experts)) * 1e-6)
            * gen.choice([-1, 1], (batch, num_experts))
        )
    elif kind == "denormal":
        z = gen.integers(-3, 4, (batch, num_experts)) * 1e-45
    else:
        z = gen.choice([-fmax, -1.0, 0.0, 1.0, fmax], (batch, num_experts))
    return z.astype(np.float32), top_k


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_VARIANTS))
def test_adversarial_rows_keep_the_invariants(kernel_path, name):
    from test_variants import assert_routes_like

    @SETTINGS
    @given(problem=adversarial_rows(), data=st.data())
    def check(problem, data):
        z, top_k = problem
        opts = dict(ADVERSARIAL_VARIANTS[name])
        norm = opts.pop("norm_topk_prob", True)
        if opts.pop("bias", False):
            opts["e_score_correction_bias"] = np.random.default_rng(
                data.draw(st.integers(0, 2**32 - 1))
            ).normal(-0.5, 1.0, z.shape[1])
        out = mr.route(z, top_k, norm, **opts)
        oracle = ref.route_reference(z, top_k, norm, **opts)
        assert_routes_like(z, out.expert_ids, out.expert_weights, *oracle, top_k, norm, opts)
        if norm or opts.get("topk_on_logits") and opts.get("scoring_func") != "sigmoid":
            sums = out.expert_weights.sum(axis=1) / opts.get("routed_scaling_factor", 1.0)
            positive = oracle[1].sum(axis=1) > 0
            np.testing.assert_allclose(sums[positive], 1.0, atol=1e-6)

    check()
