# The dispatch kernels (plan, permute, combine): the Cython layer over
# csrc/plan.hpp, included by each `_core_<isa>.pyx` after the router kernels.
#
# Contract with moe_router/_plan.py, as for route_rows: the Python layer
# validates and explains; these entry points re-check, in C, every size an
# index is bounded by (so no input can make them write outside a buffer) and
# return a negative code instead of raising for anything not the plain
# case.  The nogil parts never raise.

cimport cython

cdef extern from "csrc/plan.hpp" nogil:
    enum: MR_ST_N
    enum: MR_ST_TOKENS_PY "MR_ST_TOKENS"
    int64_t mr_plan_ids(int id_kind, const void* ids, int64_t T, int64_t K, int64_t E, int64_t S,
                        const int64_t* expert_map, int64_t L, int64_t capacity, int64_t B,
                        int64_t* counts, int64_t* offsets, int64_t* cursor, int64_t* tok,
                        int64_t* slot, int64_t* slot_of, int64_t* active, int64_t* block_experts,
                        int64_t* stats)
    int64_t mr_plan_count(int id_kind, const void* ids, int64_t t0, int64_t t1, int64_t K,
                          int64_t E, int64_t L, int64_t* share_counts, int64_t* slot_of)
    void mr_plan_starts(int64_t shares, int64_t T, int64_t K, int64_t L, int64_t B,
                        int64_t* share_counts, int64_t* counts, int64_t* offsets, int64_t* active,
                        int64_t* block_experts, int64_t* stats)
    void mr_plan_scatter(int64_t t0, int64_t t1, int64_t K, int64_t* cursor, int64_t* tok,
                         int64_t* slot, int64_t* slot_of)
    void mr_plan_pad(int64_t T, int64_t K, int64_t L, const int64_t* counts, const int64_t* offsets,
                     int64_t* tok, int64_t* slot, int64_t* stats)
    void mr_permute_rows(int dtype, const void* hidden, int64_t H, const int64_t* slot_of,
                         int64_t K, const void* w, int w64, int64_t n_rows, int64_t t0,
                         int64_t t1, void* out, int stream)
    void mr_permute_pad(size_t row_bytes, int64_t n_tokens, const int64_t* tok, int64_t r0,
                        int64_t r1, void* out)
    void mr_combine_rows(int dtype, const void* expert_out, const int64_t* slot_of, int64_t K,
                         const void* w, int w64, const void* hidden, int64_t H, int64_t t0,
                         int64_t t1, void* out)

# permute / combine split across threads only when they move at least this
# many bytes of rows (permute: its output; combine: the expert rows it reads).
# bench_dispatch.py --only threads, hidden 2048 float32 top-8, 2 threads vs 1
# on a quiet moment of the shared host: T=16 (1 MiB) permute 1.64x, combine
# 1.76x; T=64 1.84x, 1.99x (on a busy host any split suffers from a
# descheduled thread).
DISPATCH_PARALLEL_MIN_BYTES = 1 << 20

cdef Py_ssize_t _dispatch_parallel_min_bytes = DISPATCH_PARALLEL_MIN_BYTES


# permute copies rows with non-temporal stores when its output is at least
# this large (most of a last-level cache, where the next matmul would not
# find it anyway).  At hidden 2048 float32, top-8, one thread, the scatter
# kernel (16 MiB L3): T=128 (8 MiB) 0.31 ms plain vs 0.38 ms streamed,
# T=256 (16 MiB) 1.96 vs 0.75 ms.
DISPATCH_STREAM_MIN_BYTES = 12 << 20

cdef Py_ssize_t _dispatch_stream_min_bytes = DISPATCH_STREAM_MIN_BYTES


def set_dispatch_stream_min_bytes(Py_ssize_t n_bytes):
    """Set the streaming-store threshold of permute (benchmarks only); returns the old one."""
    global _dispatch_stream_min_bytes
    old = _dispatch_stream_min_bytes
    _dispatch_stream_min_bytes = max(n_bytes, 0)
    return old


def set_dispatch_parallel_min_bytes(Py_ssize_t n_bytes):
    """Set the threading threshold of permute / combine (benchmarks only); returns the old one."""
    global _dispatch_parallel_min_bytes
    old = _dispatch_parallel_min_bytes
    _dispatch_parallel_min_bytes = max(n_bytes, 1)
    return old


