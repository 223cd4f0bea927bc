/*
 * The entry points of the compiled core: what _router_kernels.pxi declares,
 * once each (templates over float / double; Cython deduces T from the
 * arguments), and the facts of the build that show_config() reports.
 */
#ifndef MOE_ROUTER_KERNELS_HPP
#define MOE_ROUTER_KERNELS_HPP

#include "row_ops.hpp"
#include "sigmoid_approx_avx2.hpp"
#include "half.hpp"

namespace {

/* Each step written out for row 0 and row 1 of a pair (gcc keeps a loop
 * over the two rows as a loop); MR_ONE: the same for one row. */
#define MR_PAIR(h, STMT) \
    {                    \
        enum { h = 0 };  \
        STMT;            \
    }                    \
    {                    \
        enum { h = 1 };  \
        STMT;            \
    }
#define MR_ONE(h, STMT) \
    {                   \
        enum { h = 0 }; \
        STMT;           \
    }

#if MR_HAVE_NET8
/* The steps of mr_sigmoid_topk for the rows of EACH (MR_ONE, MR_PAIR): row
 * h at z + h * n, its scores at c + h * n, its groups at kept + h * n_group,
 * ids at idx + h * (MR_BLOCK + 1), weights at e_out + h * MR_BLOCK; ok[h]
 * (the caller's) says whether they were written. */
#define MR_SIG_STEPS(EACH, ROWS)                                                                             \
    float lanes[ROWS][MR_BLOCK];                                                                             \
    MrCand<float> cd[ROWS];                                                                                  \
    Py_ssize_t n_kept[ROWS];                                                                                 \
    __m256 ga[ROWS][8], gb[ROWS][8];                                                                         \
    const int applies = mr_sig_applies(n, n_group, topk_group, k, slack);                                    \
    const int g8 = mr_sig_groups8(n, n_group);                                                               \
    EACH(h, ok[h] = applies && mr_sig_scores(z + h * n, n, bias, c + h * n, g8 ? ga[h] : NULL, gb[h]))       \
    EACH(h, ok[h] = ok[h] && mr_sig_groups(c + h * n, n, n_group, topk_group, slack, ga[h], gb[h],           \
                                           kept + h * n_group, lanes[h], &n_kept[h]))                        \
    EACH(h, ok[h] = ok[h] && mr_cand_gather<float>(c + h * n, n, n / n_group, kept + h * n_group, n_kept[h], \
                                                   k, lanes[h], 2 * slack, &cd[h]) == 0)                     \
    EACH(h, if (ok[h]) mr_sig_exact(z + h * n, bias, &cd[h]))                                                \
    EACH(h, if (ok[h]) mr_cand_select<float>(&cd[h], k, idx + h * (MR_BLOCK + 1), 0, NULL, 1))               \
    EACH(h, if (ok[h]) mr_picked_sigmoid<float>(z + h * n, idx + h * (MR_BLOCK + 1), k, e_out + h * MR_BLOCK))
#endif

/* The arguments of the sigmoid selections where there is none to run. */
#define MR_UNUSED_SIG_ARGS                                                                        \
    (void)z, (void)n, (void)bias, (void)n_group, (void)topk_group, (void)k, (void)slack, (void)c, \
        (void)kept, (void)idx, (void)e_out;

/* For tests: out[0..n) = mr_sigmoid_topk's approximate scores of x (no
 * bias; n a multiple of 16).  Returns -1 where there are none (double, or a
 * build without MR_HAVE_NET8; nothing written), else whether x holds a
 * NaN. */
template <class T> static inline int mr_sigmoid_approx(const T *x, Py_ssize_t n, T *out)
{
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>)
        return n % 16 ? -1 : !mr_sig_scores(x, n, NULL, out, NULL, NULL);
#endif
    (void)x;
    (void)n;
    (void)out;
    return -1;
}

/*
 * The top-k of c = sigmoid(z) + bias (bias may be NULL) over the best
 * topk_group of n_group groups (group score: the sum of its two best c),
 * for k <= MR_BLOCK: the selection of the biased, grouped sigmoid routers
 * (DeepSeek-V3).  Writes the expert ids, in order, to idx[0..k) (idx holds
 * MR_BLOCK + 1) and returns 1; returns 0 when the row is left to the exact
 * path (_select_row): a NaN, a group choice or a candidate set it cannot
 * be sure of.
 *
 * Select on cheap scores, decide on exact ones.  c~ (in c[0..n)) is within
 * `slack` of the exact c that _select_row computes (mr_sigmoid_into): a
 * degree-3 polynomial for 2^f in the exp and the reciprocal estimate in
 * place of the divide.  Then, exactly as the exact path would decide:
 * - the groups: kept from c~; certain when every kept group's score is more
 *   than 5 * slack above every dropped one's (a group score, a sum of two
 *   values, is within 2 * slack plus its rounding); else the exact path.
 * - the experts: every expert whose exact c is among the k best, or ties
 *   with the k-th, has c~ >= (k-th best c~) - 2 * slack, so those
 *   candidates hold the answer.  Their exact c, recomputed from z and the
 *   bias with the exact path's own operations (the same bits), is what
 *   mr_cand_select ranks, so the ids and their order are the exact path's.
 */
