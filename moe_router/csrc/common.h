/*
 * What every kernel header shares: the block size, the always-inline
 * attribute, bit casts and bit counts, and the capability macros that the
 * code tests.
 *
 * The layering, from the bottom (each header includes only those above it):
 *   common.h               this file
 *   simd_scalar.h, simd_sse2.h, simd_avx2.h, simd_avx512.h
 *                          one per instruction set: vector traits (a struct
 *                          of static vector operations per precision), no
 *                          algorithms
 *   simd.h                 picks VecOf<float> and VecOf<double> for the build
 *   exp.hpp                the vector exp and sigmoid, written once
 *   cand.hpp               the candidate buffer of the top-k selection
 *   networks_avx2.hpp      AVX2+: sorting networks, byte-id gather, put8
 *   row_ops.hpp            the precision-generic row operations (templates
 *                          over float / double, no intrinsics)
 *   sigmoid_approx_avx2.hpp  AVX2+: the approximate sigmoid selection
 *   half.hpp               bfloat16 / float16 rows widened to float32
 *                          (exact), for the half-precision logits
 *   rules.hpp              the scoring rules' row operations (tanh cap,
 *                          sqrt(softplus), fused score / key passes)
 *   plan.hpp               the dispatch step: plan (counting sort),
 *                          permute (row gather) and combine (weighted sum)
 *   kernels.hpp            the entry points Cython declares (templates, one
 *                          declaration each) and the build facts
 *
 * No function here allocates, raises or touches the GIL.
 */
#ifndef MOE_ROUTER_COMMON_H
#define MOE_ROUTER_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

/* Capabilities of this build, from the compiler's target macros.  The code
 * tests these, never which instruction-set header was included. */
#if defined(__SSE2__) || defined(_M_X64)
#define MR_HAVE_SSE2 1
#else
#define MR_HAVE_SSE2 0
#endif
#if defined(__AVX2__)
#define MR_HAVE_AVX2 1
#else
#define MR_HAVE_AVX2 0
#endif
#if defined(__FMA__)
#define MR_HAVE_FMA 1
#else
#define MR_HAVE_FMA 0
#endif
#if defined(__POPCNT__)
#define MR_HAVE_POPCNT 1
#else
#define MR_HAVE_POPCNT 0
#endif
#if defined(__F16C__)
#define MR_HAVE_F16C 1
#else
#define MR_HAVE_F16C 0
#endif
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#define MR_HAVE_AVX512 1
#else
#define MR_HAVE_AVX512 0
#endif
/* The AVX2 tuned routines (networks_avx2.hpp, sigmoid_approx_avx2.hpp; they
 * use FMA and POPCNT too): every build that has them, the AVX-512 one
 * included. */
#define MR_HAVE_NET8 (MR_HAVE_AVX2 && MR_HAVE_FMA && MR_HAVE_POPCNT)

/* Always inlined: the kernels are small steps that must be inlined to keep
 * vectors in registers; in a module as large as the Cython one gcc stops
 * inlining "static inline" functions once its unit growth limit is
 * reached. */
#if defined(__GNUC__) || defined(__clang__)
#define MR_HOT inline __attribute__((always_inline))
#else
#define MR_HOT inline
#endif

/* The alignment of mr_topk_pair's float32 lane maxima (stored as vectors,
 * reloaded by the threshold network): a cache line in the builds whose
 * frames are realigned anyway (AVX2 and wider); the type's own in the SSE2
 * build, where it would realign the frame, and for float64
 * (docs/performance.md has the measurements). */
#if MR_HAVE_AVX2
#define MR_STACK_LINE_BYTES 64
#else
#define MR_STACK_LINE_BYTES 4
#endif

/* Never inlined (see the functions that say why). */
#if defined(__GNUC__) || defined(__clang__)
#define MR_NOINLINE __attribute__((noinline))
#else
#define MR_NOINLINE
#endif

/* Values per block: every row loop steps MR_BLOCK values at a time, whatever
 * the vector width, so the per-lane summation order is the same on every
 * path. */
#define MR_BLOCK 16

static inline float mr_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t mr_bits_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline double mr_f64_from_bits(uint64_t u)
{
    double f;
    memcpy(&f, &u, 8);
    return f;
}
static inline uint64_t mr_bits_from_f64(double f)
{
    uint64_t u;
    memcpy(&u, &f, 8);
    return u;
}

#if defined(__GNUC__) || defined(__clang__)
static inline int mr_ctz(unsigned x) { return __builtin_ctz(x); }
#if MR_HAVE_POPCNT
static inline int mr_popcount(unsigned x) { return __builtin_popcount(x); }
#else
/* Without the instruction, __builtin_popcount is a call into libgcc, which
 * a C++ extension module reaches through the PLT: count the bits inline. */
static inline int mr_popcount(unsigned x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    return (int)((((x + (x >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
}
#endif
#else
static inline int mr_ctz(unsigned x)
{
    int i = 0;
    while (!(x & 1u)) {
        x >>= 1;
        i++;
    }
    return i;
}
static inline int mr_popcount(unsigned x)
{
    int c = 0;
    for (; x; x &= x - 1)
        c++;
    return c;
}
#endif

/* True for float: the AVX2 tuned routines exist for float32 only. */
template <class T> constexpr bool mr_is_f32 = std::is_same<T, float>::value;

/* Lane j of a gather of the picked experts' values: z[idx[j]] - off for
 * j < k, else pad (the vector traits' `gather`). */
#define MR_G(j) ((j) < k ? z[idx[j]] - off : pad)

/*
 * The compress of the traits that have no compress instruction: the
 * elements of src[0..S::W) that are >= t, and their indices (base + lane),
 * packed to the front of cv / ci; returns how many.  A vector with a
 * candidate writes all its lanes, each kept one advancing the count: no
 * loop over the set bits, whose exit the branch predictor misses.  May
 * write S::W values and S::W ids.
 */
template <class S>
static MR_HOT int mr_compress_ge_lanes(const typename S::T *src, typename S::T t, int32_t base,
                                       typename S::T *cv, int32_t *ci)
{
    const unsigned m = (unsigned)S::ge_bits(S::load(src), S::set(t));
    int c = 0;
    if (m == 0)
        return 0;
    for (int l = 0; l < S::W; l++) {
        cv[c] = src[l];
        ci[c] = base + l;
        c += m >> l & 1;
    }
    return c;
}

/*
 * The double-precision lane totals of a row sum (mr_sum_exp): each of the
 * MR_BLOCK lanes carried into its own double, then added in lane order.  The
 * traits without a vector form of it (the double ones, the scalar ones) use
 * this one, through memory.
 */
template <class S> struct MrWideLanes {
    double t[MR_BLOCK];
    static MR_HOT MrWideLanes zero()
    {
        MrWideLanes w;
        for (int l = 0; l < MR_BLOCK; l++)
            w.t[l] = 0;
        return w;
    }
    MR_HOT void add(const typename S::V *acc)
    {
        typename S::T lanes[MR_BLOCK];
        for (int j = 0; j < MR_BLOCK / S::W; j++)
            S::store(lanes + j * S::W, acc[j]);
        for (int l = 0; l < MR_BLOCK; l++)
            t[l] += lanes[l];
    }
    MR_HOT double total() const
    {
        double s = 0;
        for (int l = 0; l < MR_BLOCK; l++)
            s += t[l];
        return s;
    }
};

#endif /* MOE_ROUTER_COMMON_H */
