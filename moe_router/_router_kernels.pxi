# The router kernels: the Cython layer of the compiled core.  Each
# `_core_<isa>.pyx` module includes this file, and setup.py compiles those
# modules (as C++) with different instruction-set flags; moe_router/_dispatch.py
# picks one per logits dtype at import.
#
# Layers, from the bottom:
#   csrc/*.h, csrc/*.hpp  vector traits per instruction set, the exp, the
#                         row operations (templates over float / double), the
#                         AVX2+ tuned routines; csrc/kernels.hpp holds the
#                         entry points declared below, once each
#   this file             one row (`_route_row`: `_select_row`, then
#                         `_weights_divisor` and `_put_weights`), two rows at
#                         once (`_route_pair`), every row (`_route_rows`, the
#                         OpenMP loop), and `route_rows`, the entry point
#   moe_router/_api.py    validates, converts, allocates and raises
#
# Contract with the Python layer: `route_rows` routes the plain case after a
# few C checks and returns -1 for anything else, which the Python layer then
# validates (and converts, grows or rejects with a precise message).  The
# kernels never raise inside `nogil` code; they count bad rows (NaN, all
# -inf) and the Python layer turns that into an exception.

from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, expf
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cpython.ref cimport Py_INCREF
cimport numpy as cnp
import numpy as np

cnp.import_array()

include "_dlpack.pxi"

cdef extern from "csrc/kernels.hpp" nogil:
    # Row operations (csrc/row_ops.hpp); T is float or double.
    T mr_max_lanes[T](const T* z, Py_ssize_t n, T* lanes, int* has_nan)
    T mr_sum_exp[T](const T* z, Py_ssize_t n, T m)
    T mr_sum_k[T](const T* x, int k)
    T mr_abs_max[T](const T* x, Py_ssize_t n)
    void mr_exp_short[T](const T* x, int n, T* out)
    unsigned mr_block_bits[T](const T* z, T t, int eq)
    int mr_sigmoid_into[T](const T* z, Py_ssize_t n, const T* bias, T* c)
    void mr_picked_exp[T](const T* z, const Py_ssize_t* idx, int k, T m, T* out)
    void mr_picked_sigmoid[T](const T* z, const Py_ssize_t* idx, int k, T* out)
    Py_ssize_t mr_limit_groups[T](const T* sel, Py_ssize_t n, Py_ssize_t n_group,
                                  Py_ssize_t topk_group, int top2_sum, T* group_score,
                                  Py_ssize_t* kept, T* lanes)
    int mr_topk_groups[T](const T* z, Py_ssize_t n, Py_ssize_t size, const Py_ssize_t* kept,
                          Py_ssize_t n_kept, int k, const T* lanes, Py_ssize_t* idx, T m,
                          T* e_out)
    # Entry points (csrc/kernels.hpp).
    void mr_topk_pair[T](const T* z, Py_ssize_t n, int k, Py_ssize_t* idx, T* e_out, T* m_out,
                         int* status, const uint16_t* half_src, int half_bf16)
    int mr_sigmoid_approx[T](const T* x, Py_ssize_t n, T* out)
    int mr_sigmoid_topk[T](const T* z, Py_ssize_t n, const T* bias, Py_ssize_t n_group,
                           Py_ssize_t topk_group, int k, T slack, T* c, Py_ssize_t* kept,
                           Py_ssize_t* idx, T* e_out)
    void mr_sigmoid_topk_pair[T](const T* z, Py_ssize_t n, const T* bias, Py_ssize_t n_group,
                                 Py_ssize_t topk_group, int k, T slack, T* c, Py_ssize_t* kept,
                                 Py_ssize_t* idx, T* e_out, int* status)
    void mr_put8(const Py_ssize_t* idx, const float* e, float scale, float divisor,
                 int32_t* ids_out, float* w_out)
    # Build facts.
    enum: MR_BLOCK  # values per vector block (16), a compile-time constant
    enum: MR_HAVE_NET8  # the AVX2 tuned routines (networks, approximate sigmoid)
    void mr_init_tables()
    const char* mr_simd_name()
    const char* mr_features()
    int mr_vector_bits(int f64)
    int mr_openmp_enabled()
    int mr_openmp_max_threads()
    int mr_cpu_has_avx2()
    int mr_cpu_has_avx512()
    # Half-precision rows widened to float32, exactly (csrc/half.hpp).
    void mr_widen_bf16(const uint16_t* h, Py_ssize_t n, float* out)
    void mr_widen_f16(const uint16_t* h, Py_ssize_t n, float* out)
    enum: MR_HAVE_WIDEN_ROW  # mr_topk_pair can widen its rows in its max pass

mr_init_tables()

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
    ROW_WEIGHT_OVERFLOW = 3  # a weight beyond the weights' dtype (unbounded scores only)

# Top-K up to this size is kept in a sorted list on the stack; larger K uses
# a K-pass scan that needs no scratch memory at all.
cdef enum:
    MAX_STACK_K = 64

MAX_LIST_TOP_K = MAX_STACK_K


