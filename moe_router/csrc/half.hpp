/*
 * Half-precision logits: bfloat16 and IEEE float16 rows widened to float32.
 *
 * Both widenings are exact (every bfloat16 and float16 value, subnormals,
 * infinities and NaN included, is a float32 value), so a half-precision row
 * routed through its float32 widening gives the bits that routing the same
 * values as float32 gives.  The kernels widen a few rows at a time into a
 * buffer on the stack, never the whole array.
 */
#ifndef MOE_ROUTER_HALF_HPP
#define MOE_ROUTER_HALF_HPP

#include "common.h"

#if MR_HAVE_AVX2 || MR_HAVE_F16C
#include <immintrin.h>
#endif

namespace {

/* A bfloat16 is the top half of a float32. */
static MR_HOT float mr_bf16_to_f32(uint16_t h) { return mr_f32_from_bits((uint32_t)h << 16); }

/* IEEE binary16 -> binary32, exactly, without F16C: re-bias the exponent;
 * subnormals are normalised (their value is m * 2^-24, exact in float32). */
static MR_HOT float mr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | (man << 13); /* inf, NaN (payload kept) */
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign; /* +-0 */
    } else {
        u = mr_bits_from_f32((float)man * 5.9604644775390625e-8f) | sign; /* m * 2^-24, exact */
    }
    return mr_f32_from_bits(u);
}

/* out[0..n) = the float32 values of the bfloat16 bits in[0..n). */
static inline void mr_widen_bf16(const uint16_t *in, Py_ssize_t n, float *out)
{
    Py_ssize_t i = 0;
#if MR_HAVE_AVX2
    /* Four vectors an iteration: the loop is bound by its stores, and the
     * loop's own instructions would otherwise be a third of it. */
    for (; i + 32 <= n; i += 32) {
        for (int j = 0; j < 32; j += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i + j)));
            _mm256_storeu_ps(out + i + j, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    }
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
#endif
    for (; i < n; i++)
        out[i] = mr_bf16_to_f32(in[i]);
}

/* out[0..n) = the float32 values of the float16 bits in[0..n). */
static inline void mr_widen_f16(const uint16_t *in, Py_ssize_t n, float *out)
{
    Py_ssize_t i = 0;
#if MR_HAVE_F16C
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    }
#endif
    for (; i < n; i++)
        out[i] = mr_f16_to_f32(in[i]);
}

/*
 * A half-precision row as mr_max_lanes_of's source (row_ops.hpp), where the
 * build widens a vector in registers (MR_HAVE_WIDEN_ROW): each block is
 * widened from src, written to dst (the row's float32 buffer) and given to
 * the max pass, so the pair kernel's first pass over a row also widens it
 * (a pass of stores fewer than widening first; the same values, so the same
 * lanes and the same bits downstream).
 */
#define MR_HAVE_WIDEN_ROW (MR_HAVE_AVX2 && MR_HAVE_F16C)
#if MR_HAVE_WIDEN_ROW
template <int BF16> struct MrWidenRow {
    const uint16_t *src;
    float *dst; /* the row z that mr_max_lanes_of reads (z == dst) */
    MR_HOT __m256 block(const float *, Py_ssize_t i) const
    {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        __m256 v =
            BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
        _mm256_storeu_ps(dst + i, v);
        return v;
    }
    void tail(const float *, Py_ssize_t i, Py_ssize_t n) const
    {
        if (BF16)
            mr_widen_bf16(src + i, n - i, dst + i);
        else
            mr_widen_f16(src + i, n - i, dst + i);
    }
};
#endif

}  // namespace

#endif /* MOE_ROUTER_HALF_HPP */
