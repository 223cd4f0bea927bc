"""Router variants (DeepSeek, gpt-oss, Llama 4, ...) and the Hugging Face presets.

Oracles: the float64 NumPy reference (moe_router.reference), and PyTorch
transcriptions of each model's router as its transformers modeling file
writes it.  Float32 selection scores that the float64 reference separates
by less than TIE_TOL may legitimately come out in either order; a row whose
ids differ from the oracle's must be such a near tie, and its weights must
still be the oracle's weight function of the ids the kernel picked.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moe_router as mr
from moe_router import _dispatch
from moe_router import reference as ref

TIE_TOL = 1e-5
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _keys_and_groups(z, opts):
    """Reference selection keys (float64, group-limited) and group scores per row."""
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    sig = opts.get("scoring_func", "softmax") == "sigmoid"
    n_group = opts.get("n_group", 1)
    bias = opts.get("e_score_correction_bias")
    if sig:
        key = ref.sigmoid(flat) + (0 if bias is None else np.asarray(bias, np.float64))
        if bias is None and n_group == 1:
            key = flat
    else:
        key = flat
    groups = None
    if n_group > 1:
        g = key.reshape(len(flat), n_group, -1)
        ordered = -np.sort(-g, axis=2)
        groups = ordered[:, :, 0] + ordered[:, :, 1] if sig else ordered[:, :, 0]
    return key, groups


def _near_tie(row_keys, row_groups, top_k, topk_group):
    def gap_small(values, k):
        v = np.sort(values)[::-1][: k + 1]
        v = v[np.isfinite(v)]
        return len(v) > 1 and np.min(np.abs(np.diff(v))) < TIE_TOL * max(1.0, np.max(np.abs(v)))

    if row_groups is not None and gap_small(row_groups, topk_group):
        return True
    return gap_small(row_keys, top_k)


def _weights_for(z, ids, opts, norm):
    """The reference weight function applied to given ids (per row)."""
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    ids = ids.reshape(len(flat), -1)
    if opts.get("scoring_func", "softmax") == "sigmoid":
        w = np.take_along_axis(ref.sigmoid(flat), ids, axis=1)
    else:
        w = np.take_along_axis(ref.softmax(flat), ids, axis=1)
        if opts.get("topk_on_logits"):
            norm = True
    if norm:
        eps = 1e-20 if (opts.get("scoring_func") == "sigmoid" or opts.get("n_group", 1) > 1) else 0
        w = w / (w.sum(axis=1, keepdims=True) + eps)
    return w * opts.get("routed_scaling_factor", 1.0)


def assert_routes_like(z, ids, w, oracle_ids, oracle_w, top_k, norm, opts):
    """ids/weights equal the oracle's, except on near ties (see module doc)."""
    scale = opts.get("routed_scaling_factor", 1.0)
    atol = 2e-6 * max(1.0, scale)
    n = z.shape[-1]
    ids = np.asarray(ids).reshape(-1, top_k).astype(np.int64)
    w = np.asarray(w, np.float64).reshape(-1, top_k)
    oracle_ids = np.asarray(oracle_ids).reshape(-1, top_k)
    oracle_w = np.asarray(oracle_w, np.float64).reshape(-1, top_k)
    assert ((ids >= 0) & (ids < n)).all()
    assert all(len(set(r)) == top_k for r in ids.tolist())
    assert np.isfinite(w).all() and (w >= 0).all()
    same = (ids == oracle_ids).all(axis=1)
    np.testing.assert_allclose(w[same], oracle_w[same], rtol=0, atol=atol)
    if (~same).any():
        keys, groups = _keys_and_groups(z, opts)
        topk_group = opts.get("topk_group") or opts.get("n_group", 1)
        for r in np.flatnonzero(~same):
            assert _near_tie(keys[r], None if groups is None else groups[r], top_k, topk_group), (
                f"row {r}: ids {ids[r]} differ from {oracle_ids[r]} without a near tie"
            )
        np.testing.assert_allclose(
            w[~same], _weights_for(z, ids, opts, norm)[~same], rtol=0, atol=atol
        )