# The plain plan splits its tokens across threads from this many slots
# (T * top_k) on.  128 experts, 2 threads vs 1 (interleaved medians, quiet
# host): 4096 slots 0.96x, 8192 1.77x, 16384 1.44x, 32768 1.54x.
PLAN_PARALLEL_MIN_SLOTS = 8192

cdef Py_ssize_t _plan_parallel_min_slots = PLAN_PARALLEL_MIN_SLOTS

cdef enum:
    MAX_PLAN_SHARES = 64


def set_plan_parallel_min_slots(Py_ssize_t n_slots):
    """Set the threading threshold of the plan (tests and benchmarks only); returns the old one."""
    global _plan_parallel_min_slots
    old = _plan_parallel_min_slots
    _plan_parallel_min_slots = max(n_slots, 1)
    return old


@cython.cdivision(True)
cdef int64_t _plan_shares(int kind, const void* ip, int64_t T, int64_t K, int64_t E, int64_t L,
                          int64_t B, int nt, int64_t* counts, int64_t* offsets, int64_t* tok,
                          int64_t* slot, int64_t* slot_of, int64_t* active, int64_t* be,
                          int64_t* stats, int64_t* scratch) noexcept nogil:
    # The plain plan on nt threads (csrc/plan.hpp: mr_plan_count, _starts,
    # _scatter): the serial plan's result; the first bad id is the first
    # share's that has one (shares are in token order).
    cdef int64_t bad[MAX_PLAN_SHARES]
    cdef int j
    stats[MR_ST_TOKENS_PY] = 0
    for j in prange(nt, num_threads=nt, schedule="static"):
        bad[j] = mr_plan_count(kind, ip, T * j // nt, T * (j + 1) // nt, K, E, L, scratch + j * L,
                               slot_of)
    for j in range(nt):
        if bad[j] >= 0:
            return bad[j]
    mr_plan_starts(nt, T, K, L, B, scratch, counts, offsets, active, be, stats)
    for j in prange(nt, num_threads=nt, schedule="static"):
        mr_plan_scatter(T * j // nt, T * (j + 1) // nt, K, scratch + j * L, tok, slot, slot_of)
    mr_plan_pad(T, K, L, counts, offsets, tok, slot, stats)
    return -1


cdef inline bint _i64_buf(object a, Py_ssize_t n) noexcept:
    # A C-contiguous, writeable, native int64 ndarray of at least n values.
    cdef cnp.ndarray arr
    if not cnp.PyArray_CheckExact(a):
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == cnp.NPY_INT64 and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISWRITEABLE(arr) and cnp.PyArray_SIZE(arr) >= n)


cdef inline int64_t* _i64(object a) noexcept:
    return <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>a)


def plan_rows(object expert_ids, Py_ssize_t num_experts, Py_ssize_t identity_start,
              object expert_map, Py_ssize_t num_local, Py_ssize_t capacity,
              Py_ssize_t block_size, tuple bufs, int num_threads=1):
    """Build a dispatch plan of expert_ids [..., top_k] into the plan's buffers.

    bufs: (counts, offsets, cursor, sorted_token_ids, sorted_slot_ids,
    slot_of, active, block_experts, stats, share_counts), int64.  The plain
    case of at least PLAN_PARALLEL_MIN_SLOTS slots runs on num_threads (<= 0:
    all OpenMP threads from DEFAULT_PARALLEL_MIN_ROWS tokens, one below)
    when share_counts holds threads * num_local values.  block_size < 0: pad to
    -block_size and write block_experts.  Returns -1 when built,
    the first flat index t * top_k + k whose id is outside [0, num_experts),
    -2 if expert_map holds a value outside [-1, num_local), or -3 without
    writing anything when the call is not the plain case (ids not a
    C-contiguous native int32 / uint32 / int64 ndarray with ndim >= 1 and a
    last dimension >= 1, bad sizes or options, buffers too small).
    """
    if bufs is None:
        return -3
    return _plan_rows_c(expert_ids, num_experts, identity_start, expert_map, num_local, capacity,
                        block_size, bufs, num_threads)