def build_info():
    """Facts about this compiled module: OpenMP, max threads, CPU features,
    the tuned routines it has and its vector widths."""
    return {
        "simd": mr_simd_name().decode(),
        "features": tuple(mr_features().decode().split()),
        "vector_bits": {"float32": mr_vector_bits(0), "float64": mr_vector_bits(1)},
        "openmp": bool(mr_openmp_enabled()),
        "openmp_max_threads": mr_openmp_max_threads(),
        "cpu_avx2": bool(mr_cpu_has_avx2()),
        "cpu_avx512": bool(mr_cpu_has_avx512()),
    }


# What a call routes: the router's settings, the shape and the scratch
# buffers, set once per call by route_rows.
cdef struct RouteCtx:
    Py_ssize_t n_rows
    Py_ssize_t n             # experts per row
    Py_ssize_t k             # top_k
    bint norm                # renormalise the K weights
    bint sigmoid             # sigmoid scores (else softmax)
    Py_ssize_t n_group       # expert groups (1: no group limit)
    Py_ssize_t topk_group    # groups kept
    double scale             # routed_scaling_factor
    const void* bias         # e_score_correction_bias, logits' dtype, or NULL
    float slack              # float32 sigmoid routers: how far mr_sigmoid_topk's
                             # approximate scores may be from the exact ones
    void* scratch            # per thread: scratch_per_thread values (logits' dtype)
    Py_ssize_t scratch_per_thread
    Py_ssize_t* kept         # per thread: 2 * n_group group indices
    int num_threads
    # Half-precision rows that _route_pair widens itself (_route_half_chunk):
    # row r of the float32 rows at half_dst is row r of half_src; NULL: none.
    const uint16_t* half_src
    const float* half_dst
    bint half_bf16


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
    # idx[0..k) is written when r >= 0 (never for k > MR_BLOCK); gcc cannot
    # see it through every inlining, so it is cleared first.
    for j in range(min(k, MR_BLOCK + 1)):
        idx[j] = 0
    r = mr_topk_groups(sel, n, size, kept, n_kept, <int>k, lanes, idx, m, e_out)
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
        if mr_block_bits(z + i, thr, 0) != 0:
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


cdef inline bint _topk_in_groups(const floating* sel, const RouteCtx* cx, floating* scratch,
                                 Py_ssize_t* kept, floating* lanes, id_t* ids_out, floating m,
                                 floating* e_want) noexcept nogil:
    # The top-k over the best topk_group groups of sel[0..n) (group score:
    # the sum of its two best for sigmoid routers, its best for softmax);
    # returns whether e_want got the picked experts' exps.  A softmax
    # group's best probability is its best logit's.  When the kept groups'
    # two best values are at least k, they stand in for the lane maxima,
    # and the top-k is taken straight from the kept groups: no pass over the
    # kept scores, no copy of them.  Else the general path, on the kept
    # groups' scores compacted into scratch.
    cdef bint group_lanes = (cx.n_group <= MR_BLOCK and 2 * cx.topk_group + 2 <= MR_BLOCK
                             and cx.k <= 2 * cx.topk_group)
    cdef Py_ssize_t size = cx.n // cx.n_group
    cdef Py_ssize_t n_kept, g, j
    cdef int r, has_nan
    cdef bint e_ok
    cdef double inv_size = 1.0 / size
    n_kept = mr_limit_groups(sel, cx.n, cx.n_group, cx.topk_group, cx.sigmoid,
                             scratch + 2 * cx.n, kept, lanes if group_lanes else NULL)
    if group_lanes:
        r = _topk_groups(sel, cx.n, size, kept, n_kept, cx.k, lanes, ids_out, m, e_want)
        if r >= 0:
            return r == 1
    for g in range(n_kept):
        memcpy(scratch + g * size, sel + kept[g] * size, size * sizeof(floating))
    if not group_lanes:
        mr_max_lanes(<const floating*>scratch, n_kept * size, lanes, &has_nan)
    e_ok = _topk(scratch, n_kept * size, cx.k, lanes, ids_out, m, e_want)
    for j in range(cx.k):  # positions in the kept groups -> expert ids
        # (p + 0.5) / size, truncated, is p // size without a 64-bit
        # integer division.
        g = <Py_ssize_t>((ids_out[j] + 0.5) * inv_size)
        ids_out[j] = <id_t>(kept[g] * size + (ids_out[j] - g * size))
    return e_ok