# --- the variants against the reference ------------------------------------

VARIANTS = {
    "softmax_scaled": dict(routed_scaling_factor=16.0),
    "gpt_oss": dict(topk_on_logits=True),
    "llama4": dict(scoring_func="sigmoid", topk_on_logits=True),
    "sigmoid": dict(scoring_func="sigmoid"),
    "sigmoid_bias": dict(scoring_func="sigmoid", bias=True),
    "deepseek_v3": dict(
        scoring_func="sigmoid", bias=True, n_group=8, topk_group=4, routed_scaling_factor=2.5
    ),
    "sigmoid_grouped_nobias": dict(scoring_func="sigmoid", n_group=4, topk_group=2),
    "deepseek_v2_grouped": dict(n_group=4, topk_group=2, routed_scaling_factor=16.0),
    # Group counts on both sides of the kernel's limits for taking the kept
    # groups' two best values as the top-k threshold (n_group <= 16,
    # 2 * topk_group + 2 <= 16, top_k <= 2 * topk_group).
    "grouped_16_keep_7": dict(scoring_func="sigmoid", bias=True, n_group=16, topk_group=7),
    "grouped_32_keep_3": dict(scoring_func="sigmoid", bias=True, n_group=32, topk_group=3),
    "grouped_softmax_16_keep_1": dict(n_group=16, topk_group=1),
}


@st.composite
def variant_problems(draw, name):
    opts = dict(VARIANTS[name])
    n_group = opts.get("n_group", 1)
    group_size = draw(st.integers(2, 40))
    num_experts = n_group * group_size if n_group > 1 else draw(st.integers(1, 300))
    kept = opts.get("topk_group", 1) * group_size if n_group > 1 else num_experts
    top_k = draw(st.integers(1, min(kept, 20)))
    batch = draw(st.integers(0, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-1, 1))
    z = (gen.standard_normal((batch, num_experts)) * 3 * scale).astype(dtype)
    if draw(st.booleans()):  # exact ties
        z = np.round(z)
    norm = draw(st.booleans()) or (
        opts.get("topk_on_logits") and opts.get("scoring_func") != "sigmoid"
    )
    if opts.pop("bias", False):
        # Biases as DeepSeek-V3 learns them: often negative, larger than s.
        opts["e_score_correction_bias"] = gen.normal(-0.5, 1.0, num_experts).astype(np.float32)
    return z, top_k, bool(norm), opts


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_reference(kernel_path, name):
    @SETTINGS
    @given(problem=variant_problems(name))
    def check(problem):
        z, top_k, norm, opts = problem
        router = mr.Router(z.shape[1], top_k, norm, **opts)
        out = router(z)
        oracle = ref.route_reference(z, top_k, norm, **opts)
        assert_routes_like(z, out.expert_ids, out.expert_weights, *oracle, top_k, norm, opts)
        # The functional API takes the same options and gives the same result.
        again = mr.route(z, top_k, norm, **opts)
        np.testing.assert_array_equal(again.expert_ids, out.expert_ids)
        np.testing.assert_array_equal(again.expert_weights, out.expert_weights)

    check()


def test_group_masking_with_negative_biased_scores(any_path):
    # 2 groups of 4; group 1 wins.  All biased scores are negative, so a
    # mask of 0 instead of -inf would pick experts of the dropped group 0.
    z = np.zeros((1, 8), np.float32)
    bias = np.array([-0.9, -0.9, -0.9, -0.9, -0.6, -0.7, -2.0, -3.0], np.float32)
    router = mr.Router(
        8, 3, True, scoring_func="sigmoid", n_group=2, topk_group=1, e_score_correction_bias=bias
    )
    out = router(z)
    assert out.expert_ids.tolist() == [[4, 5, 6]]
    np.testing.assert_allclose(out.expert_weights, [[1 / 3] * 3], rtol=1e-6)


