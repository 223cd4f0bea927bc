/*
 * Vector traits for a build with no vector instructions: one lane.  The
 * operations every traits struct has (simd_sse2.h, simd_avx2.h and
 * simd_avx512.h have the same names and meanings):
 *
 *   T, V, W        element type, vector type, lanes per vector
 *   load, store, set, add, sub, mul, div, sqrt, fma, max, min
 *   max(a, b)      b when either is NaN (the x86 rule): max(z, acc) skips
 *                  NaN in a running max, max(lo, x) keeps a NaN x
 *   gather         lane j = z[idx[j]] - off for j < k, else pad
 *   swap(v, s)     lane l takes lane l ^ s: the steps of a horizontal tree
 *   count_gt, count_eq_before, keep_lt   the counts and masks of the ranks
 *   N, nan_init, nan_acc, nan_any        a NaN accumulator
 *   zero_if_lt(x, lo, y)   0 where x < lo, else y
 *   gt_bits, ge_bits, eq_bits            compare masks as lane bits
 *   pow2i(t)       2^(bits(t)) built in the exponent field (the exp)
 *   compress_ge    the elements >= t and their indices, packed
 *   Wide           double-precision lane totals of a float32 sum
 */
#ifndef MOE_ROUTER_SIMD_SCALAR_H
#define MOE_ROUTER_SIMD_SCALAR_H

#include "common.h"

namespace {

template <class TT> struct ScalarVec {
    typedef TT T;
    typedef TT V;
    typedef int N;
    static constexpr int W = 1;
    typedef MrWideLanes<ScalarVec> Wide;
    static inline V load(const T *p) { return *p; }
    static inline V set(T x) { return x; }
    static inline V add(V a, V b) { return a + b; }
    static inline V sub(V a, V b) { return a - b; }
    static inline V mul(V a, V b) { return a * b; }
    static inline V fma(V a, V b, V c) { return a * b + c; }
    static inline V max(V a, V b) { return a > b ? a : b; }
    static inline V min(V a, V b) { return a < b ? a : b; }
    static inline V div(V a, V b) { return a / b; }
    static inline V sqrt(V a) { return ::sqrt(a); }
    static inline V gather(const T *z, const Py_ssize_t *idx, int k, T off, T pad) { return MR_G(0); }
    static MR_HOT V swap(V v, int s) /* one lane: never called */
    {
        (void)s;
        return v;
    }
    static inline V count_eq_before(V cnt, V a, V b, V qa, V qb) { return cnt + (a == b && qa < qb); }
    static inline V count_gt(V cnt, V a, V b) { return cnt + (a > b); }
    static inline V keep_lt(V x, V a, V b) { return a < b ? x : (T)INFINITY; }
    static inline N nan_init(void) { return 0; }
    static inline N nan_acc(N acc, V a, V b) { return acc | (a != a) | (b != b); }
    static inline int nan_any(N acc) { return acc; }
    static inline V zero_if_lt(V x, V lo, V y) { return x < lo ? (T)0 : y; }
    static inline int gt_bits(V a, V b) { return a > b; }
    static inline int ge_bits(V a, V b) { return a >= b; }
    static inline int eq_bits(V a, V b) { return a == b; }
    static inline V pow2i(V t)
    {
        if constexpr (mr_is_f32<T>)
            return mr_f32_from_bits((mr_bits_from_f32(t) + 127u) << 23);
        else
            return mr_f64_from_bits((mr_bits_from_f64(t) + 1023u) << 52);
    }
    static inline void store(T *p, V a) { *p = a; }
    static inline int compress_ge(const T *src, T t, int32_t base, T *cv, int32_t *ci)
    {
        return mr_compress_ge_lanes<ScalarVec>(src, t, base, cv, ci);
    }
};
typedef ScalarVec<float> ScalarF32;
typedef ScalarVec<double> ScalarF64;

}  // namespace

#endif /* MOE_ROUTER_SIMD_SCALAR_H */
