/*
 * AVX2+: the selection of the biased, grouped sigmoid routers
 * (DeepSeek-V3) on approximate scores, decided exactly.  The steps
 * (mr_sig_*) are composed by mr_sigmoid_topk and mr_sigmoid_topk_pair in
 * kernels.hpp.
 */
#ifndef MOE_ROUTER_SIGMOID_APPROX_AVX2_HPP
#define MOE_ROUTER_SIGMOID_APPROX_AVX2_HPP

#include "row_ops.hpp"

#if MR_HAVE_NET8

namespace {

/* 1 / (1 + exp(-x)) within 5.2e-4 absolute (before any bias): 2^f on
 * |f| <= 1/2 to 7.5e-5 relative (a near-minimax cubic), the reciprocal
 * estimate to 1.5 * 2^-12 (architectural bound; 2^-11 is allowed for).
 * NaN stays NaN. */
static MR_HOT __m256 vf_sigmoid_approx(__m256 x)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    /* 1.5 * 2^23 + 127: t's low bits are n + 127, 2^n's exponent field */
    const __m256 magic = _mm256_set1_ps(12583039.0f);
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    const __m256 t = _mm256_fnmadd_ps(xc, log2e, magic); /* magic + round(-x log2 e) */
    const __m256 nn = _mm256_sub_ps(t, magic);
    const __m256 f = _mm256_fnmsub_ps(xc, log2e, nn); /* -x log2 e - n, |f| <= 1/2 */
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.05517167f), f, _mm256_set1_ps(0.24261114f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69326097f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.99992806f));
    const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
    return _mm256_rcp_ps(_mm256_fmadd_ps(p, pow2n, _mm256_set1_ps(1.0f)));
}

/* The two best of the union of two (best, second) pairs, lane-wise. */
static MR_HOT void vf_top2_merge(__m256 a1, __m256 b1, __m256 a2, __m256 b2, __m256 *a, __m256 *b)
{
    *b = _mm256_max_ps(_mm256_min_ps(a1, a2), _mm256_max_ps(b1, b2));
    *a = _mm256_max_ps(a1, a2);
}

/*
 * mr_limit_groups (top2_sum) for exactly 8 groups, with every group at once
 * in the lanes of a vector: each group's per-lane two best (a[g], b[g]),
 * merged down to one lane per group; the ranks by rotation.
 * Also returns the lowest kept and the highest dropped group score, with
 * none of mr_limit_groups' per-group horizontal merges and scalar ranking.
 */
static MR_HOT Py_ssize_t vf_groups8_top2(__m256 *a, __m256 *b, Py_ssize_t topk_group, Py_ssize_t *kept,
                                         float *lanes, float *lo, float *hi)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 a1[4], b1[4], a2[2], b2[2], a3, b3;
    /* a[g], b[g]: the two best of each lane of group g (mr_sig_scores).
     * Halve the lanes per group three times, packing groups together
     * (28 shuffles; two 8x8 transposes took 48): first the 128-bit halves,
     * groups g and g + 4 side by side ... */
    for (int g = 0; g < 4; g++)
        vf_top2_merge(_mm256_permute2f128_ps(a[g], a[g + 4], 0x20),
                      _mm256_permute2f128_ps(b[g], b[g + 4], 0x20),
                      _mm256_permute2f128_ps(a[g], a[g + 4], 0x31),
                      _mm256_permute2f128_ps(b[g], b[g + 4], 0x31), &a1[g], &b1[g]);
    /* ... then lane pairs: each half holds groups g, g + 1 (2 lanes each) ... */
    for (int g = 0; g < 2; g++)
        vf_top2_merge(_mm256_shuffle_ps(a1[2 * g], a1[2 * g + 1], 0x44),
                      _mm256_shuffle_ps(b1[2 * g], b1[2 * g + 1], 0x44),
                      _mm256_shuffle_ps(a1[2 * g], a1[2 * g + 1], 0xEE),
                      _mm256_shuffle_ps(b1[2 * g], b1[2 * g + 1], 0xEE), &a2[g], &b2[g]);
    /* ... then single lanes: lane g is group g. */
    vf_top2_merge(_mm256_shuffle_ps(a2[0], a2[1], 0x88), _mm256_shuffle_ps(b2[0], b2[1], 0x88),
                  _mm256_shuffle_ps(a2[0], a2[1], 0xDD), _mm256_shuffle_ps(b2[0], b2[1], 0xDD), &a3, &b3);
    const __m256 score = _mm256_add_ps(a3, b3);
    /* rank of group g: groups h < g scoring >= it, h > g scoring > it */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i rank = _mm256_setzero_si256();
    for (int r = 1; r < 8; r++) {
        const __m256i perm =
            _mm256_and_si256(_mm256_add_epi32(lane, _mm256_set1_epi32(r)), _mm256_set1_epi32(7));
        const __m256 other = _mm256_permutevar8x32_ps(score, perm);
        /* lanes g < 8 - r compare with h = g + r > g */
        const __m256 after = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8 - r), lane));
        const __m256 beats = _mm256_blendv_ps(_mm256_cmp_ps(other, score, _CMP_GE_OQ),
                                              _mm256_cmp_ps(other, score, _CMP_GT_OQ), after);
        rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
    }
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)topk_group), rank));
    unsigned bits = (unsigned)_mm256_movemask_ps(keep);
    Py_ssize_t n_kept = 0;
    for (unsigned m = bits; m; m &= m - 1)
        kept[n_kept++] = mr_ctz(m);
    _mm256_storeu_ps(lanes, _mm256_blendv_ps(ninf, a3, keep));
    _mm256_storeu_ps(lanes + 8, _mm256_blendv_ps(ninf, b3, keep));
    /* lo in the lower half, -hi in the upper: one min tree for both */
    __m256 lh = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), score, keep);
    __m256 dh = _mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), score), _mm256_set1_ps(INFINITY), keep);
    lh = _mm256_min_ps(_mm256_permute2f128_ps(lh, dh, 0x20), _mm256_permute2f128_ps(lh, dh, 0x31));
    lh = _mm256_min_ps(lh, _mm256_permute_ps(lh, 0x4E));
    lh = _mm256_min_ps(lh, _mm256_permute_ps(lh, 0xB1));
    *lo = _mm256_cvtss_f32(lh);
    *hi = -_mm256_cvtss_f32(_mm256_permute2f128_ps(lh, lh, 0x11));
    return n_kept;
}

