# The router kernels.  This file is the single source of the compiled core:
# each `_core_<isa>.pyx` module includes it, and setup.py compiles those
# modules with different instruction-set flags (see moe_router/_dispatch.py
# for how one is picked at import).
#
# Contract with the Python layer (moe_router/_api.py): `route_rows` routes
# the plain case after a few C checks and returns -1 for anything else, which
# the Python layer then validates (and converts, grows or rejects with a
# precise message).  The kernels never raise inside `nogil` code; they count
# bad rows (NaN, all -inf) and the Python layer turns that into an exception.

from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, expf
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
cimport numpy as cnp
import numpy as np

cnp.import_array()
mr_init_tables()

cdef extern from "_kernels.h" nogil:
    float mr_max_lanes_f32(const float *z, Py_ssize_t n, float *lanes, int *has_nan)
    double mr_max_lanes_f64(const double *z, Py_ssize_t n, double *lanes, int *has_nan)
    Py_ssize_t mr_limit_groups_f32(const float *sel, Py_ssize_t n, Py_ssize_t n_group,
                                   Py_ssize_t topk_group, int top2_sum,
                                   float *group_score, Py_ssize_t *kept, float *lanes)
    Py_ssize_t mr_limit_groups_f64(const double *sel, Py_ssize_t n, Py_ssize_t n_group,
                                   Py_ssize_t topk_group, int top2_sum,
                                   double *group_score, Py_ssize_t *kept, double *lanes)
    int mr_topk_groups_f32(const float *z, Py_ssize_t n, Py_ssize_t size, const Py_ssize_t *kept,
                           Py_ssize_t n_kept, int k, const float *lanes, Py_ssize_t *idx, float m,
                           float *e_out)
    int mr_topk_groups_f64(const double *z, Py_ssize_t n, Py_ssize_t size, const Py_ssize_t *kept,
                           Py_ssize_t n_kept, int k, const double *lanes, Py_ssize_t *idx, double m,
                           double *e_out)
    int mr_sigmoid_into_f32(const float *z, Py_ssize_t n, const float *bias, float *c)
    float mr_abs_max_f32(const float *x, Py_ssize_t n)
    int mr_sigmoid_approx_f32(const float *x, Py_ssize_t n, float *out)
    int mr_sigmoid_topk_f32(const float *z, Py_ssize_t n, const float *bias, Py_ssize_t n_group,
                            Py_ssize_t topk_group, int k, float slack, float *c,
                            Py_ssize_t *kept, Py_ssize_t *idx, float *e_out)
    void mr_sigmoid_topk_pair_f32(const float *z, Py_ssize_t n, const float *bias, Py_ssize_t n_group,
                                  Py_ssize_t topk_group, int k, float slack, float *c,
                                  Py_ssize_t *kept, Py_ssize_t *idx, float *e_out, int *status)
    int mr_sigmoid_into_f64(const double *z, Py_ssize_t n, const double *bias, double *c)
    void mr_picked_exp_f32(const float *z, const Py_ssize_t *idx, int k, float m, float *out)
    void mr_picked_exp_f64(const double *z, const Py_ssize_t *idx, int k, double m, double *out)
    void mr_picked_sigmoid_f32(const float *z, const Py_ssize_t *idx, int k, float *out)
    void mr_picked_sigmoid_f64(const double *z, const Py_ssize_t *idx, int k, double *out)
    float mr_sum_exp_f32(const float *z, Py_ssize_t n, float m)
    double mr_sum_exp_f64(const double *z, Py_ssize_t n, double m)
    unsigned mr_block_gt_f32(const float *z, float t)
    unsigned mr_block_gt_f64(const double *z, double t)
    void mr_topk_pair_f32(const float *z, Py_ssize_t n, int k, Py_ssize_t *idx, float *e_out,
                          float *m_out, int *status)
    void mr_topk_pair_f64(const double *z, Py_ssize_t n, int k, Py_ssize_t *idx, double *e_out,
                          double *m_out, int *status)
    enum: MR_BLOCK  # values per vector block (16), a compile-time constant
    enum: MR_SIGMOID_PAIRS  # this build has mr_sigmoid_topk_pair (AVX2)
    const char* mr_simd_name()
    float mr_sum_k_f32(const float *x, int k)
    double mr_sum_k_f64(const double *x, int k)
    void mr_put8_f32(const Py_ssize_t *idx, const float *e, float scale, float divisor,
                     int32_t *ids_out, float *w_out)
    void mr_exp_short_f32(const float *x, int n, float *out)
    void mr_exp_short_f64(const double *x, int n, double *out)
    void mr_init_tables()
    int mr_openmp_enabled()
    int mr_openmp_max_threads()
    int mr_cpu_has_avx2()
    int mr_cpu_has_avx512()

ctypedef fused floating:
    float
    double

ctypedef fused id_t:
    int32_t
    int64_t

ctypedef fused weight_t:
    float
    double

# Row status codes (returned by the row kernel, never raised in nogil code).
cdef enum:
    ROW_OK = 0
    ROW_NAN = 1
    ROW_ALL_NEG_INF = 2