def test_group_ties_keep_smaller_group(any_path):
    # Four identical groups: the kept ones are groups 0 and 1.
    z = np.tile(np.array([3.0, 1.0, 2.0, 0.0], np.float32), 4)[None]
    out = mr.route(
        z,
        4,
        True,
        scoring_func="sigmoid",
        n_group=4,
        topk_group=2,
        e_score_correction_bias=np.zeros(16),
    )
    assert out.expert_ids.tolist() == [[0, 4, 2, 6]]
    out = mr.route(z, 2, True, n_group=4, topk_group=2)
    assert out.expert_ids.tolist() == [[0, 4]]


def test_topk_group_equals_n_group_is_ungrouped(any_path, rng):
    z = rng.standard_normal((16, 64)).astype(np.float32)
    bias = rng.normal(-0.3, 0.5, 64)
    a = mr.route(
        z, 6, True, scoring_func="sigmoid", n_group=8, topk_group=8, e_score_correction_bias=bias
    )
    b = mr.route(z, 6, True, scoring_func="sigmoid", e_score_correction_bias=bias)
    np.testing.assert_array_equal(a.expert_ids, b.expert_ids)
    np.testing.assert_allclose(a.expert_weights, b.expert_weights, atol=1e-7)


def test_hand_computed_deepseek_v3_row(any_path):
    # 4 experts in 2 groups, keep 1 group, top-2, bias shifts the choice.
    z = np.array([[0.0, 2.0, 1.0, -1.0]])
    bias = np.array([0.5, -1.0, 0.0, 0.0])
    s = 1 / (1 + np.exp(-z[0]))
    c = s + bias  # [1.0, -0.119, 0.731, 0.269]
    # groups: {0,1}: 1.0 - 0.119 = 0.881; {2,3}: 1.0 -> keep group 1
    out = mr.route(
        z,
        2,
        True,
        scoring_func="sigmoid",
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.0,
        e_score_correction_bias=bias,
        weights_dtype=np.float64,
    )
    assert out.expert_ids.tolist() == [[2, 3]]
    w = s[[2, 3]] / (s[2] + s[3] + 1e-20) * 2.0
    np.testing.assert_allclose(out.expert_weights[0], w, rtol=1e-12)
    assert c[2] > c[3]


def test_llama4_weights_are_sigmoid_of_top_logits(any_path):
    z = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    out = mr.route(z, 1, False, scoring_func="sigmoid", topk_on_logits=True)
    assert out.expert_ids.tolist() == [[2]]
    np.testing.assert_allclose(out.expert_weights, [[1 / (1 + np.exp(-3.0))]], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        (dict(scoring_func="tanh"), ValueError, "scoring_func must be one of 'softmax', 'sigmoid'"),
        (dict(n_group=3), ValueError, "num_experts=16 must be divisible by n_group=3"),
        (dict(n_group=0), ValueError, "n_group must be >= 1"),
        (dict(n_group=4, topk_group=5), ValueError, "topk_group must be <= n_group=4"),
        (dict(n_group=4, topk_group=0), ValueError, "topk_group must be >= 1"),
        (dict(n_group=8, topk_group=1), ValueError, "top_k=4 exceeds the 2 experts"),
        (
            dict(n_group=16, topk_group=8, scoring_func="sigmoid"),
            ValueError,
            "groups need >= 2 experts",
        ),
        (dict(routed_scaling_factor=0.0), ValueError, "routed_scaling_factor must be finite, > 0"),
        (
            dict(routed_scaling_factor=float("nan")),
            ValueError,
            "routed_scaling_factor must be finite",
        ),
        (dict(routed_scaling_factor="2"), TypeError, "routed_scaling_factor must be a real number"),
        (
            dict(scoring_func="sparsemixer", e_score_correction_bias=np.zeros(16)),
            ValueError,
            "does not apply to scoring_func='sparsemixer'",
        ),
        (
            dict(scoring_func="sigmoid", e_score_correction_bias=np.zeros(15)),
            ValueError,
            r"must have shape \(16,\), got \(15,\)",
        ),
        (
            dict(scoring_func="sigmoid", e_score_correction_bias=np.full(16, np.nan)),
            ValueError,
            "must be finite",
        ),
        (
            dict(scoring_func="sigmoid", e_score_correction_bias=["a"] * 16),
            TypeError,
            "must be a real array",
        ),
        (dict(topk_on_logits=True, norm_topk_prob=False), ValueError, "always sum to 1"),
        (dict(topk_on_logits=True, n_group=2), ValueError, "does not combine"),
    ],
)
def test_invalid_configurations(kwargs, exc, msg):
    norm = kwargs.pop("norm_topk_prob", True)
    with pytest.raises(exc, match=msg):
        mr.Router(16, 4, norm, **kwargs)
    with pytest.raises(exc, match=msg):
        mr.route(np.zeros((2, 16), np.float32), 4, norm, **kwargs)


