# The scoring rules beyond route_rows' softmax / sigmoid routers: included by
# each `_core_<isa>.pyx` after _router_kernels.pxi, whose row operations
# (_topk, _softmax_sum, the csrc declarations) it reuses.  One row at a time
# (`_rules_row`), every row (`_rules_rows`, the OpenMP loop as _route_rows'),
# and `route_rows_rules`, the entry point that Router / route_into call for a
# variant with one of these rules:
#
#   softcap        z' = cap * tanh(z / cap) before anything else (Laguna)
#   softmax + bias S = top-K(p + b), w = p[S], p = e * (1 / sum e) (ERNIE 4.5,
#                  LongCat-Flash)
#   sqrtsoftplus   s = sqrt(softplus(z)), S = top-K(s [+ b]) (DeepSeek-V4)
#   tid2eid        S = tid2eid[input_id] (DeepSeek-V4 hash layers)
#   sparsemixer    PhiMoE's eval-mode top-2
#   divisors       w /= ||w||_p (DBRX), w /= max(sum, moe_norm_min) (ERNIE)
#
# The contract is route_rows': a few C checks, -1 for anything else (the
# Python layer then validates and raises), else the number of bad rows.

cdef extern from "csrc/rules.hpp" nogil:
    void mr_softcap_into[T](const T* z, Py_ssize_t n, T cap, T* out)
    T mr_exp_into[T](const T* z, Py_ssize_t n, T m, T* e)
    void mr_div_bias_into[T](const T* e, Py_ssize_t n, T total, const T* bias, T* p, T* key,
                             T* lanes)
    T mr_sqrtsoftplus_into[T](const T* z, Py_ssize_t n, T cap, const T* bias, T* s, T* key,
                              T* lanes)
    T mr_sigmoid_bias_into[T](const T* z, Py_ssize_t n, T cap, const T* bias, T* s, T* key,
                              T* lanes)
    void mr_topk_small[T](const T* z, Py_ssize_t n, int k, Py_ssize_t* idx)
    T mr_exp_cap_into[T](const T* z, Py_ssize_t n, T cap, T m, T* e)
    void mr_picked_sqrtsoftplus[T](const T* z, const Py_ssize_t* idx, int k, T* out)
    T mr_sparsemixer_sum[T](const T* z, Py_ssize_t n, T m, T thr, Py_ssize_t skip)
    int mr_rule_approx_topk[T](const T* z, Py_ssize_t n, int sqrtsp, T cap, const T* bias,
                               T bias_max, int k, T* c, T* s, Py_ssize_t* idx)
    void mr_rule_approx_topk_pair[T](const T* z, Py_ssize_t n, int sqrtsp, T cap, const T* bias,
                                     T bias_max, int k, T* c, T* s, Py_ssize_t* idx, int* ok)
    int mr_rule_approx_scores[T](const T* x, Py_ssize_t n, int sqrtsp, T cap, T* out)
    int mr_softmax_bias_pair[T, I, W](const T* z, Py_ssize_t n, int k, const T* bias, int norm,
                                      double norm_min, double eps, double scale, T* e, T* key,
                                      I* ids, W* w)
    int mr_softmax_bias_one[T, I, W](const T* z, Py_ssize_t n, int k, const T* bias, int norm,
                                     double norm_min, double eps, double scale, T* e, T* key,
                                     I* ids, W* w)

cdef extern from "csrc/rules_small.hpp" nogil:
    enum: MR_SMALL_NONE
    ctypedef struct MrSmallRule:
        int kind
        int k
        int norm
        double p_norm, norm_min, eps, scale, thr
    int mr_small_kind(Py_ssize_t n, Py_ssize_t k, int softmax, int sparsemixer, double cap,
                      double eps, int has_bias, int has_table)
    Py_ssize_t mr_small_pairs[T, I, W](const T* z, Py_ssize_t n, Py_ssize_t n_rows, Py_ssize_t p0,
                                       Py_ssize_t p1, const MrSmallRule* rule, I* ids, W* w,
                                       int* st)

from libc.math cimport pow as c_pow, sqrt

# Scoring rules (the `score` argument of route_rows_rules).
cdef enum:
    SCORE_SOFTMAX = 0
    SCORE_SIGMOID = 1
    SCORE_SQRTSOFTPLUS = 2
    SCORE_SPARSEMIXER = 3

# Row statuses besides _router_kernels.pxi's.
cdef enum:
    ROW_POS_INF = 3      # sqrtsoftplus: a +inf score
    ROW_ONE_EXPERT = 4   # sparsemixer: fewer than two experts above -inf

SCORE_KINDS = {"softmax": SCORE_SOFTMAX, "sigmoid": SCORE_SIGMOID,
               "sqrtsoftplus": SCORE_SQRTSOFTPLUS, "sparsemixer": SCORE_SPARSEMIXER}


cdef struct RulesCtx:
    Py_ssize_t n_rows
    Py_ssize_t n
    Py_ssize_t k
    int score
    bint norm
    double cap          # > 0: soft-cap the logits
    double p_norm       # 0: divide by the sum; > 0: by the p-norm (inf: the max)
    double norm_min     # > 0: the divisor is at least this (on the probabilities)
    double eps          # added to the sum (or p-norm) when renormalising
    double scale        # routed_scaling_factor
    double thr          # sparsemixer: 2 * router_jitter_noise
    const void* bias    # selection bias in the logits' dtype, or NULL
    const int64_t* table  # tid2eid [vocab, k], or NULL
    const int64_t* tokens # input ids [n_rows] (with table)
    void* scratch
    Py_ssize_t scratch_per_thread
    int num_threads
    double bias_abs_max # max |bias| (float32 logits; mr_rule_approx_topk's slack)


