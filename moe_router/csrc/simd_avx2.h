/* Vector traits for AVX2 (with FMA where the build has it): 8 floats, 4
 * doubles.  The operations: see simd_scalar.h.  An AVX-512 build uses the
 * float traits too (simd.h). */
#ifndef MOE_ROUTER_SIMD_AVX2_H
#define MOE_ROUTER_SIMD_AVX2_H

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

/* mr_pack_lut[m]: byte j = the lane of the j-th set bit of the 8-bit mask
 * m (filled by mr_init_tables). */
static uint64_t mr_pack_lut[256];

struct Avx2F32 {
    typedef float T;
    typedef __m256 V;
    typedef __m256 N;
    static constexpr int W = 8;
    static inline V load(const float *p) { return _mm256_loadu_ps(p); }
    static inline V set(float x) { return _mm256_set1_ps(x); }
    static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
    static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
#if MR_HAVE_FMA
    static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
#else
    static inline V fma(V a, V b, V c) { return _mm256_add_ps(_mm256_mul_ps(a, b), c); }
#endif
    static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
    static inline V min(V a, V b) { return _mm256_min_ps(a, b); }
    static inline V div(V a, V b) { return _mm256_div_ps(a, b); }
    static inline V sqrt(V a) { return _mm256_sqrt_ps(a); }
    static inline V gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
    {
        return _mm256_setr_ps(MR_G(0), MR_G(1), MR_G(2), MR_G(3), MR_G(4), MR_G(5), MR_G(6), MR_G(7));
    }
    static MR_HOT V swap(V v, int s)
    {
        switch (s) {
        case 4: return _mm256_permute2f128_ps(v, v, 1);
        case 2: return _mm256_permute_ps(v, 0x4E);
        default: return _mm256_permute_ps(v, 0xB1);
        }
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb)
    {
        return _mm256_add_ps(cnt, _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ),
                                                              _mm256_cmp_ps(qa, qb, _CMP_LT_OQ)),
                                                _mm256_set1_ps(1.0f)));
    }
    static inline V count_gt(V cnt, V a, V b)
    {
        return _mm256_add_ps(cnt, _mm256_and_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), _mm256_set1_ps(1.0f)));
    }
    static inline V keep_lt(V x, V a, V b)
    {
        return _mm256_blendv_ps(_mm256_set1_ps(INFINITY), x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
    }
    static inline N nan_init(void) { return _mm256_setzero_ps(); }
    static inline N nan_acc(N acc, V a, V b) { return _mm256_or_ps(acc, _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
    static inline int nan_any(N acc) { return _mm256_movemask_ps(acc) != 0; }
    static inline V zero_if_lt(V x, V lo, V y)
    {
        return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);
    }
    static inline int gt_bits(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
    static inline int ge_bits(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)); }
    static inline int eq_bits(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
    static inline V pow2i(V t)
    {
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23));
    }
    static inline void store(float *p, V a) { _mm256_storeu_ps(p, a); }
    /* A permutation from the lookup table moves the kept lanes to the
     * front; may write 8 values and 8 ids. */
    static MR_HOT int compress_ge(const float *src, float t, int32_t base, float *cv, int32_t *ci)
    {
        const __m256 v = _mm256_loadu_ps(src);
        const int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(t), _CMP_GE_OQ));
        const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mr_pack_lut[m]));
        _mm256_storeu_ps(cv, _mm256_permutevar8x32_ps(v, perm));
        _mm256_storeu_si256((__m256i *)ci,
                            _mm256_add_epi32(perm, _mm256_set1_epi32(base))); /* lane = id - base */
        return _mm_popcnt_u32((unsigned)m);
    }
    /* The 16 lane totals in four double vectors: the low and high halves of
     * block vector j go to t[2j] and t[2j + 1]. */
    struct Wide {
        __m256d t[4];
        static MR_HOT Wide zero()
        {
            Wide w;
            for (int l = 0; l < 4; l++)
                w.t[l] = _mm256_setzero_pd();
            return w;
        }
        MR_HOT void add(const V *acc)
        {
            for (int j = 0; j < MR_BLOCK / W; j++) {
                t[2 * j] = _mm256_add_pd(t[2 * j], _mm256_cvtps_pd(_mm256_castps256_ps128(acc[j])));
                t[2 * j + 1] = _mm256_add_pd(t[2 * j + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(acc[j], 1)));
            }
        }
        MR_HOT double total() const
        {
            const __m256d s = _mm256_add_pd(_mm256_add_pd(t[0], t[1]), _mm256_add_pd(t[2], t[3]));
            const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
            return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
        }
    };
};