def plan_plain(object expert_ids, Py_ssize_t num_experts, tuple bufs, int num_threads):
    """plan_rows(expert_ids, num_experts, num_experts, None, num_experts, -1, 1,
    bufs, num_threads): the plain plan in fewer arguments (the call costs
    about as much as a plan of one token)."""
    if bufs is None:
        return -3
    return _plan_rows_c(expert_ids, num_experts, num_experts, None, num_experts, -1, 1, bufs,
                        num_threads)


cdef int64_t _plan_rows_c(object expert_ids, Py_ssize_t num_experts, Py_ssize_t identity_start,
                          object expert_map, Py_ssize_t num_local, Py_ssize_t capacity,
                          Py_ssize_t block_size, tuple bufs, int num_threads):
    cdef cnp.ndarray ids
    cdef int it, kind
    cdef Py_ssize_t nd, K, T, n, rows_max, E = num_experts, S = identity_start, L = num_local
    cdef Py_ssize_t B = -block_size if block_size < 0 else block_size, C = capacity
    cdef const int64_t* mp = NULL
    cdef int64_t* be = NULL
    cdef int64_t r
    cdef const void* ip
    if not cnp.PyArray_CheckExact(expert_ids) or len(bufs) != 10:
        return -3
    ids = <cnp.ndarray>expert_ids
    nd = cnp.PyArray_NDIM(ids)
    it = cnp.PyArray_TYPE(ids)
    if it == cnp.NPY_INT32:
        kind = 0
    elif it == cnp.NPY_UINT32:
        kind = 1
    elif it == cnp.NPY_INT64:
        kind = 2
    else:
        return -3
    if (nd == 0 or not cnp.PyArray_IS_C_CONTIGUOUS(ids) or not cnp.PyArray_ISNOTSWAPPED(ids)
            or E < 1 or not 0 <= S <= E or B < 1 or L < 0 or (expert_map is None and L != S)):
        return -3
    K = cnp.PyArray_DIM(ids, nd - 1)
    if K < 1:
        return -3
    n = cnp.PyArray_SIZE(ids)
    T = n // K
    rows_max = n + min(L, n) * (B - 1)
    if not (_i64_buf(bufs[0], L) and _i64_buf(bufs[1], L + 1) and _i64_buf(bufs[2], L)
            and _i64_buf(bufs[3], rows_max) and _i64_buf(bufs[4], rows_max)
            and _i64_buf(bufs[5], n) and _i64_buf(bufs[6], L) and _i64_buf(bufs[8], MR_ST_N)):
        return -3
    if block_size < 0:
        if not _i64_buf(bufs[7], rows_max // B):
            return -3
        be = _i64(bufs[7])
    if expert_map is not None:
        if not (cnp.PyArray_CheckExact(expert_map)
                and cnp.PyArray_TYPE(<cnp.ndarray>expert_map) == cnp.NPY_INT64
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>expert_map)
                and cnp.PyArray_SIZE(<cnp.ndarray>expert_map) == S):
            return -3
        mp = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>expert_map)
    ip = cnp.PyArray_DATA(ids)
    cdef int64_t* counts = _i64(bufs[0])
    cdef int64_t* offsets = _i64(bufs[1])
    cdef int64_t* cursor = _i64(bufs[2])
    cdef int64_t* tok = _i64(bufs[3])
    cdef int64_t* slot = _i64(bufs[4])
    cdef int64_t* slot_of = _i64(bufs[5])
    cdef int64_t* active = _i64(bufs[6])
    cdef int64_t* stats = _i64(bufs[8])
    cdef int nt = 1
    cdef int64_t* shares = NULL
    if (mp == NULL and S == E and C < 0 and n >= _plan_parallel_min_slots and num_threads != 1
            and (num_threads > 0 or T >= _default_parallel_min_rows)
            and cnp.PyArray_CheckExact(bufs[9])):
        nt = num_threads if num_threads > 0 else mr_openmp_max_threads()
        nt = <int>min(<Py_ssize_t>nt, T, <Py_ssize_t>MAX_PLAN_SHARES)
        if nt > 1 and not _i64_buf(bufs[9], nt * L):
            nt = 1
        if nt > 1:
            shares = _i64(bufs[9])
    with nogil:
        if nt > 1:
            r = _plan_shares(kind, ip, T, K, E, L, B, nt, counts, offsets, tok, slot, slot_of,
                             active, be, stats, shares)
        else:
            r = mr_plan_ids(kind, ip, T, K, E, S, mp, L, C, B, counts, offsets, cursor, tok, slot,
                            slot_of, active, be, stats)
    return r


