/*
 * The vector traits of this build, by capability: VecOf<float>::type and
 * VecOf<double>::type.
 *
 *   build        float32            float64
 *   AVX-512      Avx2F32            Avx512F64
 *   AVX2         Avx2F32            Avx2F64
 *   SSE2         Sse2F32            Sse2F64
 *   other        ScalarF32          ScalarF64
 *
 * float32 keeps the AVX2 vectors in an AVX-512 build: its tuned routines
 * (the sorting networks, the byte-id gather, the approximate sigmoid) are
 * 256-bit code, and 512-bit float32 code is used only once it is measured
 * faster (docs/performance.md).  float64 takes the 512-bit vectors.
 */
#ifndef MOE_ROUTER_SIMD_H
#define MOE_ROUTER_SIMD_H

#include "common.h"

#if MR_HAVE_AVX2
#include "simd_avx2.h"
#elif MR_HAVE_SSE2
#include "simd_sse2.h"
#else
#include "simd_scalar.h"
#endif
#if MR_HAVE_AVX512
#include "simd_avx512.h"
#endif

namespace {

template <class T> struct VecOf;
#if MR_HAVE_AVX2
template <> struct VecOf<float> {
    typedef Avx2F32 type;
};
#elif MR_HAVE_SSE2
template <> struct VecOf<float> {
    typedef Sse2F32 type;
};
#else
template <> struct VecOf<float> {
    typedef ScalarF32 type;
};
#endif
#if MR_HAVE_AVX512
template <> struct VecOf<double> {
    typedef Avx512F64 type;
};
#elif MR_HAVE_AVX2
template <> struct VecOf<double> {
    typedef Avx2F64 type;
};
#elif MR_HAVE_SSE2
template <> struct VecOf<double> {
    typedef Sse2F64 type;
};
#else
template <> struct VecOf<double> {
    typedef ScalarF64 type;
};
#endif

/* The name show_config() reports: the widest vectors of the build. */
#if MR_HAVE_AVX512
#define MR_SIMD "avx512"
#elif MR_HAVE_AVX2
#define MR_SIMD "avx2"
#elif MR_HAVE_SSE2
#define MR_SIMD "sse2"
#else
#define MR_SIMD "scalar"
#endif

/* Fills the tables some traits use; called once at import. */
static inline void mr_init_tables(void)
{
#if MR_HAVE_AVX2
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

}  // namespace

#endif /* MOE_ROUTER_SIMD_H */