cdef inline int _select_row(const floating* z, const RouteCtx* cx, floating* scratch,
                            Py_ssize_t* kept, bint approx, id_t* ids_out, floating* e_sel,
                            floating* m_out, bint* e_ok) noexcept nogil:
    """The top-k of one row of logits into ids_out: ROW_OK, or why the row
    cannot be routed.

    *m_out: the row max (softmax; what exps are taken relative to);
    *e_ok: whether e_sel[0..k) got the picked experts' unnormalised weights
    with the selection.  `scratch` holds 2 * n + n_group values and `kept`
    n_group indices (the grouped and the biased routers only): the kept
    groups' scores compacted, the selection scores, the group scores.
    `approx`: try the approximate sigmoid selection first (False for a row
    it has already declined).
    """
    cdef floating lanes[MR_BLOCK]
    cdef Py_ssize_t idx[MR_BLOCK + 1]
    cdef const floating* sel = z  # what the top-k is taken of
    cdef floating m = 0
    cdef floating* e_want
    cdef int has_nan
    cdef Py_ssize_t j
    m_out[0] = 0
    if cx.sigmoid and (cx.bias != NULL or cx.n_group > 1):
        # The selection score c = sigmoid(z) (+ bias) in scratch[n:2n]; the
        # weights, sigmoid of the picked logits, are recomputed from z.
        # First the selection on approximate scores checked exactly (where
        # the build has it: it gives the ids and their sigmoid); the exact
        # pass also finds NaN rows: no pass over z is needed for it.
        if (approx and cx.k <= MR_BLOCK
                and mr_sigmoid_topk(z, cx.n, <const floating*>cx.bias, cx.n_group, cx.topk_group,
                                    <int>cx.k, <floating>cx.slack, scratch + cx.n, kept, idx, e_sel)):
            for j in range(cx.k):
                ids_out[j] = <id_t>idx[j]
            e_ok[0] = True
            return ROW_OK
        if mr_sigmoid_into(z, cx.n, <const floating*>cx.bias, scratch + cx.n):
            return ROW_NAN
        sel = scratch + cx.n
    else:
        m = mr_max_lanes(z, cx.n, lanes, &has_nan)
        if has_nan:
            return ROW_NAN
        if not cx.sigmoid and m == -INFINITY:
            return ROW_ALL_NEG_INF  # the softmax of nothing but -inf is undefined
    # (Sigmoid without bias or groups: the order of the scores is that of z.)
    m_out[0] = m
    # Softmax weights come with the selection when it can give them (not
    # with +inf logits: those take the mass, see _picked_scores).
    e_want = e_sel if not cx.sigmoid and m != INFINITY and cx.k <= MR_BLOCK else NULL
    if cx.n_group > 1:
        e_ok[0] = _topk_in_groups(sel, cx, scratch, kept, lanes, ids_out, m, e_want)
    else:
        if sel != z:
            mr_max_lanes(sel, cx.n, lanes, &has_nan)
        # Selecting on the logits when the order is theirs: exp and sigmoid
        # are monotonic, and the logits keep apart values whose float32
        # probabilities round (or underflow) to the same number.
        e_ok[0] = _topk(sel, cx.n, cx.k, lanes, ids_out, m, e_want)
    return ROW_OK


cdef inline void _picked_scores(const floating* z, const id_t* ids, Py_ssize_t k,
                                floating m, bint sigmoid, floating* out) noexcept nogil:
    # out[0..k) (k <= MR_BLOCK) = the unnormalised weights of the picked
    # experts, the exps in one vector pass: exp(z - m) for softmax (with
    # +inf logits present, m = +inf: 1 for each +inf, 0 for the rest),
    # sigmoid(z).
    cdef Py_ssize_t j
    cdef Py_ssize_t idx[MR_BLOCK]
    if not sigmoid and m == INFINITY:
        for j in range(k):
            out[j] = 1 if z[ids[j]] == INFINITY else 0
        return
    for j in range(k):
        idx[j] = ids[j]
    if sigmoid:
        mr_picked_sigmoid(z, idx, <int>k, out)
    else:
        mr_picked_exp(z, idx, <int>k, m, out)


cdef floating _picked_sum(const floating* z, const RouteCtx* cx, const id_t* ids,
                          floating* e_sel, floating m) noexcept nogil:
    # The sum of the picked experts' unnormalised weights, from their ids
    # (the rows whose selection gave ids only): MR_BLOCK experts at a time,
    # the blocks' sums in double, so no drift over many blocks (one block:
    # its sum, unchanged).  e_sel holds the last block's scores on return.
    cdef double block_sums = 0
    cdef Py_ssize_t j = 0, k = cx.k
    while j < k:
        _picked_scores(z, ids + j, min(MR_BLOCK, k - j), m, cx.sigmoid, e_sel)
        block_sums += mr_sum_k(e_sel, <int>min(MR_BLOCK, k - j))
        j += MR_BLOCK
    return <floating>block_sums


cdef floating _softmax_sum(const floating* z, Py_ssize_t n, floating m) noexcept nogil:
    # The full softmax sum of a row whose max is m.
    cdef floating s = 0
    cdef Py_ssize_t j
    if m == INFINITY:
        for j in range(n):
            s += z[j] == INFINITY  # +inf logits share the mass equally
        return s
    return mr_sum_exp(z, n, m)


cdef inline floating _weights_divisor(const floating* z, const RouteCtx* cx, floating sel_sum,
                                      floating m) noexcept nogil:
    # What the picked experts' scores times the scaling factor are divided
    # by, given sel_sum, the sum of those scores (mr_sum_k, _picked_sum):
    # that sum when renormalised, the full softmax sum when not, 1 for
    # unnormalised sigmoid.  One rule, in the logits' precision, for every
    # path of a row (_route_row, _route_pair), so each gives the same bits.
    # The top-1 of an ungrouped softmax row has e == 1, so the sum is >= 1;
    # DeepSeek-style routers divide by (sum + 1e-20) as their picked scores
    # may all be 0.
    if cx.norm:
        return sel_sum + (<floating>1e-20 if cx.sigmoid or cx.n_group > 1 else 0)
    if cx.sigmoid:
        return 1
    return _softmax_sum(z, cx.n, m)


