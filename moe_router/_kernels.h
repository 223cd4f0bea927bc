/*
 * Element-wise math for the router kernels, written so that gcc and clang
 * vectorise it for whatever instruction set the including module is compiled
 * for (SSE2 baseline, AVX2+FMA, AVX-512).  The loops over rows, the top-K
 * selection and the routing logic live in the .pyx; this header only holds
 * what Cython cannot express well: bit casts and fixed-width lane loops
 * whose reductions the compiler is allowed to vectorise (one accumulator per
 * lane, so no -ffast-math and no reassociation is needed).
 *
 * No function here allocates, raises or touches the GIL.
 */
#ifndef MOE_ROUTER_KERNELS_H
#define MOE_ROUTER_KERNELS_H

#include <stdint.h>
#include <string.h>
#include <math.h>


/* Always inlined: the kernels are small steps that must be inlined to keep
 * vectors in registers, and in a module as large as the Cython one gcc
 * stops inlining "static inline" functions once its unit growth limit is
 * reached (measured: the sorting network left out of line, 10% slower). */
#if defined(__GNUC__) || defined(__clang__)
#define MR_HOT inline __attribute__((always_inline))
#else
#define MR_HOT inline
#endif

static inline float mr_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t mr_bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline double mr_f64_from_bits(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
static inline uint64_t mr_bits_from_f64(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }


/*
 * Vector layer.  gcc does not vectorise the max / exp-sum loops reliably
 * (measured: the max loop stayed scalar at -O3 -mavx2), so they are written
 * once against the small set of operations below, implemented with the
 * intrinsics of the widest instruction set the module is compiled for
 * (AVX-512F, AVX2+FMA, SSE2) or plain C elsewhere.  Every path processes
 * MR_BLOCK values per step, so the per-lane summation order is the same
 * whatever the vector width.
 *
 * NaN: vf_max(a, b) returns b when either is NaN (the x86 rule), so
 * vf_max(z, acc) skips NaN in a running max, while vf_max(lo, x) keeps a
 * NaN x; the exp below relies on that to propagate NaN into the sum.
 */
#define MR_BLOCK 16

/* One lane of vf_gather / vd_gather. */
#define MR_G(j) ((j) < k ? z[idx[j]] - off : pad)

#if defined(__AVX512F__)
#include <immintrin.h>
#define MR_SIMD "avx512"
#define MR_VF_W 16
#define MR_VD_W 8
typedef __m512 mr_vf;
typedef __m512d mr_vd;
static inline mr_vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline mr_vf vf_set(float x) { return _mm512_set1_ps(x); }
static inline mr_vf vf_add(mr_vf a, mr_vf b) { return _mm512_add_ps(a, b); }
static inline mr_vf vf_sub(mr_vf a, mr_vf b) { return _mm512_sub_ps(a, b); }
static inline mr_vf vf_mul(mr_vf a, mr_vf b) { return _mm512_mul_ps(a, b); }
static inline mr_vf vf_fma(mr_vf a, mr_vf b, mr_vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline mr_vf vf_max(mr_vf a, mr_vf b) { return _mm512_max_ps(a, b); }
static inline mr_vf vf_min(mr_vf a, mr_vf b) { return _mm512_min_ps(a, b); }
static inline mr_vf vf_div(mr_vf a, mr_vf b) { return _mm512_div_ps(a, b); }
/* Lane j: z[idx[j]] - off for j < k, else pad; built from scalar loads in
 * registers (see mr_picked_exp). */
static inline mr_vf vf_gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
{
    return _mm512_setr_ps(MR_G(0), MR_G(1), MR_G(2), MR_G(3), MR_G(4), MR_G(5), MR_G(6), MR_G(7),
                          MR_G(8), MR_G(9), MR_G(10), MR_G(11), MR_G(12), MR_G(13), MR_G(14), MR_G(15));
}
/* Lane l takes lane l ^ s (s = 8, 4, 2, 1): the steps of a horizontal tree. */
static MR_HOT mr_vf vf_swap(mr_vf v, int s)
{
    switch (s) {
    case 8: return _mm512_shuffle_f32x4(v, v, 0x4E);
    case 4: return _mm512_shuffle_f32x4(v, v, 0xB1);
    case 2: return _mm512_permute_ps(v, 0x4E);
    default: return _mm512_permute_ps(v, 0xB1);
    }
}
static inline mr_vf vf_count_eq_before(mr_vf cnt, mr_vf a, mr_vf b, mr_vf qa, mr_vf qb)
{ return _mm512_mask_add_ps(cnt, _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ) & _mm512_cmp_ps_mask(qa, qb, _CMP_LT_OQ), cnt, _mm512_set1_ps(1.0f)); }
static inline mr_vf vf_count_gt(mr_vf cnt, mr_vf a, mr_vf b) { return _mm512_mask_add_ps(cnt, _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), cnt, _mm512_set1_ps(1.0f)); }
static inline mr_vf vf_keep_lt(mr_vf x, mr_vf a, mr_vf b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), _mm512_set1_ps(INFINITY), x); }
typedef __mmask16 mr_nf;  /* NaN accumulator */
static inline mr_nf vf_nan_init(void) { return 0; }
static inline mr_nf vf_nan_acc(mr_nf acc, mr_vf a, mr_vf b) { return acc | _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
static inline int vf_nan_any(mr_nf acc) { return acc != 0; }
static inline mr_vf vf_zero_if_lt(mr_vf x, mr_vf lo, mr_vf y)
{ return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), y); }
static inline int vf_gt_bits(mr_vf a, mr_vf b) { return (int)_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline int vf_ge_bits(mr_vf a, mr_vf b) { return (int)_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline int vf_eq_bits(mr_vf a, mr_vf b) { return (int)_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
static inline mr_vf vf_pow2i(mr_vf t)  /* 2^(bits(t) + 127) << 23, see mr_expf_v */
{ return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127)), 23)); }
static inline void vf_store(float *p, mr_vf a) { _mm512_storeu_ps(p, a); }
/* Pack the elements of src[0..16) that are >= t (and their indices,
 * base + lane) to the front of cv / ci; returns how many.  May write 16. */