# Top-K up to this size is kept in a sorted list on the stack; larger K uses
# a K-pass scan that needs no scratch memory at all.
cdef enum:
    MAX_STACK_K = 64

MAX_LIST_TOP_K = MAX_STACK_K


def build_info():
    """Facts about this compiled module: OpenMP, max threads, CPU features."""
    return {
        "simd": mr_simd_name().decode(),
        "openmp": bool(mr_openmp_enabled()),
        "openmp_max_threads": mr_openmp_max_threads(),
        "cpu_avx2": bool(mr_cpu_has_avx2()),
        "cpu_avx512": bool(mr_cpu_has_avx512()),
    }


cdef inline floating _row_max(const floating* z, Py_ssize_t n, floating* lanes,
                              int* has_nan) noexcept nogil:
    if floating is float:
        return mr_max_lanes_f32(z, n, lanes, has_nan)
    else:
        return mr_max_lanes_f64(z, n, lanes, has_nan)


cdef inline bint _sigmoid_into(const floating* z, Py_ssize_t n, const floating* bias,
                               floating* c) noexcept nogil:
    # Returns whether z holds a NaN.
    if floating is float:
        return mr_sigmoid_into_f32(z, n, bias, c)
    else:
        return mr_sigmoid_into_f64(z, n, bias, c)


cdef inline floating _sum_k(const floating* x, int k) noexcept nogil:
    if floating is float:
        return mr_sum_k_f32(x, k)
    else:
        return mr_sum_k_f64(x, k)


cdef inline void _exp_short(const floating* x, int n, floating* out) noexcept nogil:
    if floating is float:
        mr_exp_short_f32(x, n, out)
    else:
        mr_exp_short_f64(x, n, out)


cdef inline floating _row_sum_exp(const floating* z, Py_ssize_t n, floating m) noexcept nogil:
    if floating is float:
        return mr_sum_exp_f32(z, n, m)
    else:
        return mr_sum_exp_f64(z, n, m)


cdef inline bint _any_gt(const floating* z, floating t) noexcept nogil:
    if floating is float:
        return mr_block_gt_f32(z, t) != 0
    else:
        return mr_block_gt_f64(z, t) != 0


cdef inline int _topk_groups(const floating* sel, Py_ssize_t n, Py_ssize_t size,
                             const Py_ssize_t* kept, Py_ssize_t n_kept, Py_ssize_t k,
                             const floating* lanes, id_t* ids_out, floating m,
                             floating* e_out) noexcept nogil:
    # mr_topk_groups over the kept groups of sel (kept NULL, size n: all of
    # it): -1 (general path), or ids_out written and 1 when exp(sel[id] - m)
    # also went to e_out.
    cdef Py_ssize_t idx[MR_BLOCK + 1]
    cdef Py_ssize_t j
    cdef int r
    if floating is float:
        r = mr_topk_groups_f32(sel, n, size, kept, n_kept, <int>k, lanes, idx, m, e_out)
    else:
        r = mr_topk_groups_f64(sel, n, size, kept, n_kept, <int>k, lanes, idx, m, e_out)
    if r >= 0:
        for j in range(k):
            ids_out[j] = <id_t>idx[j]
    return r


cdef inline void _insert_sorted(floating* vals, Py_ssize_t* idx, Py_ssize_t pos,
                                floating v, Py_ssize_t i) noexcept nogil:
    # Insert (v, i) into the descending list vals[0..pos), using slot `pos`.
    # Entries already there have smaller indices, so the strict `>` keeps
    # them ahead of an equal newcomer: the smaller index wins ties.
    while pos > 0 and v > vals[pos - 1]:
        vals[pos] = vals[pos - 1]
        idx[pos] = idx[pos - 1]
        pos -= 1
    vals[pos] = v
    idx[pos] = i


cdef inline void _topk_list(const floating* z, Py_ssize_t n, Py_ssize_t k,
                            id_t* ids_out) noexcept nogil:
    # Top-k (k <= MAX_STACK_K) of a NaN-free row in one pass: a sorted list
    # of the best k so far, and a vector compare of each block of lanes
    # against the current k-th value so that most blocks are skipped.
    cdef floating vals[MAX_STACK_K]
    cdef Py_ssize_t idx[MAX_STACK_K]
    cdef Py_ssize_t i, j, lanes = MR_BLOCK
    cdef floating thr
    for i in range(k):
        _insert_sorted(vals, idx, i, z[i], i)
    thr = vals[k - 1]
    i = k
    while i + lanes <= n:
        if _any_gt(z + i, thr):
            for j in range(i, i + lanes):
                if z[j] > thr:
                    _insert_sorted(vals, idx, k - 1, z[j], j)
                    thr = vals[k - 1]
        i += lanes
    for j in range(i, n):
        if z[j] > thr:
            _insert_sorted(vals, idx, k - 1, z[j], j)
            thr = vals[k - 1]
    for i in range(k):
        ids_out[i] = <id_t>idx[i]


