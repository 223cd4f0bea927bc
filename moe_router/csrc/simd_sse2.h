/* Vector traits for SSE2 (the x86-64 baseline): 4 floats, 2 doubles.  The
 * operations: see simd_scalar.h. */
#ifndef MOE_ROUTER_SIMD_SSE2_H
#define MOE_ROUTER_SIMD_SSE2_H

#include <emmintrin.h>

#include "common.h"

namespace {

struct Sse2F32 {
    typedef float T;
    typedef __m128 V;
    typedef __m128 N;
    static constexpr int W = 4;
    static inline V load(const float *p) { return _mm_loadu_ps(p); }
    static inline V set(float x) { return _mm_set1_ps(x); }
    static inline V add(V a, V b) { return _mm_add_ps(a, b); }
    static inline V sub(V a, V b) { return _mm_sub_ps(a, b); }
    static inline V mul(V a, V b) { return _mm_mul_ps(a, b); }
    static inline V fma(V a, V b, V c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
    static inline V max(V a, V b) { return _mm_max_ps(a, b); }
    static inline V min(V a, V b) { return _mm_min_ps(a, b); }
    static inline V div(V a, V b) { return _mm_div_ps(a, b); }
    static inline V sqrt(V a) { return _mm_sqrt_ps(a); }
    static inline V gather(const float *z, const Py_ssize_t *idx, int k, float off, float pad)
    {
        return _mm_setr_ps(MR_G(0), MR_G(1), MR_G(2), MR_G(3));
    }
    static MR_HOT V swap(V v, int s)
    {
        return s == 2 ? _mm_shuffle_ps(v, v, 0x4E) : _mm_shuffle_ps(v, v, 0xB1);
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb)
    {
        return _mm_add_ps(
            cnt, _mm_and_ps(_mm_and_ps(_mm_cmpeq_ps(a, b), _mm_cmplt_ps(qa, qb)), _mm_set1_ps(1.0f)));
    }
    static inline V count_gt(V cnt, V a, V b)
    {
        return _mm_add_ps(cnt, _mm_and_ps(_mm_cmpgt_ps(a, b), _mm_set1_ps(1.0f)));
    }
    static inline V keep_lt(V x, V a, V b)
    {
        __m128 m = _mm_cmplt_ps(a, b);
        return _mm_or_ps(_mm_and_ps(m, x), _mm_andnot_ps(m, _mm_set1_ps(INFINITY)));
    }
    static inline N nan_init(void) { return _mm_setzero_ps(); }
    static inline N nan_acc(N acc, V a, V b) { return _mm_or_ps(acc, _mm_cmpunord_ps(a, b)); }
    static inline int nan_any(N acc) { return _mm_movemask_ps(acc) != 0; }
    static inline V zero_if_lt(V x, V lo, V y) { return _mm_andnot_ps(_mm_cmplt_ps(x, lo), y); }
    static inline int gt_bits(V a, V b) { return _mm_movemask_ps(_mm_cmpgt_ps(a, b)); }
    static inline int ge_bits(V a, V b) { return _mm_movemask_ps(_mm_cmpge_ps(a, b)); }
    static inline int eq_bits(V a, V b) { return _mm_movemask_ps(_mm_cmpeq_ps(a, b)); }
    static inline V pow2i(V t)
    {
        return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_castps_si128(t), _mm_set1_epi32(127)), 23));
    }
    static inline void store(float *p, V a) { _mm_storeu_ps(p, a); }
    static inline int compress_ge(const float *src, float t, int32_t base, float *cv, int32_t *ci)
    {
        return mr_compress_ge_lanes<Sse2F32>(src, t, base, cv, ci);
    }
    /* The 16 lane totals in eight double vectors: lanes 4j..4j+3 of block
     * vector j go to t[2j] (low two) and t[2j + 1] (high two). */
    struct Wide {
        __m128d t[8];
        static MR_HOT Wide zero()
        {
            Wide w;
            for (int l = 0; l < 8; l++)
                w.t[l] = _mm_setzero_pd();
            return w;
        }
        MR_HOT void add(const V *acc)
        {
            for (int j = 0; j < MR_BLOCK / W; j++) {
                t[2 * j] = _mm_add_pd(t[2 * j], _mm_cvtps_pd(acc[j]));
                t[2 * j + 1] = _mm_add_pd(t[2 * j + 1], _mm_cvtps_pd(_mm_movehl_ps(acc[j], acc[j])));
            }
        }
        MR_HOT double total() const
        {
            const __m128d h = _mm_add_pd(_mm_add_pd(_mm_add_pd(t[0], t[1]), _mm_add_pd(t[2], t[3])),
                                         _mm_add_pd(_mm_add_pd(t[4], t[5]), _mm_add_pd(t[6], t[7])));
            return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
        }
    };
};