static MR_HOT int vf_compress_ge(const float *src, float t, int32_t base, float *cv, int32_t *ci)
{
    const __m512 v = _mm512_loadu_ps(src);
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(t), _CMP_GE_OQ);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_storeu_ps(cv, _mm512_maskz_compress_ps(m, v));
    _mm512_storeu_si512(ci, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(_mm512_set1_epi32(base), iota)));
    return _mm_popcnt_u32(m);
}
static inline mr_vd vd_load(const double *p) { return _mm512_loadu_pd(p); }
static inline mr_vd vd_set(double x) { return _mm512_set1_pd(x); }
static inline mr_vd vd_add(mr_vd a, mr_vd b) { return _mm512_add_pd(a, b); }
static inline mr_vd vd_sub(mr_vd a, mr_vd b) { return _mm512_sub_pd(a, b); }
static inline mr_vd vd_mul(mr_vd a, mr_vd b) { return _mm512_mul_pd(a, b); }
static inline mr_vd vd_fma(mr_vd a, mr_vd b, mr_vd c) { return _mm512_fmadd_pd(a, b, c); }
static inline mr_vd vd_max(mr_vd a, mr_vd b) { return _mm512_max_pd(a, b); }
static inline mr_vd vd_min(mr_vd a, mr_vd b) { return _mm512_min_pd(a, b); }
static inline mr_vd vd_div(mr_vd a, mr_vd b) { return _mm512_div_pd(a, b); }
static inline mr_vd vd_gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
{ return _mm512_setr_pd(MR_G(0), MR_G(1), MR_G(2), MR_G(3), MR_G(4), MR_G(5), MR_G(6), MR_G(7)); }
static inline mr_vd vd_swap(mr_vd v, int s)
{
    switch (s) {
    case 4: return _mm512_shuffle_f64x2(v, v, 0x4E);
    case 2: return _mm512_shuffle_f64x2(v, v, 0xB1);
    default: return _mm512_permute_pd(v, 0x55);
    }
}
static inline mr_vd vd_count_eq_before(mr_vd cnt, mr_vd a, mr_vd b, mr_vd qa, mr_vd qb)
{ return _mm512_mask_add_pd(cnt, _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ) & _mm512_cmp_pd_mask(qa, qb, _CMP_LT_OQ), cnt, _mm512_set1_pd(1.0)); }
static inline mr_vd vd_count_gt(mr_vd cnt, mr_vd a, mr_vd b) { return _mm512_mask_add_pd(cnt, _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ), cnt, _mm512_set1_pd(1.0)); }
static inline mr_vd vd_keep_lt(mr_vd x, mr_vd a, mr_vd b) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), _mm512_set1_pd(INFINITY), x); }
typedef __mmask8 mr_nd;
static inline mr_nd vd_nan_init(void) { return 0; }
static inline mr_nd vd_nan_acc(mr_nd acc, mr_vd a, mr_vd b) { return acc | _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q); }
static inline int vd_nan_any(mr_nd acc) { return acc != 0; }
static inline mr_vd vd_zero_if_lt(mr_vd x, mr_vd lo, mr_vd y)
{ return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, lo, _CMP_NLT_UQ), y); }
static inline int vd_gt_bits(mr_vd a, mr_vd b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
static inline int vd_ge_bits(mr_vd a, mr_vd b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
static inline int vd_eq_bits(mr_vd a, mr_vd b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
static inline mr_vd vd_pow2i(mr_vd t)
{ return _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(_mm512_castpd_si512(t), _mm512_set1_epi64(1023)), 52)); }
static inline void vd_store(double *p, mr_vd a) { _mm512_storeu_pd(p, a); }
static inline int vd_compress_ge(const double *src, double t, int32_t base, double *cv, int32_t *ci)
{
    const __m512d v = _mm512_loadu_pd(src);
    const __mmask8 m = _mm512_cmp_pd_mask(v, _mm512_set1_pd(t), _CMP_GE_OQ);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm512_storeu_pd(cv, _mm512_maskz_compress_pd(m, v));
    _mm256_storeu_si256((__m256i *)ci, _mm256_maskz_compress_epi32(m, _mm256_add_epi32(_mm256_set1_epi32(base), iota)));
    return _mm_popcnt_u32(m);
}

#elif defined(__AVX2__)
#include <immintrin.h>
#define MR_SIMD "avx2"
#define MR_VF_W 8
#define MR_VD_W 4
typedef __m256 mr_vf;
typedef __m256d mr_vd;
static inline mr_vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline mr_vf vf_set(float x) { return _mm256_set1_ps(x); }
static inline mr_vf vf_add(mr_vf a, mr_vf b) { return _mm256_add_ps(a, b); }
static inline mr_vf vf_sub(mr_vf a, mr_vf b) { return _mm256_sub_ps(a, b); }
static inline mr_vf vf_mul(mr_vf a, mr_vf b) { return _mm256_mul_ps(a, b); }
#ifdef __FMA__
static inline mr_vf vf_fma(mr_vf a, mr_vf b, mr_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline mr_vd vd_fma(mr_vd a, mr_vd b, mr_vd c) { return _mm256_fmadd_pd(a, b, c); }
#else
static inline mr_vf vf_fma(mr_vf a, mr_vf b, mr_vf c) { return _mm256_add_ps(_mm256_mul_ps(a, b), c); }
static inline mr_vd vd_fma(mr_vd a, mr_vd b, mr_vd c) { return _mm256_add_pd(_mm256_mul_pd(a, b), c); }
#endif
static inline mr_vf vf_max(mr_vf a, mr_vf b) { return _mm256_max_ps(a, b); }
static inline mr_vf vf_min(mr_vf a, mr_vf b) { return _mm256_min_ps(a, b); }
static inline mr_vf vf_div(mr_vf a, mr_vf b) { return _mm256_div_ps(a, b); }
static inline mr_vf vf_gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
{ return _mm256_setr_ps(MR_G(0), MR_G(1), MR_G(2), MR_G(3), MR_G(4), MR_G(5), MR_G(6), MR_G(7)); }
static MR_HOT mr_vf vf_swap(mr_vf v, int s)
{
    switch (s) {
    case 4: return _mm256_permute2f128_ps(v, v, 1);
    case 2: return _mm256_permute_ps(v, 0x4E);
    default: return _mm256_permute_ps(v, 0xB1);
    }
}
static inline mr_vf vf_count_eq_before(mr_vf cnt, mr_vf a, mr_vf b, mr_vf qa, mr_vf qb)
{ return _mm256_add_ps(cnt, _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ), _mm256_cmp_ps(qa, qb, _CMP_LT_OQ)), _mm256_set1_ps(1.0f))); }
static inline mr_vf vf_count_gt(mr_vf cnt, mr_vf a, mr_vf b) { return _mm256_add_ps(cnt, _mm256_and_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), _mm256_set1_ps(1.0f))); }
static inline mr_vf vf_keep_lt(mr_vf x, mr_vf a, mr_vf b) { return _mm256_blendv_ps(_mm256_set1_ps(INFINITY), x, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
typedef __m256 mr_nf;
static inline mr_nf vf_nan_init(void) { return _mm256_setzero_ps(); }
static inline mr_nf vf_nan_acc(mr_nf acc, mr_vf a, mr_vf b) { return _mm256_or_ps(acc, _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
static inline int vf_nan_any(mr_nf acc) { return _mm256_movemask_ps(acc) != 0; }
static inline mr_vf vf_zero_if_lt(mr_vf x, mr_vf lo, mr_vf y)
{ return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y); }
static inline int vf_gt_bits(mr_vf a, mr_vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
static inline int vf_ge_bits(mr_vf a, mr_vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)); }
static inline int vf_eq_bits(mr_vf a, mr_vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
static inline mr_vf vf_pow2i(mr_vf t)
{ return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23)); }
static inline void vf_store(float *p, mr_vf a) { _mm256_storeu_ps(p, a); }
/* mr_pack_lut[m]: byte j = lane of the j-th set bit of the 8-bit mask m. */
static uint64_t mr_pack_lut[256];
#define MR_NEEDS_PACK_LUT 1
static MR_HOT int vf_compress_ge(const float *src, float t, int32_t base, float *cv, int32_t *ci)
{
    const __m256 v = _mm256_loadu_ps(src);
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(t), _CMP_GE_OQ));
    const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mr_pack_lut[m]));
    _mm256_storeu_ps(cv, _mm256_permutevar8x32_ps(v, perm));
    _mm256_storeu_si256((__m256i *)ci, _mm256_add_epi32(perm, _mm256_set1_epi32(base)));  /* lane = id - base */
    return _mm_popcnt_u32((unsigned)m);
}
/*
 * A bitonic sorting network on the 8 lanes of a vector (AVX2 float only:
 * MR_VF_NET8), for the threshold (the k-th of the 16 lane maxima) and the
 * order of up to 16 top-k candidates: about 10 dependent steps, where
 * counting every pair of candidates took 16 broadcasts and 48 compares.  A
 * step pairs lane l with lane l ^ j; while the network builds sorted runs of
 * kk lanes (kk = 8: the whole vector, descending), lane l keeps the smaller
 * of its pair iff ((l & j) != 0) == ((l & kk) == 0).
 *
 * The threshold network sorts the lane maxima as floats (they hold no NaN).
 * The candidates' network sorts int32 keys: a float's order as a signed
 * integer (negative floats with their magnitude bits flipped; -0.0 made
 * +0.0 first, the two compare equal) with its low 4 bits replaced by 15 -
 * the candidate's slot: a key sorts
 * without a payload (integer min and max: 4 operations a step, not 6 with
 * the ids carried alongside; measured 5% of the row), and the slot comes
 * back from its low bits.  Keys order as the values do except between
 * different values less than 16 units in the last place apart, which
 * callers must leave to exact code (vi_net_close); equal values order by
 * slot, which is index order.
 */