cdef inline void _topk_scan(const floating* z, Py_ssize_t n, Py_ssize_t k,
                            id_t* ids_out) noexcept nogil:
    # Top-k for any k without scratch memory: pass j picks the best entry
    # that comes after pick j-1 in the order (value descending, index
    # ascending).  O(n*k); used only for k > MAX_STACK_K.
    cdef Py_ssize_t j, i, best_i, prev_i = -1
    cdef floating v, best_v, prev_v = INFINITY
    for j in range(k):
        best_i = -1
        best_v = -INFINITY
        for i in range(n):
            v = z[i]
            if j > 0 and not (v < prev_v or (v == prev_v and i > prev_i)):
                continue
            if best_i < 0 or v > best_v:
                best_v = v
                best_i = i
        ids_out[j] = <id_t>best_i
        prev_v = best_v
        prev_i = best_i


cdef inline bint _topk(const floating* z, Py_ssize_t n, Py_ssize_t k,
                       const floating* lanes, id_t* ids_out,
                       floating m, floating* e_out) noexcept nogil:
    # Selecting on the logits, not on the rounded probabilities: exp is
    # monotonic, so the order is the same, except that logits whose float32
    # probabilities round (or underflow) to the same value keep their true
    # order and -inf stays below every finite logit.  With e_out (or NULL),
    # returns whether exp(z[ids_out[j]] - m) was also written there.
    cdef int r
    # Short rows: the sorted list is cheaper than the vector machinery.
    if n >= 2 * MR_BLOCK:
        r = _topk_groups(z, n, n, NULL, 1, k, lanes, ids_out, m, e_out)  # the whole row
        if r >= 0:
            return r == 1
    if k <= MAX_STACK_K:
        _topk_list(z, n, k, ids_out)
    else:
        _topk_scan(z, n, k, ids_out)
    return False


# What a router computes besides top-K: set once per call by route_rows.
cdef struct RouteCfg:
    bint norm              # renormalise the K weights
    bint sigmoid           # sigmoid scores (else softmax)
    Py_ssize_t n_group     # expert groups (1: no group limit)
    Py_ssize_t topk_group  # groups kept
    double scale           # routed_scaling_factor
    const void* bias       # e_score_correction_bias, logits' dtype, or NULL
    float slack            # float32 sigmoid routers: how far mr_sigmoid_topk's
                           # approximate scores may be from the exact ones


cdef inline Py_ssize_t _limit_groups(const floating* sel, Py_ssize_t n, const RouteCfg* cfg,
                                     floating* group_score, Py_ssize_t* kept, bint top2_sum,
                                     floating* lanes) noexcept nogil:
    # The kept groups' indices into kept (ascending), and when lanes is not
    # NULL their two best values; returns how many: see mr_limit_groups in
    # _kernels_row.h.
    if floating is float:
        return mr_limit_groups_f32(sel, n, cfg.n_group, cfg.topk_group, top2_sum,
                                   group_score, kept, lanes)
    else:
        return mr_limit_groups_f64(sel, n, cfg.n_group, cfg.topk_group, top2_sum,
                                   group_score, kept, lanes)


cdef inline void _picked_scores(const floating* z, const id_t* ids, Py_ssize_t k,
                                floating m, bint posinf, bint sigmoid,
                                floating* out) noexcept nogil:
    # out[0..k) (k <= MR_BLOCK) = the unnormalised weights of the picked
    # experts, the exps in one vector pass: exp(z - m) for softmax (with
    # +inf logits present: 1 for each +inf, 0 for the rest), sigmoid(z).
    cdef Py_ssize_t j
    cdef Py_ssize_t idx[MR_BLOCK]
    if posinf and not sigmoid:
        for j in range(k):
            out[j] = 1 if z[ids[j]] == INFINITY else 0
        return
    for j in range(k):
        idx[j] = ids[j]
    if floating is float:
        if sigmoid:
            mr_picked_sigmoid_f32(z, idx, <int>k, out)
        else:
            mr_picked_exp_f32(z, idx, <int>k, m, out)
    else:
        if sigmoid:
            mr_picked_sigmoid_f64(z, idx, <int>k, out)
        else:
            mr_picked_exp_f64(z, idx, <int>k, m, out)


cdef inline floating _weight_divisor(const RouteCfg* cfg, floating sel_sum,
                                    floating s) noexcept nogil:
    # What the picked experts' scores times the scaling factor are divided
    # by: sel_sum is their sum, s the full softmax sum (unnormalised softmax
    # only).  One rule, in the logits' precision, for every path of a row
    # (_route_row, _route_pair), so each gives the same bits.  The top-1 of
    # an ungrouped softmax row has e == 1, so sel_sum >= 1; DeepSeek-style
    # routers divide by (sum + 1e-20) as their picked scores may all be 0.
    if cfg.norm:
        return sel_sum + (<floating>1e-20 if cfg.sigmoid or cfg.n_group > 1 else 0)
    elif cfg.sigmoid:
        return 1
    else:
        return s


