"""Plain NumPy reference router: the independent oracle of the test suite.

Every router variant is computed here in float64 straight from its
definition, with no attempt at speed (z = a token's logits):

softmax scoring
    p = softmax(z)   (max-subtracted; +inf logits share the mass equally,
                      -inf get 0; a row of only -inf has no softmax)
sigmoid scoring
    s = 1 / (1 + exp(-z)),  c = s + e_score_correction_bias (if given)

selection
    The top-K of the selection score, in descending order, equal scores
    resolving to the smaller expert index.  The score is p (softmax), or c
    (sigmoid).  Where it is a strictly increasing function of z (softmax;
    sigmoid without bias or groups) the logits' own order is used: it is
    the exact order of the scores, which float rounding cannot tie.
group limit (n_group > 1)
    Experts form n_group equal groups of consecutive indices.  A group's
    score is its best p (softmax) or the sum of its two best c (sigmoid);
    the topk_group best groups are kept (ties: smaller group index) and the
    experts of the others are excluded (below every kept expert, a -inf
    logit included; never masked as 0).
topk_on_logits
    Take the top-K of z first and score only those: softmax over the K
    (gpt-oss) or sigmoid of each (Llama 4).  With softmax this is the
    renormalised softmax router; with sigmoid, the sigmoid router.
weights
    w = p[S] or s[S]; if norm_topk_prob: w /= sum(w) (softmax, ungrouped)
    or w /= (sum(w) + 1e-20) (sigmoid or grouped, as DeepSeek does);
    then w *= routed_scaling_factor.

`route_rows` has the signature of the compiled kernels' entry point, so the
public API (moe_router._api) can run on this module too (path "reference").
"""

import numpy as np

__all__ = ["softmax", "sigmoid", "softmax_topk", "route_reference", "route_rows"]


def _rows(logits):
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., num_experts >= 1], got {z.shape}")
    return z, z.reshape(-1, z.shape[-1])


def _bad_rows(flat, softmax_scoring=True):
    bad = np.isnan(flat).any(axis=1)
    if softmax_scoring:
        bad |= (flat == -np.inf).all(axis=1)
    return bad


def _check_rows(flat, softmax_scoring=True):
    nan_rows = np.isnan(flat).any(axis=1)
    if nan_rows.any():
        raise ValueError(f"logits row {int(np.flatnonzero(nan_rows)[0])} contains NaN")
    if softmax_scoring:
        neginf_rows = (flat == -np.inf).all(axis=1)
        if neginf_rows.any():
            raise ValueError(f"logits row {int(np.flatnonzero(neginf_rows)[0])} is all -inf")


def softmax(logits):
    """Row softmax in float64 over the last axis, with the +inf/-inf rules above."""
    z, flat = _rows(logits)
    _check_rows(flat)
    m = flat.max(axis=1, keepdims=True)
    posinf = np.isposinf(m[:, 0])
    with np.errstate(invalid="ignore"):
        e = np.exp(flat - m)
    e[posinf] = (flat[posinf] == np.inf).astype(np.float64)
    return (e / e.sum(axis=1, keepdims=True)).reshape(z.shape)


def sigmoid(logits):
    """Elementwise 1 / (1 + exp(-z)) in float64."""
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _top_k(keys, top_k):
    """Indices of the top_k largest keys per row, descending, smaller index first on ties."""
    return np.argsort(-keys, axis=1, kind="stable")[:, :top_k]