#define MR_VF_NET8 1
static MR_HOT __m256i vi_swap(__m256i v, int j) { return _mm256_castps_si256(vf_swap(_mm256_castsi256_ps(v), j)); }
/* The max of the 8 lanes, in every lane. */
static MR_HOT __m256i vi_hmax(__m256i v)
{
    v = _mm256_max_epi32(v, vi_swap(v, 4));
    v = _mm256_max_epi32(v, vi_swap(v, 2));
    return _mm256_max_epi32(v, vi_swap(v, 1));
}
/* One step (j, kk) per function, so that which lanes keep the smaller of
 * their pair (bit l of MR_NET_IMM) is an immediate: a blend with an
 * immediate in place of a variable blend (blendv) on a constant mask made
 * the 128-expert row 0.94x and the 64-expert row 0.91x (measured, Zen 3). */
#define MR_NET_KM(l, J, KK) ((((((l) & (J)) != 0) == (((l) & (KK)) == 0))) << (l))
#define MR_NET_IMM(J, KK) (MR_NET_KM(0, J, KK) | MR_NET_KM(1, J, KK) | MR_NET_KM(2, J, KK) | MR_NET_KM(3, J, KK) \
                           | MR_NET_KM(4, J, KK) | MR_NET_KM(5, J, KK) | MR_NET_KM(6, J, KK) | MR_NET_KM(7, J, KK))
#define MR_NET_STEP_FN(J, KK)                                                                        \
static MR_HOT __m256i vi_net_step_##J##_##KK(__m256i v)                                              \
{                                                                                                    \
    const __m256i p = vi_swap(v, J);                                                                 \
    return _mm256_blend_epi32(_mm256_max_epi32(v, p), _mm256_min_epi32(v, p), MR_NET_IMM(J, KK));   \
}                                                                                                    \
static MR_HOT __m256i vi_net_astep_##J##_##KK(__m256i v)  /* every pair the other way */            \
{                                                                                                    \
    const __m256i p = vi_swap(v, J);                                                                 \
    return _mm256_blend_epi32(_mm256_min_epi32(v, p), _mm256_max_epi32(v, p), MR_NET_IMM(J, KK));   \
}                                                                                                    \
static MR_HOT __m256 vf_net_step_##J##_##KK(__m256 v)  /* on floats (no NaN) */                      \
{                                                                                                    \
    const __m256 p = vf_swap(v, J);                                                                  \
    return _mm256_blend_ps(_mm256_max_ps(v, p), _mm256_min_ps(v, p), MR_NET_IMM(J, KK));             \
}                                                                                                    \
static MR_HOT __m256 vf_net_astep_##J##_##KK(__m256 v)                                               \
{                                                                                                    \
    const __m256 p = vf_swap(v, J);                                                                  \
    return _mm256_blend_ps(_mm256_min_ps(v, p), _mm256_max_ps(v, p), MR_NET_IMM(J, KK));             \
}
MR_NET_STEP_FN(1, 2)
MR_NET_STEP_FN(2, 4)
MR_NET_STEP_FN(1, 4)
MR_NET_STEP_FN(4, 8)
MR_NET_STEP_FN(2, 8)
MR_NET_STEP_FN(1, 8)
#undef MR_NET_STEP_FN
#undef MR_NET_IMM
#undef MR_NET_KM
/* The sort of 8 lanes (vi_net_step descending; vi_net_astep ascending:
 * every pair kept the other way, so that a merge needs no lane reversal, a
 * 3-cycle permute on the chain), and its last three steps alone, which
 * sort a bitonic sequence (a merge's), for keys and for floats. */