cdef inline int _threads_for(Py_ssize_t out_bytes, Py_ssize_t units, int num_threads,
                             Py_ssize_t n_tokens) noexcept:
    # The router's rule: by default (num_threads <= 0) one thread below
    # DEFAULT_PARALLEL_MIN_ROWS tokens (a busy host's descheduled thread
    # costs more than a small split saves); N threads from the measured size.
    if out_bytes < _dispatch_parallel_min_bytes:
        return 1
    if num_threads <= 0 and n_tokens < _default_parallel_min_rows:
        return 1
    if num_threads <= 0:
        num_threads = mr_openmp_max_threads()
    return <int>max(1, min(<Py_ssize_t>num_threads, units))


cdef void _permute_go(int nt, int dtype_code, const void* hp, Py_ssize_t width,
                      Py_ssize_t n_tokens, const int64_t* tp, const int64_t* so, Py_ssize_t top_k,
                      const void* wp, int wk, Py_ssize_t n_rows, void* op,
                      int stream) noexcept nogil:
    # The scatter of the tokens' rows, then the padding rows' zeros: on nt
    # threads in static, contiguous shares of tokens (and of rows for the
    # padding), each row written by one thread.
    cdef Py_ssize_t isz = 8 if dtype_code == 1 else (4 if dtype_code == 0 else 2)
    cdef int i
    if nt == 1:
        mr_permute_rows(dtype_code, hp, width, so, top_k, wp, wk, n_rows, 0, n_tokens, op, stream)
        mr_permute_pad(width * isz, n_tokens, tp, 0, n_rows, op)
        return
    for i in prange(nt, num_threads=nt, schedule="static"):
        _permute_share(i, nt, dtype_code, hp, width, n_tokens, tp, so, top_k, wp, wk, n_rows,
                       op, stream, isz)