cdef inline bint _softmax_bias_fused(const RulesCtx* cx) noexcept nogil:
    # The routers whose rows take rules.hpp's mr_softmax_bias_rows (one or two
    # at a time): softmax with a selection bias, no cap, p-norm or table.
    return (cx.score == SCORE_SOFTMAX and cx.bias != NULL and cx.cap <= 0 and cx.p_norm == 0
            and cx.table == NULL and cx.k <= MR_BLOCK)


cdef inline void _picked_block(const floating* z, const floating* s, const id_t* ids,
                               Py_ssize_t kb, floating m, const RulesCtx* cx,
                               floating* out) noexcept nogil:
    # out[0..kb) (kb <= MR_BLOCK) = the unnormalised weights of the picked
    # experts: s[id] where all scores were computed (s not NULL), else from
    # the logits (soft-capped first, when the router caps): exp(z - m)
    # (softmax, m the capped max; +inf logits share the mass), sigmoid(z),
    # sqrt(softplus(z)).
    cdef Py_ssize_t j
    cdef Py_ssize_t idx[MR_BLOCK]
    cdef floating zp[MR_BLOCK]
    cdef const floating* src = z
    if s != NULL:
        for j in range(kb):
            out[j] = s[ids[j]]
        return
    if cx.score == SCORE_SOFTMAX and m == INFINITY:  # (no cap: it leaves no inf)
        for j in range(kb):
            out[j] = 1 if z[ids[j]] == INFINITY else 0
        return
    if cx.cap > 0:
        for j in range(kb):
            zp[j] = z[ids[j]]
            idx[j] = j
        mr_softcap_into(<const floating*>zp, kb, <floating>cx.cap, zp)
        src = zp
    else:
        for j in range(kb):
            idx[j] = ids[j]
    if cx.score == SCORE_SOFTMAX:
        mr_picked_exp(src, idx, <int>kb, m, out)
    elif cx.score == SCORE_SIGMOID:
        mr_picked_sigmoid(src, idx, <int>kb, out)
    else:
        mr_picked_sqrtsoftplus(src, idx, <int>kb, out)


cdef inline void _rules_topk(const floating* key, Py_ssize_t n, Py_ssize_t k,
                             const floating* lanes, id_t* ids_out) noexcept nogil:
    # The top-k of a NaN-free row: branch-free ranks for short rows, else
    # _router_kernels.pxi's _topk (lanes: key's, from mr_max_lanes).
    cdef Py_ssize_t idx[2 * MR_BLOCK + 1]
    cdef Py_ssize_t j
    if n <= 2 * MR_BLOCK:
        mr_topk_small(key, n, <int>k, idx)
        for j in range(k):
            ids_out[j] = <id_t>idx[j]
    else:
        _topk(key, n, k, lanes, ids_out, 0, <floating*>NULL)


cdef inline double _p_norm(const floating* e, Py_ssize_t k, double p) noexcept nogil:
    # ||e[0..k)||_p in double, scaled by the largest |e| (no overflow or
    # underflow for large p); p = inf: the largest.  e >= 0 here.
    cdef double mx = 0, acc = 0
    cdef Py_ssize_t j
    for j in range(k):
        if e[j] > mx:
            mx = e[j]
    if mx == 0 or p == INFINITY:
        return mx
    if p == 2:  # (no pow: it is most of a short row's time)
        for j in range(k):
            acc += (e[j] / mx) * (e[j] / mx)
        return mx * sqrt(acc)
    for j in range(k):
        acc += c_pow(e[j] / mx, p)
    return mx * c_pow(acc, 1.0 / p)


cdef int _sparsemixer_row(const floating* zc, const floating* lanes, const RulesCtx* cx,
                          floating m, id_t* ids_out, weight_t* w_out) noexcept nogil:
    # PhiMoE's sparsemixer at inference: expert 1 is the arg max, its weight
    # the softmax at it over the experts not masked by the relative
    # threshold (m - z) / max(|z|, m) > 2 * jitter_eps; expert 2 the same
    # over the others with expert 1 left out.  Ties: the smaller index.
    cdef Py_ssize_t n = cx.n, j, i1, i2, n_inf = 0
    cdef floating m2, thr = <floating>cx.thr, scale = <floating>cx.scale
    cdef floating w1, w2
    cdef id_t two[2]
    _rules_topk(zc, n, 2, lanes, two)  # (value descending, index ascending)
    i1 = two[0]
    i2 = two[1]
    m2 = zc[i2]
    if m2 == -INFINITY:
        return ROW_ONE_EXPERT
    if m == INFINITY:  # (+inf logits share the mass, as the softmax routers')
        for j in range(n):
            n_inf += zc[j] == INFINITY
    if m == INFINITY:
        w1 = 1 / <floating>n_inf
    else:
        w1 = 1 / mr_sparsemixer_sum(zc, n, m, thr, -1)
    if m2 == INFINITY:
        w2 = 1 / <floating>(n_inf - 1)
    else:
        w2 = 1 / mr_sparsemixer_sum(zc, n, m2, thr, i1)
    ids_out[0] = <id_t>i1
    ids_out[1] = <id_t>i2
    w_out[0] = <weight_t>(w1 * scale)
    w_out[1] = <weight_t>(w2 * scale)
    return ROW_OK