cdef int _route_row(const floating* z, Py_ssize_t n, Py_ssize_t k, const RouteCfg* cfg,
                    floating* scratch, Py_ssize_t* kept, id_t* ids_out,
                    weight_t* w_out, bint approx) noexcept nogil:
    """Route one row of logits: scores, (group-limited) top-k, weights.

    `scratch` holds 2 * n + n_group values and `kept` n_group indices (used
    by the grouped and the biased routers only): the kept groups' scores
    compacted (when the general path needs them), the selection scores, the
    group scores.  `approx`: try mr_sigmoid_topk first (False for a row it
    has already declined).
    """
    cdef floating lanes[MR_BLOCK]
    cdef floating e_sel[MR_BLOCK]
    cdef int has_nan
    cdef floating m = 0
    cdef floating s = 0
    cdef const floating* sel = z        # what the top-k is taken of
    cdef Py_ssize_t sel_n = n
    cdef Py_ssize_t i, j, g
    cdef Py_ssize_t size = 0  # (used only with groups)
    cdef floating sel_sum = 0, divisor
    cdef double block_sums = 0  # (k > MR_BLOCK: in double, so no drift over many blocks)
    cdef floating scale = <floating>cfg.scale
    cdef double inv_size
    cdef bint posinf = False
    cdef bint group_lanes = False
    cdef bint e_ok
    cdef int r = -1
    cdef Py_ssize_t n_kept
    cdef floating* e_want
    cdef Py_ssize_t idx[MR_BLOCK + 1]

    if cfg.sigmoid and (cfg.bias != NULL or cfg.n_group > 1):
        # The selection score c = sigmoid(z) (+ bias) in scratch[n:2n]; the
        # weights, sigmoid of the picked logits, are recomputed from z.
        # First the selection on approximate scores checked exactly (AVX2,
        # float32; r = 1 when it gave the ids and their sigmoid in e_sel);
        # the exact pass also finds NaN rows: no pass over z is needed for it.
        if floating is float:
            if approx and k <= MR_BLOCK and mr_sigmoid_topk_f32(
                    z, n, <const float*>cfg.bias, cfg.n_group, cfg.topk_group, <int>k,
                    cfg.slack, scratch + n, kept, idx, e_sel):
                for j in range(k):
                    ids_out[j] = <id_t>idx[j]
                r = 1
        if r < 0:
            if _sigmoid_into(z, n, <const floating*>cfg.bias, scratch + n):
                return ROW_NAN
            sel = scratch + n
    else:
        m = _row_max(z, n, lanes, &has_nan)
        if has_nan:
            return ROW_NAN
    if not cfg.sigmoid:
        if m == -INFINITY:
            return ROW_ALL_NEG_INF  # the softmax of nothing but -inf is undefined
        posinf = m == INFINITY
        if not cfg.norm:  # the full softmax sum is needed only unnormalised
            if posinf:
                for j in range(n):
                    s += z[j] == INFINITY  # +inf logits share the mass equally
            else:
                s = _row_sum_exp(z, n, m)
    # (Sigmoid without bias or groups: the order of the scores is that of z.)

    e_want = e_sel if not cfg.sigmoid and not posinf and k <= MR_BLOCK else NULL
    if cfg.n_group > 1 and r < 0:
        # A softmax group's best probability is its best logit's.  When the
        # kept groups' two best values are at least k, they stand in for the
        # lane maxima, and the top-k is taken straight from the kept groups:
        # no pass over the kept scores, no copy of them.
        group_lanes = (cfg.n_group <= MR_BLOCK and 2 * cfg.topk_group + 2 <= MR_BLOCK
                       and k <= 2 * cfg.topk_group)
        size = n // cfg.n_group
        n_kept = _limit_groups(sel, n, cfg, scratch + 2 * n, kept, cfg.sigmoid,
                               lanes if group_lanes else NULL)
        if group_lanes:
            r = _topk_groups(sel, n, size, kept, n_kept, k, lanes, ids_out, m, e_want)
        if r < 0:  # the general path, on the kept groups' scores compacted
            for g in range(n_kept):
                memcpy(scratch + g * size, sel + kept[g] * size, size * sizeof(floating))
            sel = scratch
            sel_n = n_kept * size
    if r < 0:
        if sel != z and not group_lanes:
            _row_max(sel, sel_n, lanes, &has_nan)
        # Selecting on the logits when the order is theirs: exp and sigmoid
        # are monotonic, and the logits keep apart values whose float32
        # probabilities round (or underflow) to the same number.  Softmax
        # weights come with the selection when it can give them.
        e_ok = _topk(sel, sel_n, k, lanes, ids_out, m, e_want)
        if cfg.n_group > 1:  # positions in the kept groups -> expert ids
            inv_size = 1.0 / size
            for j in range(k):
                # (p + 0.5) / size, truncated, is p // size without a 64-bit
                # integer division (measured: 8 of them cost ~100 ns a row).
                g = <Py_ssize_t>((ids_out[j] + 0.5) * inv_size)
                ids_out[j] = <id_t>(kept[g] * size + (ids_out[j] - g * size))
    else:
        e_ok = r == 1

    # MR_BLOCK picked experts at a time (one block for k <= 16).
    if e_ok:
        sel_sum = _sum_k(e_sel, <int>k)
    else:
        j = 0
        while j < k:
            _picked_scores(z, ids_out + j, min(MR_BLOCK, k - j), m, posinf, cfg.sigmoid, e_sel)
            block_sums += _sum_k(e_sel, <int>min(MR_BLOCK, k - j))
            j += MR_BLOCK
        sel_sum = <floating>block_sums  # (one block: its sum, unchanged)
    divisor = _weight_divisor(cfg, sel_sum, s)
    j = 0
    while j < k:
        if k > MR_BLOCK:  # the block in e_sel is the last one: recompute
            _picked_scores(z, ids_out + j, min(MR_BLOCK, k - j), m, posinf, cfg.sigmoid, e_sel)
        for i in range(min(MR_BLOCK, k - j)):
            w_out[j + i] = <weight_t>((e_sel[i] * scale) / divisor)
        j += MR_BLOCK
    return ROW_OK