cdef void _put_weights_blocks(const floating* z, const RouteCtx* cx, const id_t* ids,
                              floating* e_sel, floating m, floating divisor,
                              weight_t* w_out) noexcept nogil:
    # _put_weights for k > MR_BLOCK (_route_row only): the scores recomputed
    # a block at a time.
    cdef floating scale = <floating>cx.scale
    cdef Py_ssize_t i, j = 0, k = cx.k
    while j < k:
        _picked_scores(z, ids + j, min(MR_BLOCK, k - j), m, cx.sigmoid, e_sel)
        for i in range(min(MR_BLOCK, k - j)):
            w_out[j + i] = <weight_t>((e_sel[i] * scale) / divisor)
        j += MR_BLOCK


cdef inline void _put_weights(const RouteCtx* cx, const floating* e_sel, floating divisor,
                              weight_t* w_out) noexcept nogil:
    # w_out[j] = (score_j * routed_scaling_factor) / divisor for k <= MR_BLOCK,
    # e_sel holding the K scores.  (Kept to these few operations: the pair
    # path inlines it.)
    cdef floating scale = <floating>cx.scale
    cdef Py_ssize_t j
    for j in range(cx.k):
        w_out[j] = <weight_t>((e_sel[j] * scale) / divisor)


cdef int _route_row(const floating* z, const RouteCtx* cx, floating* scratch, Py_ssize_t* kept,
                    bint approx, id_t* ids_out, weight_t* w_out) noexcept nogil:
    """Route one row of logits: its top-k, then its weights (_select_row)."""
    cdef floating e_sel[MR_BLOCK]
    cdef floating m, sel_sum, divisor
    cdef bint e_ok
    cdef int status = _select_row(z, cx, scratch, kept, approx, ids_out, e_sel, &m, &e_ok)
    if status != ROW_OK:
        return status
    # e_ok: e_sel holds the K scores already (k <= MR_BLOCK).
    sel_sum = mr_sum_k(&e_sel[0], <int>cx.k) if e_ok else _picked_sum(z, cx, ids_out, e_sel, m)
    divisor = _weights_divisor(z, cx, sel_sum, m)
    if cx.k > MR_BLOCK:
        _put_weights_blocks(z, cx, ids_out, e_sel, m, divisor, w_out)
    else:
        _put_weights(cx, e_sel, divisor, w_out)
    return ROW_OK


cdef inline bint _pairs_apply(const RouteCtx* cx, bint is_float) noexcept nogil:
    # The plain softmax router on rows that _topk takes the vector path for;
    # the float32 sigmoid routers with a bias or groups where this build
    # selects them on approximate scores (mr_sigmoid_topk_pair).
    if cx.sigmoid:
        return (MR_HAVE_NET8 and is_float and (cx.bias != NULL or cx.n_group > 1)
                and cx.k <= MR_BLOCK)
    return cx.n_group == 1 and cx.bias == NULL and cx.k <= MR_BLOCK and cx.n >= 2 * MR_BLOCK


cdef inline Py_ssize_t _route_pair(const floating* z, const RouteCtx* cx, floating* scratch,
                                   Py_ssize_t* kept, id_t* ids_out,
                                   weight_t* w_out) noexcept nogil:
    """Route the rows z[0:n] and z[n:2n] of a router that _pairs_apply to.

    Their top-k is taken together (mr_topk_pair, mr_sigmoid_topk_pair: the
    two rows' dependent steps overlap); a row it cannot take is routed by
    _route_row (scratch and kept: as _route_row's, 2 * n_group for kept).
    The weights are _route_row's (_weights_divisor, _put_weights), to the
    bit.  Returns the number of rows that could not be routed.  Inline: a
    call per pair sets up a frame for the vector locals.
    """
    cdef Py_ssize_t idx[2 * (MR_BLOCK + 1)]
    cdef floating e[2 * MR_BLOCK]
    cdef floating m[2]
    cdef int status[2]
    cdef Py_ssize_t h, j, n = cx.n, k = cx.k, n_bad = 0
    cdef const floating* z_h
    cdef id_t* ids_h
    cdef weight_t* w_h
    cdef floating* e_h
    cdef floating divisor
    cdef bint put8 = False
    cdef const uint16_t* half_src = NULL
    if floating is float and weight_t is float and id_t is int32_t:
        put8 = k == 8
    if cx.sigmoid:
        mr_sigmoid_topk_pair(z, n, <const floating*>cx.bias, cx.n_group, cx.topk_group, <int>k,
                             <floating>cx.slack, scratch, kept, idx, e, status)
        m[0] = m[1] = 0
    else:
        if floating is float:
            if cx.half_src != NULL:
                half_src = cx.half_src + (z - cx.half_dst)
        mr_topk_pair(z, n, <int>k, idx, e, m, status, half_src, cx.half_bf16)
    for h in range(2):
        z_h = z + h * n
        ids_h = ids_out + h * k
        w_h = w_out + h * k
        if status[h] < 0:
            # (mr_sigmoid_topk_pair has tried the approximate selection)
            n_bad += _route_row(z_h, cx, scratch, kept, False, ids_h, w_h) != ROW_OK
            continue
        e_h = e + h * MR_BLOCK
        if status[h] == 0 or not put8:  # (put8 writes the ids itself)
            for j in range(k):
                ids_h[j] = <id_t>idx[h * (MR_BLOCK + 1) + j]
        # status 0: ids only (ties, or many candidates)
        divisor = _weights_divisor(z_h, cx, mr_sum_k(e_h, <int>k) if status[h] == 1
                                   else _picked_sum(z_h, cx, ids_h, e_h, m[h]), m[h])
        if floating is float and weight_t is float and id_t is int32_t:
            if put8:  # ids and weights in a few vector operations
                mr_put8(idx + h * (MR_BLOCK + 1), e_h, <float>cx.scale, divisor, ids_h, w_h)
                continue
        _put_weights(cx, e_h, divisor, w_h)
    return n_bad