/* The approximate selection for one row: 1 when idx[0..k) holds the ids
 * (idx holds MR_BLOCK + 1) and e_out[0..k) their sigmoid (mr_picked_sigmoid:
 * the weights before scaling; e_out holds MR_BLOCK), 0 when the row is left
 * to the exact path (always, where there is no approximate selection). */
template <class T>
static inline int mr_sigmoid_topk(const T *z, Py_ssize_t n, const T *bias, Py_ssize_t n_group,
                                  Py_ssize_t topk_group, int k, T slack, T *c, Py_ssize_t *kept,
                                  Py_ssize_t *idx, T *e_out)
{
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>) {
        int ok[1];
        MR_SIG_STEPS(MR_ONE, 1)
        return ok[0];
    }
#endif
    MR_UNUSED_SIG_ARGS
    return 0;
}

/* The same for the rows z[0..n) and z[n..2n), each step done for both rows
 * before the next (see mr_topk_pair): c holds 2n scores, kept 2 * n_group
 * groups, idx 2 * (MR_BLOCK + 1) ids, e_out 2 * MR_BLOCK weights.
 * status[h] is 1 when row h's ids are at idx[h * (MR_BLOCK + 1)...] and
 * their sigmoid at e_out[h * MR_BLOCK...], -1 when the row is left to the
 * exact path (as mr_topk_pair's status). */
template <class T>
static inline void mr_sigmoid_topk_pair(const T *z, Py_ssize_t n, const T *bias, Py_ssize_t n_group,
                                        Py_ssize_t topk_group, int k, T slack, T *c, Py_ssize_t *kept,
                                        Py_ssize_t *idx, T *e_out, int *status)
{
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>) {
        int ok[2];
        MR_SIG_STEPS(MR_PAIR, 2)
        MR_PAIR(h, status[h] = ok[h] ? 1 : -1)
        return;
    }
#endif
    MR_UNUSED_SIG_ARGS
    status[0] = status[1] = -1;
}

/*
 * The softmax top-k of the two rows z[0..n) and z[n..2n) (k <= MR_BLOCK),
 * each step done for both rows before the next: a row is a chain of
 * dependent steps (max, threshold, compress, select, exp) that one row
 * alone leaves the core mostly waiting on.  Row h's ids go to
 * idx[h * (MR_BLOCK + 1) ...], exp(z[id] - max) to e_out[h * MR_BLOCK ...],
 * its max to m_out[h] and what mr_topk_groups would return to status[h]
 * (-1 also for a row with a NaN or an infinite max: the general path's).
 * half_src (float32 only, NULL for none): the rows are half precision
 * (bfloat16 when half_bf16, else float16) at half_src, and z is the buffer
 * they are widened into on the way (MR_HAVE_WIDEN_ROW; without it the caller
 * widens first and passes NULL).
 */
