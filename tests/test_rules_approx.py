"""The approximate selection of the biased sigmoid (soft-capped: Laguna) and
sqrtsoftplus (DeepSeek-V4) rules (AVX2 float32, mr_rule_approx_topk).

It selects on cheap scores and ranks the candidates on their exact keys,
so a row it takes must come out with the exact pass's ids and weights, bit
for bit; its cheap scores must be within the bound its slack assumes; and
the routes must still agree with the float64 reference.
"""

import numpy as np
import pytest
from test_rules import assert_like_reference

import moe_router as mr
from moe_router import _dispatch
from moe_router import reference as ref

# (name, num_experts, top_k, options given a bias)
SHAPES = [
    ("deepseek_v4", 256, 6, lambda b: dict(scoring_func="sqrtsoftplus", routed_scaling_factor=1.5)),
    ("laguna", 256, 8, lambda b: dict(scoring_func="sigmoid", moe_router_logit_softcapping=30.0)),
    (
        "sqrtsoftplus_capped",
        128,
        8,
        lambda b: dict(scoring_func="sqrtsoftplus", moe_router_logit_softcapping=4.0),
    ),
    (
        "sigmoid_capped_512",
        512,
        16,
        lambda b: dict(scoring_func="sigmoid", moe_router_logit_softcapping=2.5),
    ),
]


def _avx2_core():
    if "avx2" not in _dispatch.available_paths():
        pytest.skip("the AVX2 kernels do not run on this CPU")
    return _dispatch.load("avx2")


def _args(opts):
    """(sqrtsoftplus, cap) of a shape's options, as rule_topk_rows takes them."""
    return opts["scoring_func"] == "sqrtsoftplus", opts.get("moe_router_logit_softcapping", 0.0)


def _rows(rng, n, count):
    """Random rows, then rows with ties, +-inf and NaN logits."""
    kinds = [
        rng.integers(-3, 4, n).astype(float),  # ties everywhere
        np.zeros(n),  # one score per expert: the bias
        np.where(np.arange(n) % 7 == 3, np.inf, rng.standard_normal(n)),
        np.where(np.arange(n) % 5 == 1, -np.inf, rng.standard_normal(n) * 3),
        np.where(np.arange(n) == 17, np.nan, rng.standard_normal(n)),
        np.full(n, -np.inf),
        rng.standard_normal(n) * 40,  # past the soft-caps and the clamps
    ]
    rows = [rng.standard_normal(n) * 2 for _ in range(count)] + kinds
    return np.array(rows, np.float32)


def test_approximate_sqrtsoftplus_is_within_its_bound():
    # mr_rule_approx_topk's slack assumes its sqrt(softplus(x)) within
    # 8e-4 relative plus 2e-15 absolute of the true value (the exact
    # float32 score is within a few ulp of it): check that on this CPU,
    # rsqrt estimate included, over the range, the clamps and the floor.
    core = _avx2_core()
    x = np.concatenate(
        [
            np.linspace(-100, 100, 2_000_000),
            np.linspace(-10, 10, 1_000_000),
            -np.geomspace(60, 1e30, 10_000),
            np.geomspace(1e-30, 3e38, 10_000),
            [-np.inf, 0.0, -0.0, -69.0, -86.9, -87.0, -87.1, -87.4, 88.7, 89.0],
        ]
    ).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])
    out = np.empty_like(x)
    assert core.rule_approx_scores_into(x, out, True, 0.0) is False
    true = np.sqrt(np.logaddexp(0.0, x.astype(np.float64)))
    err = np.abs(out.astype(np.float64) - true)
    assert (err <= 8e-4 * true + 2e-15).all(), (err / np.maximum(true, 1e-300)).max()
    # (measured: 4.8e-4 relative)
    for bad in (np.inf, np.nan):
        y = x.copy()
        y[3] = bad
        assert core.rule_approx_scores_into(y, out, True, 0.0) is True