cdef Py_ssize_t _route_rows(const floating* logits, id_t* ids_out, weight_t* w_out,
                            const RouteCtx* cx) noexcept nogil:
    """Route every row; returns the number of rows that could not be routed."""
    cdef Py_ssize_t r, p, n_bad = 0, n_pairs = 0, n = cx.n, k = cx.k
    cdef floating* scratch = <floating*>cx.scratch
    cdef Py_ssize_t per_thread = cx.scratch_per_thread, kept_per_thread = 2 * cx.n_group
    cdef int num_threads = cx.num_threads
    if _pairs_apply(cx, floating is float):
        # Rows (2p, 2p + 1) in pairs whatever the thread count, the odd last
        # row alone: the same rows take the same path for any num_threads.
        n_pairs = cx.n_rows // 2
        if num_threads > 1:
            for p in prange(n_pairs, num_threads=num_threads, schedule='static'):
                n_bad += _route_pair(logits + 2 * p * n, cx, scratch + threadid() * per_thread,
                                     cx.kept + threadid() * kept_per_thread,
                                     ids_out + 2 * p * k, w_out + 2 * p * k)
        else:
            for p in range(n_pairs):
                n_bad += _route_pair(logits + 2 * p * n, cx, scratch, cx.kept,
                                     ids_out + 2 * p * k, w_out + 2 * p * k)
    if num_threads > 1 and cx.n_rows - 2 * n_pairs > 1:
        for r in prange(2 * n_pairs, cx.n_rows, num_threads=num_threads, schedule='static'):
            n_bad += _route_row(logits + r * n, cx, scratch + threadid() * per_thread,
                                cx.kept + threadid() * kept_per_thread, True,
                                ids_out + r * k, w_out + r * k) != ROW_OK
    else:
        for r in range(2 * n_pairs, cx.n_rows):
            n_bad += _route_row(logits + r * n, cx, scratch, cx.kept, True,
                                ids_out + r * k, w_out + r * k) != ROW_OK
    return n_bad


# The dtype ladder of route_rows, one level per buffer: the logits' dtype is
# chosen by the caller, then the ids' and the weights' here.
cdef Py_ssize_t _route_rows_w(const floating* logits, id_t* ids_out, void* w_out, bint w64,
                              const RouteCtx* cx) noexcept nogil:
    if w64:
        return _route_rows(logits, ids_out, <double*>w_out, cx)
    return _route_rows(logits, ids_out, <float*>w_out, cx)


cdef Py_ssize_t _route_rows_typed(const floating* logits, void* ids_out, bint ids64,
                                  void* w_out, bint w64, const RouteCtx* cx) noexcept nogil:
    # uint32 ids are written through the int32 path: ids < 2**31 have the
    # same bits in both.
    if ids64:
        return _route_rows_w(logits, <int64_t*>ids_out, w_out, w64, cx)
    return _route_rows_w(logits, <int32_t*>ids_out, w_out, w64, cx)


# Half-precision logits (bfloat16, float16): a chunk of rows at a time is
# widened, exactly, into a float32 buffer on the stack and routed as float32,
# so the ids and weights are those of the same values given as float32.
# Chunks hold an even number of rows: the same rows pair up as in float32.
cdef enum:
    HALF_CHUNK_FLOATS = 2048  # 8 KB per thread


