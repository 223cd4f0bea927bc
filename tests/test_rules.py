"""The scoring rules of route_rows_rules against the float64 NumPy reference.

Softmax with a selection bias (ERNIE 4.5, LongCat-Flash), moe_norm_min,
tanh soft-capping (Laguna), p-norm renormalisation (DBRX), sqrtsoftplus
and tid2eid hash routing (DeepSeek-V4), sparsemixer (PhiMoE), and
zero_expert_num (LongCat-Flash), on every compiled path and the reference
behind the same API.  As in test_variants.py, a row whose ids differ from
the reference's must be a near tie of its float64 selection keys, and its
weights must still be the reference's weights of the ids the kernel chose.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moe_router as mr
from moe_router import reference as ref

TIE_TOL = 1e-5
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# name: (options given num_experts and rng, top_k rule, norm_topk_prob)
RULES = {
    "ernie_bias_norm_min": lambda n, rng: dict(
        e_score_correction_bias=rng.normal(-0.1, 0.2, n), moe_norm_min=1e-12
    ),
    "longcat_bias_scaled": lambda n, rng: dict(
        e_score_correction_bias=rng.normal(0, 0.1, n),
        routed_scaling_factor=6.0,
        zero_expert_num=n // 3,
    ),
    "laguna_cap_sigmoid_bias": lambda n, rng: dict(
        scoring_func="sigmoid",
        e_score_correction_bias=rng.normal(-0.5, 0.5, n),
        moe_router_logit_softcapping=2.5,
    ),
    "softcap_softmax": lambda n, rng: dict(moe_router_logit_softcapping=1.5),
    "softcap_sigmoid": lambda n, rng: dict(
        scoring_func="sigmoid", moe_router_logit_softcapping=30.0
    ),
    "dbrx_p1": lambda n, rng: dict(moe_normalize_expert_weights=1.0),
    "dbrx_p2": lambda n, rng: dict(moe_normalize_expert_weights=2.0),
    "dbrx_p_half": lambda n, rng: dict(moe_normalize_expert_weights=0.5),
    "dbrx_p_inf": lambda n, rng: dict(moe_normalize_expert_weights=float("inf")),
    "norm_min_large": lambda n, rng: dict(moe_norm_min=0.9),
    "v4_bias": lambda n, rng: dict(
        scoring_func="sqrtsoftplus",
        e_score_correction_bias=rng.normal(0, 0.3, n),
        routed_scaling_factor=1.5,
    ),
    "sqrtsoftplus": lambda n, rng: dict(scoring_func="sqrtsoftplus"),
    "sqrtsoftplus_capped_bias": lambda n, rng: dict(
        scoring_func="sqrtsoftplus",
        e_score_correction_bias=rng.normal(0, 0.3, n),
        moe_router_logit_softcapping=4.0,
    ),
}
# rules that hold with norm_topk_prob=False too
UNNORMALISED_OK = {
    "longcat_bias_scaled",
    "softcap_softmax",
    "softcap_sigmoid",
    "sqrtsoftplus",
    "v4_bias",
    "sqrtsoftplus_capped_bias",
}


def _capped(flat, opts):
    cap = opts.get("moe_router_logit_softcapping")
    return cap * np.tanh(flat / cap) if cap else flat


def _keys(z, opts):
    """The float64 selection keys of each row (the order the router picks in)."""
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    bias = opts.get("e_score_correction_bias")
    if bias is None:
        return flat
    c = _capped(flat, opts)
    sf = opts.get("scoring_func", "softmax")
    score = {"softmax": ref.softmax, "sigmoid": ref.sigmoid, "sqrtsoftplus": ref.sqrtsoftplus}[sf]
    return score(c).reshape(flat.shape) + np.asarray(bias, np.float64)


def _near_tie(keys, top_k):
    v = np.sort(keys)[::-1][: top_k + 1]
    v = v[np.isfinite(v)]
    return len(v) > 1 and np.min(np.abs(np.diff(v))) < TIE_TOL * max(1.0, np.max(np.abs(v)))


def assert_like_reference(z, out, top_k, norm, opts):
    ids = out.expert_ids.reshape(-1, top_k).astype(np.int64)
    w = out.expert_weights.reshape(-1, top_k).astype(np.float64)
    oid, ow = ref.route_reference(z, top_k, norm, **opts)
    oid, ow = oid.reshape(-1, top_k), ow.reshape(-1, top_k)
    scale = opts.get("routed_scaling_factor", 1.0)
    atol = 2e-6 * max(1.0, scale) * (4 if z.dtype == np.float32 else 1)
    assert np.isfinite(w).all() and (w >= 0).all()
    same = (ids == oid).all(axis=1)
    np.testing.assert_allclose(w[same], ow[same], rtol=2e-6, atol=atol)
    if (~same).any():
        keys = _keys(z, opts)
        for r in np.flatnonzero(~same):
            assert _near_tie(keys[r], top_k), f"row {r}: {ids[r]} != {oid[r]} without a near tie"
        # the weights of the ids the kernel chose: the reference with a
        # table that holds exactly those ids (one token id per row)
        rows = np.flatnonzero(~same)
        tw = ref.route_reference(
            z.reshape(-1, z.shape[-1])[rows],
            top_k,
            norm,
            **{**opts, "e_score_correction_bias": None},
            tid2eid=ids[rows],
            input_ids=np.arange(len(rows)),
        )[1]
        np.testing.assert_allclose(w[rows], tw, rtol=2e-6, atol=atol)


@pytest.mark.parametrize("rule", sorted(RULES))
@given(data=st.data())
@SETTINGS
def test_rules_match_reference(any_path, rule, data):
    n = data.draw(st.integers(1, 80), label="num_experts")
    top_k = data.draw(st.integers(1, min(n, 20)), label="top_k")
    batch = data.draw(st.integers(0, 6), label="batch")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    norm = data.draw(st.booleans(), label="norm") if rule in UNNORMALISED_OK else True
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    scale = data.draw(st.sampled_from([0.5, 3.0, 12.0]), label="logit scale")
    rng = np.random.default_rng(seed)
    opts = RULES[rule](n, rng)
    if "zero_expert_num" in opts and opts["zero_expert_num"] >= n:
        opts["zero_expert_num"] = 0
    z = (rng.standard_normal((batch, n)) * scale).astype(dtype)
    if data.draw(st.booleans(), label="ties"):
        z = np.round(z)  # many equal logits: ties resolve to the smaller index
    router = mr.Router(n, top_k, norm, **opts)
    assert_like_reference(z, router(z), top_k, norm, opts)
    out = mr.route(z, top_k, norm, **opts)
    assert_like_reference(z, out, top_k, norm, opts)


@given(data=st.data())
@SETTINGS
def test_sparsemixer_matches_reference(any_path, data):
    n = data.draw(st.integers(2, 70), label="num_experts")
    batch = data.draw(st.integers(0, 6), label="batch")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    eps = data.draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 2.0]), label="router_jitter_noise")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    z = (rng.standard_normal((batch, n)) * data.draw(st.sampled_from([0.3, 3.0]))).astype(dtype)
    if data.draw(st.booleans(), label="ties"):
        z = np.round(z)
    opts = dict(scoring_func="sparsemixer", router_jitter_noise=eps)
    out = mr.Router(n, 2, False, **opts)(z)
    ids = out.expert_ids.astype(np.int64)
    oid, ow = ref.route_reference(z, 2, False, **opts)
    # the two arg maxes are exact (no arithmetic); the masks compare a
    # ratio to 2 * eps, which float32 may decide the other way within a
    # few ulps of the threshold
    np.testing.assert_array_equal(ids, oid)
    zz = np.asarray(z, np.float64)
    w = out.expert_weights.astype(np.float64)
    for r in range(batch):
        for j, skip in ((0, None), (1, oid[r, 0])):
            m = zz[r, oid[r, j]]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = (m - zz[r]) / np.maximum(np.abs(zz[r]), m)
            near = np.abs(ratio - 2 * eps) < 1e-5 * max(1.0, 2 * eps)
            if skip is not None:
                near[skip] = False
            if not near.any():
                np.testing.assert_allclose(w[r, j], ow[r, j], rtol=2e-6, atol=1e-7)
    assert ((w > 0) & (w <= 1 + 1e-6)).all()


def test_sparsemixer_by_hand():
    # z = [2, 1.99, 0, -5], eps = 0.01 (mask where (m - z) / max(|z|, m) > 0.02)
    z = np.array([[2.0, 1.99, 0.0, -5.0]])
    out = mr.Router(4, 2, False, scoring_func="sparsemixer")(z)
    # expert 1 = 0; unmasked: z0 (ratio 0) and z1 (0.01 / 2 = 0.005)
    w1 = 1 / (1 + np.exp(1.99 - 2.0))
    # expert 2 = 1, m2 = 1.99; unmasked besides expert 0 (removed): z1 only
    # (z2: 1.99 / 1.99 = 1; z3: 6.99 / 5 > 0.02)
    np.testing.assert_array_equal(out.expert_ids, [[0, 1]])
    np.testing.assert_allclose(out.expert_weights, [[w1, 1.0]], rtol=1e-6)


def test_hash_routing_ids_come_from_the_table(any_path):
    rng = np.random.default_rng(3)
    n, k, vocab = 24, 4, 50
    table = rng.integers(0, n, (vocab, k))
    table[7] = [5, 5, 0, 23]  # repeats are routed as given
    z = rng.standard_normal((3, 5, n)).astype(np.float32)
    tokens = rng.integers(0, vocab, (3, 5))
    tokens[0, 0] = 7
    router = mr.Router(n, k, scoring_func="sqrtsoftplus", tid2eid=table, routed_scaling_factor=1.5)
    out = router(z, input_ids=tokens)
    np.testing.assert_array_equal(out.expert_ids, table[tokens])
    s = ref.sqrtsoftplus(z.astype(np.float64))
    w = np.take_along_axis(s, table[tokens], axis=-1)
    w = w / (w.sum(-1, keepdims=True) + 1e-20) * 1.5
    np.testing.assert_allclose(out.expert_weights, w, rtol=3e-6)
    # the same through route / route_into (the validating path), other dtypes
    out2 = mr.route(
        z.astype(np.float64),
        k,
        scoring_func="sqrtsoftplus",
        tid2eid=table,
        routed_scaling_factor=1.5,
        input_ids=tokens.astype(np.int32).tolist(),
        ids_dtype=np.int64,
        weights_dtype=np.float64,
    )
    np.testing.assert_array_equal(out2.expert_ids, table[tokens])
    np.testing.assert_allclose(out2.expert_weights, w, rtol=1e-12)


@pytest.mark.parametrize(
    "opts, norm",
    [
        (dict(e_score_correction_bias=np.linspace(-1, 1, 300), moe_norm_min=1e-12), True),
        (dict(scoring_func="sqrtsoftplus", e_score_correction_bias=np.zeros(300)), True),
        (dict(scoring_func="sigmoid", moe_router_logit_softcapping=3.0), True),
        (dict(moe_normalize_expert_weights=2.0), True),
        (dict(scoring_func="sparsemixer"), False),
    ],
)
def test_thread_counts_give_the_same_bits(kernel_path, opts, norm):
    rng = np.random.default_rng(11)
    z = rng.standard_normal((301, 300)).astype(np.float32)
    k = 2 if opts.get("scoring_func") == "sparsemixer" else 7
    one = mr.route(z, k, norm, num_threads=1, **opts)
    two = mr.route(z, k, norm, num_threads=2, **opts)
    np.testing.assert_array_equal(one.expert_ids, two.expert_ids)
    assert one.expert_weights.tobytes() == two.expert_weights.tobytes()
    # a row routes the same alone as in a batch
    single = mr.route(z[150:151], k, norm, **opts)
    assert single.expert_weights.tobytes() == one.expert_weights[150:151].tobytes()


def test_identity_expert_start():
    r = mr.Router(768, 12, False, e_score_correction_bias=np.zeros(768), zero_expert_num=256)
    assert r.identity_expert_start == 512 and r.zero_expert_num == 256
    assert mr.Router(16, 2).identity_expert_start is None
    # zero experts are ranked like any other: only the boundary is named
    z = np.full((1, 16), -3.0, np.float32)
    z[0, 14] = 5.0
    out = mr.Router(16, 1, zero_expert_num=4)(z)
    assert out.expert_ids[0, 0] == 14 >= mr.Router(16, 1, zero_expert_num=4).identity_expert_start


@pytest.mark.parametrize(
    "values, opts, ok",
    [
        ([np.inf, 1.0, -np.inf, 0.0], dict(scoring_func="sqrtsoftplus"), False),  # +inf score
        ([np.inf, 1.0, -np.inf, 0.0], dict(moe_router_logit_softcapping=5.0), True),  # capped
        ([-np.inf] * 4, dict(moe_router_logit_softcapping=5.0), True),  # capped to -5: uniform
        ([-np.inf] * 4, dict(e_score_correction_bias=np.zeros(4)), False),  # no softmax
        ([-np.inf] * 4, dict(scoring_func="sqrtsoftplus"), True),  # scores 0, weights 0
        ([np.inf, np.inf, 0.0, 1.0], dict(e_score_correction_bias=[0, 0, 0, 1.0]), True),
        ([3.0, -np.inf, -np.inf, -np.inf], dict(scoring_func="sparsemixer"), False),
        ([np.inf, np.inf, 0.0, 1.0], dict(scoring_func="sparsemixer"), True),
        ([-np.inf, 0.0, np.inf, 1.0], dict(scoring_func="sparsemixer"), True),  # one +inf
    ],
)
def test_infinities(any_path, values, opts, ok):
    z = np.array([[0.5, -0.25, 1.0, 2.0], values], np.float32)
    norm = opts.get("scoring_func") != "sparsemixer"
    k = 2
    if not ok:
        with pytest.raises(ValueError, match="logits row 1"):
            mr.route(z, k, norm, **opts)
        return
    out = mr.route(z, k, norm, **opts)
    assert np.isfinite(out.expert_weights).all()
    oid, ow = ref.route_reference(z, k, norm, **opts)
    np.testing.assert_array_equal(out.expert_ids, oid)
    np.testing.assert_allclose(out.expert_weights, ow, rtol=1e-6, atol=1e-7)


def test_nan_rows_are_named(any_path):
    z = np.zeros((3, 8), np.float32)
    z[2, 5] = np.nan
    for opts in (
        dict(scoring_func="sqrtsoftplus", e_score_correction_bias=np.zeros(8)),
        dict(scoring_func="sigmoid", e_score_correction_bias=np.zeros(8)),
        dict(e_score_correction_bias=np.zeros(8)),
        dict(moe_router_logit_softcapping=2.0),
        dict(moe_normalize_expert_weights=2.0),
    ):
        with pytest.raises(ValueError, match="row 2 contains NaN"):
            mr.Router(8, 2, **opts)(z)
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        mr.Router(8, 2, False, scoring_func="sparsemixer")(z)


def test_extreme_logits_stay_finite(any_path):
    z = np.array(
        [[3e38, -3e38] * 8, [1e-45, -1e-45] * 8, [88.0, -88.0] * 8, [1e30] * 16], np.float32
    )
    for opts in (
        dict(scoring_func="sqrtsoftplus", e_score_correction_bias=np.full(16, -0.5)),
        dict(e_score_correction_bias=np.full(16, 0.1), moe_norm_min=1e-12),
        dict(scoring_func="sigmoid", moe_router_logit_softcapping=30.0),
        dict(moe_normalize_expert_weights=3.0),
    ):
        out = mr.route(z, 4, **opts)
        assert np.isfinite(out.expert_weights).all() and (out.expert_weights >= 0).all()
        oid, ow = ref.route_reference(z, 4, **opts)
        np.testing.assert_allclose(out.expert_weights, ow, rtol=2e-6, atol=1e-7)


# The small-row path (csrc/rules_small.hpp): rows of up to 16 experts under
# the softmax rules without a bias or a cap (k <= 8) and sparsemixer, two
# rows at a time; rows with a non-finite value or a tie among the picked
# values go to the general path.  Shapes at and around its bounds.
SMALL_RULES = {
    "dbrx_p1": (dict(moe_normalize_expert_weights=1.0), True),
    "dbrx_p2": (dict(moe_normalize_expert_weights=2.0, routed_scaling_factor=2.5), True),
    "p_half": (dict(moe_normalize_expert_weights=0.5), True),
    "p_inf": (dict(moe_normalize_expert_weights=float("inf")), True),
    "norm_min": (dict(moe_norm_min=0.9), True),
    "sparsemixer": (dict(scoring_func="sparsemixer", router_jitter_noise=0.05), False),
}


def _small_rows(rng, n, dtype):
    """Random rows, rounded rows (ties), a tie at the max, equal rows, extremes."""
    z = rng.standard_normal((9, n)) * 3
    z[5:7] = np.round(z[5:7])
    z[7] = z[7, 0]  # every logit equal
    if n > 1:
        z[8, 1] = z[8].max() + 1.0
        z[8, n - 1] = z[8, 1]  # the max twice
    return z.astype(dtype)


@pytest.mark.parametrize("n", [2, 7, 8, 15, 16, 17])
@pytest.mark.parametrize("rule", sorted(SMALL_RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_rows_match_reference(any_path, n, rule, dtype):
    opts, norm = SMALL_RULES[rule]
    rng = np.random.default_rng(n * 100 + len(rule))
    z = _small_rows(rng, n, dtype)
    sparsemixer = opts.get("scoring_func") == "sparsemixer"
    for k in [2] if sparsemixer else sorted({1, min(n, 4), min(n, 8), min(n, 9)}):
        out = mr.Router(n, k, norm, **opts)(z)
        if sparsemixer:  # (no logit of these seeded rows is near a mask's threshold)
            oid, ow = ref.route_reference(z, k, norm, **opts)
            np.testing.assert_array_equal(out.expert_ids, oid)
            np.testing.assert_allclose(out.expert_weights, ow, rtol=2e-6, atol=1e-7)
        else:
            assert_like_reference(z, out, k, norm, opts)
        # one row at a time (the single-row step) gives the batch's bits
        for r in (0, 5, len(z) - 1):
            one = mr.Router(n, k, norm, **opts)(z[r : r + 1])
            np.testing.assert_array_equal(one.expert_ids[0], out.expert_ids[r])
            assert one.expert_weights[0].tobytes() == out.expert_weights[r].tobytes()


def _general_path_rows(z):
    """z with -inf columns up to 17 experts: past the small path's 16, so every
    row takes the general one, with the same picks and the same values (an
    expert at -inf is never picked before a finite one, and its exp, 0, adds
    exactly nothing to a sum)."""
    pad = np.full((len(z), MR_BLOCK + 1 - z.shape[1]), -np.inf, z.dtype)
    return np.concatenate([z, pad], axis=1)


MR_BLOCK = 16


@pytest.mark.parametrize("n", [2, 5, 8, 15, 16])
@pytest.mark.parametrize("rule", sorted(SMALL_RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_rows_bit_for_bit_general_path(kernel_path, n, rule, dtype):
    # The register path against the general row path (_rules_row /
    # _rules_weights / _p_norm), bit for bit, for every k it takes, with rows
    # it leaves to the general path (ties, +-inf) beside rows it keeps: a
    # pair shares vectors, and its left row must not spoil the other one.
    opts, norm = SMALL_RULES[rule]
    rng = np.random.default_rng(n * 1000 + len(rule))
    z = rng.standard_normal((23, n)) * 3
    z[3] = np.round(z[3])  # ties among the picks
    z[6] = 0.5  # every logit equal
    z[9, : n - 2] = -np.inf  # two finite: picks past 2 reach -inf
    z[12, n // 2] = np.inf
    z[15] = rng.standard_normal(n) * 1e-3  # weights near 1 / k
    z[18] *= 30  # far apart: exps that underflow to 0
    z = z.astype(dtype)
    sparsemixer = opts.get("scoring_func") == "sparsemixer"
    for k in [2] if sparsemixer else sorted({1, min(n, 2), min(n, 4), min(n, 7), min(n, 8)}):
        # (the output dtypes: the weights stored as vectors, or one by one)
        for ids_dtype, w_dtype in [(np.int32, np.float32), (np.int64, np.float64)]:
            small = mr.Router(n, k, norm, **opts)(z, out=mr.RouterOutput.empty(ids_dtype, w_dtype))
            general = mr.Router(MR_BLOCK + 1, k, norm, **opts)(
                _general_path_rows(z), out=mr.RouterOutput.empty(ids_dtype, w_dtype)
            )
            np.testing.assert_array_equal(small.expert_ids, general.expert_ids)
            assert small.expert_weights.tobytes() == general.expert_weights.tobytes()
        finite = np.isfinite(z).all(axis=1)
        assert_like_reference(z[finite], mr.route(z[finite], k, norm, **opts), k, norm, opts)


@pytest.mark.parametrize("rule", sorted(SMALL_RULES))
def test_small_rows_non_finite(any_path, rule):
    # +-inf rows take the general path (the reference's handling); a NaN
    # row is named; the finite rows around them stay on the small path
    opts, norm = SMALL_RULES[rule]
    z = np.random.default_rng(5).standard_normal((5, 16)).astype(np.float32)
    z[1, [3, 9]] = np.inf
    z[2, [0, 4, 5]] = -np.inf
    z[3, 7] = -np.inf
    out = mr.Router(16, 2, norm, **opts)(z)
    oid, ow = ref.route_reference(z, 2, norm, **opts)
    np.testing.assert_array_equal(out.expert_ids, oid)
    np.testing.assert_allclose(out.expert_weights, ow, rtol=2e-6, atol=1e-7)
    z[3, 11] = np.nan
    with pytest.raises(ValueError, match="row 3 contains NaN"):
        mr.Router(16, 2, norm, **opts)(z)


@pytest.mark.parametrize("rule", sorted(SMALL_RULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_small_rows_far_apart_finite_values(any_path, rule, dtype, batch):
    # Finite logits whose difference from the max overflows to -inf (found
    # by the fuzz target: the small path's picked differences, -inf times
    # its unit vector's zeros, made every weight NaN): exp of it is 0.
    big = np.finfo(dtype).max
    z = np.tile(np.array([-0.37 * big, 0.43 * big, big, 1.0], dtype), (batch, 1))
    opts, norm = SMALL_RULES[rule]
    k = 2 if opts.get("scoring_func") == "sparsemixer" else 4  # (the far one picked)
    out = mr.Router(4, k, norm, **opts)(z)
    with np.errstate(over="ignore"):
        oid, ow = ref.route_reference(z, k, norm, **opts)
    np.testing.assert_array_equal(out.expert_ids, oid)
    np.testing.assert_allclose(out.expert_weights, ow, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("rule", sorted(SMALL_RULES))
def test_small_rows_thread_counts_give_the_same_bits(kernel_path, rule):
    opts, norm = SMALL_RULES[rule]
    k = 2 if opts.get("scoring_func") == "sparsemixer" else 4
    z = np.random.default_rng(17).standard_normal((301, 16)).astype(np.float32)
    z[::7] = np.round(z[::7])  # ties: rows of the general path among the pairs
    one = mr.route(z, k, norm, num_threads=1, **opts)
    two = mr.route(z, k, norm, num_threads=2, **opts)
    np.testing.assert_array_equal(one.expert_ids, two.expert_ids)
    assert one.expert_weights.tobytes() == two.expert_weights.tobytes()
    if k == 4:
        assert_like_reference(z, one, k, norm, opts)
