/* Vector traits for AVX-512 (F, VL, DQ, BW): 8 doubles.  The operations:
 * see simd_scalar.h.  Only the double traits: float32 runs the AVX2 traits
 * and tuned routines in an AVX-512 build (simd.h). */
#ifndef MOE_ROUTER_SIMD_AVX512_H
#define MOE_ROUTER_SIMD_AVX512_H

/* GCC 12's AVX-512 intrinsics make their undefined vectors by
 * self-initialisation, which g++ -Wall reports inside the header at each
 * use. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "common.h"

namespace {

struct Avx512F64 {
    typedef double T;
    typedef __m512d V;
    typedef __mmask8 N;
    static constexpr int W = 8;
    typedef MrWideLanes<Avx512F64> Wide;
    static inline V load(const double *p) { return _mm512_loadu_pd(p); }
    static inline V set(double x) { return _mm512_set1_pd(x); }
    static inline V add(V a, V b) { return _mm512_add_pd(a, b); }
    static inline V sub(V a, V b) { return _mm512_sub_pd(a, b); }
    static inline V mul(V a, V b) { return _mm512_mul_pd(a, b); }
    static inline V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
    static inline V max(V a, V b) { return _mm512_max_pd(a, b); }
    static inline V min(V a, V b) { return _mm512_min_pd(a, b); }
    static inline V div(V a, V b) { return _mm512_div_pd(a, b); }
    static inline V sqrt(V a) { return _mm512_sqrt_pd(a); }
    static inline V gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
    {
        return _mm512_setr_pd(MR_G(0), MR_G(1), MR_G(2), MR_G(3), MR_G(4), MR_G(5), MR_G(6), MR_G(7));
    }
    static inline V swap(V v, int s)
    {
        switch (s) {
        case 4: return _mm512_shuffle_f64x2(v, v, 0x4E);
        case 2: return _mm512_shuffle_f64x2(v, v, 0xB1);
        default: return _mm512_permute_pd(v, 0x55);
        }
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb)
    {
        return _mm512_mask_add_pd(
            cnt, _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ) & _mm512_cmp_pd_mask(qa, qb, _CMP_LT_OQ), cnt,
            _mm512_set1_pd(1.0));
    }
    static inline V count_gt(V cnt, V a, V b)
    {
        return _mm512_mask_add_pd(cnt, _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ), cnt, _mm512_set1_pd(1.0));
    }
    static inline V keep_lt(V x, V a, V b)
    {
        return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), _mm512_set1_pd(INFINITY), x);
    }
    static inline N nan_init(void) { return 0; }
    static inline N nan_acc(N acc, V a, V b) { return acc | _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q); }
    static inline int nan_any(N acc) { return acc != 0; }
    static inline V zero_if_lt(V x, V lo, V y)
    {
        return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, lo, _CMP_NLT_UQ), y);
    }
    static inline int gt_bits(V a, V b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
    static inline int ge_bits(V a, V b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
    static inline int eq_bits(V a, V b) { return (int)_mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
    static inline V pow2i(V t)
    {
        return _mm512_castsi512_pd(
            _mm512_slli_epi64(_mm512_add_epi64(_mm512_castpd_si512(t), _mm512_set1_epi64(1023)), 52));
    }
    static inline void store(double *p, V a) { _mm512_storeu_pd(p, a); }
    /* The compress instructions; may write 8 values and 8 ids. */
    static inline int compress_ge(const double *src, double t, int32_t base, double *cv, int32_t *ci)
    {
        const __m512d v = _mm512_loadu_pd(src);
        const __mmask8 m = _mm512_cmp_pd_mask(v, _mm512_set1_pd(t), _CMP_GE_OQ);
        const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm512_storeu_pd(cv, _mm512_maskz_compress_pd(m, v));
        _mm256_storeu_si256((__m256i *)ci,
                            _mm256_maskz_compress_epi32(m, _mm256_add_epi32(_mm256_set1_epi32(base), iota)));
        return _mm_popcnt_u32(m);
    }
};

}  // namespace

#endif /* MOE_ROUTER_SIMD_AVX512_H */