def _kept_experts(score, n_group, topk_group, top2_sum):
    """Boolean [rows, n]: the experts of the topk_group best groups."""
    rows, n = score.shape
    grouped = score.reshape(rows, n_group, n // n_group)
    ordered = -np.sort(-grouped, axis=2)
    group_score = ordered[:, :, 0] + ordered[:, :, 1] if top2_sum else ordered[:, :, 0]
    kept = _top_k(group_score, topk_group)
    keep = np.zeros((rows, n_group), bool)
    np.put_along_axis(keep, kept, True, axis=1)
    return np.repeat(keep, n // n_group, axis=1)


def route_reference(
    logits,
    top_k,
    norm_topk_prob=True,
    *,
    scoring_func="softmax",
    topk_on_logits=False,
    n_group=1,
    topk_group=None,
    routed_scaling_factor=1.0,
    e_score_correction_bias=None,
):
    """(expert_ids int64, expert_weights float64), both shaped [..., top_k]."""
    z, flat = _rows(logits)
    n = flat.shape[1]
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k must be in [1, {n}], got {top_k}")
    topk_group = n_group if topk_group is None else topk_group
    grouped = n_group > 1
    if scoring_func == "softmax":
        if topk_on_logits:
            norm_topk_prob = True  # a softmax over the K picked logits
        weights_of = softmax(flat).reshape(flat.shape)
        key = flat
    elif scoring_func == "sigmoid":
        _check_rows(flat, softmax_scoring=False)
        weights_of = sigmoid(flat)
        if e_score_correction_bias is None and not grouped:
            key = flat
        else:
            key = (
                weights_of
                if e_score_correction_bias is None
                else weights_of + np.asarray(e_score_correction_bias, np.float64)
            )
    else:
        raise ValueError(f"unknown scoring_func {scoring_func!r}")
    if grouped:
        # The experts of dropped groups rank below every kept one, a kept
        # -inf logit included: they are out of the selection altogether.
        keep = _kept_experts(key, n_group, topk_group, scoring_func == "sigmoid")
        ids = np.lexsort((-key, ~keep), axis=1)[:, :top_k]
    else:
        ids = _top_k(key, top_k)
    w = np.take_along_axis(weights_of, ids, axis=1)
    if norm_topk_prob:
        eps = 1e-20 if (scoring_func == "sigmoid" or grouped) else 0.0
        w = w / (w.sum(axis=1, keepdims=True) + eps)
    w = w * routed_scaling_factor
    shape = z.shape[:-1] + (top_k,)
    return ids.reshape(shape), w.reshape(shape)


def softmax_topk(logits, top_k, norm_topk_prob=True):
    """The seed's router: softmax, top-K, optional renormalisation."""
    return route_reference(logits, top_k, norm_topk_prob)


def route_rows(
    logits,
    top_k,
    norm_topk_prob,
    expert_ids,
    expert_weights,
    num_threads=1,
    num_experts=0,
    sigmoid=False,
    n_group=1,
    topk_group=1,
    routed_scaling_factor=1.0,
    bias=None,
    bf16_bits=False,
    views_shape=None,
):
    """Kernel-compatible entry (see the compiled route_rows): fill the flat
    output buffers and return the bad-row count, or -1 for anything but the
    plain case, which the public API then validates and converts.  Half
    precisions (float16, bfloat16; bf16_bits: uint16 holding bfloat16 bits)
    are widened to float32 first, exactly, as the kernels do."""
    if type(logits) is not np.ndarray or logits.ndim == 0 or not logits.flags.c_contiguous:
        return -1
    if logits.dtype == np.float16 or logits.dtype.name == "bfloat16":
        logits = logits.astype(np.float32)
    elif bf16_bits and logits.dtype == np.uint16:
        logits = (logits.astype(np.uint32) << 16).view(np.float32)
    if logits.dtype not in (np.float32, np.float64):
        return -1
    n = logits.shape[-1]
    n_rows = logits.size // n if n else 0
    if (
        n == 0
        or (num_experts > 0 and n != num_experts)
        or not 1 <= top_k <= n
        or n % n_group
        or not 1 <= topk_group <= n_group
        or topk_group * (n // n_group) < top_k
        or (bias is not None and (not sigmoid or bias.shape != (n,)))
        or expert_ids.size < n_rows * top_k
        or expert_weights.size < n_rows * top_k
        or not expert_ids.flags.writeable
        or not expert_weights.flags.writeable
        or np.may_share_memory(logits, expert_ids)
        or np.may_share_memory(logits, expert_weights)
    ):
        return -1
    flat = logits.reshape(-1, n).astype(np.float64)
    bad = _bad_rows(flat, softmax_scoring=not sigmoid)
    if bad.any():
        return int(bad.sum())
    ids, w = route_reference(
        flat,
        top_k,
        norm_topk_prob,
        scoring_func="sigmoid" if sigmoid else "softmax",
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=routed_scaling_factor,
        e_score_correction_bias=bias,
    )
    expert_ids[: ids.size] = ids.reshape(-1)
    expert_weights[: ids.size] = w.reshape(-1)
    return 0