cdef int _rules_row(const floating* z, const RulesCtx* cx, floating* scratch,
                    const int64_t* table_row, id_t* ids_out, weight_t* w_out) noexcept nogil:
    """Route one row under the rules of cx: ROW_OK, or why it cannot be routed.

    scratch holds 3 * n + MR_BLOCK values: the capped logits (the
    sparsemixer and the unnormalised softmax), the scores (when every
    expert's is needed: a bias), the selection keys, then the picked
    experts' scores.  table_row: the row's tid2eid entry, or NULL.  The
    selection without a bias is on the raw logits: the cap and the scores
    are increasing functions of them, and the logits keep apart values
    whose capped scores round to the same number.
    """
    cdef floating lanes[MR_BLOCK]
    cdef Py_ssize_t idx[MR_BLOCK + 1]
    cdef Py_ssize_t n = cx.n, k = cx.k, j
    cdef floating* s = NULL
    cdef floating* key = scratch + 2 * n
    cdef floating m, mc, total, key_max
    cdef floating cap = <floating>cx.cap
    cdef int has_nan, st
    cdef int score = cx.score
    if cx.bias != NULL and (score == SCORE_SIGMOID or score == SCORE_SQRTSOFTPLUS):
        # First the selection on approximate scores, decided on the
        # candidates' exact keys (AVX2 float32; it gives the exact pass's
        # ids, and the candidates' exact scores in s, the weights' source).
        if (table_row == NULL and k <= MR_BLOCK
                and mr_rule_approx_topk(z, n, score == SCORE_SQRTSOFTPLUS, cap,
                                        <const floating*>cx.bias, <floating>cx.bias_abs_max,
                                        <int>k, key, scratch + n, idx)):
            for j in range(k):
                ids_out[j] = <id_t>idx[j]
            return _rules_weights(z, cx, scratch, scratch + n, NULL, 0, 0, ids_out, w_out)
        # One pass: the scores, the keys, their lane maxima, and the NaN
        # check (a NaN logit makes its key NaN, and the bias is finite).
        s = scratch + n
        if score == SCORE_SIGMOID:
            key_max = mr_sigmoid_bias_into(z, n, cap, <const floating*>cx.bias, s, key, lanes)
        else:
            key_max = mr_sqrtsoftplus_into(z, n, cap, <const floating*>cx.bias, s, key, lanes)
        if key_max != key_max:
            return ROW_NAN
        if key_max == INFINITY:  # (sqrtsoftplus of +inf; the sigmoid is <= 1)
            return ROW_POS_INF
        if table_row == NULL:
            _rules_topk(key, n, k, lanes, ids_out)
        return _rules_weights(z, cx, scratch, s, table_row, 0, 0, ids_out, w_out)
    if _softmax_bias_fused(cx):
        # ERNIE, LongCat-Flash: every step below in one C++ function, the
        # same bits (bit 0: a row it leaves to them)
        st = mr_softmax_bias_one(z, n, <int>k, <const floating*>cx.bias, cx.norm, cx.norm_min,
                                 cx.eps, cx.scale, scratch + n, key, ids_out, w_out)
        if not st & 1:
            return ROW_WEIGHT_OVERFLOW if st else ROW_OK
    # The softmax routers (and the ones without a bias): the row max first.
    m = mr_max_lanes(z, n, lanes, &has_nan)
    if has_nan:
        return ROW_NAN
    mc = m  # the capped row max
    if cap > 0:
        mr_softcap_into(&m, 1, cap, &mc)
    if (score == SCORE_SOFTMAX or score == SCORE_SPARSEMIXER) and mc == -INFINITY:
        return ROW_ALL_NEG_INF
    if score == SCORE_SQRTSOFTPLUS and mc == INFINITY:
        return ROW_POS_INF
    if score == SCORE_SPARSEMIXER:
        if cap > 0:
            mr_softcap_into(z, n, cap, scratch)
            mr_max_lanes(scratch, n, lanes, &has_nan)
            return _sparsemixer_row(scratch, lanes, cx, mc, ids_out, w_out)
        return _sparsemixer_row(z, lanes, cx, m, ids_out, w_out)
    if cx.bias != NULL:
        # Every expert's score, then the selection on score + bias.
        s = scratch + n
        if score == SCORE_SOFTMAX:
            if mc == INFINITY:
                total = 0
                for j in range(n):
                    s[j] = 1 if z[j] == INFINITY else 0
                    total += s[j]
            elif cap > 0:
                total = mr_exp_cap_into(z, n, cap, mc, s)
            else:
                total = mr_exp_into(z, n, m, s)
            mr_div_bias_into(s, n, total, <const floating*>cx.bias, s, key, lanes)
        if table_row == NULL:
            _rules_topk(key, n, k, lanes, ids_out)
    elif table_row == NULL:
        _rules_topk(z, n, k, lanes, ids_out)
    return _rules_weights(z, cx, scratch, s, table_row, m, mc, ids_out, w_out)


