/*
 * The dispatch step after routing (moe_router/_plan_kernels.pxi declares
 * these): the plan (a counting sort of the (token, k) slots by expert), the
 * row gather of permute and the weighted sum of combine, over float32,
 * float64, float16 and bfloat16 rows.
 *
 * Includes only common.h.  No function here allocates, raises or touches
 * the GIL; every index it writes through was bounded by the caller.
 *
 * Bits: combine sums the K terms of a token in k order, one rounding per
 * product and per sum (contraction into FMA is switched off below), so its
 * result is the same on every instruction-set path and thread count.
 */
#ifndef MOE_ROUTER_PLAN_HPP
#define MOE_ROUTER_PLAN_HPP

#include "common.h"
#if MR_HAVE_SSE2
#include <emmintrin.h>
#endif

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

/* Storage types of the rows: 16-bit floats are their raw bits. */
struct mr_f16 {
    uint16_t bits;
};
struct mr_bf16 {
    uint16_t bits;
};


/* Loads to the accumulation type A and rounding stores (to nearest, ties
 * to even, as NumPy, ml_dtypes and torch convert). */
template <class A> static MR_HOT A mr_load(float x) { return (A)x; }
template <class A> static MR_HOT A mr_load(double x) { return (A)x; }
template <class A> static MR_HOT A mr_load(mr_bf16 x) { return (A)mr_f32_from_bits((uint32_t)x.bits << 16); }
template <class A> static MR_HOT A mr_load(mr_f16 x)
{
    uint32_t h = x.bits, sign = (h & 0x8000u) << 16, rest = h & 0x7fffu;
    if (rest >= 0x7c00u) /* inf, NaN: all-ones exponent, payload kept */
        return (A)mr_f32_from_bits(sign | 0x7f800000u | ((rest & 0x3ffu) << 13));
    /* The half's bits shifted into a float are the value times 2**-112
     * (the exponent biases differ by 112), subnormals included: scale back
     * by 2**112, exactly. */
    float f = mr_f32_from_bits(rest << 13) * mr_f32_from_bits(0x77800000u);
    return (A)mr_f32_from_bits(sign | mr_bits_from_f32(f));
}

