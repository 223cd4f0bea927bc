"""A catalogue of bad inputs: each one a TypeError or ValueError naming the argument
(AttributeError for a Router setting assigned after construction).

Every case runs on each kernel path and on the NumPy reference behind the
same API.  Output buffers are views into larger guard arrays, and the test
checks that nothing outside the views was written.
"""

import numpy as np
import pytest

import moe_router as mr

E = 16
GOOD = np.random.default_rng(7).standard_normal((4, E)).astype(np.float32)


GOOD20 = np.random.default_rng(8).standard_normal((3, 20)).astype(np.float32)


def _nan_at(z, row, col):
    z = z.copy()
    z[row, col] = np.nan
    return z


def _row(values, row=2):
    z = GOOD.copy()
    z[row] = values
    return z


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


class Guarded:
    """Output buffers inside guard arrays: writes outside them are detected."""

    def __init__(self, n, ids_dtype=np.int32, weights_dtype=np.float32):
        self.ids_block = np.full(n + 32, -7, ids_dtype)
        self.w_block = np.full(n + 32, -7, weights_dtype)
        self.out = mr.RouterOutput(
            expert_ids=self.ids_block[16 : 16 + n], expert_weights=self.w_block[16 : 16 + n]
        )

    def untouched_outside(self):
        return (
            (self.ids_block[:16] == -7).all()
            and (self.ids_block[-16:] == -7).all()
            and (self.w_block[:16] == -7).all()
            and (self.w_block[-16:] == -7).all()
        )


def route_into(logits, top_k=2, **kw):
    g = Guarded(8)
    try:
        mr.route_into(logits, top_k, g.out, **kw)
    finally:
        assert g.untouched_outside()


class _Producer:
    """Only the DLPack protocol, on a device of our choosing."""

    def __init__(self, array, device=None):
        self.array, self.device = array, device

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device or self.array.__dlpack_device__()


def _read_only_dlpack_output():
    ids = np.zeros(8, np.int32)
    ids.flags.writeable = False
    return mr.RouterOutput(expert_ids=_Producer(ids), expert_weights=np.zeros(8, np.float32))


def _overlapping_output():
    raw = np.zeros(16, np.float32)
    return mr.RouterOutput(expert_ids=raw.view(np.int32)[:8], expert_weights=raw[4:12])


def _route_onto_logits():
    raw = np.zeros(72, np.float32)
    out = mr.RouterOutput(expert_ids=np.zeros(8, np.int32), expert_weights=raw[60:68])
    return mr.route_into(raw[:64].reshape(4, E), 2, out)


