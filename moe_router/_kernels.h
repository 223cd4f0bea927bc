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

#define MR_LANES_F32 16
#define MR_LANES_F64 8

static inline float mr_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t mr_bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline double mr_f64_from_bits(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
static inline uint64_t mr_bits_from_f64(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }

/*
 * exp(x) in float32, Cephes expf polynomial (measured: under 1 ulp,
 * tests/test_exp.py).  Branch-free so that it vectorises:
 * the argument is clamped to [-87.3, 88.7]; anything below -87.3 (including
 * -inf) returns exactly 0, anything above 88.7 saturates.  NaN propagates.
 */
static inline float mr_expf(float x)
{
    const float lo = -87.3f, hi = 88.7f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to int */
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    int32_t ni = (int32_t)(mr_bits_from_f32(t) - mr_bits_from_f32(magic));
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    float scale = mr_f32_from_bits((uint32_t)(ni + 127) << 23);
    float y = p * scale;
    return x < lo ? 0.0f : y;
}

/*
 * exp(x) in float64: round-to-nearest range reduction with a two-part ln2
 * and a degree-12 Taylor polynomial on |r| <= ln2/2 (truncation error below
 * 2e-16 relative).  Below -708 (including -inf) returns exactly 0.
 */
static inline double mr_exp(double x)
{
    const double lo = -708.0, hi = 709.0;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    double t = xc * 1.4426950408889634074 + magic;
    double n = t - magic;
    int64_t ni = (int64_t)(mr_bits_from_f64(t) - mr_bits_from_f64(magic));
    double r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    double scale = mr_f64_from_bits((uint64_t)(ni + 1023) << 52);
    double y = p * scale;
    return x < lo ? 0.0 : y;
}

/* max of z[0..n); NaN entries are skipped (callers detect NaN elsewhere). */
static inline float mr_max_f32(const float *z, Py_ssize_t n)
{
    float acc[MR_LANES_F32];
    Py_ssize_t i = 0;
    for (int l = 0; l < MR_LANES_F32; l++) acc[l] = -INFINITY;
    for (; i + MR_LANES_F32 <= n; i += MR_LANES_F32)
        for (int l = 0; l < MR_LANES_F32; l++)
            acc[l] = z[i + l] > acc[l] ? z[i + l] : acc[l];
    float m = -INFINITY;
    for (int l = 0; l < MR_LANES_F32; l++) m = acc[l] > m ? acc[l] : m;
    for (; i < n; i++) m = z[i] > m ? z[i] : m;
    return m;
}

static inline double mr_max_f64(const double *z, Py_ssize_t n)
{
    double acc[MR_LANES_F64];
    Py_ssize_t i = 0;
    for (int l = 0; l < MR_LANES_F64; l++) acc[l] = -INFINITY;
    for (; i + MR_LANES_F64 <= n; i += MR_LANES_F64)
        for (int l = 0; l < MR_LANES_F64; l++)
            acc[l] = z[i + l] > acc[l] ? z[i + l] : acc[l];
    double m = -INFINITY;
    for (int l = 0; l < MR_LANES_F64; l++) m = acc[l] > m ? acc[l] : m;
    for (; i < n; i++) m = z[i] > m ? z[i] : m;
    return m;
}

/*
 * sum of exp(z[i] - m).  A NaN anywhere in z makes the sum NaN, which is
 * how the kernels detect NaN rows without a separate pass.  The lane
 * accumulators are summed in a fixed order, so the result does not depend
 * on the thread count.
 */
static inline float mr_sum_exp_f32(const float *z, Py_ssize_t n, float m)
{
    float acc[MR_LANES_F32];
    Py_ssize_t i = 0;
    for (int l = 0; l < MR_LANES_F32; l++) acc[l] = 0.0f;
    for (; i + MR_LANES_F32 <= n; i += MR_LANES_F32)
        for (int l = 0; l < MR_LANES_F32; l++)
            acc[l] += mr_expf(z[i + l] - m);
    for (int l = 0; i < n; i++, l++) acc[l] += mr_expf(z[i] - m);
    float s = 0.0f;
    for (int l = 0; l < MR_LANES_F32; l++) s += acc[l];
    return s;
}

static inline double mr_sum_exp_f64(const double *z, Py_ssize_t n, double m)
{
    double acc[MR_LANES_F64];
    Py_ssize_t i = 0;
    for (int l = 0; l < MR_LANES_F64; l++) acc[l] = 0.0;
    for (; i + MR_LANES_F64 <= n; i += MR_LANES_F64)
        for (int l = 0; l < MR_LANES_F64; l++)
            acc[l] += mr_exp(z[i + l] - m);
    for (int l = 0; i < n; i++, l++) acc[l] += mr_exp(z[i] - m);
    double s = 0.0;
    for (int l = 0; l < MR_LANES_F64; l++) s += acc[l];
    return s;
}

/* 1 if any of the MR_LANES values at z exceeds t (one vector compare). */
static inline int mr_any_gt_f32(const float *z, float t)
{
    int r = 0;
    for (int l = 0; l < MR_LANES_F32; l++) r |= z[l] > t;
    return r;
}

static inline int mr_any_gt_f64(const double *z, double t)
{
    int r = 0;
    for (int l = 0; l < MR_LANES_F64; l++) r |= z[l] > t;
    return r;
}

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
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