#define MR_NET_SORT_FN(NAME, STEP) static MR_HOT __m256i NAME(__m256i v) \
{ return STEP##_1_8(STEP##_2_8(STEP##_4_8(STEP##_1_4(STEP##_2_4(STEP##_1_2(v)))))); }
#define MR_NET_BITONIC_FN(NAME, T, STEP) static MR_HOT T NAME(T v) { return STEP##_1_8(STEP##_2_8(STEP##_4_8(v))); }
MR_NET_SORT_FN(vi_net_sort8, vi_net_step)
MR_NET_SORT_FN(vi_net_sort8_asc, vi_net_astep)
MR_NET_BITONIC_FN(vi_net_bitonic8, __m256i, vi_net_step)
MR_NET_BITONIC_FN(vf_net_bitonic8, __m256, vf_net_step)
#undef MR_NET_SORT_FN
#undef MR_NET_BITONIC_FN
/* a sorted descending, rb ascending: the 8 largest of both, sorted
 * descending, into *top; with next, the 9th largest into *next (all lanes). */
static MR_HOT void vi_net_merge8(__m256i a, __m256i rb, __m256i *top, __m256i *next)
{
    if (next)  /* the 8 smallest: their max is the 9th */
        *next = vi_hmax(_mm256_min_epi32(a, rb));
    const __m256i t = _mm256_max_epi32(a, rb);  /* the 8 largest, bitonic */
    *top = vi_net_bitonic8(t);
}
static MR_HOT __m256i vi_order(__m256 v)
{
    const __m256i b = _mm256_castps_si256(_mm256_add_ps(v, _mm256_setzero_ps()));
    return _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(b, 31), _mm256_set1_epi32(0x7fffffff)));
}
/* The k-th largest (1 <= k <= 8) of x[0..16), no NaN among them: the two
 * halves sorted as floats (no order keys to make and undo: 11 operations
 * fewer, measured 0.97-0.98x the 128-expert row), one descending and one
 * ascending, so their lane maxima are the 8 largest. */
static MR_HOT float vf_net_kth16(const float *x, int k)
{
    /* The two sorts step by step side by side: gcc keeps this order, and
     * two sort calls in turn measured 1-2% slower. */
    __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
    a = vf_net_step_1_2(a); b = vf_net_astep_1_2(b);
    a = vf_net_step_2_4(a); b = vf_net_astep_2_4(b);
    a = vf_net_step_1_4(a); b = vf_net_astep_1_4(b);
    a = vf_net_step_4_8(a); b = vf_net_astep_4_8(b);
    a = vf_net_step_2_8(a); b = vf_net_astep_2_8(b);
    a = vf_net_step_1_8(a); b = vf_net_astep_1_8(b);
    __m256 top = _mm256_max_ps(a, b);  /* the 8 largest, bitonic */
    if (k == 8) {  /* the smallest of the 8 largest: no need to sort them */
        top = _mm256_min_ps(top, vf_swap(top, 4));
        top = _mm256_min_ps(top, vf_swap(top, 2));
        top = _mm256_min_ps(top, vf_swap(top, 1));
    } else {
        top = vf_net_bitonic8(top);
        top = _mm256_permutevar8x32_ps(top, _mm256_set1_epi32(k - 1));
    }
    return _mm256_cvtss_f32(top);
}
/* Keys of the 8 values v, low = 15 - slot per lane. */
static MR_HOT __m256i vi_net_key(__m256 v, __m256i low)
{ return _mm256_or_si256(_mm256_andnot_si256(_mm256_set1_epi32(15), vi_order(v)), low); }
/* The 8 largest keys of the 16 values (v0: slots 0-7, v1: slots 8-15),
 * sorted descending, into *top; the 9th largest key into *next (all lanes). */
static MR_HOT void vi_net_top8(__m256 v0, __m256 v1, __m256i *top, __m256i *next)
{
    vi_net_merge8(vi_net_sort8(vi_net_key(v0, _mm256_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8))),
                  vi_net_sort8_asc(vi_net_key(v1, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0))), top, next);
}
/* The slots of keys (15 - their low 4 bits), and the values v0 (slots
 * 0-7) and v1 (slots 8-15) in the order of those slots. */
static MR_HOT __m256i vi_net_slot(__m256i key)
{ return _mm256_sub_epi32(_mm256_set1_epi32(15), _mm256_and_si256(key, _mm256_set1_epi32(15))); }
static MR_HOT __m256 vf_by_slot(__m256 v0, __m256 v1, __m256i slot)
{
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v0, slot), _mm256_permutevar8x32_ps(v1, slot),
                            _mm256_castsi256_ps(_mm256_slli_epi32(slot, 28)));
}
/* Nonzero where the k best keys may not stand for the k best values in
 * order.  Keys with the same bits above the low 4 (a run) order by slot
 * alone, and runs are contiguous in the sorted keys.  A run that stays
 * within the first k keys is in order iff its values are all equal (slot
 * order is index order, as ties must go): bit l, for l < k - 1, is set
 * where keys l and l + 1 share their high bits but not their value.  A run
 * that crosses from key k - 1 to key k (`next` for k = 8) may hide a larger
 * value past the k-th: bit k - 1 is set whenever those two keys share their
 * high bits, equal values or not.  So ties among the k best (common with
 * bfloat16 logits) need no exact code; ties at the k-th do. */