CASES = [
    # --- top_k -------------------------------------------------------------
    ("top_k float", lambda: mr.route(GOOD, 2.0), TypeError, "top_k must be an int, got float"),
    ("top_k bool", lambda: mr.route(GOOD, True), TypeError, "top_k must be an int, got bool"),
    ("top_k str", lambda: mr.route(GOOD, "2"), TypeError, "top_k must be an int"),
    ("top_k None", lambda: mr.route(GOOD, None), TypeError, "top_k must be an int"),
    ("top_k 0", lambda: mr.route(GOOD, 0), ValueError, "top_k must be >= 1, got top_k=0"),
    ("top_k negative", lambda: route_into(GOOD, -1), ValueError, "top_k must be >= 1"),
    (
        "top_k > experts",
        lambda: route_into(GOOD, E + 1),
        ValueError,
        "top_k must be <= num_experts=16, got top_k=17",
    ),
    ("top_k numpy float", lambda: mr.route(GOOD, np.float64(2)), TypeError, "top_k must be an int"),
    # --- flags and Router settings (issue 17) ---------------------------------
    (
        "norm_topk_prob str",
        lambda: mr.route(GOOD, 2, norm_topk_prob="false"),
        TypeError,
        "norm_topk_prob must be a bool, got str 'false'",
    ),
    (
        "norm_topk_prob str route_into",
        lambda: route_into(GOOD, 2, norm_topk_prob="false"),
        TypeError,
        "norm_topk_prob must be a bool, got str",
    ),
    (
        "norm_topk_prob int Router",
        lambda: mr.Router(E, 2, 1),
        TypeError,
        "norm_topk_prob must be a bool, got int 1",
    ),
    (
        "norm_topk_prob None",
        lambda: mr.route(GOOD, 2, None),
        TypeError,
        "norm_topk_prob must be a bool, got NoneType",
    ),
    (
        "topk_on_logits str",
        lambda: mr.Router(E, 2, topk_on_logits="yes"),
        TypeError,
        "topk_on_logits must be a bool, got str",
    ),
    (
        "Router top_k assigned",
        lambda: setattr(mr.Router(E, 2), "top_k", 4),
        AttributeError,
        "Router.top_k is read-only",
    ),
    (
        "Router num_threads assigned",
        lambda: setattr(mr.Router(E, 2), "num_threads", 0),
        AttributeError,
        "Router.num_threads is read-only",
    ),
    (
        "Router norm_topk_prob assigned",
        lambda: setattr(mr.Router(E, 2), "norm_topk_prob", False),
        AttributeError,
        "Router.norm_topk_prob is read-only",
    ),
    (
        "Router num_experts deleted",
        lambda: delattr(mr.Router(E, 2), "num_experts"),
        AttributeError,
        "Router.num_experts is read-only",
    ),
    ("RouterOutput index 2", lambda: mr.route(GOOD, 2)[2], IndexError, "index out of range"),
    # --- logits: kinds, dtypes, shapes ---------------------------------------
    ("logits int", lambda: mr.route(GOOD.astype(np.int64), 2), TypeError, "got dtype int64"),
    ("logits bool", lambda: mr.route(GOOD > 0, 2), TypeError, "got dtype bool"),
    (
        "logits complex",
        lambda: mr.route(GOOD.astype(np.complex128), 2),
        TypeError,
        "got dtype complex128",
    ),
    ("logits object", lambda: mr.route(np.array([[object()]]), 1), TypeError, "got dtype object"),
    ("logits str", lambda: mr.route("logits", 1), TypeError, "got dtype <U6"),
    ("logits None", lambda: mr.route(None, 1), TypeError, "got dtype object"),
    ("logits dict", lambda: mr.route({"a": 1}, 1), TypeError, "got dtype object"),
    (
        "logits ragged",
        lambda: mr.route([[1.0, 2.0], [3.0]], 1),
        ValueError,
        r"logits must be a rectangular array \[\.\.\., num_experts\].*inhomogeneous",
    ),
    (
        "logits ragged Router",
        lambda: mr.Router(2, 1)([[1.0, 2.0], [3.0]]),
        ValueError,
        "logits must be a rectangular array",
    ),
    ("logits 0-d", lambda: mr.route(np.float32(1.0), 1), ValueError, "got a 0-d array"),
    (
        "moe_norm_min subnormal",
        lambda: mr.route(GOOD, 2, scoring_func="sqrtsoftplus", moe_norm_min=5e-324),
        ValueError,
        r"moe_norm_min must be 0 or None \(no clamp\) or >= 1.175e-38",
    ),
    (
        "sqrtsoftplus weights overflow float32",
        lambda: route_into(
            np.array([[1e300, 0.0, -1.0, 2.0]] * 4),
            2,
            norm_topk_prob=False,
            scoring_func="sqrtsoftplus",
        ),
        ValueError,
        r"row 0: its unnormalised sqrtsoftplus weights .* overflow weights_dtype=float32",
    ),
    # --- DLPack producers (issue 14) ------------------------------------------
    (
        "logits DLPack on cuda",
        lambda: route_into(_Producer(GOOD, device=(2, 0))),
        ValueError,
        "logits is on device cuda:0; moe_router routes on the CPU",
    ),
    (
        "logits DLPack on metal",
        lambda: mr.Router(E, 2)(_Producer(GOOD, device=(8, 0))),
        ValueError,
        "logits is on device metal:0",
    ),
    (
        "logits DLPack cannot export",
        lambda: route_into(_Producer(GOOD.astype(">f4"))),
        TypeError,
        "logits cannot be read through DLPack",
    ),
    (
        "logits DLPack int",
        lambda: route_into(_Producer(GOOD.astype(np.int16))),
        TypeError,
        r"logits must be a floating-point array \(float16, bfloat16, float32 or float64\)",
    ),
    (
        "output DLPack read-only",
        _read_only_dlpack_output,
        ValueError,
        "expert_ids must be writeable",
    ),
    (
        "zero experts",
        lambda: mr.route(np.zeros((3, 0), np.float32), 1),
        ValueError,
        r"num_experts \(logits.shape\[-1\]\) must be >= 1",
    ),
    (
        "zero experts empty batch",
        lambda: mr.route(np.zeros((0, 0), np.float32), 1),
        ValueError,
        "num_experts",
    ),
    (
        "router wrong experts",
        lambda: mr.Router(E, 2)(GOOD[:, :-1]),
        ValueError,
        r"num_experts=16\], got \(4, 15\)",
    ),
    ("router 0-d", lambda: mr.Router(E, 2)(np.float32(3)), ValueError, "0-d"),
    # --- NaN / inf patterns --------------------------------------------------
    (
        "NaN first",
        lambda: route_into(_row([np.nan] + [0.0] * 15)),
        ValueError,
        "row 2 contains NaN",
    ),
    ("NaN last", lambda: route_into(_row([0.0] * 15 + [np.nan])), ValueError, "row 2 contains NaN"),
    ("all NaN", lambda: route_into(_row([np.nan] * 16)), ValueError, "row 2 contains NaN"),
    (
        "NaN with +inf",
        lambda: route_into(_row([np.inf, np.nan] + [0.0] * 14)),
        ValueError,
        "row 2 contains NaN",
    ),
    (
        "NaN with -inf",
        lambda: route_into(_row([-np.inf] * 15 + [np.nan])),
        ValueError,
        "row 2 contains NaN",
    ),
    ("all -inf", lambda: route_into(_row([-np.inf] * 16)), ValueError, "row 2 is all -inf"),
    (
        "NaN float64",
        lambda: route_into(_row([np.nan] * 16).astype(np.float64)),
        ValueError,
        "row 2 contains NaN",
    ),
    (
        "NaN float16",
        lambda: mr.route(_row([np.nan] * 16).astype(np.float16), 2),
        ValueError,
        "row 2 contains NaN",
    ),
    (
        "NaN sigmoid",
        lambda: mr.route(_row([np.nan] * 16), 2, scoring_func="sigmoid"),
        ValueError,
        "row 2 contains NaN",
    ),
    (
        "NaN grouped",
        lambda: mr.route(_row([1.0] * 15 + [np.nan]), 2, n_group=4, topk_group=2),
        ValueError,
        "row 2 contains NaN",
    ),
    # The biased / grouped sigmoid routers find NaN in their sigmoid pass:
    # in the vector body, in the tail (20 experts), in float64.
    (
        "NaN biased sigmoid",
        lambda: mr.route(
            _row([0.0] * 15 + [np.nan]),
            2,
            scoring_func="sigmoid",
            e_score_correction_bias=np.zeros(E, np.float32),
        ),
        ValueError,
        "row 2 contains NaN",
    ),
    (
        "NaN sigmoid grouped, tail",
        lambda: mr.route(
            _nan_at(GOOD20, 1, 19), 2, scoring_func="sigmoid", n_group=4, topk_group=2
        ),
        ValueError,
        "row 1 contains NaN",
    ),
    (
        "NaN biased sigmoid float64",
        lambda: mr.route(
            _row([np.nan] + [0.0] * 15).astype(np.float64),
            2,
            scoring_func="sigmoid",
            n_group=4,
            topk_group=2,
            e_score_correction_bias=np.zeros(E),
        ),
        ValueError,
        "row 2 contains NaN",
    ),
    # --- output buffers -------------------------------------------------------
    (
        "out not RouterOutput",
        lambda: mr.route_into(GOOD, 2, np.zeros(8)),
        TypeError,
        "out must be a RouterOutput, got ndarray",
    ),
    (
        "ids float",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(8, np.float32), expert_weights=np.zeros(8, np.float32)
        ),
        TypeError,
        "expert_ids must have dtype int32/uint32/int64, got float32",
    ),
    (
        "ids int8",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(8, np.int8), expert_weights=np.zeros(8, np.float32)
        ),
        TypeError,
        "expert_ids must have dtype",
    ),
    (
        "weights float16",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(8, np.int32), expert_weights=np.zeros(8, np.float16)
        ),
        TypeError,
        "expert_weights must have dtype float32/float64, got float16",
    ),
    (
        "ids list",
        lambda: mr.RouterOutput(expert_ids=[0] * 8, expert_weights=np.zeros(8, np.float32)),
        TypeError,
        "expert_ids must be a numpy.ndarray, got list",
    ),
    (
        "ids strided",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(16, np.int32)[::2], expert_weights=np.zeros(8, np.float32)
        ),
        ValueError,
        "expert_ids must be C-contiguous",
    ),
    (
        "weights Fortran",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros((4, 2), np.int32), expert_weights=np.zeros((2, 4), np.float32).T
        ),
        ValueError,
        "expert_weights must be C-contiguous",
    ),
    (
        "ids read-only",
        lambda: mr.RouterOutput(
            expert_ids=_ro(np.zeros(8, np.int32)), expert_weights=np.zeros(8, np.float32)
        ),
        ValueError,
        "expert_ids must be writeable",
    ),
    (
        "weights read-only",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(8, np.int32), expert_weights=_ro(np.zeros(8, np.float32))
        ),
        ValueError,
        "expert_weights must be writeable",
    ),
    (
        "sizes differ",
        lambda: mr.RouterOutput(
            expert_ids=np.zeros(8, np.int32), expert_weights=np.zeros(6, np.float32)
        ),
        ValueError,
        "same size, got 8",
    ),
    ("ids overlap weights", lambda: _overlapping_output(), ValueError, "must not overlap"),
    (
        "too small",
        lambda: mr.route_into(GOOD, 4, Guarded(8).out),
        ValueError,
        "needs 16; a RouterOutput wrapping your arrays never reallocates",
    ),
    (
        "out overlaps logits",
        lambda: _route_onto_logits(),
        ValueError,
        "must not overlap the logits",
    ),
    (
        "ids dtype for route",
        lambda: mr.route(GOOD, 2, ids_dtype=np.float32),
        TypeError,
        "ids_dtype must be int32/uint32/int64",
    ),
    (
        "weights dtype for route",
        lambda: mr.route(GOOD, 2, weights_dtype=np.int64),
        TypeError,
        "weights_dtype must be float32/float64",
    ),
    # --- threads ---------------------------------------------------------------
    (
        "num_threads 0",
        lambda: mr.route(GOOD, 2, num_threads=0),
        ValueError,
        "num_threads must be >= 1",
    ),
    (
        "num_threads float",
        lambda: route_into(GOOD, 2, num_threads=1.5),
        TypeError,
        "num_threads must be an int",
    ),
    # --- variants: groups, bias, scale ----------------------------------------------
    (
        "n_group not dividing",
        lambda: mr.route(GOOD, 2, n_group=3),
        ValueError,
        "num_experts=16 must be divisible by n_group=3",
    ),
    ("n_group 0", lambda: mr.route(GOOD, 2, n_group=0), ValueError, "n_group must be >= 1"),
    (
        "n_group > experts",
        lambda: mr.Router(E, 2, n_group=32),
        ValueError,
        "n_group must be <= num_experts=16",
    ),
    (
        "topk_group > n_group",
        lambda: mr.route(GOOD, 2, n_group=4, topk_group=5),
        ValueError,
        "topk_group must be <= n_group=4",
    ),
    (
        "topk_group too few experts",
        lambda: mr.route(GOOD, 9, n_group=4, topk_group=2),
        ValueError,
        "top_k=9 exceeds the 8 experts",
    ),
    (
        "bias shape",
        lambda: mr.route(GOOD, 2, scoring_func="sigmoid", e_score_correction_bias=np.zeros(E + 1)),
        ValueError,
        r"must have shape \(16,\), got \(17,\)",
    ),
    (
        "bias 2-D",
        lambda: mr.route(GOOD, 2, scoring_func="sigmoid", e_score_correction_bias=np.zeros((1, E))),
        ValueError,
        r"got \(1, 16\)",
    ),
    (
        "bias NaN",
        lambda: mr.route(
            GOOD, 2, scoring_func="sigmoid", e_score_correction_bias=np.full(E, np.nan)
        ),
        ValueError,
        "must be finite",
    ),
    (
        "bias inf",
        lambda: mr.route(
            GOOD, 2, scoring_func="sigmoid", e_score_correction_bias=np.full(E, np.inf)
        ),
        ValueError,
        "must be finite",
    ),
    (
        "bias overflowing float32",
        lambda: mr.route(
            GOOD, 2, scoring_func="sigmoid", e_score_correction_bias=np.full(E, 1e300)
        ),
        ValueError,
        "finite in float32",
    ),
    (
        "bias with sparsemixer",
        lambda: mr.route(
            GOOD, 2, False, scoring_func="sparsemixer", e_score_correction_bias=np.zeros(E)
        ),
        ValueError,
        "does not apply to scoring_func='sparsemixer'",
    ),
    (
        "scale negative",
        lambda: mr.route(GOOD, 2, routed_scaling_factor=-1.0),
        ValueError,
        "routed_scaling_factor must be finite, > 0",
    ),
    (
        "scale inf",
        lambda: mr.route(GOOD, 2, routed_scaling_factor=float("inf")),
        ValueError,
        "routed_scaling_factor must be finite",
    ),
    (
        "scale overflowing float32",
        lambda: mr.route(GOOD, 2, routed_scaling_factor=1e300),
        ValueError,
        "<= 1e38",
    ),
    (
        "scoring unknown",
        lambda: mr.route(GOOD, 2, scoring_func="relu"),
        ValueError,
        "scoring_func must be one of 'softmax', 'sigmoid', 'sqrtsoftplus', 'sparsemixer'",
    ),
    (
        "unknown option",
        lambda: mr.route(GOOD, 2, topk_groups=2),
        TypeError,
        "unexpected keyword argument",
    ),
    # --- the scoring rules of route_rows_rules -------------------------------------
    (
        "softcap negative",
        lambda: mr.route(GOOD, 2, moe_router_logit_softcapping=-1.0),
        ValueError,
        "moe_router_logit_softcapping must be >= 0",
    ),
    (
        "softcap inf",
        lambda: mr.Router(E, 2, moe_router_logit_softcapping=float("inf")),
        ValueError,
        "moe_router_logit_softcapping must be finite",
    ),
    (
        "softcap overflowing float32",
        lambda: mr.route(GOOD, 2, moe_router_logit_softcapping=1e300),
        ValueError,
        r"in \[1e-6, 1e38\]",
    ),
    (
        "softcap str",
        lambda: mr.route(GOOD, 2, moe_router_logit_softcapping="30"),
        TypeError,
        "moe_router_logit_softcapping must be a real number",
    ),
    (
        "p-norm zero",
        lambda: mr.route(GOOD, 2, moe_normalize_expert_weights=0.0),
        ValueError,
        "moe_normalize_expert_weights .* must be > 0",
    ),
    (
        "p-norm NaN",
        lambda: mr.route(GOOD, 2, moe_normalize_expert_weights=float("nan")),
        ValueError,
        "moe_normalize_expert_weights must be finite",
    ),
    (
        "p-norm unnormalised",
        lambda: mr.route(GOOD, 2, False, moe_normalize_expert_weights=1.0),
        ValueError,
        "contradicts norm_topk_prob=False",
    ),
    (
        "norm_min negative",
        lambda: mr.route(GOOD, 2, moe_norm_min=-1e-12),
        ValueError,
        "moe_norm_min must be >= 0",
    ),
    (
        "norm_min unnormalised",
        lambda: mr.Router(E, 2, False, moe_norm_min=1e-12),
        ValueError,
        "contradicts norm_topk_prob=False",
    ),
    (
        "sparsemixer top_k 3",
        lambda: mr.route(GOOD, 3, False, scoring_func="sparsemixer"),
        ValueError,
        "routes top_k=2 experts, got top_k=3",
    ),
    (
        "sparsemixer renormalised",
        lambda: mr.route(GOOD, 2, scoring_func="sparsemixer"),
        ValueError,
        "pass norm_topk_prob=False",
    ),
    (
        "jitter without sparsemixer",
        lambda: mr.route(GOOD, 2, router_jitter_noise=0.01),
        ValueError,
        "router_jitter_noise is sparsemixer's mask threshold",
    ),
    (
        "jitter negative",
        lambda: mr.route(GOOD, 2, False, scoring_func="sparsemixer", router_jitter_noise=-0.1),
        ValueError,
        "router_jitter_noise must be >= 0",
    ),
    (
        "rules with groups",
        lambda: mr.route(GOOD, 2, scoring_func="sqrtsoftplus", n_group=4, topk_group=2),
        ValueError,
        "n_group > 1 and topk_on_logits do not combine",
    ),
    (
        "tid2eid shape",
        lambda: mr.Router(E, 2, tid2eid=np.zeros((10, 3), np.int64)),
        ValueError,
        r"tid2eid must have shape \(vocab_size >= 1, top_k=2\), got \(10, 3\)",
    ),
    (
        "tid2eid float",
        lambda: mr.Router(E, 2, tid2eid=np.zeros((10, 2))),
        TypeError,
        "tid2eid must be an integer array",
    ),
    (
        "tid2eid out of range",
        lambda: mr.Router(E, 2, tid2eid=np.full((10, 2), E)),
        ValueError,
        r"tid2eid holds expert ids outside \[0, num_experts=16\)",
    ),
    (
        "tid2eid with bias",
        lambda: mr.Router(
            E, 2, tid2eid=np.zeros((10, 2), np.int64), e_score_correction_bias=np.zeros(E)
        ),
        ValueError,
        "tid2eid \\(hash routing\\) already does",
    ),
    (
        "input_ids missing",
        lambda: mr.Router(E, 2, tid2eid=np.zeros((10, 2), np.int64))(GOOD),
        ValueError,
        "pass input_ids=",
    ),
    (
        "input_ids out of vocab",
        lambda: mr.Router(E, 2, tid2eid=np.zeros((10, 2), np.int64))(
            GOOD, input_ids=np.array([0, 1, 2, 10])
        ),
        ValueError,
        r"input_ids must be in \[0, vocab_size=10\)",
    ),
    (
        "input_ids negative",
        lambda: route_into(
            GOOD,
            tid2eid=np.zeros((10, 2), np.int64),
            input_ids=np.array([0, -1, 2, 3]),
        ),
        ValueError,
        r"input_ids must be in \[0, vocab_size=10\)",
    ),
    (
        "input_ids shape",
        lambda: mr.Router(E, 2, tid2eid=np.zeros((10, 2), np.int64))(
            GOOD, input_ids=np.zeros((2, 2), np.int64)
        ),
        ValueError,
        r"input_ids must have the logits' leading shape \(4,\), got \(2, 2\)",
    ),
    (
        "input_ids float",
        lambda: mr.route(
            GOOD, 2, tid2eid=np.zeros((10, 2), np.int64), input_ids=np.zeros(4, np.float32)
        ),
        TypeError,
        "input_ids must be an integer array",
    ),
    (
        "input_ids without table",
        lambda: mr.Router(E, 2)(GOOD, input_ids=np.zeros(4, np.int64)),
        ValueError,
        "the router has no tid2eid table",
    ),
    (
        "zero experts all",
        lambda: mr.Router(E, 2, zero_expert_num=E),
        ValueError,
        "zero_expert_num must be <= num_experts - 1=15",
    ),
    (
        "zero experts float",
        lambda: mr.Router(E, 2, zero_expert_num=2.0),
        TypeError,
        "zero_expert_num must be an int",
    ),
    (
        "sqrtsoftplus +inf",
        lambda: route_into(_row([np.inf] + [0.0] * 15), scoring_func="sqrtsoftplus"),
        ValueError,
        "row 2 contains \\+inf: its sqrtsoftplus score is infinite",
    ),
    (
        "sparsemixer one expert",
        lambda: route_into(
            _row([1.0] + [-np.inf] * 15), norm_topk_prob=False, scoring_func="sparsemixer"
        ),
        ValueError,
        "row 2 has fewer than 2 experts above -inf",
    ),
    (
        "softmax bias all -inf",
        lambda: route_into(_row([-np.inf] * 16), e_score_correction_bias=np.zeros(E)),
        ValueError,
        "row 2 is all -inf",
    ),
    (
        "biased sqrtsoftplus NaN",
        lambda: route_into(
            _nan_at(GOOD, 1, 3), scoring_func="sqrtsoftplus", e_score_correction_bias=np.zeros(E)
        ),
        ValueError,
        "row 1 contains NaN",
    ),
    (
        "preset unknown",
        lambda: mr.Router.from_hf_config({"model_type": "bert"}),
        ValueError,
        "'bert' is not a MoE model",
    ),
    (
        "preset unsupported",
        lambda: mr.Router.from_hf_config({"model_type": "nllb-moe"}),
        ValueError,
        "'nllb-moe' has no moe_router preset: top-2 with expert capacity",
    ),
    (
        "preset field missing",
        lambda: mr.Router.from_hf_config({"model_type": "qwen3_moe", "num_experts_per_tok": 2}),
        ValueError,
        "qwen3_moe config has no num_experts \\(nor its alias num_local_experts\\)",
    ),
    (
        "preset dense layer",
        lambda: mr.Router.from_hf_config(
            {
                "model_type": "glm4_moe",
                "n_routed_experts": E,
                "num_experts_per_tok": 2,
                "num_hidden_layers": 3,
            },
            e_score_correction_bias=np.zeros(E),
            layer_idx=0,
        ),
        ValueError,
        "layer 0 of this glm4_moe config is a dense MLP",
    ),
    (
        "preset layer_idx type",
        lambda: mr.Router.from_hf_config(
            {
                "model_type": "mixtral",
                "num_local_experts": E,
                "num_experts_per_tok": 2,
                "num_hidden_layers": 3,
            },
            layer_idx=1.0,
        ),
        TypeError,
        "layer_idx must be an int",
    ),
    (
        "moe_layers unknown",
        lambda: mr.moe_layers({"model_type": "bert", "num_hidden_layers": 2}),
        ValueError,
        "'bert' is not a MoE model",
    ),
    (
        "moe_layers not a config",
        lambda: mr.moe_layers(["mixtral"]),
        TypeError,
        "config must be a dict",
    ),
    (
        "moe_layers no layer count",
        lambda: mr.moe_layers({"model_type": "mixtral"}),
        ValueError,
        "mixtral config has no num_hidden_layers",
    ),
]