cdef Py_ssize_t _route_half_chunk(const uint16_t* logits, bint bf16, Py_ssize_t r0,
                                  Py_ssize_t r1, char* ids_out, Py_ssize_t id_size,
                                  bint ids64, char* w_out, Py_ssize_t w_size, bint w64,
                                  const RouteCtx* cx, int tid, float* heap_buf) noexcept nogil:
    # Rows [r0, r1) of half-precision logits, on the calling thread; `tid`
    # picks its slices of the shared scratch; heap_buf: None, or (rows too
    # long for the stack buffer) this thread's 2 * n floats.
    cdef float stack_buf[HALF_CHUNK_FLOATS + 16]
    # On a cache line, as NumPy's own arrays are: vector loads of the
    # widened rows then never straddle two lines.
    cdef float* buf = heap_buf if heap_buf != NULL else <float*>((<size_t>stack_buf + 63) & ~(<size_t>63))
    cdef RouteCtx sub = cx[0]
    cdef Py_ssize_t n = cx.n, k = cx.k, r_wide = r0
    if MR_HAVE_WIDEN_ROW and not cx.sigmoid and _pairs_apply(cx, True):
        # The pairs widen their rows in their first pass (mr_topk_pair);
        # only an odd last row is widened here.
        sub.half_src = logits + r0 * n
        sub.half_dst = buf
        sub.half_bf16 = bf16
        r_wide = r0 + ((r1 - r0) & ~1)
    if bf16:
        mr_widen_bf16(logits + r_wide * n, (r1 - r_wide) * n, buf + (r_wide - r0) * n)
    else:
        mr_widen_f16(logits + r_wide * n, (r1 - r_wide) * n, buf + (r_wide - r0) * n)
    sub.n_rows = r1 - r0
    sub.num_threads = 1
    if sub.scratch != NULL:
        sub.scratch = <char*>cx.scratch + tid * cx.scratch_per_thread * sizeof(float)
        sub.kept = cx.kept + tid * 2 * cx.n_group
    return _route_rows_typed(<const float*>buf, ids_out + r0 * k * id_size, ids64,
                             w_out + r0 * k * w_size, w64, &sub)


