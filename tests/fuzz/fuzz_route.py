"""Coverage-guided fuzz target (atheris) over the public API.

    pip install atheris
    python tests/fuzz/fuzz_route.py tests/fuzz/corpus -max_total_time=60   # CI
    python tests/fuzz/fuzz_route.py tests/fuzz/corpus                       # by hand, until stopped

Each input builds logits (any dtype, shape, NaN/inf pattern), a top_k and a
router variant from the fuzzer's bytes, and routes through route /
route_into / Router.  A rejected call must raise TypeError or ValueError; an
accepted one must keep the invariants (distinct ids in range, finite
non-negative weights, the float64 reference's answer up to near ties).  A
crash, another exception or a broken invariant fails the run.

The bytes left after the routing build a dispatch problem (ids of any
dtype, in or out of range, and the plan options) for plan / permute /
combine, checked bit for bit against tests/test_plan.py's NumPy
constructions when accepted.
"""

import os
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import moe_router as mr
    from moe_router import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from test_plan import numpy_combine, numpy_permute, numpy_plan  # noqa: E402
from test_rules import assert_like_reference  # noqa: E402
from test_variants import assert_routes_like  # noqa: E402

try:
    import ml_dtypes

    DTYPES = [np.float32, np.float64, np.float16, ">f4", np.int32, ml_dtypes.bfloat16]
except ImportError:
    DTYPES = [np.float32, np.float64, np.float16, ">f4", np.int32]