cdef inline bint _pairs_apply(Py_ssize_t n, Py_ssize_t k, const RouteCfg* cfg,
                              bint is_float) noexcept nogil:
    # The plain softmax router on rows that _topk takes the vector path for;
    # the float32 sigmoid routers with a bias or groups where this build
    # selects them on approximate scores (mr_sigmoid_topk_pair).
    if cfg.sigmoid:
        return (MR_SIGMOID_PAIRS and is_float and (cfg.bias != NULL or cfg.n_group > 1)
                and k <= MR_BLOCK)
    return cfg.n_group == 1 and cfg.bias == NULL and k <= MR_BLOCK and n >= 2 * MR_BLOCK


cdef inline Py_ssize_t _route_pair(const floating* z, Py_ssize_t n, Py_ssize_t k, const RouteCfg* cfg,
                                   floating* scratch, Py_ssize_t* kept,
                                   id_t* ids_out, weight_t* w_out) noexcept nogil:
    """Route the rows z[0:n] and z[n:2n] of a router that _pairs_apply to.

    Their top-k is taken together (mr_topk_pair, mr_sigmoid_topk_pair: the
    two rows' dependent steps overlap); a row it cannot take is routed by
    _route_row (scratch and kept: as _route_row's, 2 * n_group for kept).
    The weights are summed and scaled as _route_row's (_sum_k,
    _weight_divisor), to the bit.  Returns the number of rows that could not
    be routed.  Inline: a call per pair (its frame set up for the vector
    locals) was 3-5% of a 128-expert pair (measured).
    """
    cdef Py_ssize_t idx[2 * (MR_BLOCK + 1)]
    cdef floating e[2 * MR_BLOCK]
    cdef floating m[2]
    cdef int status[2]
    cdef Py_ssize_t h, j, n_bad = 0
    cdef id_t* ids_h
    cdef floating* e_h
    cdef floating divisor
    cdef floating scale = <floating>cfg.scale
    cdef bint put8 = False
    if floating is float and weight_t is float and id_t is int32_t:
        put8 = k == 8
    if cfg.sigmoid:
        if floating is float:  # (_pairs_apply: float only)
            mr_sigmoid_topk_pair_f32(z, n, <const float*>cfg.bias, cfg.n_group, cfg.topk_group,
                                     <int>k, cfg.slack, scratch, kept, idx, e, status)
        m[0] = m[1] = 0
    elif floating is float:
        mr_topk_pair_f32(z, n, <int>k, idx, e, m, status)
    else:
        mr_topk_pair_f64(z, n, <int>k, idx, e, m, status)
    for h in range(2):
        ids_h = ids_out + h * k
        if status[h] < 0:
            # (mr_sigmoid_topk_pair has tried the approximate selection)
            n_bad += _route_row(z + h * n, n, k, cfg, scratch, kept, ids_h, w_out + h * k,
                                False) != ROW_OK
            continue
        e_h = e + h * MR_BLOCK
        if status[h] == 0 or not put8:
            for j in range(k):
                ids_h[j] = <id_t>idx[h * (MR_BLOCK + 1) + j]
        if status[h] == 0:  # ids only (ties, or many candidates)
            _picked_scores(z + h * n, ids_h, k, m[h], False, cfg.sigmoid, e_h)
        divisor = _weight_divisor(cfg, _sum_k(e_h, <int>k),
                                  0 if cfg.norm or cfg.sigmoid else _row_sum_exp(z + h * n, n, m[h]))
        if floating is float and weight_t is float and id_t is int32_t:
            if put8:  # ids and weights in a few vector operations
                mr_put8_f32(idx + h * (MR_BLOCK + 1), e_h, scale, divisor, ids_h, w_out + h * k)
                continue
        for j in range(k):
            w_out[h * k + j] = <weight_t>((e_h[j] * scale) / divisor)
    return n_bad