cdef int _rules_weights(const floating* z, const RulesCtx* cx, floating* scratch,
                        const floating* s, const int64_t* table_row, floating m, floating mc,
                        id_t* ids_out, weight_t* w_out) noexcept nogil:
    # The second half of _rules_row: the ids from the table (if any), the
    # picked experts' weights.  s: every expert's score, or NULL; m, mc:
    # the row's max, raw and capped (softmax only).
    cdef Py_ssize_t n = cx.n, k = cx.k, j, kb
    cdef floating* e = scratch + 2 * n  # the picked scores (after the selection)
    cdef floating total = 1, divisor, scale = <floating>cx.scale
    cdef floating cap = <floating>cx.cap
    cdef double block_sums = 0
    cdef int score = cx.score
    if table_row != NULL:
        for j in range(k):
            ids_out[j] = <id_t>table_row[j]
    # The picked experts' scores into e, block by block; their sum in
    # double across blocks (one block: its mr_sum_k, as _route_row's).
    j = 0
    while j < k:
        kb = min(MR_BLOCK, k - j)
        _picked_block(z, s, ids_out + j, kb, mc, cx, e + j)
        block_sums += mr_sum_k(e + j, <int>kb)
        j += MR_BLOCK
    if score == SCORE_SOFTMAX and s == NULL and (not cx.norm or cx.norm_min > 0 or cx.eps > 0):
        # the full softmax sum (of the capped logits): the weights are
        # e / total, and the divisors below are on that scale
        total = mr_exp_cap_into(z, n, cap, mc, scratch) if cap > 0 else _softmax_sum(z, n, m)
    if not cx.norm:
        divisor = total if score == SCORE_SOFTMAX else 1
    elif cx.p_norm > 0:
        divisor = <floating>(_p_norm(e, k, cx.p_norm) + cx.eps * total)
    else:
        divisor = <floating>(block_sums + cx.eps * total)
        if cx.norm_min > 0 and divisor < <floating>cx.norm_min * total:
            # ERNIE: the probabilities' sum clamped below at moe_norm_min
            divisor = <floating>cx.norm_min * total
    cdef bint overflow = False
    for j in range(k):
        w_out[j] = <weight_t>((e[j] * scale) / divisor)
        # Unnormalised sqrtsoftplus scores grow as sqrt(z): float64 logits
        # can give weights beyond float32 (the other rules' are <= scale).
        overflow |= w_out[j] == INFINITY
    return ROW_WEIGHT_OVERFLOW if overflow else ROW_OK