static MR_HOT unsigned vi_net_close(__m256i top, __m256i next, int k, __m256 v0, __m256 v1)
{
    __m256i after = _mm256_permutevar8x32_epi32(top, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
    after = _mm256_blend_epi32(after, next, 0x80);
    const __m256i hi = _mm256_set1_epi32(~15);
    const __m256i eq = _mm256_cmpeq_epi32(_mm256_and_si256(top, hi), _mm256_and_si256(after, hi));
    const __m256 ne = _mm256_cmp_ps(vf_by_slot(v0, v1, vi_net_slot(top)), vf_by_slot(v0, v1, vi_net_slot(after)),
                                    _CMP_NEQ_UQ);
    const unsigned same_run = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(eq));
    const unsigned differ = (unsigned)_mm256_movemask_ps(_mm256_and_ps(_mm256_castsi256_ps(eq), ne));
    return (differ & ((1u << (k - 1)) - 1u)) | (same_run & (1u << (k - 1)));
}
/* Lanes l < k set. */
static MR_HOT __m256i vi_first_k(int k)
{ return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
/* mr_sum_k_f32 for k <= 8, x holding 8 readable values (the lanes past k
 * are masked off; the tree's adds of 0 are exact, so k <= 4 takes one
 * 4-lane vector: (x0 + x2) + (x1 + x3)). */
static MR_HOT float mr_sum8_f32(const float *x, int k)
{
    __m128 s;
    if (k <= 4) {
        s = _mm_and_ps(_mm_loadu_ps(x), _mm_castsi128_ps(_mm256_castsi256_si128(vi_first_k(k))));
    } else {
        const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x), _mm256_castsi256_ps(vi_first_k(k)));
        s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  /* x0 + x4, ... */
    }
    s = _mm_add_ps(s, _mm_permute_ps(s, 0x4E));  /* + (x2 + x6), ... */
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_permute_ps(s, 0xB1)));
}
/* A row's output for k == 8, float32 weights and 32-bit ids: ids_out[j] =
 * idx[j], w_out[j] = (e[j] * scale) / divisor, as the scalar loops of
 * _route_pair write them for other k (a masked store for k < 8 was
 * measured slower than those loops on Zen 3). */
#define MR_PUT8 1
static MR_HOT void mr_put8_f32(const Py_ssize_t *idx, const float *e, float scale, float divisor,
                               int32_t *ids_out, float *w_out)
{
    const __m256i low = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);  /* the low halves of int64 */
    _mm256_storeu_si256((__m256i *)ids_out, _mm256_blend_epi32(
        _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)idx), low),
        _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(idx + 4)), low), 0xF0));
    _mm256_storeu_ps(w_out, _mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(e), _mm256_set1_ps(scale)),
                                          _mm256_set1_ps(divisor)));
}
static inline mr_vd vd_load(const double *p) { return _mm256_loadu_pd(p); }
static inline mr_vd vd_set(double x) { return _mm256_set1_pd(x); }
static inline mr_vd vd_add(mr_vd a, mr_vd b) { return _mm256_add_pd(a, b); }
static inline mr_vd vd_sub(mr_vd a, mr_vd b) { return _mm256_sub_pd(a, b); }
static inline mr_vd vd_mul(mr_vd a, mr_vd b) { return _mm256_mul_pd(a, b); }
static inline mr_vd vd_max(mr_vd a, mr_vd b) { return _mm256_max_pd(a, b); }
static inline mr_vd vd_min(mr_vd a, mr_vd b) { return _mm256_min_pd(a, b); }
static inline mr_vd vd_div(mr_vd a, mr_vd b) { return _mm256_div_pd(a, b); }
static inline mr_vd vd_gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
{ return _mm256_setr_pd(MR_G(0), MR_G(1), MR_G(2), MR_G(3)); }
static inline mr_vd vd_swap(mr_vd v, int s)
{ return s == 2 ? _mm256_permute2f128_pd(v, v, 1) : _mm256_permute_pd(v, 0x5); }
static inline mr_vd vd_count_eq_before(mr_vd cnt, mr_vd a, mr_vd b, mr_vd qa, mr_vd qb)
{ return _mm256_add_pd(cnt, _mm256_and_pd(_mm256_and_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ), _mm256_cmp_pd(qa, qb, _CMP_LT_OQ)), _mm256_set1_pd(1.0))); }
static inline mr_vd vd_count_gt(mr_vd cnt, mr_vd a, mr_vd b) { return _mm256_add_pd(cnt, _mm256_and_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ), _mm256_set1_pd(1.0))); }
static inline mr_vd vd_keep_lt(mr_vd x, mr_vd a, mr_vd b) { return _mm256_blendv_pd(_mm256_set1_pd(INFINITY), x, _mm256_cmp_pd(a, b, _CMP_LT_OQ)); }
typedef __m256d mr_nd;
static inline mr_nd vd_nan_init(void) { return _mm256_setzero_pd(); }
static inline mr_nd vd_nan_acc(mr_nd acc, mr_vd a, mr_vd b) { return _mm256_or_pd(acc, _mm256_cmp_pd(a, b, _CMP_UNORD_Q)); }
static inline int vd_nan_any(mr_nd acc) { return _mm256_movemask_pd(acc) != 0; }
static inline mr_vd vd_zero_if_lt(mr_vd x, mr_vd lo, mr_vd y)
{ return _mm256_andnot_pd(_mm256_cmp_pd(x, lo, _CMP_LT_OQ), y); }
static inline int vd_gt_bits(mr_vd a, mr_vd b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ)); }
static inline int vd_ge_bits(mr_vd a, mr_vd b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GE_OQ)); }
static inline int vd_eq_bits(mr_vd a, mr_vd b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ)); }
static inline mr_vd vd_pow2i(mr_vd t)
{ return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)), 52)); }
static inline void vd_store(double *p, mr_vd a) { _mm256_storeu_pd(p, a); }