/* Whether mr_sigmoid_topk can take rows of this shape at all. */
static inline int mr_sig_applies(Py_ssize_t n, Py_ssize_t n_group, Py_ssize_t topk_group, int k, float slack)
{
    return n % 16 == 0 && k <= MR_BLOCK && slack < 0.01f /* (an infinite bias: slack is inf) */
           &&
           (n_group == 1 || (n_group <= MR_BLOCK && 2 * topk_group + 2 <= MR_BLOCK && k <= 2 * topk_group));
}

/* Whether vf_groups8_top2 takes these groups: 8 of a multiple of 16. */
static inline int mr_sig_groups8(Py_ssize_t n, Py_ssize_t n_group) { return n_group == 8 && n % 128 == 0; }

/* Step 1: c[0..n) = the approximate scores; 0 when there is a NaN.  With
 * ga, gb (mr_sig_groups8): each group's per-lane two best as well, taken
 * while the scores are in registers. */
static MR_HOT int mr_sig_scores(const float *z, Py_ssize_t n, const float *bias, float *c, __m256 *ga,
                                __m256 *gb)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const int parts = ga ? 8 : 1;
    const Py_ssize_t span = n / parts;
    __m256 nan_acc = _mm256_setzero_ps();
    for (int g = 0; g < parts; g++) {
        __m256 t1 = ninf, t2 = ninf;
        for (Py_ssize_t i = g * span; i < (g + 1) * span; i += 16) {
            __m256 v0 = vf_sigmoid_approx(_mm256_loadu_ps(z + i));
            __m256 v1 = vf_sigmoid_approx(_mm256_loadu_ps(z + i + 8));
            if (bias) {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias + i));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + i + 8));
            }
            nan_acc = _mm256_or_ps(nan_acc, _mm256_cmp_ps(v0, v1, _CMP_UNORD_Q));
            _mm256_storeu_ps(c + i, v0);
            _mm256_storeu_ps(c + i + 8, v1);
            if (ga) {
                t2 = _mm256_max_ps(t2, _mm256_min_ps(v0, t1));
                t1 = _mm256_max_ps(t1, v0);
                t2 = _mm256_max_ps(t2, _mm256_min_ps(v1, t1));
                t1 = _mm256_max_ps(t1, v1);
            }
        }
        if (ga) {
            ga[g] = t1;
            gb[g] = t2;
        }
    }
    return !_mm256_movemask_ps(nan_acc);
}

/* Step 2: the kept groups (kept[], *n_kept; one group without groups) and
 * the threshold lanes; 0 when the kept groups are not certain. */
static MR_HOT int mr_sig_groups(const float *c, Py_ssize_t n, Py_ssize_t n_group, Py_ssize_t topk_group,
                                float slack, __m256 *ga, __m256 *gb, Py_ssize_t *kept, float *lanes,
                                Py_ssize_t *n_kept)
{
    float lo = INFINITY, hi = -INFINITY, group_score[MR_BLOCK];
    if (n_group == 1) {
        int has_nan;
        mr_max_lanes(c, n, lanes, &has_nan);
        kept[0] = 0;
        *n_kept = 1;
        return 1;
    }
    if (mr_sig_groups8(n, n_group)) {
        *n_kept = vf_groups8_top2(ga, gb, topk_group, kept, lanes, &lo, &hi);
    } else {
        Py_ssize_t q = 0;
        *n_kept = mr_limit_groups(c, n, n_group, topk_group, 1, group_score, kept, lanes);
        for (Py_ssize_t g = 0; g < n_group; g++) {
            const int is_kept = q < *n_kept && kept[q] == g;
            q += is_kept;
            lo = is_kept && group_score[g] < lo ? group_score[g] : lo;
            hi = !is_kept && group_score[g] > hi ? group_score[g] : hi;
        }
    }
    return lo - hi > 5 * slack;
}

/* Step 4: the candidates' exact scores, with the exact path's operations;
 * the padding of the last block stays below every one of them. */
static MR_HOT void mr_sig_exact(const float *z, const float *bias, MrCand<float> *cd)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < cd->c; j += 8) {
        const __m256i id = _mm256_loadu_si256((const __m256i *)(cd->i + j));
        __m256 v = mr_sigmoid_v<Avx2F32>(_mm256_i32gather_ps(z, id, 4));
        if (bias)
            v = _mm256_add_ps(v, _mm256_i32gather_ps(bias, id, 4));
        const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cd->c - j), iota));
        _mm256_storeu_ps(cd->v + j, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, live));
    }
}


}  // namespace

#endif /* MR_HAVE_NET8 */

#endif /* MOE_ROUTER_SIGMOID_APPROX_AVX2_HPP */