# --- dispatch (plan, permute, combine) -------------------------------------
IDS = np.array([[1, 0], [3, 1], [2, 3]], np.int32)  # 3 tokens, top_k 2, 4 experts
HID = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
W2 = np.full((3, 2), 0.5, np.float32)


def _bad_id(t, k, value):
    ids = IDS.copy()
    ids[t, k] = value
    return ids


def _guarded_rows(shape, dtype=np.float32):
    """A writeable [rows, H] view inside a guard block; returns (view, untouched())."""
    n = int(np.prod(shape))
    block = np.full(n + 32, -7, dtype)
    view = block[16 : 16 + n].reshape(shape)
    return view, lambda: (block[:16] == -7).all() and (block[-16:] == -7).all()


def _permute_into(out_shape, hidden=HID, dtype=np.float32, **kw):
    p = mr.plan(IDS, 4)
    out, untouched = _guarded_rows(out_shape, dtype)
    try:
        mr.permute(hidden, p, out, **kw)
    finally:
        assert untouched()


def _combine_into(out_shape, expert_rows=6, dtype=np.float32, weights=W2, **kw):
    p = mr.plan(IDS, 4, **kw.pop("plan_options", {}))
    out, untouched = _guarded_rows(out_shape, dtype)
    try:
        mr.combine(np.ones((expert_rows, 8), np.float32), p, weights, out, **kw)
    finally:
        assert untouched()