#elif defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define MR_SIMD "sse2"
#define MR_VF_SSE2 1
#define MR_VF_W 4
#define MR_VD_W 2
typedef __m128 mr_vf;
typedef __m128d mr_vd;
static inline mr_vf vf_load(const float *p) { return _mm_loadu_ps(p); }
static inline mr_vf vf_set(float x) { return _mm_set1_ps(x); }
static inline mr_vf vf_add(mr_vf a, mr_vf b) { return _mm_add_ps(a, b); }
static inline mr_vf vf_sub(mr_vf a, mr_vf b) { return _mm_sub_ps(a, b); }
static inline mr_vf vf_mul(mr_vf a, mr_vf b) { return _mm_mul_ps(a, b); }
static inline mr_vf vf_fma(mr_vf a, mr_vf b, mr_vf c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline mr_vf vf_max(mr_vf a, mr_vf b) { return _mm_max_ps(a, b); }
static inline mr_vf vf_min(mr_vf a, mr_vf b) { return _mm_min_ps(a, b); }
static inline mr_vf vf_div(mr_vf a, mr_vf b) { return _mm_div_ps(a, b); }
static inline mr_vf vf_gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
{ return _mm_setr_ps(MR_G(0), MR_G(1), MR_G(2), MR_G(3)); }
static MR_HOT mr_vf vf_swap(mr_vf v, int s)
{ return s == 2 ? _mm_shuffle_ps(v, v, 0x4E) : _mm_shuffle_ps(v, v, 0xB1); }
static inline mr_vf vf_count_eq_before(mr_vf cnt, mr_vf a, mr_vf b, mr_vf qa, mr_vf qb)
{ return _mm_add_ps(cnt, _mm_and_ps(_mm_and_ps(_mm_cmpeq_ps(a, b), _mm_cmplt_ps(qa, qb)), _mm_set1_ps(1.0f))); }
static inline mr_vf vf_count_gt(mr_vf cnt, mr_vf a, mr_vf b) { return _mm_add_ps(cnt, _mm_and_ps(_mm_cmpgt_ps(a, b), _mm_set1_ps(1.0f))); }
static inline mr_vf vf_keep_lt(mr_vf x, mr_vf a, mr_vf b)
{ __m128 m = _mm_cmplt_ps(a, b); return _mm_or_ps(_mm_and_ps(m, x), _mm_andnot_ps(m, _mm_set1_ps(INFINITY))); }
typedef __m128 mr_nf;
static inline mr_nf vf_nan_init(void) { return _mm_setzero_ps(); }
static inline mr_nf vf_nan_acc(mr_nf acc, mr_vf a, mr_vf b) { return _mm_or_ps(acc, _mm_cmpunord_ps(a, b)); }
static inline int vf_nan_any(mr_nf acc) { return _mm_movemask_ps(acc) != 0; }
static inline mr_vf vf_zero_if_lt(mr_vf x, mr_vf lo, mr_vf y) { return _mm_andnot_ps(_mm_cmplt_ps(x, lo), y); }
static inline int vf_gt_bits(mr_vf a, mr_vf b) { return _mm_movemask_ps(_mm_cmpgt_ps(a, b)); }
static inline int vf_ge_bits(mr_vf a, mr_vf b) { return _mm_movemask_ps(_mm_cmpge_ps(a, b)); }
static inline int vf_eq_bits(mr_vf a, mr_vf b) { return _mm_movemask_ps(_mm_cmpeq_ps(a, b)); }
static inline mr_vf vf_pow2i(mr_vf t)
{ return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_castps_si128(t), _mm_set1_epi32(127)), 23)); }
static inline void vf_store(float *p, mr_vf a) { _mm_storeu_ps(p, a); }
static inline mr_vd vd_load(const double *p) { return _mm_loadu_pd(p); }
static inline mr_vd vd_set(double x) { return _mm_set1_pd(x); }
static inline mr_vd vd_add(mr_vd a, mr_vd b) { return _mm_add_pd(a, b); }
static inline mr_vd vd_sub(mr_vd a, mr_vd b) { return _mm_sub_pd(a, b); }
static inline mr_vd vd_mul(mr_vd a, mr_vd b) { return _mm_mul_pd(a, b); }
static inline mr_vd vd_fma(mr_vd a, mr_vd b, mr_vd c) { return _mm_add_pd(_mm_mul_pd(a, b), c); }
static inline mr_vd vd_max(mr_vd a, mr_vd b) { return _mm_max_pd(a, b); }
static inline mr_vd vd_min(mr_vd a, mr_vd b) { return _mm_min_pd(a, b); }
static inline mr_vd vd_div(mr_vd a, mr_vd b) { return _mm_div_pd(a, b); }
static inline mr_vd vd_gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
{ return _mm_setr_pd(MR_G(0), MR_G(1)); }
static inline mr_vd vd_swap(mr_vd v, int s) { (void)s; return _mm_shuffle_pd(v, v, 1); }
static inline mr_vd vd_count_eq_before(mr_vd cnt, mr_vd a, mr_vd b, mr_vd qa, mr_vd qb)
{ return _mm_add_pd(cnt, _mm_and_pd(_mm_and_pd(_mm_cmpeq_pd(a, b), _mm_cmplt_pd(qa, qb)), _mm_set1_pd(1.0))); }
static inline mr_vd vd_count_gt(mr_vd cnt, mr_vd a, mr_vd b) { return _mm_add_pd(cnt, _mm_and_pd(_mm_cmpgt_pd(a, b), _mm_set1_pd(1.0))); }
static inline mr_vd vd_keep_lt(mr_vd x, mr_vd a, mr_vd b)
{ __m128d m = _mm_cmplt_pd(a, b); return _mm_or_pd(_mm_and_pd(m, x), _mm_andnot_pd(m, _mm_set1_pd(INFINITY))); }
typedef __m128d mr_nd;
static inline mr_nd vd_nan_init(void) { return _mm_setzero_pd(); }
static inline mr_nd vd_nan_acc(mr_nd acc, mr_vd a, mr_vd b) { return _mm_or_pd(acc, _mm_cmpunord_pd(a, b)); }
static inline int vd_nan_any(mr_nd acc) { return _mm_movemask_pd(acc) != 0; }
static inline mr_vd vd_zero_if_lt(mr_vd x, mr_vd lo, mr_vd y) { return _mm_andnot_pd(_mm_cmplt_pd(x, lo), y); }
static inline int vd_gt_bits(mr_vd a, mr_vd b) { return _mm_movemask_pd(_mm_cmpgt_pd(a, b)); }
static inline int vd_ge_bits(mr_vd a, mr_vd b) { return _mm_movemask_pd(_mm_cmpge_pd(a, b)); }
static inline int vd_eq_bits(mr_vd a, mr_vd b) { return _mm_movemask_pd(_mm_cmpeq_pd(a, b)); }
static inline mr_vd vd_pow2i(mr_vd t)
{ return _mm_castsi128_pd(_mm_slli_epi64(_mm_add_epi64(_mm_castpd_si128(t), _mm_set1_epi64x(1023)), 52)); }
static inline void vd_store(double *p, mr_vd a) { _mm_storeu_pd(p, a); }