@pytest.mark.parametrize("cap", [30.0, 2.5, 0.01, 1e4])
@pytest.mark.parametrize("sqrtsoftplus", [False, True])
def test_approximate_capped_scores_are_within_their_bound(cap, sqrtsoftplus):
    # The capped logit is within cap * 2^-19 of the exact one, the cheap
    # sigmoid within 5.2e-4 (of the float64 sigmoid, less 2e-6 for the
    # exact float32 one), the cheap sqrtsoftplus within 8e-4 relative;
    # both score slopes are below 1/2.
    core = _avx2_core()
    x = np.concatenate(
        [
            np.linspace(-3 * cap, 3 * cap, 1_000_000),
            np.linspace(-0.3 * cap, 0.3 * cap, 1_000_000),  # the series' range
            [np.inf, -np.inf, 0.0, 0.3 * cap, -0.3 * cap, 1e30, -1e30],
        ]
    ).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])
    out = np.empty_like(x)
    assert core.rule_approx_scores_into(x, out, sqrtsoftplus, cap) is False
    y = cap * np.tanh(x.astype(np.float64) / cap)
    if sqrtsoftplus:
        true = np.sqrt(np.logaddexp(0.0, y))
        bound = 8e-4 * true + 2e-15 + cap * 2.0**-20
    else:
        true = ref.sigmoid(y)
        bound = 5.2e-4 - 2e-6 + cap * 2.0**-21
    err = np.abs(out.astype(np.float64) - true)
    assert (err <= bound).all(), err.max()
    x[5] = np.nan
    assert core.rule_approx_scores_into(x, out, sqrtsoftplus, cap) is True


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_approximate_selection_gives_the_exact_pass_ids(shape, rng):
    name, n, k, make = shape
    core = _avx2_core()
    bias = rng.normal(-0.1, 0.3, n).astype(np.float32)
    sqrtsp, cap = _args(make(bias))
    z = _rows(rng, n, 400)
    ids, taken = core.rule_topk_rows(z, k, sqrtsp, cap, bias, True)
    exact, exact_ok = core.rule_topk_rows(z, k, sqrtsp, cap, bias, False)
    # Random rows are rarely within a slack of a tie: most are taken (512
    # experts capped at 2.5 crowd the keys: more often over 64 candidates).
    assert taken[:400].mean() > (0.7 if n > 256 else 0.9), taken[:400].mean()
    assert not (taken & ~exact_ok).any()  # (NaN and +inf sqrtsoftplus rows: exact pass only)
    np.testing.assert_array_equal(ids[taken], exact[taken])
    assert not taken[-3]  # the NaN row
    assert taken[-4]  # -inf logits: their cheap scores stay normal floats (rsqrt)
    if sqrtsp and not cap:
        assert not taken[-5]  # a +inf sqrtsoftplus score