cdef Py_ssize_t _route_rows_half(const uint16_t* logits, bint bf16, void* ids_out, bint ids64,
                                 void* w_out, bint w64, const RouteCtx* cx,
                                 float* heap_buf) noexcept nogil:
    cdef Py_ssize_t n = cx.n, n_bad = 0, c, n_chunks, rows_per_chunk
    cdef Py_ssize_t id_size = 8 if ids64 else 4, w_size = 8 if w64 else 4
    rows_per_chunk = 2 if heap_buf != NULL else max(2, (HALF_CHUNK_FLOATS // n) & ~1)
    n_chunks = (cx.n_rows + rows_per_chunk - 1) // rows_per_chunk
    if cx.num_threads > 1 and n_chunks > 1:
        for c in prange(n_chunks, num_threads=cx.num_threads, schedule='static'):
            n_bad += _route_half_chunk(
                logits, bf16, c * rows_per_chunk, min(cx.n_rows, (c + 1) * rows_per_chunk),
                <char*>ids_out, id_size, ids64, <char*>w_out, w_size, w64, cx, threadid(),
                heap_buf + threadid() * 2 * n if heap_buf != NULL else NULL)
    else:
        for c in range(n_chunks):
            n_bad += _route_half_chunk(
                logits, bf16, c * rows_per_chunk, min(cx.n_rows, (c + 1) * rows_per_chunk),
                <char*>ids_out, id_size, ids64, <char*>w_out, w_size, w64, cx, 0, heap_buf)
    return n_bad


# Batches with fewer rows run on one thread whatever num_threads says: below
# this, waking a second thread costs about what it saves
# (benchmarks/bench_threads.py; the figures are in docs/performance.md).
PARALLEL_MIN_ROWS = 64
# The default (num_threads <= 0) splits only batches this large: a thread
# descheduled by another busy process or torch's pool stalls the call for a
# scheduler tick (4 ms), 100x a 32-1024-row call (docs/performance.md).
DEFAULT_PARALLEL_MIN_ROWS = 4096

cdef Py_ssize_t _parallel_min_rows = PARALLEL_MIN_ROWS
cdef Py_ssize_t _default_parallel_min_rows = DEFAULT_PARALLEL_MIN_ROWS


def set_parallel_min_rows(Py_ssize_t rows):
    """Set the threshold for this module (benchmarks only); returns the old one."""
    global _parallel_min_rows
    old = _parallel_min_rows
    _parallel_min_rows = max(rows, 1)
    return old


def set_default_parallel_min_rows(Py_ssize_t rows):
    """Set the default's threshold for this module (benchmarks only); returns the old one."""
    global _default_parallel_min_rows
    old = _default_parallel_min_rows
    _default_parallel_min_rows = max(rows, 1)
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
    cdef double bias_max = mr_abs_max(bias, n) if bias != NULL else 0
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
    r = mr_sigmoid_approx(&x[0], x.shape[0], &out[0])
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
        if mr_sigmoid_topk(&z[r, 0], n, bp, n_group, topk_group, <int>top_k, slack,
                               &scratch[0], &kept[0], idx, e):
            taken[r] = True
            for j in range(top_k):
                ids[r, j] = idx[j]
    return ids, taken


# The NumPy type number of ml_dtypes.bfloat16 once seen (-1: not yet): the
# dtype is recognised by its name, ml_dtypes is never imported here.
cdef int _bf16_typenum = -1


cdef inline int _logits_ref(object logits, LogitsRef* ref, bint bf16_bits, object views_shape):
    # The logits as the kernels read them: 0 with ref filled for a native
    # C-contiguous float32 / float64 / float16 / bfloat16 array with ndim
    # >= 1 (an ndarray, or an object whose type has a DLPack exchange table,
    # such as a torch tensor), -1 otherwise.  bf16_bits: a uint16 ndarray
    # holds bfloat16 bits (the Python layer's view of a DLPack bfloat16
    # without ml_dtypes).
    global _bf16_typenum
    cdef cnp.ndarray arr
    cdef int nd, lt
    ref.from_dl = False
    ref.same_shape = False
    if not cnp.PyArray_CheckExact(logits):
        return _logits_ref_dl(logits, ref, views_shape)
    arr = <cnp.ndarray>logits
    nd = cnp.PyArray_NDIM(arr)
    if nd == 0 or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        return -1
    lt = cnp.PyArray_TYPE(arr)
    if lt == cnp.NPY_FLOAT32:
        ref.kind = LK_F32
    elif lt == cnp.NPY_FLOAT64:
        ref.kind = LK_F64
    elif lt == cnp.NPY_FLOAT16:
        ref.kind = LK_F16
    elif lt == _bf16_typenum or (bf16_bits and lt == cnp.NPY_UINT16):
        ref.kind = LK_BF16
    elif (_bf16_typenum < 0 and lt >= 256  # >= NPY_USERDEF: a dtype not built in
            and cnp.PyArray_ITEMSIZE(arr) == 2 and arr.dtype.name == "bfloat16"):
        _bf16_typenum = lt
        ref.kind = LK_BF16
    else:
        return -1
    ref.n = cnp.PyArray_DIM(arr, nd - 1)
    ref.n_rows = cnp.PyArray_SIZE(arr) // ref.n if ref.n > 0 else 0
    ref.data = cnp.PyArray_DATA(arr)
    ref.nbytes = cnp.PyArray_NBYTES(arr)
    return 0


cdef inline bint _overlap_bytes(const void* a, Py_ssize_t na, cnp.ndarray b) noexcept:
    cdef const char* pa = <const char*>a
    cdef const char* pb = <const char*>cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + na


def route_rows_foreign(object logits, Py_ssize_t top_k, bint norm_topk_prob,
                       cnp.ndarray expert_ids, cnp.ndarray expert_weights, int num_threads,
                       Py_ssize_t num_experts, object views_shape):
    """route_rows for the plain router (softmax, no groups, bias or
    scaling) on a tensor read through DLPack: Router.__call__'s path for a
    tensor of the type its output views were made for, with half the
    arguments to convert.  The same checks and return values."""
    return _route_rows_impl(logits, top_k, norm_topk_prob, expert_ids, expert_weights,
                            num_threads, num_experts, False, 1, 1, 1.0, None, False, views_shape)


def route_rows(object logits, Py_ssize_t top_k, bint norm_topk_prob,
               cnp.ndarray expert_ids, cnp.ndarray expert_weights,
               int num_threads=1, Py_ssize_t num_experts=0, bint sigmoid=False,
               Py_ssize_t n_group=1, Py_ssize_t topk_group=1,
               double routed_scaling_factor=1.0, object bias=None, bint bf16_bits=False,
               object views_shape=None):
    """Route logits [..., num_experts] into flat output buffers.

    This is the hot path of Router.__call__ and route_into: a handful of C
    checks, then the nogil kernel.  Returns the number of rows that could
    not be routed (NaN, or all -inf under softmax), 0 when all were, or -1
    without writing anything when the call is not the plain case: logits
    not a C-contiguous native float32/float64/float16/bfloat16 ndarray (or
    CPU tensor with a DLPack exchange table, not requiring grad) with ndim
    >= 1, last dimension not `num_experts` (when > 0) or 0, top_k or the
    groups out of range, a bias not a C-contiguous array of the logits'
    precision (float32 for the half precisions) and shape [num_experts],
    buffers of another dtype, too small, not writeable C-contiguous, or
    overlapping.  The Python layer then validates, converts or grows, and
    raises with a precise message.  bf16_bits: a uint16 ndarray holds
    bfloat16 bits.  A tensor read through DLPack returns -2 instead of 0
    when routed but its shape is not the tuple views_shape (the shape the
    caller's output views have), so the caller reshapes them.

    num_threads <= 0 means the OpenMP default, for batches of at least
    DEFAULT_PARALLEL_MIN_ROWS rows (one thread below); batches of fewer than
    PARALLEL_MIN_ROWS rows always run on one thread.
    """
    return _route_rows_impl(logits, top_k, norm_topk_prob, expert_ids, expert_weights,
                            num_threads, num_experts, sigmoid, n_group, topk_group,
                            routed_scaling_factor, bias, bf16_bits, views_shape)


cdef inline object _route_rows_impl(object logits, Py_ssize_t top_k, bint norm_topk_prob,
                                    cnp.ndarray expert_ids, cnp.ndarray expert_weights,
                                    int num_threads, Py_ssize_t num_experts, bint sigmoid,
                                    Py_ssize_t n_group, Py_ssize_t topk_group,
                                    double routed_scaling_factor, object bias, bint bf16_bits,
                                    object views_shape):
    # route_rows' body (route_rows_foreign shares it).
    cdef LogitsRef ref
    cdef int wt, it, bias_type
    cdef Py_ssize_t n, n_bad = 0, item
    cdef void* ip
    cdef void* wp
    cdef float* heap_buf = NULL
    cdef RouteCtx cx
    if _logits_ref(logits, &ref, bf16_bits, views_shape) != 0:
        return -1
    n = ref.n
    wt = cnp.PyArray_TYPE(expert_weights)
    it = cnp.PyArray_TYPE(expert_ids)
    if (n == 0 or (num_experts > 0 and n != num_experts) or top_k < 1 or top_k > n
            or n_group < 1 or n % n_group != 0 or topk_group < 1 or topk_group > n_group
            or topk_group * (n // n_group) < top_k
            or (wt != cnp.NPY_FLOAT32 and wt != cnp.NPY_FLOAT64)
            or (it != cnp.NPY_INT32 and it != cnp.NPY_UINT32 and it != cnp.NPY_INT64)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_ids)
            or not cnp.PyArray_IS_C_CONTIGUOUS(expert_weights)
            or not cnp.PyArray_ISWRITEABLE(expert_ids)
            or not cnp.PyArray_ISWRITEABLE(expert_weights)
            or not cnp.PyArray_ISNOTSWAPPED(expert_ids)
            or not cnp.PyArray_ISNOTSWAPPED(expert_weights)):
        return -1
    # Half precisions are routed as float32: their scratch, bias and slack too.
    item = 8 if ref.kind == LK_F64 else 4
    bias_type = cnp.NPY_FLOAT64 if ref.kind == LK_F64 else cnp.NPY_FLOAT32
    cx.bias = NULL
    if bias is not None:
        if (not cnp.PyArray_CheckExact(bias) or cnp.PyArray_TYPE(<cnp.ndarray>bias) != bias_type
                or cnp.PyArray_NDIM(<cnp.ndarray>bias) != 1 or cnp.PyArray_DIM(<cnp.ndarray>bias, 0) != n
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>bias) or not sigmoid):
            return -1
        cx.bias = cnp.PyArray_DATA(<cnp.ndarray>bias)
    cx.slack = _sigmoid_slack(<const float*>cx.bias, n) if sigmoid and item == 4 else 0
    if (it == cnp.NPY_INT32 and n > 2147483648) or (it == cnp.NPY_UINT32 and n > 4294967296):
        return -1  # ids of this many experts do not fit the id dtype
    cx.n_rows = ref.n_rows
    if (cnp.PyArray_SIZE(expert_ids) < cx.n_rows * top_k
            or cnp.PyArray_SIZE(expert_weights) < cx.n_rows * top_k
            or _overlap_bytes(ref.data, ref.nbytes, expert_ids)
            or _overlap_bytes(ref.data, ref.nbytes, expert_weights)
            or _overlap(expert_ids, expert_weights)):
        return -1
    if cx.n_rows == 0:
        return -2 if ref.from_dl and not ref.same_shape else 0
    if cx.n_rows < _parallel_min_rows or (num_threads <= 0 and cx.n_rows < _default_parallel_min_rows):
        num_threads = 1
    elif num_threads <= 0:
        num_threads = mr_openmp_max_threads()
    cx.n = n
    cx.k = top_k
    cx.norm = norm_topk_prob
    cx.sigmoid = sigmoid
    cx.n_group = n_group
    cx.topk_group = topk_group
    cx.scale = routed_scaling_factor
    cx.num_threads = num_threads
    cx.scratch = NULL
    cx.scratch_per_thread = 0
    cx.kept = NULL
    cx.half_src = NULL
    cx.half_dst = NULL
    cx.half_bf16 = False
    if n_group > 1 or cx.bias != NULL:
        cx.scratch_per_thread = 2 * n + n_group
        cx.scratch = malloc(num_threads * cx.scratch_per_thread * item)
        cx.kept = <Py_ssize_t*>malloc(num_threads * 2 * n_group * sizeof(Py_ssize_t))
        if cx.scratch == NULL or cx.kept == NULL:
            free(cx.scratch)
            free(cx.kept)
            raise MemoryError()
    if (ref.kind == LK_F16 or ref.kind == LK_BF16) and 2 * n > HALF_CHUNK_FLOATS:
        heap_buf = <float*>malloc(num_threads * 2 * n * sizeof(float))
        if heap_buf == NULL:
            free(cx.scratch)
            free(cx.kept)
            raise MemoryError()
    ip = cnp.PyArray_DATA(expert_ids)
    wp = cnp.PyArray_DATA(expert_weights)
    with nogil:
        if ref.kind == LK_F32:
            n_bad = _route_rows_typed(<const float*>ref.data, ip, it == cnp.NPY_INT64, wp,
                                      wt == cnp.NPY_FLOAT64, &cx)
        elif ref.kind == LK_F64:
            n_bad = _route_rows_typed(<const double*>ref.data, ip, it == cnp.NPY_INT64, wp,
                                      wt == cnp.NPY_FLOAT64, &cx)
        else:
            n_bad = _route_rows_half(<const uint16_t*>ref.data, ref.kind == LK_BF16, ip,
                                     it == cnp.NPY_INT64, wp, wt == cnp.NPY_FLOAT64, &cx,
                                     heap_buf)
    free(heap_buf)
    free(cx.scratch)
    free(cx.kept)
    if n_bad == 0 and ref.from_dl and not ref.same_shape:
        return -2
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
            mr_exp_short(&x[i], <int>min(block, n - i), &out[i])
            i += block
