"""Property tests: the compiled kernels against the float64 NumPy reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import moe_router as mr
from moe_router import reference as ref

WEIGHT_ATOL = 2e-6

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


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
        z = draw(hnp.arrays(dtype, (batch, num_experts),
                            elements=st.floats(-bound, bound, width=32 if dtype == np.float32 else 64)))
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
    out = mr.route(z, top_k, norm, ids_dtype=np.int64, weights_dtype=np.float64,
                   num_threads=threads)
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