class Producer:
    """Only the DLPack protocol (the path a torch-free producer takes)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    _route_case(fdp)
    _config_case(fdp)
    dispatch_part(fdp)


ID_DTYPES = [np.int32, np.uint32, np.int64, np.int8, np.float32]
ROW_DTYPES = [np.float32, np.float64, np.float16]


def dispatch_part(fdp):
    T = fdp.ConsumeIntInRange(0, 6)
    K = fdp.ConsumeIntInRange(0, 4)
    E = fdp.ConsumeIntInRange(0, 12)
    dtype = ID_DTYPES[fdp.ConsumeIntInRange(0, len(ID_DTYPES) - 1)]
    ids = np.array([fdp.ConsumeIntInRange(-2, E + 1) for _ in range(T * K)]).reshape(T, K)
    ids = ids.astype(dtype)
    opts = {}
    if fdp.ConsumeBool():
        opts["block_size"] = fdp.ConsumeIntInRange(0, 5)
    if fdp.ConsumeBool():
        opts["capacity"] = fdp.ConsumeIntInRange(-1, 6)
    if fdp.ConsumeBool():
        opts["identity_expert_start"] = fdp.ConsumeIntInRange(0, E + 1)
    if fdp.ConsumeBool():
        opts["expert_map"] = [
            fdp.ConsumeIntInRange(-2, E) for _ in range(fdp.ConsumeIntInRange(0, E))
        ]
    try:
        p = mr.plan(ids, E, **opts)
    except (TypeError, ValueError):
        return
    m = None if "expert_map" not in opts else np.asarray(opts["expert_map"], np.int64)
    want = numpy_plan(
        ids, E, opts.get("block_size"), opts.get("capacity"), m, opts.get("identity_expert_start")
    )
    for name, value in want.items():
        got = getattr(p, name)
        assert (got is None) if value is None else np.array_equal(got, value), name
    H = fdp.ConsumeIntInRange(0, 5)
    rows = ROW_DTYPES[fdp.ConsumeIntInRange(0, len(ROW_DTYPES) - 1)]
    hidden = np.array([fdp.ConsumeFloat() for _ in range(T * H)]).reshape(T, H)
    with np.errstate(over="ignore", invalid="ignore"):
        hidden = hidden.astype(rows)
        w = np.array([fdp.ConsumeFloat() for _ in range(T * K)], np.float32).reshape(T, K)
    scale = w if fdp.ConsumeBool() else None
    try:
        x = mr.permute(hidden, p, scale_by=scale)
    except (TypeError, ValueError):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(x.view(np.uint8), numpy_permute(hidden, want, scale).view(np.uint8))
        y = mr.combine(x, p, w, hidden_states=hidden if p.num_identity_slots else None)
        oracle = numpy_combine(x, want["slot_of"], w, hidden)
    assert np.array_equal(y, oracle, equal_nan=True)


def _route_case(fdp):
    num_experts = fdp.ConsumeIntInRange(0, 48)
    batch = fdp.ConsumeIntInRange(0, 5)
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    values = [fdp.ConsumeFloat() for _ in range(batch * num_experts)]
    with np.errstate(over="ignore", invalid="ignore"):
        z = (
            np.array(values, np.float64).reshape(batch, num_experts).astype(dtype)
            if dtype != np.int32
            else np.zeros((batch, num_experts), np.int32)
        )
    if fdp.ConsumeBool() and z.ndim == 2 and z.shape[1] > 1:
        z = z[:, ::-1]  # non-contiguous
    top_k = fdp.ConsumeIntInRange(-1, num_experts + 1)
    norm = fdp.ConsumeBool()
    opts = {}
    variant = fdp.ConsumeIntInRange(0, 8)
    if variant == 1:
        opts = dict(scoring_func="sigmoid")
    elif variant == 2:
        opts = dict(
            n_group=fdp.ConsumeIntInRange(0, 5),
            topk_group=fdp.ConsumeIntInRange(0, 5),
            routed_scaling_factor=fdp.ConsumeFloat(),
        )
    elif variant == 3:
        n_group = fdp.ConsumeIntInRange(1, 4)
        opts = dict(
            scoring_func="sigmoid",
            n_group=n_group,
            topk_group=fdp.ConsumeIntInRange(1, n_group),
            e_score_correction_bias=[fdp.ConsumeFloat() for _ in range(num_experts)],
        )
    elif variant == 4:
        opts = dict(
            topk_on_logits=True, scoring_func=["softmax", "sigmoid"][fdp.ConsumeIntInRange(0, 1)]
        )
        norm = norm or opts["scoring_func"] == "softmax"
    elif variant == 5:  # a selection bias under softmax / sigmoid / sqrtsoftplus
        opts = dict(
            scoring_func=["softmax", "sigmoid", "sqrtsoftplus"][fdp.ConsumeIntInRange(0, 2)],
            e_score_correction_bias=[fdp.ConsumeFloat() for _ in range(num_experts)],
            moe_norm_min=[None, 1e-12, fdp.ConsumeFloat()][fdp.ConsumeIntInRange(0, 2)],
            routed_scaling_factor=fdp.ConsumeFloat(),
        )
    elif variant == 6:  # soft-capping, p-norms
        opts = dict(
            scoring_func=["softmax", "sigmoid", "sqrtsoftplus"][fdp.ConsumeIntInRange(0, 2)],
            moe_router_logit_softcapping=fdp.ConsumeFloat(),
            moe_normalize_expert_weights=[None, 1.0, 2.0, float("inf"), fdp.ConsumeFloat()][
                fdp.ConsumeIntInRange(0, 4)
            ],
            zero_expert_num=fdp.ConsumeIntInRange(-1, 3),
        )
    elif variant == 7:
        opts = dict(scoring_func="sparsemixer", router_jitter_noise=fdp.ConsumeFloat())
    elif variant == 8:  # hash routing
        vocab = fdp.ConsumeIntInRange(0, 4)
        k = max(top_k, 0)
        opts = dict(
            scoring_func=["softmax", "sigmoid", "sqrtsoftplus"][fdp.ConsumeIntInRange(0, 2)],
            tid2eid=np.array(
                [fdp.ConsumeIntInRange(-1, num_experts) for _ in range(vocab * k)], np.int64
            ).reshape(vocab, k),
        )
        input_ids = [fdp.ConsumeIntInRange(-1, vocab) for _ in range(batch)]
    api = fdp.ConsumeIntInRange(0, 2)
    if variant == 8:
        try:
            if api == 0:
                out = mr.route(z, top_k, norm, input_ids=input_ids, **opts)
            elif api == 1:
                out = mr.route_into(
                    z, top_k, mr.RouterOutput.empty(), norm, input_ids=input_ids, **opts
                )
            else:
                out = mr.Router(num_experts, top_k, norm, **opts)(z, input_ids=input_ids)
        except (TypeError, ValueError):
            return
        np.testing.assert_array_equal(out.expert_ids, opts["tid2eid"][np.array(input_ids)])
        assert np.isfinite(out.expert_weights).all() and (out.expert_weights >= 0).all()
        return
    api = fdp.ConsumeIntInRange(0, 2)
    # The logits as given, or through DLPack (a producer that cannot
    # export them, such as NumPy for bfloat16 or >f4, must give TypeError).
    given = Producer(z) if fdp.ConsumeBool() else z
    try:
        if api == 0:
            out = mr.route(given, top_k, norm, **opts)
        elif api == 1:
            out = mr.route_into(given, top_k, mr.RouterOutput.empty(), norm, **opts)
        else:
            out = mr.Router(num_experts, top_k, norm, **opts)(given)
    except (TypeError, ValueError):
        return
    # The output is the pair it unpacks as (issue 17).
    assert len(out) == 2 and out[0] is out.expert_ids and out[-1] is out.expert_weights
    zz = np.asarray(z, np.float64)
    if variant == 7:  # the arg maxes exactly; the masks may flip at the threshold
        oracle = ref.route_reference(zz, top_k, norm, **opts)
        np.testing.assert_array_equal(out.expert_ids, oracle[0])
        assert ((out.expert_weights > 0) & (out.expert_weights <= 1 + 1e-6)).all()
        return
    if variant >= 5:
        ro = {k: v for k, v in opts.items() if v is not None}
        assert_like_reference(np.asarray(z), out, top_k, norm, ro)
        return
    oracle = ref.route_reference(zz, top_k, norm, **opts)
    assert_routes_like(zz, out.expert_ids, out.expert_weights, *oracle, top_k, norm, opts)


CONFIG_FIELDS = [
    "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
    "num_experts_per_tok", "moe_topk", "moe_k", "moe_top_k", "norm_topk_prob", "n_group",
    "topk_group", "routed_scaling_factor", "route_scale", "topk_method", "scoring_func",
    "expert_selection_fn", "moe_norm_min", "zero_expert_num", "moe_router_logit_softcapping",
    "router_jitter_noise", "moe_normalize_expert_weights", "use_expert_bias",
    "num_hidden_layers", "n_layers", "first_k_dense_replace", "moe_layer_freq",
    "num_dense_layers", "mlp_layer_types", "mlp_only_layers", "decoder_sparse_step",
    "expert_layer_period", "expert_layer_offset", "moe_layers", "interleave_moe_layer_step",
    "layers_block_type", "hybrid_override_pattern", "moe_layer_start_index",
    "moe_layer_end_index", "moe_layer_interval", "text_config", "ffn_config",
    "per_layer_config", "pyramid_num_routed",
]  # fmt: skip


def _config_value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return fdp.ConsumeIntInRange(-2, 40)
    if kind == 1:
        return fdp.ConsumeFloat()
    if kind == 2:
        return None
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return ["softmax", "sigmoid", "sqrtsoftplus", "greedy", "E-M*", "x"][
            fdp.ConsumeIntInRange(0, 5)
        ]
    if kind == 5:
        return [fdp.ConsumeIntInRange(-1, 40) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    if kind == 6:
        words = ["dense", "sparse", "moe", "hash_moe", 3]
        return [words[fdp.ConsumeIntInRange(0, 4)] for _ in range(fdp.ConsumeIntInRange(0, 6))]
    if kind == 7 and depth == 0:
        return _config_dict(fdp, depth + 1)
    return "8"


def _config_dict(fdp, depth=0):
    types = sorted(mr.presets()) + sorted(mr.unsupported()) + ["llama4", "dbrx", "bert"]
    config = {"model_type": types[fdp.ConsumeIntInRange(0, len(types) - 1)]}
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        field = CONFIG_FIELDS[fdp.ConsumeIntInRange(0, len(CONFIG_FIELDS) - 1)]
        config[field] = _config_value(fdp, depth)
    return config


def _config_case(fdp):
    """Any config dict: from_hf_config and moe_layers answer or raise TypeError/ValueError."""
    if fdp.remaining_bytes() == 0:
        return
    config = _config_dict(fdp)
    bias = np.zeros(fdp.ConsumeIntInRange(1, 40)) if fdp.ConsumeBool() else None
    layer_idx = fdp.ConsumeIntInRange(-1, 8) if fdp.ConsumeBool() else None
    try:
        router = mr.Router.from_hf_config(config, e_score_correction_bias=bias, layer_idx=layer_idx)
    except (TypeError, ValueError):
        pass
    else:
        assert 1 <= router.top_k <= router.num_experts
    try:
        layers = mr.moe_layers(config)
    except (TypeError, ValueError):
        return
    assert all(type(i) is int and i >= 0 for i in layers)


def main():
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