def _near_tie_targets(rng, n, score_of, z, close_at):
    """A bias that puts score(z) + bias 3e-5 apart for 24 experts around close_at."""
    targets = rng.uniform(close_at - 1.5, close_at - 0.5, n)
    close = rng.choice(n, 24, replace=False)
    targets[close] = close_at - 3e-5 * rng.permutation(24)
    return (targets - score_of(z.astype(np.float64))).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_close_keys_keep_the_reference_order(kernel_path, shape, rng):
    # Keys 3e-5 apart: far above the float32 rounding (the reference's
    # order is the only right one), far below the cheap scores' error.
    name, n, k, make = shape
    for _ in range(10):
        z = (rng.standard_normal(n) * 2).astype(np.float32)
        opts = make(None)
        cap = opts.get("moe_router_logit_softcapping")
        sf = ref.sqrtsoftplus if opts["scoring_func"] == "sqrtsoftplus" else ref.sigmoid

        def score_of(x, sf=sf, cap=cap):
            return sf(cap * np.tanh(x / cap) if cap else x)

        bias = _near_tie_targets(rng, n, score_of, z, 1.0)
        opts["e_score_correction_bias"] = bias
        out = mr.route(z[None], k, True, **opts)
        oracle_ids, oracle_w = ref.route_reference(z[None], k, True, **opts)
        np.testing.assert_array_equal(out.expert_ids, oracle_ids)
        np.testing.assert_allclose(out.expert_weights, oracle_w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_approximate_rows_route_as_the_exact_pass(kernel_path, shape, num_threads, rng):
    # The same rows under a bias one expert far below the rest makes
    # (slack over 0.01: every row takes the exact pass; that expert is
    # never picked, the others' keys keep their bits): ids and weights bit
    # for bit, in a batch, on threads and alone; and like the reference.
    name, n, k, make = shape
    bias = rng.normal(-0.1, 0.3, n).astype(np.float32)
    far = bias.copy()
    far[n // 2] = -1e5
    opts = make(bias)
    z = _rows(rng, n, 100)
    z = z[~np.isnan(z).any(axis=1)]
    if opts["scoring_func"] == "sqrtsoftplus" and "moe_router_logit_softcapping" not in opts:
        z = z[~np.isposinf(z).any(axis=1)]  # (a +inf score cannot be routed)
    z = z[~np.isneginf(z).all(axis=1)]
    z[:, n // 2] = np.minimum(z[:, n // 2], 0)
    if kernel_path == "avx2":
        core = _dispatch.load("avx2")
        sqrtsp, cap = _args(opts)
        assert core.rule_topk_rows(z, k, sqrtsp, cap, bias, True)[1].mean() > 0.8
        assert not core.rule_topk_rows(z, k, sqrtsp, cap, far, True)[1].any()
    fast = mr.route(z, k, True, num_threads=num_threads, e_score_correction_bias=bias, **opts)
    exact = mr.route(z, k, True, num_threads=num_threads, e_score_correction_bias=far, **opts)
    assert not (exact.expert_ids == n // 2).any()
    np.testing.assert_array_equal(fast.expert_ids, exact.expert_ids)
    np.testing.assert_array_equal(fast.expert_weights, exact.expert_weights)
    for r in range(0, len(z), 7):
        alone = mr.route(z[r : r + 1], k, True, e_score_correction_bias=bias, **opts)
        np.testing.assert_array_equal(alone.expert_ids[0], fast.expert_ids[r])
        np.testing.assert_array_equal(alone.expert_weights[0], fast.expert_weights[r])
    assert_like_reference(z, fast, k, True, {**opts, "e_score_correction_bias": bias})


@pytest.mark.parametrize("n", [15, 16, 17, 32, 48, 250, 256, 257, 272])
def test_shapes_around_the_approximate_bounds(kernel_path, n, rng):
    # n % 16 == 0 takes the approximate selection, 256 and under the byte-id
    # candidates, others the exact pass: all like the reference, k up to
    # the block (16) and past it.
    bias = rng.normal(-0.1, 0.3, n).astype(np.float32)
    z = (rng.standard_normal((40, n)) * 2).astype(np.float32)
    for k in sorted({1, 6, min(n, 16), min(n, 17)}):
        for opts in (
            dict(scoring_func="sqrtsoftplus", routed_scaling_factor=1.5),
            dict(scoring_func="sigmoid", moe_router_logit_softcapping=30.0),
        ):
            opts["e_score_correction_bias"] = bias
            out = mr.route(z, k, True, **opts)
            assert_like_reference(z, out, k, True, opts)


def test_nan_and_inf_rows_keep_their_statuses(kernel_path):
    # NaN rows and +inf sqrtsoftplus scores are refused as before (the
    # approximate selection leaves them to the exact pass).
    n = 256
    bias = np.zeros(n, np.float32)
    z = np.zeros((1, n), np.float32)
    z[0, 9] = np.nan
    with pytest.raises(ValueError):
        mr.route(z, 6, True, scoring_func="sqrtsoftplus", e_score_correction_bias=bias)
    with pytest.raises(ValueError):
        mr.route(
            z,
            8,
            True,
            scoring_func="sigmoid",
            moe_router_logit_softcapping=30.0,
            e_score_correction_bias=bias,
        )
    z[0, 9] = np.inf
    with pytest.raises(ValueError):
        mr.route(z, 6, True, scoring_func="sqrtsoftplus", e_score_correction_bias=bias)
    out = mr.route(
        z,
        8,
        True,
        scoring_func="sigmoid",
        moe_router_logit_softcapping=30.0,
        e_score_correction_bias=bias,
    )
    assert out.expert_ids[0, 0] == 9


@pytest.mark.parametrize("num_threads", [1, 2])
def test_half_precision_rows_route_as_their_float32_values(kernel_path, num_threads, rng):
    # float16 logits are widened a few rows at a time and routed as float32
    # (in pairs through the approximate selection): the float32 routing of
    # the same values, bit for bit, in odd and even chunks of rows.
    n, k = 256, 6
    bias = rng.normal(-0.1, 0.3, n).astype(np.float32)
    z16 = (rng.standard_normal((131, n)) * 2).astype(np.float16)
    for opts in (
        dict(scoring_func="sqrtsoftplus", routed_scaling_factor=1.5),
        dict(scoring_func="sigmoid", moe_router_logit_softcapping=30.0),
    ):
        opts["e_score_correction_bias"] = bias
        half = mr.route(z16, k, True, num_threads=num_threads, **opts)
        full = mr.route(z16.astype(np.float32), k, True, num_threads=num_threads, **opts)
        np.testing.assert_array_equal(half.expert_ids, full.expert_ids)
        np.testing.assert_array_equal(half.expert_weights, full.expert_weights)
        assert_like_reference(z16.astype(np.float32), half, k, True, opts)
