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

The scoring rules of route_rows_rules (moe_router/_rules_kernels.pxi):

moe_router_logit_softcapping = cap > 0
    z = cap * tanh(z / cap) first, everything below on the capped logits
    (a selection on the order of the logits stays on the raw logits': tanh
    is increasing, and they keep apart values that cap to the same float).
sqrtsoftplus scoring
    s = sqrt(softplus(z)) = sqrt(log(1 + exp(z))); a +inf logit (an
    infinite score) has no weights.
e_score_correction_bias with softmax or sqrtsoftplus
    The selection key is p + b (s + b); the weights stay p (s).
tid2eid (with input_ids)
    The ids of a token are tid2eid[input_id], in the table's order; the
    weights are the scores at those ids.
sparsemixer (PhiMoE at inference, top_k = 2)
    Expert 1 is the arg max of z (m = z[i1]); expert j is masked out when
    (m - z_j) / max(|z_j|, m) > 2 * router_jitter_noise (a 0/0 or inf/inf
    ratio masks nothing); w1 = the softmax at i1 over the unmasked experts.
    Expert 2: the same with expert 1 removed (z[i1] = -inf): m2 its max,
    the mask (m2 - z_j) / max(|z_j|, m2) > 2 * router_jitter_noise.  A row
    needs two experts above -inf.  No renormalisation.
divisors (norm_topk_prob)
    moe_normalize_expert_weights = q: w /= (||w||_q + eps) (q = inf: the
    max); moe_norm_min: w /= max(sum(w), moe_norm_min); else
    w /= (sum(w) + eps); eps = 1e-20 for the routers whose selection is
    not on the weights' own order (sigmoid, sqrtsoftplus, groups, a bias,
    tid2eid)
    unless moe_norm_min is set, else 0.