#else  /* portable C: one lane */
#define MR_SIMD "scalar"
#define MR_VF_W 1
#define MR_VD_W 1
typedef float mr_vf;
typedef double mr_vd;
static inline mr_vf vf_load(const float *p) { return *p; }
static inline mr_vf vf_set(float x) { return x; }
static inline mr_vf vf_add(mr_vf a, mr_vf b) { return a + b; }
static inline mr_vf vf_sub(mr_vf a, mr_vf b) { return a - b; }
static inline mr_vf vf_mul(mr_vf a, mr_vf b) { return a * b; }
static inline mr_vf vf_fma(mr_vf a, mr_vf b, mr_vf c) { return a * b + c; }
static inline mr_vf vf_max(mr_vf a, mr_vf b) { return a > b ? a : b; }
static inline mr_vf vf_min(mr_vf a, mr_vf b) { return a < b ? a : b; }
static inline mr_vf vf_div(mr_vf a, mr_vf b) { return a / b; }
static inline mr_vf vf_gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
{ return MR_G(0); }
static MR_HOT mr_vf vf_swap(mr_vf v, int s) { (void)s; return v; }  /* one lane: never called */
static inline mr_vf vf_count_eq_before(mr_vf cnt, mr_vf a, mr_vf b, mr_vf qa, mr_vf qb) { return cnt + (a == b && qa < qb); }
static inline mr_vf vf_count_gt(mr_vf cnt, mr_vf a, mr_vf b) { return cnt + (a > b); }
static inline mr_vf vf_keep_lt(mr_vf x, mr_vf a, mr_vf b) { return a < b ? x : INFINITY; }
typedef int mr_nf;
static inline mr_nf vf_nan_init(void) { return 0; }
static inline mr_nf vf_nan_acc(mr_nf acc, mr_vf a, mr_vf b) { return acc | (a != a) | (b != b); }
static inline int vf_nan_any(mr_nf acc) { return acc; }
static inline mr_vf vf_zero_if_lt(mr_vf x, mr_vf lo, mr_vf y) { return x < lo ? 0.0f : y; }
static inline int vf_gt_bits(mr_vf a, mr_vf b) { return a > b; }
static inline int vf_ge_bits(mr_vf a, mr_vf b) { return a >= b; }
static inline int vf_eq_bits(mr_vf a, mr_vf b) { return a == b; }
static inline mr_vf vf_pow2i(mr_vf t) { return mr_f32_from_bits((mr_bits_from_f32(t) + 127u) << 23); }
static inline void vf_store(float *p, mr_vf a) { *p = a; }
static inline mr_vd vd_load(const double *p) { return *p; }
static inline mr_vd vd_set(double x) { return x; }
static inline mr_vd vd_add(mr_vd a, mr_vd b) { return a + b; }
static inline mr_vd vd_sub(mr_vd a, mr_vd b) { return a - b; }
static inline mr_vd vd_mul(mr_vd a, mr_vd b) { return a * b; }
static inline mr_vd vd_fma(mr_vd a, mr_vd b, mr_vd c) { return a * b + c; }
static inline mr_vd vd_max(mr_vd a, mr_vd b) { return a > b ? a : b; }
static inline mr_vd vd_min(mr_vd a, mr_vd b) { return a < b ? a : b; }
static inline mr_vd vd_div(mr_vd a, mr_vd b) { return a / b; }
static inline mr_vd vd_gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
{ return MR_G(0); }
static inline mr_vd vd_swap(mr_vd v, int s) { (void)s; return v; }
static inline mr_vd vd_count_eq_before(mr_vd cnt, mr_vd a, mr_vd b, mr_vd qa, mr_vd qb) { return cnt + (a == b && qa < qb); }
static inline mr_vd vd_count_gt(mr_vd cnt, mr_vd a, mr_vd b) { return cnt + (a > b); }
static inline mr_vd vd_keep_lt(mr_vd x, mr_vd a, mr_vd b) { return a < b ? x : INFINITY; }
typedef int mr_nd;
static inline mr_nd vd_nan_init(void) { return 0; }
static inline mr_nd vd_nan_acc(mr_nd acc, mr_vd a, mr_vd b) { return acc | (a != a) | (b != b); }
static inline int vd_nan_any(mr_nd acc) { return acc; }
static inline mr_vd vd_zero_if_lt(mr_vd x, mr_vd lo, mr_vd y) { return x < lo ? 0.0 : y; }
static inline int vd_gt_bits(mr_vd a, mr_vd b) { return a > b; }
static inline int vd_ge_bits(mr_vd a, mr_vd b) { return a >= b; }
static inline int vd_eq_bits(mr_vd a, mr_vd b) { return a == b; }
static inline mr_vd vd_pow2i(mr_vd t) { return mr_f64_from_bits((mr_bits_from_f64(t) + 1023u) << 52); }
static inline void vd_store(double *p, mr_vd a) { *p = a; }
#endif

/* Compress fallbacks: a loop over the set bits (branchy, but portable). */
#define MR_COMPRESS_BITS(T, P)                                                          \
static inline int P##_compress_ge_bits(const T *src, T t, int32_t base, T *cv, int32_t *ci) \
{                                                                                       \
    unsigned bits = (unsigned)P##_ge_bits(P##_load(src), P##_set(t));                  \
    int c = 0;                                                                          \
    while (bits) {                                                                      \
        int l = mr_ctz(bits);                                                           \
        cv[c] = src[l];                                                                 \
        ci[c] = base + l;                                                               \
        c++;                                                                            \
        bits &= bits - 1;                                                               \
    }                                                                                   \
    return c;                                                                           \
}

#if defined(__GNUC__) || defined(__clang__)
static inline int mr_ctz(unsigned x) { return __builtin_ctz(x); }
static inline int mr_popcount(unsigned x) { return __builtin_popcount(x); }
#else
static inline int mr_ctz(unsigned x) { int i = 0; while (!(x & 1u)) { x >>= 1; i++; } return i; }
static inline int mr_popcount(unsigned x) { int c = 0; for (; x; x &= x - 1) c++; return c; }
#endif

#if !defined(__AVX512F__)
MR_COMPRESS_BITS(double, vd)
#define vd_compress_ge vd_compress_ge_bits
#if !defined(__AVX2__)
MR_COMPRESS_BITS(float, vf)
#define vf_compress_ge vf_compress_ge_bits
#endif
#endif