def test_unknown_route_option():
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        mr.route(np.zeros((1, 4)), 1, n_groups=2)


def test_sigmoid_accepts_all_neg_inf_rows(any_path):
    # sigmoid(-inf) = 0 is defined: no error, weights 0 (softmax would raise).
    z = np.full((1, 8), -np.inf, np.float32)
    out = mr.route(z, 2, True, scoring_func="sigmoid")
    assert out.expert_ids.tolist() == [[0, 1]]
    assert (out.expert_weights <= 1e-30).all()
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        mr.route(np.array([[np.nan, 0.0]]), 1, scoring_func="sigmoid")


# --- presets from Hugging Face configs: the errors ---------------------------
#
# Each preset's routing is checked against the model's own transformers router
# module in tests/test_presets_hf.py; these need no transformers.

QWEN3 = {
    "model_type": "qwen3_moe",
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8}
DEEPSEEK_V2 = {"model_type": "deepseek_v2", "n_routed_experts": 64, "num_experts_per_tok": 6}


@pytest.mark.parametrize(
    "config, kwargs, msg",
    [
        ({"model_type": "llama"}, {}, "'llama' is not a MoE model moe_router knows"),
        ({"model_type": "qwen3moe"}, {}, "Did you mean 'qwen3_moe'"),
        ({"model_type": "mixtrel"}, {}, "Supported: .*mixtral"),
        ({}, {}, "None is not a MoE model"),
        ({"model_type": "qwen3_moe", "num_experts": 8}, {}, "has no num_experts_per_tok"),
        (
            {"model_type": "qwen3_moe", "num_experts_per_tok": 8},
            {},
            "qwen3_moe config has no num_experts \\(nor its alias num_local_experts\\)",
        ),
        (DEEPSEEK_V3, {}, "pass Router.from_hf_config"),
        (
            QWEN3,
            dict(e_score_correction_bias=np.zeros(128)),
            "qwen3_moe has no e_score_correction_bias",
        ),
        ({**DEEPSEEK_V2, "topk_method": "noaux"}, {}, "not supported"),
        ({"model_type": "doge"}, {}, "'doge' has no moe_router preset: product-key routing"),
        ({"model_type": "llama4"}, {}, "llama4 config has no text_config"),
        ({"model_type": "dbrx"}, {}, "dbrx config has no ffn_config"),
        (
            {"model_type": "dbrx", "n_layers": 2, "ffn_config": {"moe_num_experts": 8}},
            {},
            "dbrx config has no moe_top_k",
        ),
        (
            {**DEEPSEEK_V3, "num_hidden_layers": 6},
            dict(layer_idx=1),
            "layer 1 of this deepseek_v3 config is a dense MLP",
        ),
        ({**DEEPSEEK_V3, "num_hidden_layers": 6}, dict(layer_idx=6), "out of range"),
        (QWEN3, dict(layer_idx=0), "has no num_hidden_layers"),
        ({**QWEN3, "num_hidden_layers": 2}, dict(layer_idx="1"), "layer_idx must be an int"),
        (
            {
                "model_type": "hunyuan_v1_moe",
                "num_experts": [8, 16],
                "moe_topk": 2,
                "num_hidden_layers": 2,
            },
            {},
            "sets num_experts per layer .* layer_idx",
        ),
        (
            {
                "model_type": "mistral4",
                "n_routed_experts": 16,
                "num_experts_per_tok": 2,
                "n_group": 4,
                "topk_group": 2,
            },
            {},
            "n_group=4 scores a group by the sum",
        ),
        (
            {
                "model_type": "deepseek_v4",
                "n_routed_experts": 16,
                "num_experts_per_tok": 2,
                "mlp_layer_types": ["hash_moe", "moe"],
                "num_hidden_layers": 2,
            },
            dict(layer_idx=0),
            "layer 0 of this deepseek_v4 config is hash-routed .* tid2eid=",
        ),
        (
            {
                "model_type": "deepseek_v4",
                "n_routed_experts": 16,
                "num_experts_per_tok": 2,
                "mlp_layer_types": ["hash_moe", "moe"],
                "num_hidden_layers": 2,
            },
            dict(
                layer_idx=1,
                tid2eid=np.zeros((4, 2), np.int64),
                e_score_correction_bias=np.zeros(16),
            ),
            "layer 1 of this deepseek_v4 config is not hash-routed",
        ),
        (
            {
                "model_type": "cohere2_moe",
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "expert_selection_fn": "relu",
            },
            {},
            "expert_selection_fn must be",
        ),
    ],
)
def test_from_hf_config_errors(config, kwargs, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        mr.Router.from_hf_config(config, **kwargs)


def test_from_hf_config_reads_objects_and_overrides():
    class Config:  # a transformers-style attribute object, without transformers
        model_type = "mixtral"
        num_local_experts = 8
        num_experts_per_tok = 2

    r = mr.Router.from_hf_config(Config(), num_threads=1)
    assert (r.num_experts, r.top_k, r.norm_topk_prob, r.num_threads) == (8, 2, True, 1)
    with pytest.raises(TypeError, match="config must be a dict"):
        mr.Router.from_hf_config(["mixtral"])


def test_hunyuan_per_layer_lists():
    cfg = {
        "model_type": "hunyuan_v1_moe",
        "num_experts": [8, 16],
        "moe_topk": [1, 4],
        "num_hidden_layers": 2,
    }
    assert mr.moe_layers(cfg) == [0, 1]
    r = mr.Router.from_hf_config(cfg, layer_idx=1)
    assert (r.num_experts, r.top_k) == (16, 4)


def test_presets_lists_the_variants():
    p = mr.presets()
    assert p["qwen3_moe"] == "softmax" and p["deepseek_v3"] == "sigmoid"
    assert p["gpt_oss"] == "topk_logits_softmax" and p["llama4_text"] == "topk_logits_sigmoid"
    assert set(p.values()) <= {
        "softmax_biased",
        "sqrtsoftplus",
        "sparsemixer",
        "softmax",
        "softmax_grouped",
        "topk_logits_softmax",
        "topk_logits_sigmoid",
        "sigmoid",
    }
    assert not set(p) & set(mr.unsupported())


# --- the approximate selection of the float32 sigmoid routers (AVX2) ---------
#
# mr_sigmoid_topk selects on cheap scores within `slack` (about 5e-4) of the
# exact ones and decides only where that cannot change the answer; rows it
# cannot be sure of take the exact path.  These tests call it directly, so a
# fast path that gives up on every row (or answers wrongly) cannot hide
# behind the exact fallback.

APPROX_SHAPES = [  # (experts, top_k, n_group, topk_group, bias)
    (256, 8, 8, 4, True),  # DeepSeek-V3 (8 groups: the vector group step)
    (160, 6, 8, 3, True),  # 8 groups of 20
    (64, 4, 4, 2, False),  # grouped, no bias (the general group step)
    (128, 8, 1, 1, True),  # biased sigmoid without groups
]


def _avx2_core():
    if "avx2" not in _dispatch.available_paths():
        pytest.skip("the AVX2 kernels do not run on this CPU")
    return _dispatch.load("avx2")


@pytest.mark.parametrize("shape", APPROX_SHAPES)
def test_approximate_selection_takes_most_rows_exactly(shape, rng):
    n, k, n_group, topk_group, with_bias = shape
    core = _avx2_core()
    z = rng.standard_normal((400, n)).astype(np.float32)
    bias = rng.normal(-0.5, 1.0, n).astype(np.float32) if with_bias else None
    ids, taken = core.sigmoid_topk_rows(z, k, n_group, topk_group, bias)
    # Random rows are rarely within 5e-4 of a tie: nearly all are taken.
    assert taken.mean() > 0.85, taken.mean()
    opts = dict(
        scoring_func="sigmoid", n_group=n_group, topk_group=topk_group, e_score_correction_bias=bias
    )
    oracle, _ = ref.route_reference(z, k, True, **opts)
    keys, groups = _keys_and_groups(z, opts)
    for r in np.flatnonzero(taken):
        if not np.array_equal(ids[r], oracle[r]):
            assert _near_tie(keys[r], None if groups is None else groups[r], k, topk_group), (
                f"row {r}: {ids[r]} != {oracle[r]}"
            )


def _biased_to(z, targets):
    """A float32 bias that puts sigmoid(z) + bias at `targets` (to ~1e-7)."""
    return (np.asarray(targets, np.float64) - ref.sigmoid(z.astype(np.float64))).astype(np.float32)


def test_approximate_selection_orders_close_scores_exactly(kernel_path, rng):
    # Selection scores 3e-5 apart: far above the float32 rounding (so the
    # reference's order is the only right one), far below the approximate
    # scores' error.  Several groups' scores are as close as that too.
    n, k = 256, 8
    for trial in range(20):
        z = rng.standard_normal(n).astype(np.float32)
        targets = rng.uniform(-1.5, -0.5, n)
        close = rng.choice(n, 24, replace=False)
        targets[close] = 0.4 - 3e-5 * rng.permutation(24)
        if trial % 2:  # groups 0-5 with top-2 sums 5e-5 apart, around the kept boundary
            for g in range(6):
                targets[32 * g : 32 * g + 2] = [0.3 + 5e-5 * g, 0.3]
        bias = _biased_to(z, targets)
        opts = dict(
            scoring_func="sigmoid",
            n_group=8,
            topk_group=4,
            e_score_correction_bias=bias,
            routed_scaling_factor=2.5,
        )
        out = mr.route(z[None], k, True, **opts)
        oracle_ids, oracle_w = ref.route_reference(z[None], k, True, **opts)
        np.testing.assert_array_equal(out.expert_ids, oracle_ids)
        np.testing.assert_allclose(out.expert_weights, oracle_w, rtol=0, atol=5e-6)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("shape", APPROX_SHAPES)
def test_sigmoid_rows_in_pairs_match_rows_routed_alone(kernel_path, rng, shape, num_threads):
    # The float32 sigmoid routers with a bias or groups take rows two at a
    # time (AVX2); a row the approximate selection is not sure of (ties,
    # close group scores, +-inf logits) takes the exact path.  Every row
    # must come out as it does alone, bit for bit, and as the reference says.
    n, k, n_group, topk_group, with_bias = shape
    bias = rng.normal(-0.5, 1.0, n).astype(np.float32) if with_bias else None
    size = n // n_group
    kinds = [
        rng.standard_normal(n),
        rng.integers(-3, 4, n).astype(float),  # ties everywhere
        np.zeros(n),  # one score per expert: the bias
        np.where(np.arange(n) % 7 == 3, np.inf, rng.standard_normal(n)),
        np.where(np.arange(n) % 5 == 1, -np.inf, rng.standard_normal(n)),
        np.tile(rng.standard_normal(size), n_group),  # equal group scores
    ]
    rows = [kinds[i % len(kinds)] for i in range(23)] + [rng.standard_normal(n) for _ in range(48)]
    z = np.array(rows, np.float32)
    opts = dict(
        scoring_func="sigmoid",
        n_group=n_group,
        topk_group=topk_group,
        e_score_correction_bias=bias,
        routed_scaling_factor=2.5,
    )
    batch = mr.route(z, k, True, num_threads=num_threads, **opts)
    oracle = ref.route_reference(z, k, True, **opts)
    assert_routes_like(z, batch.expert_ids, batch.expert_weights, *oracle, k, True, opts)
    for r in range(len(z)):
        alone = mr.route(z[r : r + 1], k, True, **opts)
        np.testing.assert_array_equal(batch.expert_ids[r], alone.expert_ids[0])
        np.testing.assert_array_equal(batch.expert_weights[r], alone.expert_weights[0])


def test_approximate_sigmoid_is_within_its_slack():
    # The selection of the float32 sigmoid routers relies on the cheap
    # sigmoid being within 5.2e-4 of the exact one (_sigmoid_slack): check
    # it on this CPU (its reciprocal estimate included) over the whole
    # range, the clamps at +-87 and the infinities, against float64.
    core = _avx2_core()
    x = np.concatenate(
        [
            np.linspace(-100, 100, 2_000_000),
            np.linspace(-20, 20, 1_000_000),
            [np.inf, -np.inf, 0.0, -0.0, 86.9, 87.0, 87.1, 88.7, 89.0, 1e30, -1e30],
        ]
    ).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])
    out = np.empty_like(x)
    assert core.sigmoid_approx_into(x, out) is False
    err = np.abs(out.astype(np.float64) - ref.sigmoid(x.astype(np.float64)))
    assert err.max() <= 5.2e-4 - 2e-6, err.max()  # (the exact float32 sigmoid: within 2e-6)
    x[5] = np.nan
    assert core.sigmoid_approx_into(x, out) is True