template <class T>
static inline void mr_topk_pair(const T *z, Py_ssize_t n, int k, Py_ssize_t *idx, T *e_out, T *m_out,
                                int *status, const uint16_t *half_src, int half_bf16)
{
    alignas(mr_is_f32<T> ? MR_STACK_LINE_BYTES : alignof(T)) T lanes[2][MR_BLOCK];
    MrCand<T> cd[2];
    int has_nan[2], ok[2], general[2] = {1, 1}, late = 1, widened = 0;
#if MR_HAVE_WIDEN_ROW
    /* half_src: the two rows' half-precision values, widened into z (the
     * caller's float32 buffer, writable) by the max pass. */
    if constexpr (mr_is_f32<T>) {
        if (half_src != NULL) {
            float *zw = const_cast<float *>(z);
            if (half_bf16) {
                MR_PAIR(h, m_out[h] = mr_max_lanes_of(z + h * n, n, lanes[h], &has_nan[h],
                                                      MrWidenRow<1>{half_src + h * n, zw + h * n}))
            } else {
                MR_PAIR(h, m_out[h] = mr_max_lanes_of(z + h * n, n, lanes[h], &has_nan[h],
                                                      MrWidenRow<0>{half_src + h * n, zw + h * n}))
            }
            widened = 1;
        }
    }
#endif
    (void)half_src;
    (void)half_bf16;
    if (!widened)
        MR_PAIR(h, m_out[h] = mr_max_lanes(z + h * n, n, lanes[h], &has_nan[h]))
    MR_PAIR(h, ok[h] = !has_nan[h] && m_out[h] < INFINITY)
#if MR_HAVE_NET8
    /* The byte-id candidates: 128 to 256 experts (fewer are faster on the
     * general selection). */
    if constexpr (mr_is_f32<T>) {
        if (k <= 8 && n >= 128 && n <= 256 && n % 8 == 0) {
            uint8_t ids8[2][256 + 8];
            T t[2];
            int c[2];
            MR_PAIR(h, t[h] = ok[h] ? mr_kth_lane(lanes[h], k) : -INFINITY)
            MR_PAIR(h, c[h] = t[h] > -INFINITY ? mr_ids8_gather(z + h * n, n, t[h], ids8[h]) : 0)
            MR_PAIR(h, status[h] = c[h] > 0 && c[h] <= 16
                                       ? mr_ids8_net8(z + h * n, ids8[h], c[h], k, idx + h * (MR_BLOCK + 1),
                                                      m_out[h], e_out + h * MR_BLOCK, &cd[h])
                                       : -2)
            /* Left to exact code by the network: ranked on the same candidates. */
            MR_PAIR(h, if (status[h] == 0) status[h] = mr_cand_rank_block(&cd[h], k, idx + h * (MR_BLOCK + 1),
                                                                          m_out[h], e_out + h * MR_BLOCK))
            /* More than 16 candidates, or none (t = -inf): the general
             * selection below, as rows of other shapes (not late: a lone
             * row's select follows its own gather). */
            MR_PAIR(h, general[h] = status[h] == -2)
            late = 0;
        }
    }
#endif
    MR_PAIR(h, if (general[h]) status[h] =
                   ok[h] && mr_cand_gather(z + h * n, n, n, NULL, 1, k, lanes[h], (T)0, &cd[h]) == 0 ? 0 : -1)
    MR_PAIR(h, if (general[h] && status[h] == 0) status[h] =
                   mr_cand_select(&cd[h], k, idx + h * (MR_BLOCK + 1), m_out[h], e_out + h * MR_BLOCK, late))
}

#undef MR_PAIR
#undef MR_ONE
#undef MR_SIG_STEPS
#undef MR_UNUSED_SIG_ARGS

/* ids_out[j] = idx[j], w_out[j] = (e[j] * scale) / divisor for j < 8: the
 * vector form (networks_avx2.hpp) where the build has it, else these
 * loops, which give the same values. */
#if !MR_HAVE_NET8
static inline void mr_put8(const Py_ssize_t *idx, const float *e, float scale, float divisor,
                           int32_t *ids_out, float *w_out)
{
    for (int j = 0; j < 8; j++) {
        ids_out[j] = (int32_t)idx[j];
        w_out[j] = (e[j] * scale) / divisor;
    }
}
#endif

/* Build facts reported by moe_router.show_config(). */
static inline const char *mr_simd_name(void) { return MR_SIMD; }

/* The tuned routines of this build, space-separated. */
static inline const char *mr_features(void)
{
    return ""
#if MR_HAVE_NET8
           "sort_networks byte_id_gather put8 sigmoid_approx "
#endif
#if MR_HAVE_AVX512
           "compress_f64 "
#endif
#if MR_HAVE_FMA
           "fma "
#endif
        ;
}

/* Vector width in bits for float32 (f64 = 0) or float64 (f64 = 1). */
static inline int mr_vector_bits(int f64) { return f64 ? Vec<double>::W * 64 : Vec<float>::W * 32; }

}  // namespace

#ifdef _OPENMP
#include <omp.h>
static inline int mr_openmp_enabled(void) { return 1; }
static inline int mr_openmp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int mr_openmp_enabled(void) { return 0; }
static inline int mr_openmp_max_threads(void) { return 1; }
#endif

/*
 * Which instruction-set variants this CPU (and its OS, which must save the
 * wide registers) can run.  Called from the baseline module, before any
 * variant module is imported: importing one the CPU lacks could fault.
 */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
static inline int mr_cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("f16c");
}
static inline int mr_cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && mr_cpu_has_avx2();
}
#else
static inline int mr_cpu_has_avx2(void) { return 0; }
static inline int mr_cpu_has_avx512(void) { return 0; }
#endif

#endif /* MOE_ROUTER_KERNELS_HPP */