static MR_HOT void mr_store(float a, float *p) { *p = a; }
static MR_HOT void mr_store(double a, double *p) { *p = a; }
static MR_HOT void mr_store(float a, mr_bf16 *p)
{
    uint32_t u = mr_bits_from_f32(a);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p->bits = (uint16_t)((u >> 16) | 0x40u); /* NaN stays a (quiet) NaN */
        return;
    }
    p->bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static MR_HOT void mr_store(float a, mr_f16 *p)
{
    uint32_t u = mr_bits_from_f32(a), sign = (u >> 16) & 0x8000u, m = u & 0x7fffffffu, h;
    if (m >= 0x47800000u) { /* |a| >= 65536, inf or NaN */
        h = m > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (m < 0x38800000u) { /* below the smallest normal half, 2**-14 */
        /* Adding 0.5 puts the half's subnormal bits at the bottom of the
         * float's mantissa, rounded to nearest even by the addition. */
        h = mr_bits_from_f32(mr_f32_from_bits(m) + 0.5f) - 0x3f000000u;
    } else {
        /* Rebias the exponent, round the 13 dropped bits to nearest even;
         * a carry out of the mantissa bumps the exponent (65520 -> inf). */
        h = (m + 0xc8000fffu + ((m >> 13) & 1u)) >> 13;
    }
    p->bits = (uint16_t)(h | sign);
}

/* Columns summed at a time by combine: an accumulator row in L1 (8 KiB of
 * float32, 16 KiB of float64). */
enum { MR_COMBINE_COLS = 2048 };

/* A row copy that bypasses the cache (non-temporal stores): for outputs
 * far larger than the cache, it saves the read of each destination line
 * that an ordinary store costs, as the large copies of memcpy do.  dst is
 * 16-byte aligned and n a multiple of 16 (the caller checked). */
static inline void mr_copy_stream(void *dst, const void *src, size_t n, const void *next)
{
#if MR_HAVE_SSE2
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    const char *pf = (const char *)next;
    size_t i = 0;
    /* Each line of the next row is fetched while this one is copied: the
     * rows come from scattered tokens, which the hardware prefetcher only
     * finds a few lines into each row. */
    for (; i + 4 <= n / 16; i += 4) {
        if (pf != nullptr)
            __builtin_prefetch(pf + i * 16);
        __m128i a = _mm_loadu_si128(s + i), b = _mm_loadu_si128(s + i + 1);
        __m128i c = _mm_loadu_si128(s + i + 2), e = _mm_loadu_si128(s + i + 3);
        _mm_stream_si128(d + i, a);
        _mm_stream_si128(d + i + 1, b);
        _mm_stream_si128(d + i + 2, c);
        _mm_stream_si128(d + i + 3, e);
    }
    for (; i < n / 16; i++)
        _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
#else
    (void)next;
    memcpy(dst, src, n);
#endif
}

/* permute as a scatter, tokens [t0, t1): each token's row is read once
 * and written to the row of each of its slots, out[slot_of[t * K + k]]
 * (times w[t * K + k] when w); slots without a row (< 0: dropped, another
 * rank's, identity) and rows outside [0, n_rows) are skipped.  Reading
 * each hidden row once rather than once per slot (a gather by
 * sorted_token_ids) divides the read traffic by top_k when hidden does not
 * fit the cache.  stream: plain copies with non-temporal stores
 * (mr_copy_stream's conditions hold). */
template <class T, class A, class W>
static void mr_permute_t(const T *hidden, int64_t H, const int64_t *slot_of, int64_t K, const W *w,
                         int64_t n_rows, int64_t t0, int64_t t1, T *out, int stream)
{
    for (int64_t t = t0; t < t1; t++) {
        const T *src = hidden + t * H;
        for (int64_t k = 0; k < K; k++) {
            int64_t r = slot_of[t * K + k];
            if ((uint64_t)r >= (uint64_t)n_rows)
                continue;
            T *dst = out + r * H;
            if (w == nullptr) {
                if (stream) {
                    /* The next token's row is fetched during the first copy. */
                    const T *next = k == 0 && t + 1 < t1 ? src + H : nullptr;
                    mr_copy_stream((void *)dst, (const void *)src, (size_t)H * sizeof(T), (const void *)next);
                } else
                    memcpy((void *)dst, (const void *)src, (size_t)H * sizeof(T));
                continue;
            }
            A wk = (A)w[t * K + k];
            for (int64_t j = 0; j < H; j++)
                mr_store(wk * mr_load<A>(src[j]), dst + j);
        }
    }
#if MR_HAVE_SSE2
    if (stream)
        _mm_sfence(); /* the streamed rows are visible before the caller reads them */
#endif
}

/* combine, tokens [t0, t1): out[t] = sum over k of w[t, k] * (the slot's
 * expert_out row, or hidden[t] for an identity slot), in k order, in A,
 * from +0 (a sum of -0 alone is +0, as a loop from zeros gives).  The first
 * term is written straight into the accumulator and the last straight into
 * out (the same operations, one pass fewer over the accumulator each), and
 * whole rows of up to MR_COMBINE_COLS are summed at a time: one source row
 * streams at a time, which the hardware prefetcher follows. */
template <class T, class A, class W>
static void mr_combine_t(const T *expert_out, const int64_t *slot_of, int64_t K, const W *w, const T *hidden,
                         int64_t H, int64_t t0, int64_t t1, T *out)
{
    A acc[MR_COMBINE_COLS];
    for (int64_t t = t0; t < t1; t++) {
        const int64_t *so = slot_of + t * K;
        int64_t k_last = -1; /* the last slot that contributes */
        for (int64_t k = 0; k < K; k++) {
            if (so[k] >= 0 || (so[k] == -2 && hidden != nullptr))
                k_last = k;
        }
        for (int64_t c0 = 0; c0 < H; c0 += MR_COMBINE_COLS) {
            int64_t nc = H - c0 < MR_COMBINE_COLS ? H - c0 : MR_COMBINE_COLS;
            T *dst = out + t * H + c0;
            if (k_last < 0) {
                for (int64_t j = 0; j < nc; j++)
                    mr_store((A)0, dst + j);
                continue;
            }
            bool first = true;
            for (int64_t k = 0; k <= k_last; k++) {
                int64_t s = so[k];
                const T *src;
                if (s >= 0)
                    src = expert_out + s * H + c0;
                else if (s == -2 && hidden != nullptr)
                    src = hidden + t * H + c0;
                else
                    continue;
                A wk = w != nullptr ? (A)w[t * K + k] : (A)1;
                if (k == k_last && first) {
                    for (int64_t j = 0; j < nc; j++)
                        mr_store((A)0 + wk * mr_load<A>(src[j]), dst + j);
                } else if (k == k_last) {
                    for (int64_t j = 0; j < nc; j++)
                        mr_store(acc[j] + wk * mr_load<A>(src[j]), dst + j);
                } else if (first) {
                    for (int64_t j = 0; j < nc; j++)
                        acc[j] = (A)0 + wk * mr_load<A>(src[j]);
                } else {
                    for (int64_t j = 0; j < nc; j++)
                        acc[j] = acc[j] + wk * mr_load<A>(src[j]);
                }
                first = false;
            }
        }
    }
}

/* Row dtype codes shared with the Cython layer. */
enum { MR_DT_F32 = 0, MR_DT_F64 = 1, MR_DT_F16 = 2, MR_DT_BF16 = 3 };

#define MR_ROW_DISPATCH(FN, ARGS_T, ARGS_W)                           \
    switch (dtype) {                                                  \
    case MR_DT_F32: FN<float, float, ARGS_W> ARGS_T(float); break;    \
    case MR_DT_F64: FN<double, double, ARGS_W> ARGS_T(double); break; \
    case MR_DT_F16: FN<mr_f16, float, ARGS_W> ARGS_T(mr_f16); break;  \
    default: FN<mr_bf16, float, ARGS_W> ARGS_T(mr_bf16); break;       \
    }

template <class W>
static void mr_permute_w(int dtype, const void *hidden, int64_t H, const int64_t *slot_of, int64_t K,
                         const W *w, int64_t n_rows, int64_t t0, int64_t t1, void *out, int stream)
{
#define MR_ARGS(T) ((const T *)hidden, H, slot_of, K, w, n_rows, t0, t1, (T *)out, stream)
    MR_ROW_DISPATCH(mr_permute_t, MR_ARGS, W)
#undef MR_ARGS
}

template <class W>
static void mr_combine_w(int dtype, const void *expert_out, const int64_t *slot_of, int64_t K, const W *w,
                         const void *hidden, int64_t H, int64_t t0, int64_t t1, void *out)
{
#define MR_ARGS(T) ((const T *)expert_out, slot_of, K, w, (const T *)hidden, H, t0, t1, (T *)out)
    MR_ROW_DISPATCH(mr_combine_t, MR_ARGS, W)
#undef MR_ARGS
}
#undef MR_ROW_DISPATCH

/* The entry points: w is float32 (w64 == 0), float64 or NULL.  permute
 * streams (stream != 0) only plain copies with 16-byte aligned rows. */
static void mr_permute_rows(int dtype, const void *hidden, int64_t H, const int64_t *slot_of, int64_t K,
                            const void *w, int w64, int64_t n_rows, int64_t t0, int64_t t1, void *out,
                            int stream)
{
    size_t row_bytes = (size_t)H * (dtype == MR_DT_F64 ? 8 : dtype == MR_DT_F32 ? 4 : 2);
    stream = stream && w == nullptr && row_bytes % 16 == 0 && (uintptr_t)out % 16 == 0;
    if (w64)
        mr_permute_w(dtype, hidden, H, slot_of, K, (const double *)w, n_rows, t0, t1, out, stream);
    else
        mr_permute_w(dtype, hidden, H, slot_of, K, (const float *)w, n_rows, t0, t1, out, stream);
}

/* permute's padding rows among [r0, r1) (block_size: tok[r] == n_tokens)
 * as zeros; the scatter writes every other row. */
static void mr_permute_pad(size_t row_bytes, int64_t n_tokens, const int64_t *tok, int64_t r0, int64_t r1,
                           void *out)
{
    for (int64_t r = r0; r < r1; r++) {
        if (tok[r] >= n_tokens)
            memset((char *)out + (size_t)r * row_bytes, 0, row_bytes);
    }
}

static void mr_combine_rows(int dtype, const void *expert_out, const int64_t *slot_of, int64_t K,
                            const void *w, int w64, const void *hidden, int64_t H, int64_t t0, int64_t t1,
                            void *out)
{
    if (w64)
        mr_combine_w(dtype, expert_out, slot_of, K, (const double *)w, hidden, H, t0, t1, out);
    else
        mr_combine_w(dtype, expert_out, slot_of, K, (const float *)w, hidden, H, t0, t1, out);
}

/* Marks in slot_of while the plan is built (the final values are row
 * indices, or -1 / -2). */
enum { MR_SLOT_REMOTE = -1, MR_SLOT_IDENTITY = -2, MR_SLOT_DROPPED = -3 };

/* Facts the plan returns in stats[]. */
enum {
    MR_ST_ROWS = 0,
    MR_ST_ACTIVE,
    MR_ST_DROPPED,
    MR_ST_IDENTITY,
    MR_ST_REMOTE,
    MR_ST_BLOCKS,
    MR_ST_TOKENS,
    MR_ST_N
};

/* The plan of T tokens x K ids (ids[t * K + k], each in [0, E)): a stable
 * counting sort of the slots by local expert.  Ids >= S are identity
 * experts; expert_map (or NULL: the identity map) sends the routed ids
 * [0, S) to local experts [0, L) or -1 (another rank's).  capacity < 0: no
 * limit.  Each expert's segment is padded to a multiple of B with the
 * sentinels n_tokens (tok) and T * K (slot).  Returns -1, or the first
 * flat index whose id is out of range, or -2 if expert_map has an entry
 * outside [-1, L) (it changed under us).  The caller sized the outputs for
 * T * K + min(L, T * K) * (B - 1) rows and L experts. */
/* Expert e's segment, its c slots padded to a multiple of B, laid out at
 * *rows (both plans' offsets pass): its offset, whether it is active, the
 * expert of each of its blocks; *rows and *n_blocks advance past it. */
static inline void mr_plan_segment(int64_t e, int64_t c, int64_t B, int64_t *offsets, int64_t *active,
                                   int64_t *n_active, int64_t *block_experts, int64_t *rows,
                                   int64_t *n_blocks)
{
    offsets[e] = *rows;
    if (c > 0)
        active[(*n_active)++] = e;
    int64_t padded = B == 1 ? c : (c + B - 1) / B * B;
    if (block_experts != nullptr) {
        for (int64_t b = 0; b < padded / B; b++)
            block_experts[*n_blocks + b] = e;
    }
    *n_blocks += padded / B;
    *rows += padded;
}

template <class I>
static int64_t mr_plan(const I *ids, int64_t T, int64_t K, int64_t E, int64_t S, const int64_t *expert_map,
                       int64_t L, int64_t capacity, int64_t B, int64_t *counts, int64_t *offsets,
                       int64_t *cursor, int64_t *tok, int64_t *slot, int64_t *slot_of, int64_t *active,
                       int64_t *block_experts, int64_t *stats)
{
    const int64_t n = T * K;
    int64_t n_identity = 0, n_remote = 0, n_dropped = 0;
    stats[MR_ST_TOKENS] = 0; /* a plan that failed has no tokens */
    for (int64_t e = 0; e < L; e++)
        counts[e] = 0;
    const bool plain = expert_map == nullptr && S == E && capacity < 0;
    if (plain) {
        /* The plain case: every id is a routed local expert (pass 2 reads
         * the ids again rather than a copy in slot_of: one store less). */
        for (int64_t i = 0; i < n; i++) {
            int64_t v = (int64_t)ids[i];
            if ((uint64_t)v >= (uint64_t)E) /* negative ids wrap to large values */
                return i;
            counts[v]++;
        }
    } else {
        /* Pass 1, token order: check each id, and put its local expert (or
         * a mark) in slot_of; count unless a capacity decides what is kept. */
        for (int64_t i = 0; i < n; i++) {
            int64_t v = (int64_t)ids[i];
            if (v < 0 || v >= E) /* uint32 ids convert to non-negative values */
                return i;
            if (v >= S) {
                slot_of[i] = MR_SLOT_IDENTITY;
                n_identity++;
                continue;
            }
            int64_t e = expert_map != nullptr ? expert_map[v] : v;
            if (e < -1 || e >= L)
                return -2;
            slot_of[i] = e;
            if (e < 0) {
                n_remote++;
                continue;
            }
            if (capacity < 0)
                counts[e]++;
        }
    }
    /* Capacity: first choices of all tokens before any second choice, then
     * token order (Switch, GShard); the rest are dropped. */
    if (capacity >= 0) {
        for (int64_t k = 0; k < K; k++) {
            for (int64_t t = 0; t < T; t++) {
                int64_t e = slot_of[t * K + k];
                if (e < 0)
                    continue;
                if (counts[e] < capacity) {
                    counts[e]++;
                } else {
                    slot_of[t * K + k] = MR_SLOT_DROPPED;
                    n_dropped++;
                }
            }
        }
    }
    /* Offsets: exclusive cumsum of the counts rounded up to B. */
    int64_t rows = 0, n_active = 0, n_blocks = 0;
    for (int64_t e = 0; e < L; e++) {
        cursor[e] = rows;
        mr_plan_segment(e, counts[e], B, offsets, active, &n_active, block_experts, &rows, &n_blocks);
    }
    offsets[L] = rows;
    /* Pass 2, token order: scatter, stable (token then k within an expert). */
    if (plain) {
        for (int64_t t = 0; t < T; t++) {
            for (int64_t k = 0; k < K; k++) {
                int64_t i = t * K + k, p = cursor[(int64_t)ids[i]]++;
                tok[p] = t;
                slot[p] = i;
                slot_of[i] = p;
            }
        }
    }
    for (int64_t t = 0; !plain && t < T; t++) {
        for (int64_t k = 0; k < K; k++) {
            int64_t i = t * K + k, e = slot_of[i];
            if (e >= 0) {
                int64_t p = cursor[e]++;
                tok[p] = t;
                slot[p] = i;
                slot_of[i] = p;
            } else if (e == MR_SLOT_DROPPED) {
                slot_of[i] = MR_SLOT_REMOTE;
            }
        }
    }
    if (B > 1) {
        for (int64_t e = 0; e < L; e++) {
            for (int64_t p = cursor[e]; p < offsets[e + 1]; p++) {
                tok[p] = T;
                slot[p] = n;
            }
        }
    }
    stats[MR_ST_ROWS] = rows;
    stats[MR_ST_ACTIVE] = n_active;
    stats[MR_ST_DROPPED] = n_dropped;
    stats[MR_ST_IDENTITY] = n_identity;
    stats[MR_ST_REMOTE] = n_remote;
    stats[MR_ST_BLOCKS] = n_blocks;
    stats[MR_ST_TOKENS] = T;
    return -1;
}

static int64_t mr_plan_ids(int id_kind, const void *ids, int64_t T, int64_t K, int64_t E, int64_t S,
                           const int64_t *expert_map, int64_t L, int64_t capacity, int64_t B, int64_t *counts,
                           int64_t *offsets, int64_t *cursor, int64_t *tok, int64_t *slot, int64_t *slot_of,
                           int64_t *active, int64_t *block_experts, int64_t *stats)
{
#define MR_PLAN_ARGS                                                                             \
    T, K, E, S, expert_map, L, capacity, B, counts, offsets, cursor, tok, slot, slot_of, active, \
        block_experts, stats
    if (id_kind == 0)
        return mr_plan((const int32_t *)ids, MR_PLAN_ARGS);
    if (id_kind == 1)
        return mr_plan((const uint32_t *)ids, MR_PLAN_ARGS);
    return mr_plan((const int64_t *)ids, MR_PLAN_ARGS);
#undef MR_PLAN_ARGS
}


/* The plain plan (no expert_map, identity experts or capacity) in shares
 * of tokens, for threads: each share counts its own slots per expert
 * (mr_plan_count), one serial step turns the per-share counts into each
 * share's start row per expert (mr_plan_starts: expert-major, share-minor,
 * so share j's slots of an expert follow share j-1's: the serial order),
 * and each share scatters its slots from there (mr_plan_scatter).  The
 * result is the serial plan, bit for bit. */
template <class I>
static int64_t mr_plan_count_t(const I *ids, int64_t t0, int64_t t1, int64_t K, int64_t E, int64_t L,
                               int64_t *share_counts, int64_t *slot_of)
{
    for (int64_t e = 0; e < L; e++)
        share_counts[e] = 0;
    for (int64_t i = t0 * K; i < t1 * K; i++) {
        int64_t v = (int64_t)ids[i];
        if ((uint64_t)v >= (uint64_t)E)
            return i;
        slot_of[i] = v;
        share_counts[v]++;
    }
    return -1;
}

static int64_t mr_plan_count(int id_kind, const void *ids, int64_t t0, int64_t t1, int64_t K, int64_t E,
                             int64_t L, int64_t *share_counts, int64_t *slot_of)
{
    if (id_kind == 0)
        return mr_plan_count_t((const int32_t *)ids, t0, t1, K, E, L, share_counts, slot_of);
    if (id_kind == 1)
        return mr_plan_count_t((const uint32_t *)ids, t0, t1, K, E, L, share_counts, slot_of);
    return mr_plan_count_t((const int64_t *)ids, t0, t1, K, E, L, share_counts, slot_of);
}

/* shares x L counts -> start rows (in place); the totals, offsets (padded
 * to B), active experts, block experts and stats as mr_plan writes them. */
static void mr_plan_starts(int64_t shares, int64_t T, int64_t K, int64_t L, int64_t B, int64_t *share_counts,
                           int64_t *counts, int64_t *offsets, int64_t *active, int64_t *block_experts,
                           int64_t *stats)
{
    int64_t rows = 0, n_active = 0, n_blocks = 0;
    for (int64_t e = 0; e < L; e++) {
        int64_t c = 0;
        for (int64_t j = 0; j < shares; j++) {
            int64_t cj = share_counts[j * L + e];
            share_counts[j * L + e] = rows + c;
            c += cj;
        }
        counts[e] = c;
        mr_plan_segment(e, c, B, offsets, active, &n_active, block_experts, &rows, &n_blocks);
    }
    offsets[L] = rows;
    stats[MR_ST_ROWS] = rows;
    stats[MR_ST_ACTIVE] = n_active;
    stats[MR_ST_DROPPED] = 0;
    stats[MR_ST_IDENTITY] = 0;
    stats[MR_ST_REMOTE] = 0;
    stats[MR_ST_BLOCKS] = n_blocks;
}

static void mr_plan_scatter(int64_t t0, int64_t t1, int64_t K, int64_t *cursor, int64_t *tok, int64_t *slot,
                            int64_t *slot_of)
{
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t k = 0; k < K; k++) {
            int64_t i = t * K + k, p = cursor[slot_of[i]]++;
            tok[p] = t;
            slot[p] = i;
            slot_of[i] = p;
        }
    }
}

/* Padding rows after a share-wise scatter: each expert's real rows end at
 * offsets[e] + counts[e]. */
static void mr_plan_pad(int64_t T, int64_t K, int64_t L, const int64_t *counts, const int64_t *offsets,
                        int64_t *tok, int64_t *slot, int64_t *stats)
{
    for (int64_t e = 0; e < L; e++) {
        for (int64_t p = offsets[e] + counts[e]; p < offsets[e + 1]; p++) {
            tok[p] = T;
            slot[p] = T * K;
        }
    }
    stats[MR_ST_TOKENS] = T;
}

}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif  // MOE_ROUTER_PLAN_HPP