def test_readme_lists_every_preset_and_every_unsupported_type():
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Router variants and model presets") :]
    section = section[: section.index("\n## ", 3)]
    for model_type in list(mr.presets()) + list(mr.unsupported()):
        assert f"`{model_type}`" in section, model_type


def test_per_layer_config_overrides_a_layers_fields():
    # transformers' per_layer_config, as a config.json holds it: the fields that
    # differ, keyed by the layer index as a (zero-padded) string
    cfg = {
        **QWEN3,
        "num_hidden_layers": 3,
        "per_layer_config": {"01": {"num_experts": 8, "num_experts_per_tok": 2}},
    }
    assert (mr.Router.from_hf_config(cfg, layer_idx=1).num_experts, 8) == (8, 8)
    r = mr.Router.from_hf_config(cfg, layer_idx=2)
    assert (r.num_experts, r.top_k) == (128, 8)
    with pytest.raises(ValueError, match="per layer \\(per_layer_config\\): pass .*layer_idx"):
        mr.Router.from_hf_config(cfg)
    # settings that agree across layers need no layer_idx
    same = {**cfg, "per_layer_config": {"01": {"num_attention_heads": 4}}}
    assert mr.Router.from_hf_config(same).num_experts == 128


def test_an_unknown_wrapper_around_a_known_text_model():
    cfg = {"model_type": "some_new_vlm", "text_config": {**QWEN3}}
    assert mr.Router.from_hf_config(cfg).num_experts == 128
    with pytest.raises(ValueError, match="'some_new_vlm' is not a MoE model"):
        mr.Router.from_hf_config({"model_type": "some_new_vlm", "text_config": {"model_type": "x"}})