`route_rows` has the signature of the compiled kernels' entry point, so the
public API (moe_router._api) can run on this module too (path "reference").
"""

import numpy as np

__all__ = [
    "rule_bad_rows",
    "softmax",
    "sigmoid",
    "sqrtsoftplus",
    "softmax_topk",
    "route_reference",
    "route_rows",
    "route_rows_rules",
]


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


def sqrtsoftplus(logits):
    """Elementwise sqrt(log(1 + exp(z))) in float64 (DeepSeek-V4's scores)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.sqrt(np.logaddexp(0.0, z))


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


def _sparsemixer(flat, jitter_eps, scale):
    """PhiMoE's eval-mode sparsemixer on rows of float64 logits (see above)."""
    rows = np.arange(len(flat))
    thr = 2.0 * jitter_eps

    def weight(z, m, skip):
        n_inf = (z == np.inf).sum(axis=1)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            r = (m[:, None] - z) / np.maximum(np.abs(z), m[:, None])
            e = np.exp(z - m[:, None])
        keep = ~(r > thr)
        if skip is not None:
            keep[rows, skip] = False
        e = np.where(keep & np.isfinite(e), e, 0.0)
        with np.errstate(divide="ignore"):  # (the +inf rows: replaced below)
            w = 1.0 / e.sum(axis=1)
        # +inf logits share the mass, as under softmax
        return np.where(np.isposinf(m), 1.0 / np.maximum(n_inf - (skip is not None), 1), w)

    i1 = np.argmax(flat, axis=1)
    m1 = flat[rows, i1]
    w1 = weight(flat, m1, None)
    rest = flat.copy()
    rest[rows, i1] = -np.inf
    i2 = np.argmax(rest, axis=1)
    m2 = rest[rows, i2]
    w2 = weight(flat, m2, i1)
    return np.stack([i1, i2], axis=1), np.stack([w1, w2], axis=1) * scale


def rule_bad_rows(flat, scoring_func="softmax"):
    """Rows (of already capped float64 logits) that a router cannot route."""
    bad = np.isnan(flat).any(axis=1)
    if scoring_func in ("softmax", "sparsemixer"):
        bad |= (flat == -np.inf).all(axis=1)
    if scoring_func == "sqrtsoftplus":
        bad |= (flat == np.inf).any(axis=1)
    if scoring_func == "sparsemixer":
        bad |= (flat > -np.inf).sum(axis=1) < 2
    return bad


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
    moe_norm_min=None,
    moe_router_logit_softcapping=None,
    moe_normalize_expert_weights=None,
    router_jitter_noise=None,
    tid2eid=None,
    input_ids=None,
    zero_expert_num=None,
):
    """(expert_ids int64, expert_weights float64), both shaped [..., top_k].

    zero_expert_num does not change the routing (it names which ids are
    identity experts); it is accepted so that a Router's options apply.
    """
    z, flat = _rows(logits)
    n = flat.shape[1]
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k must be in [1, {n}], got {top_k}")
    topk_group = n_group if topk_group is None else topk_group
    grouped = n_group > 1
    bias = (
        None if e_score_correction_bias is None else np.asarray(e_score_correction_bias, np.float64)
    )
    shape = z.shape[:-1] + (top_k,)
    raw = flat  # the selection without a bias: the order of the logits
    if moe_router_logit_softcapping:
        cap = float(moe_router_logit_softcapping)
        flat = cap * np.tanh(flat / cap)
    if rule_bad_rows(flat, scoring_func).any():
        r = int(np.flatnonzero(rule_bad_rows(flat, scoring_func))[0])
        raise ValueError(f"logits row {r} cannot be routed by {scoring_func} ({flat[r]})")
    if scoring_func == "sparsemixer":
        if top_k != 2:
            raise ValueError("sparsemixer routes to top_k=2 experts")
        jitter = 0.01 if router_jitter_noise is None else router_jitter_noise
        ids, w = _sparsemixer(flat, jitter, routed_scaling_factor)
        return ids.reshape(shape), w.reshape(shape)
    if scoring_func == "softmax":
        if topk_on_logits:
            norm_topk_prob = True  # a softmax over the K picked logits
        weights_of = softmax(flat).reshape(flat.shape)
        key = raw if bias is None else weights_of + bias
    elif scoring_func in ("sigmoid", "sqrtsoftplus"):
        weights_of = sigmoid(flat) if scoring_func == "sigmoid" else sqrtsoftplus(flat)
        if bias is None and not grouped:
            key = raw
        else:
            key = weights_of if bias is None else weights_of + bias
    else:
        raise ValueError(f"unknown scoring_func {scoring_func!r}")
    if tid2eid is not None:
        ids = np.asarray(tid2eid, np.int64)[np.asarray(input_ids, np.int64).reshape(-1)]
    elif grouped:
        # The experts of dropped groups rank below every kept one, a kept
        # -inf logit included: they are out of the selection altogether.
        keep = _kept_experts(key, n_group, topk_group, scoring_func == "sigmoid")
        ids = np.lexsort((-key, ~keep), axis=1)[:, :top_k]
    else:
        ids = _top_k(key, top_k)
    w = np.take_along_axis(weights_of, ids, axis=1)
    if norm_topk_prob:
        eps = (
            1e-20
            if (scoring_func != "softmax" or grouped or bias is not None or tid2eid is not None)
            and not moe_norm_min
            else 0.0
        )
        if moe_normalize_expert_weights is not None:
            q = float(moe_normalize_expert_weights)
            # ||w||_q scaled by the largest weight (no under- or overflow
            # for large q); q = inf: that largest weight
            big = w.max(axis=1, keepdims=True)
            if q == np.inf:
                qnorm = big
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = np.where(big > 0, w / big, 0.0)
                qnorm = big * (ratio**q).sum(axis=1, keepdims=True) ** (1.0 / q)
            w = w / (qnorm + eps)
        elif moe_norm_min:
            w = w / np.maximum(w.sum(axis=1, keepdims=True), moe_norm_min)
        else:
            w = w / (w.sum(axis=1, keepdims=True) + eps)
    w = w * routed_scaling_factor
    return ids.reshape(shape), w.reshape(shape)


def softmax_topk(logits, top_k, norm_topk_prob=True):
    """The seed's router: softmax, top-K, optional renormalisation."""
    return route_reference(logits, top_k, norm_topk_prob)