cdef Py_ssize_t _route_rows(const floating* logits, Py_ssize_t n_rows,
                            Py_ssize_t n, Py_ssize_t k, const RouteCfg* cfg,
                            floating* scratch, Py_ssize_t scratch_per_thread,
                            Py_ssize_t* kept, id_t* ids_out, weight_t* w_out,
                            int num_threads) noexcept nogil:
    """Route every row; returns the number of rows that could not be routed.

    scratch: scratch_per_thread values and kept 2 * n_group indices per
    thread (NULL for routers without a bias or groups).
    """
    cdef Py_ssize_t r, p, n_bad = 0, n_pairs = 0
    if _pairs_apply(n, k, cfg, floating is float):
        # Rows (2p, 2p + 1) in pairs whatever the thread count, the odd last
        # row alone: the same rows take the same path for any num_threads.
        n_pairs = n_rows // 2
        if num_threads > 1:
            for p in prange(n_pairs, num_threads=num_threads, schedule='static'):
                n_bad += _route_pair(logits + 2 * p * n, n, k, cfg,
                                     scratch + threadid() * scratch_per_thread,
                                     kept + threadid() * 2 * cfg.n_group,
                                     ids_out + 2 * p * k, w_out + 2 * p * k)
        else:
            for p in range(n_pairs):
                n_bad += _route_pair(logits + 2 * p * n, n, k, cfg, scratch, kept,
                                     ids_out + 2 * p * k, w_out + 2 * p * k)
    if num_threads > 1 and n_rows - 2 * n_pairs > 1:
        for r in prange(2 * n_pairs, n_rows, num_threads=num_threads, schedule='static'):
            n_bad += _route_row(logits + r * n, n, k, cfg,
                                scratch + threadid() * scratch_per_thread,
                                kept + threadid() * 2 * cfg.n_group,
                                ids_out + r * k, w_out + r * k, True) != ROW_OK
    else:
        for r in range(2 * n_pairs, n_rows):
            n_bad += _route_row(logits + r * n, n, k, cfg, scratch, kept,
                                ids_out + r * k, w_out + r * k, True) != ROW_OK
    return n_bad


# Batches with fewer rows run on one thread whatever num_threads says: below
# this, waking a second thread costs about what it saves.  Measured with
# benchmarks/bench_threads.py (2-core EPYC, 128 experts, top-8, five runs):
# 2 threads gave 0.64-0.96x at 16 rows, 0.76-1.23x at 32, 1.02-1.57x at 64,
# 1.36-1.96x at 4096.  With the faster kernel of rows in pairs (eight runs):
# 0.75-1.66x at 64 rows (a gain in six), 1.28-2.03x at 4096.
PARALLEL_MIN_ROWS = 64

cdef Py_ssize_t _parallel_min_rows = PARALLEL_MIN_ROWS


def set_parallel_min_rows(Py_ssize_t rows):
    """Set the threshold for this module (benchmarks only); returns the old one."""
    global _parallel_min_rows
    old = _parallel_min_rows
    _parallel_min_rows = max(rows, 1)
    return old


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef float _sigmoid_slack(const float* bias, Py_ssize_t n) noexcept nogil:
    # How far mr_sigmoid_topk's approximate scores may be from the exact
    # ones: 5.2e-4 from the sigmoid; adding the bias rounds both at its
    # magnitude, which 16 ulps of 1 + max|b| cover with room.  (An infinite
    # bias gives an infinite slack, which mr_sigmoid_topk declines.)
    cdef double bias_max = mr_abs_max_f32(bias, n) if bias != NULL else 0
    return <float>(5.2e-4 + 16 * 2.0 ** -23 * (1 + bias_max))


def sigmoid_approx_into(const float[::1] x, float[::1] out):
    """out = the approximate sigmoid that mr_sigmoid_topk selects on, for
    tests: None when this build has none, else whether x holds a NaN.
    len(x) must be a multiple of 16."""
    cdef int r
    if out.shape[0] != x.shape[0] or x.shape[0] % 16:
        raise ValueError(f"x and out need the same length, a multiple of 16; got {x.shape[0]}, {out.shape[0]}")
    if x.shape[0] == 0:
        return False
    r = mr_sigmoid_approx_f32(&x[0], x.shape[0], &out[0])
    return None if r < 0 else bool(r)


def sigmoid_topk_rows(const float[:, ::1] z, Py_ssize_t top_k, Py_ssize_t n_group,
                      Py_ssize_t topk_group, const float[::1] bias=None):
    """mr_sigmoid_topk on each row, for tests: (ids [rows, top_k], taken [rows]).

    A row not taken (the kernel left it to the exact path, or this build has
    no AVX2 networks) has its ids row set to -1.
    """
    cdef Py_ssize_t rows = z.shape[0], n = z.shape[1], r, j
    cdef const float* bp = NULL
    cdef Py_ssize_t idx[MR_BLOCK + 1]
    cdef float e[MR_BLOCK]
    if not 1 <= top_k <= min(n, MR_BLOCK) or n_group < 1 or n % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"top_k={top_k}, n_group={n_group}, topk_group={topk_group} "
                         f"do not fit {n} experts")
    if bias is not None:
        if bias.shape[0] != n:
            raise ValueError(f"bias has {bias.shape[0]} values, expected {n}")
        bp = &bias[0]
    ids = np.full((rows, top_k), -1, np.int64)
    taken = np.zeros(rows, bool)
    cdef float[::1] scratch = np.empty(n, np.float32)
    cdef Py_ssize_t[::1] kept = np.empty(n_group, np.intp)
    cdef float slack = _sigmoid_slack(bp, n)
    for r in range(rows):
        if mr_sigmoid_topk_f32(&z[r, 0], n, bp, n_group, topk_group, <int>top_k, slack,
                               &scratch[0], &kept[0], idx, e):
            taken[r] = True
            for j in range(top_k):
                ids[r, j] = idx[j]
    return ids, taken