@cython.cdivision(True)  # nt >= 2: C division, no error path even in debug builds
cdef inline void _permute_share(int i, int nt, int dtype_code, const void* hp, Py_ssize_t width,
                                Py_ssize_t n_tokens, const int64_t* tp, const int64_t* so,
                                Py_ssize_t top_k, const void* wp, int wk, Py_ssize_t n_rows,
                                void* op, int stream, Py_ssize_t isz) noexcept nogil:
    mr_permute_rows(dtype_code, hp, width, so, top_k, wp, wk, n_rows, n_tokens * i // nt,
                    n_tokens * (i + 1) // nt, op, stream)
    mr_permute_pad(width * isz, n_tokens, tp, n_rows * i // nt, n_rows * (i + 1) // nt, op)


@cython.cdivision(True)
cdef void _combine_shares(int nt, int dtype_code, const void* ep, const int64_t* so,
                          Py_ssize_t top_k, const void* wp, int wk, const void* hp,
                          Py_ssize_t width, Py_ssize_t n_tokens, void* op) noexcept nogil:
    # Static, contiguous shares of the tokens: each output row has one writer.
    cdef int i
    for i in prange(nt, num_threads=nt, schedule="static"):
        mr_combine_rows(dtype_code, ep, so, top_k, wp, wk, hp, width,
                        n_tokens * i // nt, n_tokens * (i + 1) // nt, op)


cdef inline bint _rows_buf(object a, Py_ssize_t n_bytes) noexcept:
    # A C-contiguous native ndarray of at least n_bytes.
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_NBYTES(<cnp.ndarray>a) >= n_bytes)


cdef inline int _weights_kind(object w, Py_ssize_t n) noexcept:
    # 0: float32, 1: float64, -1: unusable.
    cdef int wt
    if not _rows_buf(w, 0) or cnp.PyArray_SIZE(<cnp.ndarray>w) < n:
        return -1
    wt = cnp.PyArray_TYPE(<cnp.ndarray>w)
    if wt == cnp.NPY_FLOAT32:
        return 0
    if wt == cnp.NPY_FLOAT64:
        return 1
    return -1


def permute_rows(object hidden, int dtype_code, Py_ssize_t width, Py_ssize_t n_tokens,
                 object sorted_token_ids, object slot_of, Py_ssize_t top_k, Py_ssize_t n_rows,
                 object weights, object out, int num_threads=1):
    """out[slot_of[t, k]] = hidden[t] (times weights[t, k]) for the slots with
    a row; zero rows where sorted_token_ids is n_tokens (padding).

    hidden, out: C-contiguous ndarrays of rows of `width` values of
    dtype_code (0 float32, 1 float64, 2 float16, 3 bfloat16 as uint16);
    weights: None or float32 / float64 with n_tokens * top_k values.  The
    ids are the plan's (token ids <= n_tokens; slot_of values < n_rows or
    negative: no row).  Returns 0, -2 when out overlaps hidden, weights or
    the plan's arrays, or -1 when a size, dtype or flag does not hold (out
    not writeable C-contiguous ...); nothing is written then.
    """
    cdef Py_ssize_t isz = 8 if dtype_code == 1 else (4 if dtype_code == 0 else 2)
    cdef int wk = 0, nt
    cdef const void* wp = NULL
    if not 0 <= dtype_code <= 3 or width < 0 or n_rows < 0 or n_tokens < 0 or top_k < 1:
        return -1
    if not (_rows_buf(hidden, n_tokens * width * isz) and _rows_buf(out, n_rows * width * isz)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
            and _i64_buf(sorted_token_ids, n_rows) and _i64_buf(slot_of, n_tokens * top_k)):
        return -1
    if weights is not None:
        wk = _weights_kind(weights, n_tokens * top_k)
        if wk < 0:
            return -1
        wp = cnp.PyArray_DATA(<cnp.ndarray>weights)
        if _overlap(<cnp.ndarray>out, <cnp.ndarray>weights):
            return -2
    if (_overlap(<cnp.ndarray>out, <cnp.ndarray>hidden)
            or _overlap(<cnp.ndarray>out, <cnp.ndarray>sorted_token_ids)
            or _overlap(<cnp.ndarray>out, <cnp.ndarray>slot_of)):
        return -2
    if n_rows == 0 or width == 0:
        return 0
    cdef const void* hp = cnp.PyArray_DATA(<cnp.ndarray>hidden)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const int64_t* tp = _i64(sorted_token_ids)
    cdef const int64_t* so = _i64(slot_of)
    nt = _threads_for(n_rows * width * isz, n_rows, num_threads, n_tokens)
    cdef int stream = n_rows * width * isz >= _dispatch_stream_min_bytes
    with nogil:
        _permute_go(nt, dtype_code, hp, width, n_tokens, tp, so, top_k, wp, wk, n_rows, op,
                    stream)
    return 0


def combine_rows(object expert_out, int dtype_code, Py_ssize_t width, Py_ssize_t n_rows,
                 object slot_of, Py_ssize_t n_tokens, Py_ssize_t top_k, object weights,
                 object hidden, object out, int num_threads=1):
    """out[t] = sum over k of weights[t, k] * expert_out[slot_of[t, k]]
    (hidden[t] where slot_of is -2, nothing where it is -1), in k order,
    accumulated in float32 (float64 rows: float64).

    expert_out: n_rows rows of `width` values of dtype_code (see
    permute_rows); slot_of: the plan's, each < n_rows or -1 / -2; weights
    None (all 1) or float32 / float64 [n_tokens * top_k]; hidden None or
    n_tokens rows.  Returns 0, -2 when out overlaps an input, or -1 when a
    size, dtype or flag does not hold; nothing is written then.
    """
    cdef Py_ssize_t isz = 8 if dtype_code == 1 else (4 if dtype_code == 0 else 2)
    cdef int wk = 0, nt
    cdef const void* wp = NULL
    cdef const void* hp = NULL
    if not 0 <= dtype_code <= 3 or width < 0 or n_rows < 0 or n_tokens < 0 or top_k < 1:
        return -1
    if not (_rows_buf(expert_out, n_rows * width * isz)
            and _rows_buf(out, n_tokens * width * isz) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
            and _i64_buf(slot_of, n_tokens * top_k)):
        return -1
    if weights is not None:
        wk = _weights_kind(weights, n_tokens * top_k)
        if wk < 0:
            return -1
        wp = cnp.PyArray_DATA(<cnp.ndarray>weights)
        if _overlap(<cnp.ndarray>out, <cnp.ndarray>weights):
            return -2
    if hidden is not None:
        if not _rows_buf(hidden, n_tokens * width * isz):
            return -1
        hp = cnp.PyArray_DATA(<cnp.ndarray>hidden)
        if _overlap(<cnp.ndarray>out, <cnp.ndarray>hidden):
            return -2
    if (_overlap(<cnp.ndarray>out, <cnp.ndarray>expert_out)
            or _overlap(<cnp.ndarray>out, <cnp.ndarray>slot_of)):
        return -2
    if n_tokens == 0 or width == 0:
        return 0
    cdef const void* ep = cnp.PyArray_DATA(<cnp.ndarray>expert_out)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const int64_t* so = _i64(slot_of)
    nt = _threads_for(n_tokens * width * isz * top_k, n_tokens, num_threads, n_tokens)
    with nogil:
        if nt == 1:
            mr_combine_rows(dtype_code, ep, so, top_k, wp, wk, hp, width, 0, n_tokens, op)
        else:
            _combine_shares(nt, dtype_code, ep, so, top_k, wp, wk, hp, width, n_tokens, op)
    return 0


# --- The warm fast path: permute / combine straight from the caller's objects
#
# _plan.py's permute and combine try these first.  They read NumPy arrays
# (ml_dtypes bfloat16 included) and torch tensors (through the DLPack
# exchange table, as route_rows) in C, check in C every rule the Python
# layer checks, and run the kernel; they return None, having written
# nothing, for anything else (another type, a conversion to make, a bad
# shape, dtype, flag or overlap), and the Python layer then converts or
# raises exactly as before.  This takes ~3 us of Python work off a
# call at T = 1 (bench_dispatch.py).

cdef enum:
    MAX_FAST_DIMS = 8

cdef struct RowsRef:
    char* data
    int code            # row code: 0 float32, 1 float64, 2 float16, 3 bfloat16
    int ndim
    bint writeable
    Py_ssize_t size     # elements
    Py_ssize_t nbytes
    Py_ssize_t dims[MAX_FAST_DIMS]


cdef extern from "numpy/arrayobject.h":
    enum: MR_NPY_USERDEF "NPY_USERDEF"  # the first type number of a registered dtype


# ml_dtypes' bfloat16 descriptor once seen (ml_dtypes is never imported here).
cdef object _bf16_descr = None


cdef int _np_row_code(cnp.ndarray a):
    global _bf16_descr
    cdef int tn = cnp.PyArray_TYPE(a)
    if tn == cnp.NPY_FLOAT32:
        return 0
    if tn == cnp.NPY_FLOAT64:
        return 1
    if tn == cnp.NPY_FLOAT16:
        return 2
    d = <object>cnp.PyArray_DESCR(a)
    if d is _bf16_descr:
        return 3
    if (_bf16_descr is None and tn >= MR_NPY_USERDEF and cnp.PyArray_ITEMSIZE(a) == 2
            and d.name == "bfloat16"):
        _bf16_descr = d
        return 3
    return -1


cdef bint _rows_ref(object obj, RowsRef* r):
    # True with r filled for a C-contiguous native NumPy array or CPU torch
    # tensor (not requiring grad) of a row dtype, with at most MAX_FAST_DIMS
    # dimensions; False for anything else.
    cdef cnp.ndarray a
    cdef const MrDLPackExchangeAPI* api
    cdef MrDLTensor t
    cdef int d
    if cnp.PyArray_CheckExact(obj):
        a = <cnp.ndarray>obj
        r.ndim = cnp.PyArray_NDIM(a)
        if (r.ndim > MAX_FAST_DIMS or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or not cnp.PyArray_ISNOTSWAPPED(a)):
            return False
        r.code = _np_row_code(a)
        if r.code < 0:
            return False
        for d in range(r.ndim):
            r.dims[d] = cnp.PyArray_DIM(a, d)
        r.data = <char*>cnp.PyArray_DATA(a)
        r.size = cnp.PyArray_SIZE(a)
        r.nbytes = cnp.PyArray_NBYTES(a)
        r.writeable = cnp.PyArray_ISWRITEABLE(a)
        return True
    api = _exchange_api(obj)
    if api == NULL:
        return False
    if _xapi_grad:
        if _xapi_grad_descr is not None:
            if mr_descr_truth(_xapi_grad_descr, obj) != 0:  # requires grad, or raised
                return False
        elif obj.requires_grad:
            return False
    # Memory of the types that say requires_grad (torch's) is writeable, as
    # dlpack_view takes it.
    r.writeable = _xapi_grad
    if api.dltensor_from_py_object_no_sync(<void*>obj, &t) != 0:
        PyErr_Clear()
        return False
    r.code = _dl_logits_kind(&t)
    if (not _dl_on_cpu(&t) or r.code < 0 or t.ndim < 0 or t.ndim > MAX_FAST_DIMS
            or not _dl_c_contiguous(&t)):
        return False
    r.ndim = t.ndim
    r.size = 1
    for d in range(t.ndim):
        r.dims[d] = <Py_ssize_t>t.shape[d]
        r.size *= r.dims[d]
    r.data = <char*>t.data + t.byte_offset
    r.nbytes = r.size * (4 if r.code == 0 else 8 if r.code == 1 else 2)
    return True


cdef inline bint _spans_overlap(const RowsRef* a, const char* b, Py_ssize_t nb) noexcept:
    return a.data < b + nb and b < a.data + a.nbytes


cdef inline bint _ref_overlaps_buf(const RowsRef* a, object buf) noexcept:
    return _spans_overlap(a, <const char*>cnp.PyArray_DATA(<cnp.ndarray>buf),
                          cnp.PyArray_NBYTES(<cnp.ndarray>buf))


cdef bint _dims_are(const RowsRef* r, tuple shape, Py_ssize_t skip_last):
    # r's shape is `shape` (without its last skip_last entries).
    cdef Py_ssize_t n = len(shape) - skip_last, d
    if r.ndim != n:
        return False
    for d in range(n):
        if r.dims[d] != <Py_ssize_t>shape[d]:
            return False
    return True


cdef bint _weights_ref(object w, tuple shape, Py_ssize_t T, Py_ssize_t K, RowsRef* r):
    # float32 / float64 weights of the plan's shape, or [T, top_k].
    if not _rows_ref(w, r) or r.code > 1:
        return False
    return _dims_are(r, shape, 0) or (r.ndim == 2 and r.dims[0] == T and r.dims[1] == K)


cdef inline int _fast_threads(object num_threads):
    # None -> 0 (the default rule), an int >= 1 as it is, -1: the Python layer decides.
    if num_threads is None:
        return 0
    if type(num_threads) is int and 1 <= num_threads <= 1 << 20:
        return <int>num_threads
    return -1


def permute_fast(object hidden, tuple bufs, tuple shape, object out, object scale_by,
                 object num_threads):
    """mr.permute(hidden, plan, out, scale_by=, num_threads=) for the plan's
    bufs and shape, when every input is a NumPy array or torch tensor that
    needs no conversion and every check passes: returns out (a new ndarray
    when out is None and hidden is one), else None with nothing written."""
    cdef RowsRef h, o, wr
    cdef int nt_arg = _fast_threads(num_threads), wk = 0, nt, stream
    cdef Py_ssize_t T, rows, K, H, isz
    cdef const void* wp = NULL
    cdef int64_t* stats
    cdef cnp.npy_intp odims[2]
    if nt_arg < 0 or len(bufs) != 10 or len(shape) < 1 or not _i64_buf(bufs[8], MR_ST_N):
        return None
    if not _rows_ref(hidden, &h) or h.ndim < 1:
        return None
    stats = _i64(bufs[8])
    rows = stats[0]
    T = stats[MR_ST_TOKENS_PY]
    K = <Py_ssize_t>shape[len(shape) - 1]
    H = h.dims[h.ndim - 1]
    if h.size != T * H or (h.ndim == 1 and T != 1):
        return None
    if not (_i64_buf(bufs[3], rows) and _i64_buf(bufs[5], T * K)):
        return None
    if scale_by is not None:
        if not _weights_ref(scale_by, shape, T, K, &wr):
            return None
        wk = wr.code
        wp = wr.data
    if out is None:
        if not cnp.PyArray_CheckExact(hidden):
            return None  # a tensor out: the Python layer makes it
        odims[0] = rows
        odims[1] = H
        out = cnp.PyArray_EMPTY(2, odims, cnp.PyArray_TYPE(<cnp.ndarray>hidden), 0)
        if not _rows_ref(out, &o):
            return None
    else:
        if not _rows_ref(out, &o):
            return None
        if (o.code != h.code or o.ndim != 2 or o.dims[0] != rows or o.dims[1] != H
                or not o.writeable):
            return None
        if (_spans_overlap(&o, h.data, h.nbytes) or _ref_overlaps_buf(&o, bufs[3])
                or _ref_overlaps_buf(&o, bufs[5])
                or (wp != NULL and _spans_overlap(&o, wr.data, wr.nbytes))):
            return None
    if rows == 0 or H == 0:
        return out
    isz = 8 if h.code == 1 else (4 if h.code == 0 else 2)
    nt = _threads_for(rows * H * isz, rows, nt_arg, T)
    stream = rows * H * isz >= _dispatch_stream_min_bytes
    cdef const int64_t* tp = _i64(bufs[3])
    cdef const int64_t* so = _i64(bufs[5])
    cdef int code = h.code
    cdef const void* hp = h.data
    cdef void* op = o.data
    with nogil:
        _permute_go(nt, code, hp, H, T, tp, so, K, wp, wk, rows, op, stream)
    return out


def combine_fast(object expert_out, tuple bufs, tuple shape, object expert_weights, object out,
                 object hidden, object num_threads):
    """mr.combine(expert_out, plan, expert_weights, out, hidden_states=,
    num_threads=) under permute_fast's conditions: returns out (a new
    ndarray when out is None and expert_out is one), else None with nothing
    written."""
    cdef RowsRef e, o, wr, h
    cdef int nt_arg = _fast_threads(num_threads), wk = 0, nt
    cdef Py_ssize_t T, rows, K, H, isz, d, nb
    cdef const void* wp = NULL
    cdef const void* hp = NULL
    cdef int64_t* stats
    cdef cnp.npy_intp odims[MAX_FAST_DIMS]
    if nt_arg < 0 or len(bufs) != 10 or len(shape) < 1 or not _i64_buf(bufs[8], MR_ST_N):
        return None
    if not _rows_ref(expert_out, &e):
        return None
    stats = _i64(bufs[8])
    rows = stats[0]
    T = stats[MR_ST_TOKENS_PY]
    K = <Py_ssize_t>shape[len(shape) - 1]
    if e.ndim != 2 or e.dims[0] != rows:
        return None
    H = e.dims[1]
    if not _i64_buf(bufs[5], T * K):
        return None
    if expert_weights is not None:
        if not _weights_ref(expert_weights, shape, T, K, &wr):
            return None
        wk = wr.code
        wp = wr.data
    if hidden is not None or stats[3] != 0:  # identity slots need hidden
        if hidden is None or not _rows_ref(hidden, &h):
            return None
        if h.code != e.code or h.ndim < 1 or h.size != T * H or h.dims[h.ndim - 1] != H:
            return None
        hp = h.data
    nb = len(shape)
    if out is None:
        if not cnp.PyArray_CheckExact(expert_out) or nb > MAX_FAST_DIMS:
            return None
        for d in range(nb - 1):
            odims[d] = <Py_ssize_t>shape[d]
        odims[nb - 1] = H
        out = cnp.PyArray_EMPTY(<int>nb, odims, cnp.PyArray_TYPE(<cnp.ndarray>expert_out), 0)
        if not _rows_ref(out, &o):
            return None
    else:
        if not _rows_ref(out, &o) or o.code != e.code or not o.writeable:
            return None
        if not ((_dims_are(&o, shape, 1) and o.dims[o.ndim - 1] == H)
                or (o.ndim == 2 and o.dims[0] == T and o.dims[1] == H)):
            return None
        if (_spans_overlap(&o, e.data, e.nbytes) or _ref_overlaps_buf(&o, bufs[5])
                or (wp != NULL and _spans_overlap(&o, wr.data, wr.nbytes))
                or (hp != NULL and _spans_overlap(&o, h.data, h.nbytes))):
            return None
    if T == 0 or H == 0:
        return out
    isz = 8 if e.code == 1 else (4 if e.code == 0 else 2)
    nt = _threads_for(T * H * isz * K, T, nt_arg, T)
    cdef const int64_t* so = _i64(bufs[5])
    cdef int code = e.code
    cdef const void* ep = e.data
    cdef void* op = o.data
    with nogil:
        if nt == 1:
            mr_combine_rows(code, ep, so, K, wp, wk, hp, H, 0, T, op)
        else:
            _combine_shares(nt, code, ep, so, K, wp, wk, hp, H, T, op)
    return out