def exp_pass_into(const floating[::1] x, double m, floating[::1] out):
    """out[i] = exp(x[i] - m) by the softmax rules' pass over a row
    (mr_exp_into: the exps of x - m <= 0, MR_EXP_NI vectors interleaved),
    returning their sum; for tests.  m: finite, at least max(x)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef floating total
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} elements, x has {n}")
    if not (-INFINITY < m < INFINITY):
        raise ValueError(f"m must be finite, got {m}")
    if n == 0:
        return 0.0
    if not np.asarray(x).max() <= m:
        raise ValueError(f"m must be at least max(x) (no NaN in x), got {m}")
    with nogil:
        total = mr_exp_into(&x[0], n, <floating>m, &out[0])
    return float(total)


def rule_approx_scores_into(const float[::1] x, float[::1] out, bint sqrtsoftplus, double cap=0):
    """out = the approximate scores that mr_rule_approx_topk selects on (the
    sigmoid or sqrtsoftplus of x soft-capped at cap when cap > 0), for
    tests: None when this build has none, else whether one is NaN.
    len(x) must be a multiple of 16."""
    cdef int r
    if out.shape[0] != x.shape[0] or x.shape[0] % 16:
        raise ValueError(f"x and out need the same length, a multiple of 16; got {x.shape[0]}, {out.shape[0]}")
    if x.shape[0] == 0:
        return False
    r = mr_rule_approx_scores(&x[0], x.shape[0], sqrtsoftplus, <float>cap, &out[0])
    return None if r < 0 else bool(r)


def rule_topk_rows(const float[:, ::1] z, Py_ssize_t top_k, bint sqrtsoftplus, double cap,
                   const float[::1] bias, bint approx):
    """The ids of the biased sigmoid / sqrtsoftplus selection of each row
    (logits soft-capped at cap when cap > 0), for tests: (ids [rows,
    top_k], taken [rows]).  approx: by mr_rule_approx_topk (a row it leaves
    to the exact pass, or every row in a build without it, is not taken);
    else by the exact pass and top-k (a NaN or +inf key: not taken).  Rows
    not taken have ids -1."""
    cdef Py_ssize_t rows = z.shape[0], n = z.shape[1], r, j
    cdef Py_ssize_t idx[MR_BLOCK + 1]
    cdef int64_t got[MR_BLOCK]
    cdef float lanes[MR_BLOCK]
    cdef float key_max
    if not 1 <= top_k <= min(n, MR_BLOCK) or bias.shape[0] != n or not cap >= 0:
        raise ValueError(f"top_k={top_k}, cap={cap} and {bias.shape[0]} bias values do not fit {n} experts")
    cdef float bias_max = mr_abs_max(&bias[0], n)
    ids = np.full((rows, top_k), -1, np.int64)
    taken = np.zeros(rows, bool)
    cdef float[::1] s = np.empty(n, np.float32)
    cdef float[::1] key = np.empty(n, np.float32)
    for r in range(rows):
        if approx:
            if not mr_rule_approx_topk(&z[r, 0], n, sqrtsoftplus, <float>cap, &bias[0], bias_max,
                                       <int>top_k, &key[0], &s[0], idx):
                continue
            for j in range(top_k):
                got[j] = idx[j]
        else:
            if sqrtsoftplus:
                key_max = mr_sqrtsoftplus_into(&z[r, 0], n, <float>cap, &bias[0], &s[0], &key[0], lanes)
            else:
                key_max = mr_sigmoid_bias_into(&z[r, 0], n, <float>cap, &bias[0], &s[0], &key[0], lanes)
            if key_max != key_max or key_max == INFINITY:
                continue
            _rules_topk(<const float*>&key[0], n, top_k, <const float*>lanes, got)
        taken[r] = True
        for j in range(top_k):
            ids[r, j] = got[j]
    return ids, taken


cdef Py_ssize_t _rules_pair(const floating* z, const RulesCtx* cx, floating* scratch,
                            id_t* ids_out, weight_t* w_out) noexcept nogil:
    # Rows z[0..n) and z[n..2n) of the biased sigmoid / sqrtsoftplus rules
    # without a table: the approximate selection of both at once (each step
    # for both rows), the weights from the candidates' exact scores (s of
    # row h at scratch[h * n...]), then _rules_row for a row it left (its
    # scratch use overwrites the other row's scores: the taken rows go
    # first).  Returns the number of bad rows; the bits of _rules_row's.
    cdef Py_ssize_t n = cx.n, k = cx.k, j, n_bad = 0
    cdef Py_ssize_t idx[2 * (MR_BLOCK + 1)]
    cdef int ok[2]
    cdef int h, st
    if _softmax_bias_fused(cx):  # (the exps to scratch[0..2n), the keys after them)
        st = mr_softmax_bias_pair(z, n, <int>k, <const floating*>cx.bias, cx.norm, cx.norm_min,
                                  cx.eps, cx.scale, scratch, scratch + 2 * n, ids_out, w_out)
        for h in range(2):
            if st >> h & 1:
                n_bad += _rules_row(z + h * n, cx, scratch, NULL, ids_out + h * k,
                                    w_out + h * k) != ROW_OK
            elif st >> (2 + h) & 1:
                n_bad += 1  # ROW_WEIGHT_OVERFLOW
        return n_bad
    mr_rule_approx_topk_pair(z, n, cx.score == SCORE_SQRTSOFTPLUS, <floating>cx.cap,
                             <const floating*>cx.bias, <floating>cx.bias_abs_max, <int>k,
                             scratch + 2 * n, scratch, idx, ok)
    for h in range(2):
        if ok[h]:
            for j in range(k):
                ids_out[h * k + j] = <id_t>idx[h * (MR_BLOCK + 1) + j]
            n_bad += _rules_weights(z + h * n, cx, scratch, scratch + h * n, NULL, 0, 0,
                                    ids_out + h * k, w_out + h * k) != ROW_OK
    for h in range(2):
        if not ok[h]:
            n_bad += _rules_row(z + h * n, cx, scratch, NULL, ids_out + h * k, w_out + h * k) != ROW_OK
    return n_bad


cdef Py_ssize_t _rules_small_span(const floating* logits, id_t* ids_out, weight_t* w_out,
                                  const RulesCtx* cx, const MrSmallRule* small, Py_ssize_t p0,
                                  Py_ssize_t p1, floating* scratch) noexcept nogil:
    # Pairs [p0, p1) of rows (rows 2p and 2p + 1, or the last one alone) on
    # rules_small.hpp's path, which returns at a pair with a row it leaves
    # (a non-finite value, a tie: _rules_row takes it) or a weight overflow.
    cdef Py_ssize_t p, r, r0, n = cx.n, k = cx.k, n_bad = 0
    cdef int st = 0, rows
    while p0 < p1:
        p = mr_small_pairs(logits, n, cx.n_rows, p0, p1, small, ids_out, w_out, &st)
        if p >= p1:
            break
        r0 = 2 * p
        rows = 2 if r0 + 1 < cx.n_rows else 1
        for r in range(rows):
            if st >> r & 1:
                n_bad += _rules_row(logits + (r0 + r) * n, cx, scratch, NULL,
                                    ids_out + (r0 + r) * k, w_out + (r0 + r) * k) != ROW_OK
            elif st >> (rows + r) & 1:
                n_bad += 1  # ROW_WEIGHT_OVERFLOW
        p0 = p + 1
    return n_bad


@cython.cdivision(True)  # nt >= 2: C division, no error path in the prange even in debug builds
cdef Py_ssize_t _rules_rows_small(const floating* logits, id_t* ids_out, weight_t* w_out,
                                  const RulesCtx* cx, const MrSmallRule* small) noexcept nogil:
    # One span of pairs per thread (each row's bits do not depend on which).
    cdef Py_ssize_t t, n_bad = 0, n_pairs = (cx.n_rows + 1) // 2, nt = cx.num_threads
    cdef floating* scratch = <floating*>cx.scratch
    if nt > 1:
        for t in prange(nt, num_threads=nt, schedule='static'):
            n_bad += _rules_small_span(logits, ids_out, w_out, cx, small, t * n_pairs // nt,
                                       (t + 1) * n_pairs // nt,
                                       scratch + threadid() * cx.scratch_per_thread)
    else:
        n_bad = _rules_small_span(logits, ids_out, w_out, cx, small, 0, n_pairs, scratch)
    return n_bad


cdef Py_ssize_t _rules_rows(const floating* logits, id_t* ids_out, weight_t* w_out,
                            const RulesCtx* cx) noexcept nogil:
    """Route every row; returns the number of rows that could not be routed."""
    cdef Py_ssize_t r, q, r0 = 0, n_bad = 0, n = cx.n, k = cx.k
    cdef floating* scratch = <floating*>cx.scratch
    cdef Py_ssize_t per_thread = cx.scratch_per_thread
    cdef const int64_t* table = cx.table
    # Two rows at a time where the approximate selection may take them
    # (float32 with a bias, no table, n a multiple of 16, k <= MR_BLOCK).
    cdef bint pairs = ((floating is float and cx.bias != NULL and table == NULL and n % 16 == 0
                        and k <= MR_BLOCK
                        and (cx.score == SCORE_SIGMOID or cx.score == SCORE_SQRTSOFTPLUS))
                       or _softmax_bias_fused(cx))
    cdef MrSmallRule small
    # Rows of up to 16 experts under the plain softmax rules or sparsemixer:
    # rules_small.hpp's register path, the same bits (a shape's property).
    small.kind = mr_small_kind(n, k, cx.score == SCORE_SOFTMAX, cx.score == SCORE_SPARSEMIXER,
                               cx.cap, cx.eps, cx.bias != NULL, table != NULL)
    if small.kind != MR_SMALL_NONE:
        small.k = <int>k
        small.norm = cx.norm
        small.p_norm = cx.p_norm
        small.norm_min = cx.norm_min
        small.eps = cx.eps
        small.scale = cx.scale
        small.thr = cx.thr
        return _rules_rows_small(logits, ids_out, w_out, cx, &small)
    if cx.num_threads > 1:
        if pairs:
            for q in prange(cx.n_rows // 2, num_threads=cx.num_threads, schedule='static'):
                n_bad += _rules_pair(logits + 2 * q * n, cx, scratch + threadid() * per_thread,
                                     ids_out + 2 * q * k, w_out + 2 * q * k)
            r0 = cx.n_rows - cx.n_rows % 2
        for r in prange(r0, cx.n_rows, num_threads=cx.num_threads, schedule='static'):
            n_bad += _rules_row(logits + r * n, cx, scratch + threadid() * per_thread,
                                table + cx.tokens[r] * k if table != NULL else NULL,
                                ids_out + r * k, w_out + r * k) != ROW_OK
    else:
        if pairs:
            for q in range(cx.n_rows // 2):
                n_bad += _rules_pair(logits + 2 * q * n, cx, scratch, ids_out + 2 * q * k,
                                     w_out + 2 * q * k)
            r0 = cx.n_rows - cx.n_rows % 2
        for r in range(r0, cx.n_rows):
            n_bad += _rules_row(logits + r * n, cx, scratch,
                                table + cx.tokens[r] * k if table != NULL else NULL,
                                ids_out + r * k, w_out + r * k) != ROW_OK
    return n_bad


cdef Py_ssize_t _rules_rows_w(const floating* logits, id_t* ids_out, void* w_out, bint w64,
                              const RulesCtx* cx) noexcept nogil:
    if w64:
        return _rules_rows(logits, ids_out, <double*>w_out, cx)
    return _rules_rows(logits, ids_out, <float*>w_out, cx)


cdef Py_ssize_t _rules_rows_typed(const floating* logits, void* ids_out, bint ids64,
                                  void* w_out, bint w64, const RulesCtx* cx) noexcept nogil:
    if ids64:
        return _rules_rows_w(logits, <int64_t*>ids_out, w_out, w64, cx)
    return _rules_rows_w(logits, <int32_t*>ids_out, w_out, w64, cx)


cdef Py_ssize_t _rules_half_chunk(const uint16_t* logits, bint bf16, Py_ssize_t r0,
                                  Py_ssize_t r1, char* ids_out, Py_ssize_t id_size,
                                  bint ids64, char* w_out, Py_ssize_t w_size, bint w64,
                                  const RulesCtx* cx, int tid, float* heap_buf) noexcept nogil:
    # Rows [r0, r1) of half-precision logits widened into float32 (exactly)
    # and routed as float32, on the calling thread: _route_half_chunk's rule.
    cdef float stack_buf[HALF_CHUNK_FLOATS + 16]
    # On a cache line, as NumPy's own arrays are: vector loads of the
    # widened rows then never straddle two lines.
    cdef float* buf = heap_buf if heap_buf != NULL else <float*>((<size_t>stack_buf + 63) & ~(<size_t>63))
    cdef RulesCtx sub = cx[0]
    cdef Py_ssize_t n = cx.n, k = cx.k
    if bf16:
        mr_widen_bf16(logits + r0 * n, (r1 - r0) * n, buf)
    else:
        mr_widen_f16(logits + r0 * n, (r1 - r0) * n, buf)
    sub.n_rows = r1 - r0
    sub.num_threads = 1
    sub.scratch = <char*>cx.scratch + tid * cx.scratch_per_thread * sizeof(float)
    if cx.tokens != NULL:
        sub.tokens = cx.tokens + r0
    return _rules_rows_typed(<const float*>buf, ids_out + r0 * k * id_size, ids64,
                             w_out + r0 * k * w_size, w64, &sub)


cdef Py_ssize_t _rules_rows_half(const uint16_t* logits, bint bf16, void* ids_out, bint ids64,
                                 void* w_out, bint w64, const RulesCtx* cx,
                                 float* heap_buf) noexcept nogil:
    cdef Py_ssize_t n = cx.n, n_bad = 0, c, n_chunks, rows_per_chunk
    cdef Py_ssize_t id_size = 8 if ids64 else 4, w_size = 8 if w64 else 4
    rows_per_chunk = 2 if heap_buf != NULL else max(2, (HALF_CHUNK_FLOATS // n) & ~1)
    n_chunks = (cx.n_rows + rows_per_chunk - 1) // rows_per_chunk
    if cx.num_threads > 1 and n_chunks > 1:
        for c in prange(n_chunks, num_threads=cx.num_threads, schedule='static'):
            n_bad += _rules_half_chunk(
                logits, bf16, c * rows_per_chunk, min(cx.n_rows, (c + 1) * rows_per_chunk),
                <char*>ids_out, id_size, ids64, <char*>w_out, w_size, w64, cx, threadid(),
                heap_buf + threadid() * 2 * n if heap_buf != NULL else NULL)
    else:
        for c in range(n_chunks):
            n_bad += _rules_half_chunk(
                logits, bf16, c * rows_per_chunk, min(cx.n_rows, (c + 1) * rows_per_chunk),
                <char*>ids_out, id_size, ids64, <char*>w_out, w_size, w64, cx, 0, heap_buf)
    return n_bad


def route_rows_rules(object logits, Py_ssize_t top_k, bint norm_topk_prob,
                     cnp.ndarray expert_ids, cnp.ndarray expert_weights,
                     int num_threads, Py_ssize_t num_experts, int score,
                     double softcap=0, double p_norm=0, double norm_min=0, double eps=0,
                     double routed_scaling_factor=1.0, double jitter_eps=0,
                     object bias=None, object tid2eid=None, object input_ids=None,
                     bint bf16_bits=False, object views_shape=None):
    """Route logits [..., num_experts] under a scoring rule (see the top of
    _rules_kernels.pxi) into flat output buffers.

    Returns the number of rows that could not be routed, 0 when all were,
    or -1 without writing anything when the call is not the plain case
    (route_rows' conditions, and: score or the settings out of range, a
    bias not a C-contiguous [num_experts] array of the logits' dtype,
    tid2eid not a C-contiguous int64 [vocab, top_k] array, input_ids not a
    C-contiguous int64 array of the logits' leading shape, an id out of [0, vocab) or
    a table entry of a routed token out of [0, num_experts)).  The table
    entries are checked for the routed tokens only, with the GIL held.
    Logits are read as route_rows reads them (float16 / bfloat16 widened a
    few rows at a time, DLPack tensors; hash routing takes ndarrays only),
    with its bf16_bits, views_shape and -2 return.
    """
    cdef cnp.ndarray arr, tab, tok
    cdef LogitsRef ref
    cdef int nd, lt, wt, it
    cdef Py_ssize_t n, n_bad = 0, r, j, vocab = 0, item
    cdef const int64_t* tp
    cdef const int64_t* ip_tok
    cdef int64_t t
    cdef void* ip
    cdef void* wp
    cdef float* heap_buf = NULL
    cdef RulesCtx cx
    if _logits_ref(logits, &ref, bf16_bits, views_shape) != 0:
        return -1
    n = ref.n
    # Half precisions are routed as float32: their scratch and bias too.
    lt = cnp.NPY_FLOAT64 if ref.kind == LK_F64 else cnp.NPY_FLOAT32
    item = 8 if ref.kind == LK_F64 else 4
    wt = cnp.PyArray_TYPE(expert_weights)
    it = cnp.PyArray_TYPE(expert_ids)
    if (n == 0 or (num_experts > 0 and n != num_experts) or top_k < 1 or top_k > n
            or score < SCORE_SOFTMAX or score > SCORE_SPARSEMIXER
            or (score == SCORE_SPARSEMIXER and top_k != 2)
            or not (softcap >= 0 and p_norm >= 0 and norm_min >= 0 and eps >= 0
                    and jitter_eps >= 0 and routed_scaling_factor > 0)
            or softcap == INFINITY or norm_min == INFINITY or eps == INFINITY
            or jitter_eps == INFINITY or routed_scaling_factor == INFINITY
            or (wt != cnp.NPY_FLOAT32 and wt != cnp.NPY_FLOAT64)
            or (it != cnp.NPY_INT32 and it != cnp.NPY_UINT32 and it != cnp.NPY_INT64)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_ids)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_weights)
            or not cnp.PyArray_ISWRITEABLE(expert_ids)
            or not cnp.PyArray_ISWRITEABLE(expert_weights)
            or not cnp.PyArray_ISNOTSWAPPED(expert_ids)
            or not cnp.PyArray_ISNOTSWAPPED(expert_weights)):
        return -1
    if (it == cnp.NPY_INT32 and n > 2147483648) or (it == cnp.NPY_UINT32 and n > 4294967296):
        return -1
    cx.bias = NULL
    if bias is not None:
        if (not cnp.PyArray_CheckExact(bias) or cnp.PyArray_TYPE(<cnp.ndarray>bias) != lt
                or cnp.PyArray_NDIM(<cnp.ndarray>bias) != 1 or cnp.PyArray_DIM(<cnp.ndarray>bias, 0) != n
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>bias)
                or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>bias) or score == SCORE_SPARSEMIXER):
            return -1
        cx.bias = cnp.PyArray_DATA(<cnp.ndarray>bias)
    cx.bias_abs_max = mr_abs_max(<const float*>cx.bias, n) if cx.bias != NULL and item == 4 else 0
    cx.n_rows = ref.n_rows
    if (cnp.PyArray_SIZE(expert_ids) < cx.n_rows * top_k
            or cnp.PyArray_SIZE(expert_weights) < cx.n_rows * top_k
            or _overlap_bytes(ref.data, ref.nbytes, expert_ids)
            or _overlap_bytes(ref.data, ref.nbytes, expert_weights)
            or _overlap(expert_ids, expert_weights)):
        return -1
    cx.table = NULL
    cx.tokens = NULL
    if tid2eid is not None:
        if (not cnp.PyArray_CheckExact(tid2eid) or not cnp.PyArray_CheckExact(input_ids)
                or score == SCORE_SPARSEMIXER or not cnp.PyArray_CheckExact(logits)):
            return -1
        arr = <cnp.ndarray>logits
        nd = cnp.PyArray_NDIM(arr)
        tab = <cnp.ndarray>tid2eid
        tok = <cnp.ndarray>input_ids
        if (cnp.PyArray_TYPE(tab) != cnp.NPY_INT64 or cnp.PyArray_NDIM(tab) != 2
                or cnp.PyArray_DIM(tab, 1) != top_k or not cnp.PyArray_IS_C_CONTIGUOUS(tab)
                or not cnp.PyArray_ISNOTSWAPPED(tab)
                or cnp.PyArray_TYPE(tok) != cnp.NPY_INT64 or cnp.PyArray_SIZE(tok) != cx.n_rows
                or not cnp.PyArray_IS_C_CONTIGUOUS(tok) or not cnp.PyArray_ISNOTSWAPPED(tok)
                or _overlap(tok, expert_ids) or _overlap(tok, expert_weights)):
            return -1
        if cnp.PyArray_NDIM(tok) != nd - 1:
            return -1
        for j in range(nd - 1):  # one id per token, in the logits' leading shape
            if cnp.PyArray_DIM(tok, j) != cnp.PyArray_DIM(arr, j):
                return -1
        vocab = cnp.PyArray_DIM(tab, 0)
        tp = <const int64_t*>cnp.PyArray_DATA(tab)
        ip_tok = <const int64_t*>cnp.PyArray_DATA(tok)
        for r in range(cx.n_rows):  # what the rows will read, all in range
            t = ip_tok[r]
            if t < 0 or t >= vocab:
                return -1
            for j in range(top_k):
                if tp[t * top_k + j] < 0 or tp[t * top_k + j] >= n:
                    return -1
        cx.table = tp
        cx.tokens = ip_tok
    elif input_ids is not None:
        return -1
    if cx.n_rows == 0:
        return -2 if ref.from_dl and not ref.same_shape else 0
    if cx.n_rows < _parallel_min_rows or (num_threads <= 0 and cx.n_rows < _default_parallel_min_rows):
        num_threads = 1
    elif num_threads <= 0:
        num_threads = mr_openmp_max_threads()
    cx.n = n
    cx.k = top_k
    cx.score = score
    cx.norm = norm_topk_prob
    cx.cap = softcap
    cx.p_norm = p_norm
    cx.norm_min = norm_min
    cx.eps = eps
    cx.scale = routed_scaling_factor
    cx.thr = 2 * jitter_eps
    cx.num_threads = num_threads
    cx.scratch_per_thread = 4 * n + MR_BLOCK  # (_rules_pair: 2n scores, then 2n keys)
    cx.scratch = malloc(num_threads * cx.scratch_per_thread * item)
    if cx.scratch == NULL:
        raise MemoryError()
    if (ref.kind == LK_F16 or ref.kind == LK_BF16) and 2 * n > HALF_CHUNK_FLOATS:
        heap_buf = <float*>malloc(num_threads * 2 * n * sizeof(float))
        if heap_buf == NULL:
            free(cx.scratch)
            raise MemoryError()
    ip = cnp.PyArray_DATA(expert_ids)
    wp = cnp.PyArray_DATA(expert_weights)
    with nogil:
        if ref.kind == LK_F32:
            n_bad = _rules_rows_typed(<const float*>ref.data, ip, it == cnp.NPY_INT64, wp,
                                      wt == cnp.NPY_FLOAT64, &cx)
        elif ref.kind == LK_F64:
            n_bad = _rules_rows_typed(<const double*>ref.data, ip, it == cnp.NPY_INT64, wp,
                                      wt == cnp.NPY_FLOAT64, &cx)
        else:
            n_bad = _rules_rows_half(<const uint16_t*>ref.data, ref.kind == LK_BF16, ip,
                                     it == cnp.NPY_INT64, wp, wt == cnp.NPY_FLOAT64, &cx,
                                     heap_buf)
    free(heap_buf)
    free(cx.scratch)
    if n_bad == 0 and ref.from_dl and not ref.same_shape:
        return -2
    return n_bad