def _widen_half(logits, bf16_bits):
    """float16 / bfloat16 logits (bf16_bits: uint16 holding bfloat16 bits) as
    float32, exactly, as the kernels widen them; other arrays as they are."""
    if logits.dtype == np.float16 or logits.dtype.name == "bfloat16":
        return logits.astype(np.float32)
    if bf16_bits and logits.dtype == np.uint16:
        return (logits.astype(np.uint32) << 16).view(np.float32)
    return logits


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
    logits = _widen_half(logits, bf16_bits)
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


def route_rows_foreign(
    logits, top_k, norm_topk_prob, expert_ids, expert_weights, num_threads, num_experts, views_shape
):
    """Kernel-compatible entry (see the compiled route_rows_foreign): route_rows
    of the plain router."""
    return route_rows(
        logits,
        top_k,
        norm_topk_prob,
        expert_ids,
        expert_weights,
        num_threads,
        num_experts,
        views_shape=views_shape,
    )


_SCORES = ("softmax", "sigmoid", "sqrtsoftplus", "sparsemixer")


def route_rows_rules(
    logits,
    top_k,
    norm_topk_prob,
    expert_ids,
    expert_weights,
    num_threads,
    num_experts,
    score,
    softcap=0.0,
    p_norm=0.0,
    norm_min=0.0,
    eps=0.0,
    routed_scaling_factor=1.0,
    jitter_eps=0.0,
    bias=None,
    tid2eid=None,
    input_ids=None,
    bf16_bits=False,
    views_shape=None,
):
    """Kernel-compatible entry (see the compiled route_rows_rules); `eps` is
    implied by the options here (the reference's own rule).  Half precisions
    are widened to float32 first, as the kernels do."""
    if type(logits) is not np.ndarray or logits.ndim == 0 or not logits.flags.c_contiguous:
        return -1
    logits = _widen_half(logits, bf16_bits)
    if logits.dtype not in (np.float32, np.float64) or not 0 <= score < len(_SCORES):
        return -1
    n = logits.shape[-1]
    n_rows = logits.size // n if n else 0
    if (
        n == 0
        or (num_experts > 0 and n != num_experts)
        or not 1 <= top_k <= n
        or (bias is not None and bias.shape != (n,))
        or expert_ids.size < n_rows * top_k
        or expert_weights.size < n_rows * top_k
        or not expert_ids.flags.writeable
        or not expert_weights.flags.writeable
        or np.may_share_memory(logits, expert_ids)
        or np.may_share_memory(logits, expert_weights)
        or (tid2eid is None) != (input_ids is None)
    ):
        return -1
    if tid2eid is not None:
        tok = np.asarray(input_ids).reshape(-1)
        if tok.size != n_rows or ((tok < 0) | (tok >= len(tid2eid))).any():
            return -1
        if ((tid2eid[tok] < 0) | (tid2eid[tok] >= n)).any():
            return -1
    flat = logits.reshape(-1, n).astype(np.float64)
    if softcap > 0:
        capped = softcap * np.tanh(flat / softcap)
    else:
        capped = flat
    bad = rule_bad_rows(capped, _SCORES[score])
    if bad.any():
        return int(bad.sum())
    if n_rows == 0:
        return 0
    ids, w = route_reference(
        flat,
        top_k,
        norm_topk_prob,
        scoring_func=_SCORES[score],
        routed_scaling_factor=routed_scaling_factor,
        e_score_correction_bias=bias,
        moe_norm_min=norm_min or None,
        moe_router_logit_softcapping=softcap or None,
        moe_normalize_expert_weights=p_norm or None,
        router_jitter_noise=jitter_eps,
        tid2eid=tid2eid,
        input_ids=input_ids,
    )
    # A weight beyond the weights' dtype (unnormalised sqrtsoftplus): a bad
    # row, as the kernels count it.
    over = (np.abs(w) > np.finfo(expert_weights.dtype).max).reshape(n_rows, -1).any(axis=1)
    if over.any():
        return int(over.sum())
    expert_ids[: ids.size] = ids.reshape(-1)
    expert_weights[: ids.size] = w.reshape(-1)
    return 0