struct Sse2F64 {
    typedef double T;
    typedef __m128d V;
    typedef __m128d N;
    static constexpr int W = 2;
    typedef MrWideLanes<Sse2F64> Wide;
    static inline V load(const double *p) { return _mm_loadu_pd(p); }
    static inline V set(double x) { return _mm_set1_pd(x); }
    static inline V add(V a, V b) { return _mm_add_pd(a, b); }
    static inline V sub(V a, V b) { return _mm_sub_pd(a, b); }
    static inline V mul(V a, V b) { return _mm_mul_pd(a, b); }
    static inline V fma(V a, V b, V c) { return _mm_add_pd(_mm_mul_pd(a, b), c); }
    static inline V max(V a, V b) { return _mm_max_pd(a, b); }
    static inline V min(V a, V b) { return _mm_min_pd(a, b); }
    static inline V div(V a, V b) { return _mm_div_pd(a, b); }
    static inline V sqrt(V a) { return _mm_sqrt_pd(a); }
    static inline V gather(const double *z, const Py_ssize_t *idx, int k, double off, double pad)
    {
        return _mm_setr_pd(MR_G(0), MR_G(1));
    }
    static inline V swap(V v, int s)
    {
        (void)s;
        return _mm_shuffle_pd(v, v, 1);
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb)
    {
        return _mm_add_pd(cnt,
                          _mm_and_pd(_mm_and_pd(_mm_cmpeq_pd(a, b), _mm_cmplt_pd(qa, qb)), _mm_set1_pd(1.0)));
    }
    static inline V count_gt(V cnt, V a, V b)
    {
        return _mm_add_pd(cnt, _mm_and_pd(_mm_cmpgt_pd(a, b), _mm_set1_pd(1.0)));
    }
    static inline V keep_lt(V x, V a, V b)
    {
        __m128d m = _mm_cmplt_pd(a, b);
        return _mm_or_pd(_mm_and_pd(m, x), _mm_andnot_pd(m, _mm_set1_pd(INFINITY)));
    }
    static inline N nan_init(void) { return _mm_setzero_pd(); }
    static inline N nan_acc(N acc, V a, V b) { return _mm_or_pd(acc, _mm_cmpunord_pd(a, b)); }
    static inline int nan_any(N acc) { return _mm_movemask_pd(acc) != 0; }
    static inline V zero_if_lt(V x, V lo, V y) { return _mm_andnot_pd(_mm_cmplt_pd(x, lo), y); }
    static inline int gt_bits(V a, V b) { return _mm_movemask_pd(_mm_cmpgt_pd(a, b)); }
    static inline int ge_bits(V a, V b) { return _mm_movemask_pd(_mm_cmpge_pd(a, b)); }
    static inline int eq_bits(V a, V b) { return _mm_movemask_pd(_mm_cmpeq_pd(a, b)); }
    static inline V pow2i(V t)
    {
        return _mm_castsi128_pd(
            _mm_slli_epi64(_mm_add_epi64(_mm_castpd_si128(t), _mm_set1_epi64x(1023)), 52));
    }
    static inline void store(double *p, V a) { _mm_storeu_pd(p, a); }
    static inline int compress_ge(const double *src, double t, int32_t base, double *cv, int32_t *ci)
    {
        return mr_compress_ge_lanes<Sse2F64>(src, t, base, cv, ci);
    }
};

}  // namespace

#endif /* MOE_ROUTER_SIMD_SSE2_H */