def _permute_onto_hidden():
    raw = np.zeros((9, 8), np.float32)
    p = mr.plan(IDS, 4)
    return mr.permute(raw[:3], p, raw[2:8])


def _combine_onto_expert_out():
    raw = np.zeros((9, 8), np.float32)
    p = mr.plan(IDS, 4)
    return mr.combine(raw[:6], p, W2, raw[5:8])


def _read_only_rows(shape):
    a = np.zeros(shape, np.float32)
    a.flags.writeable = False
    return a


DISPATCH_CASES = [
    (
        "plan id too large",
        lambda: mr.plan(_bad_id(1, 1, 4), 4),
        ValueError,
        r"expert_ids must be in \[0, num_experts=4\): token 1, k=1 has id 4",
    ),
    (
        "plan id negative",
        lambda: mr.plan(_bad_id(2, 0, -1), 4),
        ValueError,
        "token 2, k=0 has id -1",
    ),
    (
        "plan id uint32 huge",
        lambda: mr.plan(_bad_id(0, 1, 7).astype(np.uint32), 4),
        ValueError,
        "token 0, k=1 has id 7",
    ),
    (
        "plan first of many bad ids",
        lambda: mr.plan(np.full((3, 2), 9, np.int64), 4),
        ValueError,
        r"token 0, k=0 has id 9 \(6 bad id\(s\) in all\)",
    ),
    (
        "plan_into bad id leaves the plan empty",
        lambda: mr.plan_into(_bad_id(2, 1, 5), 4, mr.plan(IDS, 4)),
        ValueError,
        "token 2, k=1 has id 5",
    ),
    ("plan ids float", lambda: mr.plan(IDS.astype(np.float32), 4), TypeError, "integer array"),
    ("plan ids bool", lambda: mr.plan(IDS > 1, 4), TypeError, "integer array"),
    ("plan ids 0-d", lambda: mr.plan(np.int32(1), 4), ValueError, "got a 0-d array"),
    (
        "plan top_k 0",
        lambda: mr.plan(np.zeros((3, 0), np.int32), 4),
        ValueError,
        r"top_k \(expert_ids.shape\[-1\]\) must be >= 1",
    ),
    ("plan num_experts 0", lambda: mr.plan(IDS, 0), ValueError, "num_experts must be >= 1"),
    ("plan num_experts float", lambda: mr.plan(IDS, 4.0), TypeError, "num_experts must be an int"),
    (
        "plan block_size 0",
        lambda: mr.plan(IDS, 4, block_size=0),
        ValueError,
        "block_size must be >= 1",
    ),
    (
        "plan capacity negative",
        lambda: mr.plan(IDS, 4, capacity=-1),
        ValueError,
        "capacity must be >= 0",
    ),
    (
        "plan identity start too large",
        lambda: mr.plan(IDS, 4, identity_expert_start=5),
        ValueError,
        "identity_expert_start must be <= num_experts=4",
    ),
    (
        "expert_map wrong length",
        lambda: mr.plan(IDS, 4, expert_map=np.array([0, 1, -1])),
        ValueError,
        r"expert_map must have shape \(identity_expert_start=4,\)",
    ),
    (
        "expert_map duplicate local id",
        lambda: mr.plan(IDS, 4, expert_map=np.array([0, 0, 1, -1])),
        ValueError,
        "local ids must be 0, 1, ..., L - 1",
    ),
    (
        "expert_map below -1",
        lambda: mr.plan(IDS, 4, expert_map=np.array([0, -2, 1, -1])),
        ValueError,
        "expert_map entries must be >= -1",
    ),
    (
        "expert_map float",
        lambda: mr.plan(IDS, 4, expert_map=np.zeros(4)),
        TypeError,
        "expert_map must be an integer array",
    ),
    (
        "plan_into not a plan",
        lambda: mr.plan_into(IDS, 4, object()),
        TypeError,
        "plan must be a DispatchPlan, got object",
    ),
    ("DispatchPlan()", lambda: mr.DispatchPlan(), TypeError, "DispatchPlan.empty()"),
    (
        "plan num_threads 0",
        lambda: mr.plan_into(IDS, 4, mr.DispatchPlan.empty(), num_threads=0),
        ValueError,
        "num_threads must be >= 1",
    ),
    (
        "permute hidden wrong rows",
        lambda: _permute_into((6, 8), hidden=HID[:2]),
        ValueError,
        "hidden_states must have shape .* num_tokens=3 leading elements, got \\(2, 8\\)",
    ),
    (
        "permute hidden int",
        lambda: _permute_into((6, 8), hidden=HID.astype(np.int32)),
        TypeError,
        "hidden_states must be float32, float64, float16 or bfloat16, got dtype int32",
    ),
    (
        "permute out wrong shape",
        lambda: _permute_into((5, 8)),
        ValueError,
        r"out must have shape \(6, 8\), got \(5, 8\)",
    ),
    (
        "permute out wrong dtype",
        lambda: _permute_into((6, 8), dtype=np.float64),
        TypeError,
        "out must have dtype float32 .*, got float64",
    ),
    (
        "permute out read-only",
        lambda: mr.permute(HID, mr.plan(IDS, 4), _read_only_rows((6, 8))),
        ValueError,
        "out must be writeable",
    ),
    ("permute out overlaps hidden", _permute_onto_hidden, ValueError, "must not overlap"),
    (
        "permute scale_by wrong shape",
        lambda: _permute_into((6, 8), scale_by=np.ones((3, 3), np.float32)),
        ValueError,
        r"scale_by must have the plan's shape \(3, 2\)",
    ),
    (
        "permute plan not a plan",
        lambda: mr.permute(HID, IDS),
        TypeError,
        "plan must be a DispatchPlan, got ndarray",
    ),
    (
        "permute num_threads 0",
        lambda: _permute_into((6, 8), num_threads=0),
        ValueError,
        "num_threads must be >= 1",
    ),
    (
        "combine rows not matching the plan",
        lambda: _combine_into((3, 8), expert_rows=5),
        ValueError,
        r"expert_out must have shape \[plan.num_rows=6, hidden_size\].*got \(5, 8\)",
    ),
    (
        "combine out wrong shape",
        lambda: _combine_into((3, 7)),
        ValueError,
        r"out must have shape \(3, 8\), got \(3, 7\)",
    ),
    (
        "combine out wrong dtype",
        lambda: _combine_into((3, 8), dtype=np.float16),
        TypeError,
        "out must have dtype float32",
    ),
    (
        "combine weights wrong shape",
        lambda: _combine_into((3, 8), weights=np.ones(6, np.float32)),
        ValueError,
        "expert_weights must have the plan's shape",
    ),
    (
        "combine weights complex",
        lambda: _combine_into((3, 8), weights=np.ones((3, 2), np.complex64)),
        TypeError,
        "expert_weights must be a real array",
    ),
    (
        "combine out read-only",
        lambda: mr.combine(
            np.ones((6, 8), np.float32), mr.plan(IDS, 4), W2, _read_only_rows((3, 8))
        ),
        ValueError,
        "out must be writeable",
    ),
    ("combine out overlaps expert_out", _combine_onto_expert_out, ValueError, "must not overlap"),
    (
        "combine identity slots without hidden",
        lambda: _combine_into((3, 8), expert_rows=3, plan_options={"identity_expert_start": 2}),
        ValueError,
        "identity-expert slot.*needs hidden_states=",
    ),
    (
        "combine hidden wrong dtype",
        lambda: _combine_into((3, 8), hidden_states=HID.astype(np.float64)),
        TypeError,
        "hidden_states must have expert_out's dtype float32, got float64",
    ),
]
CASES += DISPATCH_CASES