/* Fills the tables some instruction sets use; called once at import. */
static inline void mr_init_tables(void)
{
#ifdef MR_NEEDS_PACK_LUT
    for (int m = 0; m < 256; m++) {
        uint64_t v = 0;
        int j = 0;
        for (int b = 0; b < 8; b++)
            if (m >> b & 1)
                v |= (uint64_t)b << (8 * j++);
        mr_pack_lut[m] = v;
    }
#endif
}

/*
 * exp(x) on a vector, float32: Cephes expf polynomial after round-to-nearest
 * ln2 range reduction (measured 1.26 ulp: tests/test_exp.py).  Branch-free:
 * the argument is clamped to [-87.3, 88.7]; below -87.3 (-inf included) the
 * result is exactly 0, from about 88.4 it is +inf (2^128: the true exp
 * overflows float32 at 88.72); NaN propagates (vf_max(lo, x) keeps a NaN x).  Rounding uses the 1.5 * 2^23 magic number and 2^n is built
 * from the exponent bits (vf_pow2i).
 *
 * float64: the same with a two-part ln2 and a degree-12 Taylor polynomial on
 * |r| <= ln2/2 (truncation below 2e-16 relative); 0 below -708.
 *
 * There is no scalar twin: tails and single values go through a padded block
 * (mr_exp_block), so every result comes from this one code.
 *
 * float64: clamped to [-708, 709], so 8.2e307 above.
 *
 * mr_expf_sat_v / mr_exp_sat_v are the same without the flush to 0 (about
 * 2^-126 instead).  The sigmoid uses them: 1 / (1 + exp(-x)) is 1 either
 * way there, and a compare and a mask per vector are saved.
 */
static MR_HOT mr_vf mr_expf_sat_v(mr_vf x)
{
    const mr_vf lo = vf_set(-87.3f), magic = vf_set(12582912.0f);
    mr_vf xc = vf_min(vf_set(88.7f), vf_max(lo, x));  /* keeps a NaN x */
    mr_vf t = vf_fma(xc, vf_set(1.44269504088896341f), magic);
    mr_vf n = vf_sub(t, magic);
    mr_vf r = vf_fma(n, vf_set(-0.693359375f), xc);
    r = vf_fma(n, vf_set(2.12194440e-4f), r);
    mr_vf p = vf_set(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set(5.0000001201e-1f));
    p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set(1.0f)));
    return vf_mul(p, vf_pow2i(t));
}

static MR_HOT mr_vf mr_expf_v(mr_vf x) { return vf_zero_if_lt(x, vf_set(-87.3f), mr_expf_sat_v(x)); }

static MR_HOT mr_vd mr_exp_sat_v(mr_vd x)
{
    const mr_vd lo = vd_set(-708.0), magic = vd_set(6755399441055744.0);
    mr_vd xc = vd_min(vd_set(709.0), vd_max(lo, x));
    mr_vd t = vd_fma(xc, vd_set(1.4426950408889634074), magic);
    mr_vd n = vd_sub(t, magic);
    mr_vd r = vd_fma(n, vd_set(-6.93147180369123816490e-01), xc);
    r = vd_fma(n, vd_set(-1.90821492927058770002e-10), r);
    mr_vd p = vd_set(1.0 / 479001600.0);
    p = vd_fma(p, r, vd_set(1.0 / 39916800.0));
    p = vd_fma(p, r, vd_set(1.0 / 3628800.0));
    p = vd_fma(p, r, vd_set(1.0 / 362880.0));
    p = vd_fma(p, r, vd_set(1.0 / 40320.0));
    p = vd_fma(p, r, vd_set(1.0 / 5040.0));
    p = vd_fma(p, r, vd_set(1.0 / 720.0));
    p = vd_fma(p, r, vd_set(1.0 / 120.0));
    p = vd_fma(p, r, vd_set(1.0 / 24.0));
    p = vd_fma(p, r, vd_set(1.0 / 6.0));
    p = vd_fma(p, r, vd_set(0.5));
    p = vd_fma(p, r, vd_set(1.0));
    p = vd_fma(p, r, vd_set(1.0));
    return vd_mul(p, vd_pow2i(t));
}

static MR_HOT mr_vd mr_exp_v(mr_vd x) { return vd_zero_if_lt(x, vd_set(-708.0), mr_exp_sat_v(x)); }

/* Whether float32 sigmoid routers select on approximate scores, two rows at
 * a time (mr_sigmoid_topk_pair: the AVX2 networks only). */
#ifdef MR_VF_NET8
#define MR_SIGMOID_PAIRS 1
#else
#define MR_SIGMOID_PAIRS 0
#endif

/* The row operations, once for float (f32) and once for double (f64). */
#define MR_T float
#define MR_SFX(name) name##_f32
#define MR_V mr_vf
#define MR_N mr_nf
#define MR_W MR_VF_W
#define MR_OP(name) vf_##name
#define MR_EXPV mr_expf_v
#define MR_EXPSATV mr_expf_sat_v
#ifdef MR_VF_NET8
#define MR_NET8 1  /* the sorting networks, for float only */
#endif
#ifdef MR_VF_SSE2
#define MR_SSE2_F32 1  /* (mr_sum_exp's carry into double) */
#endif
#include "_kernels_row.h"
#undef MR_NET8
#undef MR_SSE2_F32

#define MR_T double
#define MR_SFX(name) name##_f64
#define MR_V mr_vd
#define MR_N mr_nd
#define MR_W MR_VD_W
#define MR_OP(name) vd_##name
#define MR_EXPV mr_exp_v
#define MR_EXPSATV mr_exp_sat_v
#include "_kernels_row.h"

#ifndef MR_PUT8
static inline void mr_put8_f32(const Py_ssize_t *idx, const float *e, float scale, float divisor,
                               int32_t *ids_out, float *w_out)
{
    for (int j = 0; j < 8; j++) {
        ids_out[j] = (int32_t)idx[j];
        w_out[j] = (e[j] * scale) / divisor;
    }
}
#endif

static inline const char *mr_simd_name(void) { return MR_SIMD; }

/* Build facts reported by moe_router.show_config(). */
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
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("popcnt");
}
static inline int mr_cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
        && mr_cpu_has_avx2();
}
#else
static inline int mr_cpu_has_avx2(void) { return 0; }
static inline int mr_cpu_has_avx512(void) { return 0; }
#endif

#endif /* MOE_ROUTER_KERNELS_H */