def route_rows(object logits, Py_ssize_t top_k, bint norm_topk_prob,
               cnp.ndarray expert_ids, cnp.ndarray expert_weights,
               int num_threads=1, Py_ssize_t num_experts=0, bint sigmoid=False,
               Py_ssize_t n_group=1, Py_ssize_t topk_group=1,
               double routed_scaling_factor=1.0, object bias=None):
    """Route logits [..., num_experts] into flat output buffers.

    This is the hot path of Router.__call__ and route_into: a handful of C
    checks, then the nogil kernel.  Returns the number of rows that could
    not be routed (NaN, or all -inf under softmax), 0 when all were, or -1
    without writing anything when the call is not the plain case: logits
    not a C-contiguous native float32/float64 ndarray with ndim >= 1, last
    dimension not `num_experts` (when > 0) or 0, top_k or the groups out of
    range, a bias not a C-contiguous array of the logits' dtype and shape
    [num_experts], buffers of another dtype, too small, not writeable
    C-contiguous, or overlapping.  The Python layer then validates,
    converts or grows, and raises with a precise message.

    num_threads <= 0 means the OpenMP default; batches of fewer than
    PARALLEL_MIN_ROWS rows always run on one thread.
    """
    cdef cnp.ndarray arr
    cdef int nd, lt, wt, it
    cdef Py_ssize_t n, n_rows, n_bad = 0, per_thread = 0
    cdef bint ids64
    cdef void* lp
    cdef void* ip
    cdef void* wp
    cdef void* scratch = NULL
    cdef Py_ssize_t* kept = NULL
    cdef RouteCfg cfg
    if not cnp.PyArray_CheckExact(logits):
        return -1
    arr = <cnp.ndarray>logits
    nd = cnp.PyArray_NDIM(arr)
    if nd == 0:
        return -1
    n = cnp.PyArray_DIM(arr, nd - 1)
    lt = cnp.PyArray_TYPE(arr)
    wt = cnp.PyArray_TYPE(expert_weights)
    it = cnp.PyArray_TYPE(expert_ids)
    if (n == 0 or (num_experts > 0 and n != num_experts) or top_k < 1 or top_k > n
            or n_group < 1 or n % n_group != 0 or topk_group < 1 or topk_group > n_group
            or topk_group * (n // n_group) < top_k
            or (lt != cnp.NPY_FLOAT32 and lt != cnp.NPY_FLOAT64)
            or (wt != cnp.NPY_FLOAT32 and wt != cnp.NPY_FLOAT64)
            or (it != cnp.NPY_INT32 and it != cnp.NPY_UINT32 and it != cnp.NPY_INT64)
            or not cnp.PyArray_ISNOTSWAPPED(arr)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_ids)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_weights)
            or not cnp.PyArray_ISWRITEABLE(expert_ids)
            or not cnp.PyArray_ISWRITEABLE(expert_weights)
            or not cnp.PyArray_ISNOTSWAPPED(expert_ids)
            or not cnp.PyArray_ISNOTSWAPPED(expert_weights)):
        return -1
    cfg.bias = NULL
    if bias is not None:
        if (not cnp.PyArray_CheckExact(bias) or cnp.PyArray_TYPE(<cnp.ndarray>bias) != lt
                or cnp.PyArray_NDIM(<cnp.ndarray>bias) != 1 or cnp.PyArray_DIM(<cnp.ndarray>bias, 0) != n
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>bias) or not sigmoid):
            return -1
        cfg.bias = cnp.PyArray_DATA(<cnp.ndarray>bias)
    cfg.slack = _sigmoid_slack(<const float*>cfg.bias, n) if sigmoid and lt == cnp.NPY_FLOAT32 else 0
    if (it == cnp.NPY_INT32 and n > 2147483648) or (it == cnp.NPY_UINT32 and n > 4294967296):
        return -1  # ids of this many experts do not fit the id dtype
    n_rows = cnp.PyArray_SIZE(arr) // n
    if (cnp.PyArray_SIZE(expert_ids) < n_rows * top_k
            or cnp.PyArray_SIZE(expert_weights) < n_rows * top_k
            or _overlap(arr, expert_ids) or _overlap(arr, expert_weights)
            or _overlap(expert_ids, expert_weights)):
        return -1
    if n_rows == 0:
        return 0
    if n_rows < _parallel_min_rows:
        num_threads = 1
    elif num_threads <= 0:
        num_threads = mr_openmp_max_threads()
    cfg.norm = norm_topk_prob
    cfg.sigmoid = sigmoid
    cfg.n_group = n_group
    cfg.topk_group = topk_group
    cfg.scale = routed_scaling_factor
    if n_group > 1 or cfg.bias != NULL:
        per_thread = 2 * n + n_group
        scratch = malloc(num_threads * per_thread * cnp.PyArray_ITEMSIZE(arr))
        kept = <Py_ssize_t*>malloc(num_threads * 2 * n_group * sizeof(Py_ssize_t))
        if scratch == NULL or kept == NULL:
            free(scratch)
            free(kept)
            raise MemoryError()
    ids64 = it == cnp.NPY_INT64
    lp = cnp.PyArray_DATA(arr)
    ip = cnp.PyArray_DATA(expert_ids)
    wp = cnp.PyArray_DATA(expert_weights)
    # uint32 ids are written through the int32 path: ids < 2**31 have the
    # same bits in both.
    with nogil:
        if lt == cnp.NPY_FLOAT32:
            if not ids64:
                if wt == cnp.NPY_FLOAT32:
                    n_bad = _route_rows(<const float*>lp, n_rows, n, top_k, &cfg, <float*>scratch, per_thread, kept, <int32_t*>ip, <float*>wp, num_threads)
                else:
                    n_bad = _route_rows(<const float*>lp, n_rows, n, top_k, &cfg, <float*>scratch, per_thread, kept, <int32_t*>ip, <double*>wp, num_threads)
            else:
                if wt == cnp.NPY_FLOAT32:
                    n_bad = _route_rows(<const float*>lp, n_rows, n, top_k, &cfg, <float*>scratch, per_thread, kept, <int64_t*>ip, <float*>wp, num_threads)
                else:
                    n_bad = _route_rows(<const float*>lp, n_rows, n, top_k, &cfg, <float*>scratch, per_thread, kept, <int64_t*>ip, <double*>wp, num_threads)
        else:
            if not ids64:
                if wt == cnp.NPY_FLOAT32:
                    n_bad = _route_rows(<const double*>lp, n_rows, n, top_k, &cfg, <double*>scratch, per_thread, kept, <int32_t*>ip, <float*>wp, num_threads)
                else:
                    n_bad = _route_rows(<const double*>lp, n_rows, n, top_k, &cfg, <double*>scratch, per_thread, kept, <int32_t*>ip, <double*>wp, num_threads)
            else:
                if wt == cnp.NPY_FLOAT32:
                    n_bad = _route_rows(<const double*>lp, n_rows, n, top_k, &cfg, <double*>scratch, per_thread, kept, <int64_t*>ip, <float*>wp, num_threads)
                else:
                    n_bad = _route_rows(<const double*>lp, n_rows, n, top_k, &cfg, <double*>scratch, per_thread, kept, <int64_t*>ip, <double*>wp, num_threads)
    free(scratch)
    free(kept)
    return n_bad


