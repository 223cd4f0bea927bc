"""Plain NumPy reference router: the independent oracle of the test suite.

The math is done in float64 straight from the definitions, with no attempt
at speed:

    p = softmax(z)                      (max-subtracted; +inf logits share
                                         the mass equally, -inf get 0)
    S = top-K of p, in descending order; equal probabilities resolve to the
        smaller expert index.  p is computed exactly here from the logits'
        order (exp is strictly increasing), so S is the stable descending
        sort of the logits.
    w = p[S]; if norm_topk_prob: w /= sum(w)   (uniform 1/K if the sum is 0)

`route_rows` has the signature of the compiled kernels' entry point, so the
public API (moe_router._api) can run on this module too (path "reference").
"""

import numpy as np

__all__ = ["softmax", "softmax_topk", "route_rows"]


def _rows(logits):
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., num_experts >= 1], got {z.shape}")
    return z, z.reshape(-1, z.shape[-1])


def _check_rows(flat):
    nan_rows = np.isnan(flat).any(axis=1)
    neginf_rows = (flat == -np.inf).all(axis=1)
    if nan_rows.any():
        raise ValueError(f"logits row {int(np.flatnonzero(nan_rows)[0])} contains NaN")
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


def softmax_topk(logits, top_k, norm_topk_prob=True):
    """(expert_ids int64, expert_weights float64), both shaped [..., top_k]."""
    z, flat = _rows(logits)
    if not 1 <= top_k <= flat.shape[1]:
        raise ValueError(f"top_k must be in [1, {flat.shape[1]}], got {top_k}")
    p = softmax(flat)
    ids = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, ids, axis=1)
    if norm_topk_prob:
        s = w.sum(axis=1, keepdims=True)
        w = np.where(s > 0, w / np.where(s > 0, s, 1), 1.0 / top_k)
    shape = z.shape[:-1] + (top_k,)
    return ids.reshape(shape), w.reshape(shape)


def route_rows(logits, top_k, norm_topk_prob, expert_ids, expert_weights, num_threads=1,
               num_experts=0):
    """Kernel-compatible entry (see the compiled route_rows): fill the flat
    output buffers and return the bad-row count, or -1 for anything but the
    plain case, which the public API then validates and converts."""
    if (type(logits) is not np.ndarray or logits.ndim == 0
            or logits.dtype not in (np.float32, np.float64) or not logits.flags.c_contiguous):
        return -1
    n = logits.shape[-1]
    n_rows = logits.size // n if n else 0
    if (n == 0 or (num_experts > 0 and n != num_experts) or not 1 <= top_k <= n
            or expert_ids.size < n_rows * top_k or expert_weights.size < n_rows * top_k
            or not expert_ids.flags.writeable or not expert_weights.flags.writeable
            or np.may_share_memory(logits, expert_ids)
            or np.may_share_memory(logits, expert_weights)):
        return -1
    flat = logits.reshape(-1, n).astype(np.float64)
    bad = np.isnan(flat).any(axis=1) | (flat == -np.inf).all(axis=1)
    if bad.any():
        return int(bad.sum())
    ids, w = softmax_topk(flat, top_k, norm_topk_prob)
    expert_ids[:ids.size] = ids.reshape(-1)
    expert_weights[:ids.size] = w.reshape(-1)
    return 0