struct Avx2F64 {
    typedef double T;
    typedef __m256d V;
    typedef __m256d N;
    static constexpr int W = 4;
    typedef MrWideLanes<Avx2F64> Wide;
    static inline V load(const double *p) { return _mm256_loadu_pd(p); }
    static inline V set(double x) { return _mm256_set1_pd(x); }
    static inline V add(V a, V b) { return _mm256_add_pd(a, b); }
    static inline V sub(V a, V b) { return _mm256_sub_pd(a, b); }
    static inline V mul(V a, V b) { return _mm256_mul_pd(a, b); }
#if MR_HAVE_FMA
    static inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
#else
    static inline V fma(V a, V b, V c) { return _mm256_add_pd(_mm256_mul_pd(a, b), c); }
#endif
    static inline V max(V a, V b) { return _mm256_max_pd(a, b); }
    static inline V min(V a, V b) { return _mm256_min_pd(a, b); }
    static inline V div(V a, V b) { return _mm256_div_pd(a, b); }
    static inline V sqrt(V a) { return _mm256_sqrt_pd(a); }
    static inline V gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
    {
        return _mm256_setr_pd(MR_G(0), MR_G(1), MR_G(2), MR_G(3));
    }
    static inline V swap(V v, int s)
    {
        return s == 2 ? _mm256_permute2f128_pd(v, v, 1) : _mm256_permute_pd(v, 0x5);
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb)
    {
        return _mm256_add_pd(cnt, _mm256_and_pd(_mm256_and_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ),
                                                              _mm256_cmp_pd(qa, qb, _CMP_LT_OQ)),
                                                _mm256_set1_pd(1.0)));
    }
    static inline V count_gt(V cnt, V a, V b)
    {
        return _mm256_add_pd(cnt, _mm256_and_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ), _mm256_set1_pd(1.0)));
    }
    static inline V keep_lt(V x, V a, V b)
    {
        return _mm256_blendv_pd(_mm256_set1_pd(INFINITY), x, _mm256_cmp_pd(a, b, _CMP_LT_OQ));
    }
    static inline N nan_init(void) { return _mm256_setzero_pd(); }
    static inline N nan_acc(N acc, V a, V b) { return _mm256_or_pd(acc, _mm256_cmp_pd(a, b, _CMP_UNORD_Q)); }
    static inline int nan_any(N acc) { return _mm256_movemask_pd(acc) != 0; }
    static inline V zero_if_lt(V x, V lo, V y)
    {
        return _mm256_andnot_pd(_mm256_cmp_pd(x, lo, _CMP_LT_OQ), y);
    }
    static inline int gt_bits(V a, V b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ)); }
    static inline int ge_bits(V a, V b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GE_OQ)); }
    static inline int eq_bits(V a, V b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ)); }
    static inline V pow2i(V t)
    {
        return _mm256_castsi256_pd(
            _mm256_slli_epi64(_mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)), 52));
    }
    static inline void store(double *p, V a) { _mm256_storeu_pd(p, a); }
    static inline int compress_ge(const double *src, double t, int32_t base, double *cv, int32_t *ci)
    {
        return mr_compress_ge_lanes<Avx2F64>(src, t, base, cv, ci);
    }
};

}  // namespace

#endif /* MOE_ROUTER_SIMD_AVX2_H */