cdef void _route_rows_seed(const float* logits, Py_ssize_t n_rows, Py_ssize_t n,
                           Py_ssize_t k, bint norm, int32_t* ids_out,
                           float* w_out, float* probs) noexcept nogil:
    # A faithful scalar port of the seed's `route_into` (libm expf, softmax
    # into a scratch row, K passes of argmax over the probabilities), kept
    # as the baseline the benchmarks measure the fast kernel against.
    cdef Py_ssize_t b, i, j, best_i
    cdef float mx, s, inv_sum, best, sel_sum, scale
    cdef const float* row
    for b in range(n_rows):
        row = logits + b * n
        mx = -INFINITY
        for i in range(n):
            if row[i] > mx:
                mx = row[i]
        s = 0
        for i in range(n):
            probs[i] = expf(row[i] - mx)
            s += probs[i]
        inv_sum = 1.0 / s
        for i in range(n):
            probs[i] *= inv_sum
        sel_sum = 0
        for j in range(k):
            best = -INFINITY
            best_i = 0
            for i in range(n):
                if probs[i] > best:
                    best = probs[i]
                    best_i = i
            ids_out[b * k + j] = <int32_t>best_i
            w_out[b * k + j] = best
            sel_sum += best
            probs[best_i] = -INFINITY
        if norm:
            if sel_sum > 0:
                scale = 1.0 / sel_sum
                for j in range(k):
                    w_out[b * k + j] *= scale
            else:
                for j in range(k):
                    w_out[b * k + j] = 1.0 / k


def route_rows_seed(const float[:, ::1] logits, Py_ssize_t top_k,
                    bint norm_topk_prob, int32_t[::1] expert_ids,
                    float[::1] expert_weights):
    """The seed's algorithm, for benchmarks only (finite float32 logits)."""
    cdef Py_ssize_t n_rows = logits.shape[0], n = logits.shape[1]
    cdef float* probs
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k={top_k} not in [1, {n}]")
    if expert_ids.shape[0] < n_rows * top_k or expert_weights.shape[0] < n_rows * top_k:
        raise ValueError("output buffers hold fewer than rows * top_k elements")
    if n_rows == 0:
        return
    probs = <float*>malloc(n * sizeof(float))
    if probs == NULL:
        raise MemoryError()
    with nogil:
        _route_rows_seed(&logits[0, 0], n_rows, n, top_k, norm_topk_prob,
                         &expert_ids[0], &expert_weights[0], probs)
    free(probs)


def exp_into(const floating[::1] x, floating[::1] out):
    """out[i] = the kernels' (vector) exp(x[i]), for tests and error measurement."""
    cdef Py_ssize_t i = 0, n = x.shape[0], block = MR_BLOCK
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} elements, x has {n}")
    with nogil:
        while i < n:
            _exp_short(&x[i], <int>min(block, n - i), &out[i])
            i += block