def test_more_experts_than_int32_ids_hold(tmp_path, any_path):
    # 2**31 + 1 experts, simulated cheaply: a sparse file mapped read-only,
    # C-contiguous, so nothing is copied; the ids' dtype is checked before
    # any of it is read.
    n = 2**31 + 1
    path = tmp_path / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(n * 4)
    logits = np.memmap(path, dtype=np.float32, mode="r", shape=(1, n))
    with pytest.raises(
        ValueError, match="int32 hold ids below 2147483648, but num_experts=2147483649"
    ):
        mr.route(logits, 1)
    with pytest.raises(ValueError, match="use int64 ids"):
        mr.Router(n, 1)(logits)


def test_catalogue_has_at_least_40_cases():
    assert len(CASES) >= 40
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, call, exc, msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input(any_path, name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@pytest.mark.parametrize(
    "values",
    [
        np.full(E, 3e38, np.float32),  # near float32 max
        np.array([3.4e38, -3.4e38] * 8, np.float32),  # differences overflow to inf
        np.full(E, 1e-45, np.float32),  # denormals
        np.array([1e-45, -1e-45] * 8, np.float32),
        np.array([np.inf] * 2 + [-np.inf] * 14, np.float32),  # +inf and -inf only
    ],
)
def test_extreme_values_are_routed(any_path, values):
    out = mr.route(_row(values), 4)
    ids = out.expert_ids
    assert ((ids >= 0) & (ids < E)).all()
    assert all(len(set(r)) == 4 for r in ids.tolist())
    assert np.isfinite(out.expert_weights).all() and (out.expert_weights >= 0).all()
    np.testing.assert_allclose(out.expert_weights.sum(axis=1), 1.0, atol=1e-6)


# --- torch tensors (issue 14): skipped without torch; CI installs it ----------
TORCH_CASES = [
    ("requires_grad", lambda t: t.randn(4, 16, requires_grad=True), TypeError, "logits.detach()"),
    ("meta device", lambda t: t.randn(4, 16, device="meta"), ValueError, "routes on the CPU"),
    ("int64", lambda t: t.zeros(4, 16, dtype=t.int64), TypeError, "float16, bfloat16"),
    ("bool", lambda t: t.zeros(4, 16, dtype=t.bool), TypeError, "float16, bfloat16"),
    ("complex", lambda t: t.zeros(4, 16, dtype=t.complex64), TypeError, "complex64"),
    ("float8", lambda t: t.zeros(4, 16).to(t.float8_e4m3fn), TypeError, "float8_e4m3fn"),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
@pytest.mark.parametrize("entry", ["route_into", "Router"])
def test_torch_errors_name_logits_and_write_nothing(any_path, case, entry):
    torch = pytest.importorskip("torch")
    _, make, exc, fragment = case
    logits = make(torch)
    g = Guarded(8)
    with pytest.raises(exc, match=fragment) as info:
        if entry == "route_into":
            mr.route_into(logits, 2, g.out)
        else:
            mr.Router(16, 2)(logits, out=g.out)
    assert "logits" in str(info.value)
    assert g.untouched_outside()
