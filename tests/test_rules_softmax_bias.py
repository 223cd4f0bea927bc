"""The softmax routers with a selection bias (ERNIE 4.5, LongCat-Flash) on
their fused path (csrc/rules.hpp, mr_softmax_bias_rows: rows of 1 to 4
blocks held in registers, longer rows through memory, two rows at a time)
against the float64 NumPy reference, at the shapes around its bounds, with
the rows it leaves to the general path (ties past the candidates' room, an
infinite max) among the rows it takes.
"""

import numpy as np
import pytest
from test_rules import assert_like_reference

import moe_router as mr
from moe_router import reference as ref

OPTIONS = {
    "ernie": (dict(moe_norm_min=1e-12), True, 0.02),
    "ernie_clamped": (dict(moe_norm_min=0.9), True, 0.2),
    "longcat": (dict(routed_scaling_factor=6.0), False, 0.002),
    "plain_norm": ({}, True, 0.3),
}


def _rows(rng, n, dtype):
    """Random rows, rounded rows (ties), an all-equal row (more candidates
    than the fused path holds), -inf entries, a lone -inf-free max, logits
    whose exps flush to 0, and a +inf row (the general path's case)."""
    z = rng.standard_normal((11, n)) * 2
    z[3:5] = np.round(z[3:5])
    z[5] = 0.25
    z[6, ::3] = -np.inf
    z[7, : n // 2] = -1e30
    z[8] -= 200.0  # every exp relative to the max: no overflow, some flush
    z[8, n // 3] = 0.0
    z[9, n - 1] = np.inf
    return z.astype(dtype)


@pytest.mark.parametrize("n", [16, 32, 48, 64, 65, 96, 768])
@pytest.mark.parametrize("rule", sorted(OPTIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_bias_rows_match_reference(any_path, n, rule, dtype):
    opts, norm, bias_sd = OPTIONS[rule]
    rng = np.random.default_rng(n + 7 * len(rule))
    bias = rng.normal(-0.1, bias_sd, n)
    z = _rows(rng, n, dtype)
    for k in sorted({1, min(n, 6), min(n, 12), min(n, 16)}):
        kw = dict(opts, e_score_correction_bias=bias)
        out = mr.Router(n, k, norm, **kw)(z)
        assert_like_reference(z, out, k, norm, kw)
        # a row alone (the single-row step) and two threads give the batch's bits
        for r in (0, 5, 9, len(z) - 1):
            one = mr.Router(n, k, norm, **kw)(z[r : r + 1])
            np.testing.assert_array_equal(one.expert_ids[0], out.expert_ids[r])
            assert one.expert_weights[0].tobytes() == out.expert_weights[r].tobytes()
        two = mr.route(z, k, norm, num_threads=2, **kw)
        np.testing.assert_array_equal(two.expert_ids, out.expert_ids)
        assert two.expert_weights.tobytes() == out.expert_weights.tobytes()


def test_softmax_bias_by_hand(any_path):
    # p = softmax([0, ln 2, ln 4, 0]) = [1, 2, 4, 1] / 8; keys p + b with
    # b = [0.5, 0, -0.4, 0.3]: [0.625, 0.25, 0.1, 0.425] -> experts 0, 3;
    # weights p / sum p = [1/8, 1/8] / (2/8) = 0.5 each, unnormalised x3:
    # 3/8 each.
    z = np.log(np.array([[1.0, 2.0, 4.0, 1.0]], np.float32))
    b = np.array([0.5, 0.0, -0.4, 0.3])
    out = mr.Router(4, 2, e_score_correction_bias=b)(z)
    np.testing.assert_array_equal(out.expert_ids, [[0, 3]])
    np.testing.assert_allclose(out.expert_weights, [[0.5, 0.5]], rtol=1e-6)
    out = mr.Router(4, 2, False, e_score_correction_bias=b, routed_scaling_factor=3.0)(z)
    np.testing.assert_array_equal(out.expert_ids, [[0, 3]])
    np.testing.assert_allclose(out.expert_weights, [[0.375, 0.375]], rtol=1e-6)


def test_softmax_bias_nan_row_is_named(any_path):
    z = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    z[2, 63] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        mr.Router(64, 6, e_score_correction_bias=np.zeros(64))(z)
    oid, _ = ref.route_reference(z[:2], 6, True, e_score_correction_bias=np.zeros(64))
    np.testing.assert_array_equal(
        mr.Router(64, 6, e_score_correction_bias=np.zeros(64))(z[:2]).expert_ids, oid
    )


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_many_candidates(any_path, norm, dtype):
    # The top-12 of 768: the lane threshold leaves 17 to 32 candidates on
    # most rows (the two-block ranking), some 33 or more; the plain router
    # and the biased one, against the reference.
    rng = np.random.default_rng(21)
    z = rng.standard_normal((64, 768)).astype(dtype)
    z[5] = np.round(z[5])  # ties among the candidates
    out = mr.Router(768, 12, norm)(z)
    assert_like_reference(z, out, 12, norm, {})
    kw = dict(e_score_correction_bias=rng.normal(0, 1e-4, 768), routed_scaling_factor=6.0)
    out = mr.Router(768, 12, norm, **kw)(z)
    assert_like_reference(z, out, 12, norm, kw)
