/*
 * exp and sigmoid on a vector of the traits S, written once for both
 * precisions.
 *
 * float32: the Cephes expf polynomial after round-to-nearest ln2 range
 * reduction, max error 1.26 ulp (tests/test_exp.py).  Branch-free: the
 * argument is clamped to [-87.3, 88.7]; below -87.3 (-inf included) the
 * result is exactly 0, from about 88.4 it is +inf (2^128: the true exp
 * overflows float32 at 88.72); NaN propagates (max(lo, x) keeps a NaN x).
 * Rounding uses the 1.5 * 2^23 magic number and 2^n is built from the
 * exponent bits (S::pow2i).
 *
 * float64: the same with a two-part ln2 and a degree-12 Taylor polynomial
 * on |r| <= ln2/2 (truncation below 2e-16 relative); clamped to
 * [-708, 709], so 0 below -708 and 8.2e307 above.
 *
 * There is no scalar twin: tails and single values go through a padded
 * block (mr_exp_block), so every result comes from this one code.
 *
 * mr_exp_sat_v is the same without the flush to 0 (about 2^-126 instead).
 * The sigmoid uses it: 1 / (1 + exp(-x)) is 1 either way there, and a
 * compare and a mask per vector are saved.
 */
#ifndef MOE_ROUTER_EXP_HPP
#define MOE_ROUTER_EXP_HPP

#include "simd.h"

namespace {

/*
 * xc[0..NI) = exp(xc) for xc within the clamps below, each step for all NI
 * vectors before the next: a vector's exp is a chain of about 12 dependent
 * operations, and one vector at a time leaves the FMA units waiting on it
 * (the scheduler holds too few of the next vectors' operations); four at
 * a time: 1.29x the throughput on this Zen 2 host.  Every lane gets the
 * same operations whatever NI (the same bits).
 */
template <class S, int NI> static MR_HOT void mr_exp_clamped_n(typename S::V *xc)
{
    typedef typename S::V V;
    V t[NI], n[NI], r[NI], p[NI];
    if constexpr (mr_is_f32<typename S::T>) {
        const V magic = S::set(12582912.0f);
        for (int i = 0; i < NI; i++)
            t[i] = S::fma(xc[i], S::set(1.44269504088896341f), magic);
        for (int i = 0; i < NI; i++)
            n[i] = S::sub(t[i], magic);
        for (int i = 0; i < NI; i++)
            r[i] = S::fma(n[i], S::set(-0.693359375f), xc[i]);
        for (int i = 0; i < NI; i++)
            r[i] = S::fma(n[i], S::set(2.12194440e-4f), r[i]);
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(S::set(1.9875691500e-4f), r[i], S::set(1.3981999507e-3f));
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(p[i], r[i], S::set(8.3334519073e-3f));
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(p[i], r[i], S::set(4.1665795894e-2f));
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(p[i], r[i], S::set(1.6666665459e-1f));
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(p[i], r[i], S::set(5.0000001201e-1f));
        for (int i = 0; i < NI; i++)
            p[i] = S::fma(p[i], S::mul(r[i], r[i]), S::add(r[i], S::set(1.0f)));
    } else {
        const V magic = S::set(6755399441055744.0);
        static constexpr double c[12] = {
            1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
            1.0 / 120.0,      1.0 / 24.0,      1.0 / 6.0,      0.5,           1.0,          1.0};
        for (int i = 0; i < NI; i++)
            t[i] = S::fma(xc[i], S::set(1.4426950408889634074), magic);
        for (int i = 0; i < NI; i++)
            n[i] = S::sub(t[i], magic);
        for (int i = 0; i < NI; i++)
            r[i] = S::fma(n[i], S::set(-6.93147180369123816490e-01), xc[i]);
        for (int i = 0; i < NI; i++)
            r[i] = S::fma(n[i], S::set(-1.90821492927058770002e-10), r[i]);
        for (int i = 0; i < NI; i++)
            p[i] = S::set(1.0 / 479001600.0);
        for (int q = 0; q < 12; q++)
            for (int i = 0; i < NI; i++)
                p[i] = S::fma(p[i], r[i], S::set(c[q]));
    }
    for (int i = 0; i < NI; i++)
        xc[i] = S::mul(p[i], S::pow2i(t[i]));
}

/* The exp of xc within the clamps below (mr_exp_sat_v's core). */
template <class S> static MR_HOT typename S::V mr_exp_clamped_v(typename S::V xc)
{
    mr_exp_clamped_n<S, 1>(&xc);
    return xc;
}

template <class S> static MR_HOT typename S::V mr_exp_sat_v(typename S::V x)
{
    typedef typename S::T T;
    const T lo = mr_is_f32<T> ? (T)-87.3f : (T)-708.0, hi = mr_is_f32<T> ? (T)88.7f : (T)709.0;
    return mr_exp_clamped_v<S>(S::min(S::set(hi), S::max(S::set(lo), x))); /* keeps a NaN x */
}

/* exp, flushed to exactly 0 below the clamp. */
template <class S> static MR_HOT typename S::V mr_exp_v(typename S::V x)
{
    typedef typename S::T T;
    const T lo = mr_is_f32<T> ? (T)-87.3f : (T)-708.0;
    return S::zero_if_lt(x, S::set(lo), mr_exp_sat_v<S>(x));
}

/* x[0..NI) = mr_exp_v(x), NI at a time (mr_exp_clamped_n). */
template <class S, int NI> static MR_HOT void mr_exp_n(typename S::V *x)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const T lo = mr_is_f32<T> ? (T)-87.3f : (T)-708.0, hi = mr_is_f32<T> ? (T)88.7f : (T)709.0;
    V xc[NI];
    for (int i = 0; i < NI; i++)
        xc[i] = S::min(S::set(hi), S::max(S::set(lo), x[i]));
    mr_exp_clamped_n<S, NI>(xc);
    for (int i = 0; i < NI; i++)
        x[i] = S::zero_if_lt(x[i], S::set(lo), xc[i]);
}

/* x[0..NI) = mr_exp_v(x) for x <= 0 (z - the row max: the softmax routers'
 * exps), the same bits without the two clamps: they change nothing above
 * the low one, and below it the flush to 0 masks whatever the polynomial
 * gave (a bitwise mask: inf and NaN results are zeroed too; a NaN x stays
 * NaN). */
template <class S, int NI> static MR_HOT void mr_exp_nonpos_n(typename S::V *x)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const T lo = mr_is_f32<T> ? (T)-87.3f : (T)-708.0;
    V xc[NI];
    for (int i = 0; i < NI; i++)
        xc[i] = x[i];
    mr_exp_clamped_n<S, NI>(xc);
    for (int i = 0; i < NI; i++)
        x[i] = S::zero_if_lt(x[i], S::set(lo), xc[i]);
}

/* The number of vectors the interleaved exps above take at once: four
 * (eight spill the 16 AVX2 registers: 1.21x slower than four). */
#ifndef MR_EXP_NI
#define MR_EXP_NI 4
#endif

/* v[0..NV) = mr_exp_v(v) (NONPOS: of v <= 0, mr_exp_nonpos_n), MR_EXP_NI
 * vectors at a time. */
template <class S, int NV, bool NONPOS> static MR_HOT void mr_exp_vs(typename S::V *v)
{
    constexpr int NI = NV < MR_EXP_NI ? NV : MR_EXP_NI;
    for (int q = 0; q + NI <= NV; q += NI) {
        if constexpr (NONPOS)
            mr_exp_nonpos_n<S, NI>(v + q);
        else
            mr_exp_n<S, NI>(v + q);
    }
    if constexpr (NV % NI != 0) {
        if constexpr (NONPOS)
            mr_exp_nonpos_n<S, NV % NI>(v + NV - NV % NI);
        else
            mr_exp_n<S, NV % NI>(v + NV - NV % NI);
    }
}

/* How many blocks of MR_BLOCK values a pass takes at once so that its exps
 * fill MR_EXP_NI vectors (AVX2 float32: two blocks of two vectors). */
template <class S> static constexpr int mr_exp_blocks()
{
    return MR_BLOCK / S::W >= MR_EXP_NI ? 1 : MR_EXP_NI / (MR_BLOCK / S::W);
}

/* sigmoid(x) = 1 / (1 + exp(-x)) (exactly 0 below about -88.4 in float32,
 * where the exp is +inf). */
template <class S> static MR_HOT typename S::V mr_sigmoid_v(typename S::V x)
{
    const typename S::V one = S::set(1);
    return S::div(one, S::add(one, mr_exp_sat_v<S>(S::sub(S::set(0), x))));
}

}  // namespace

#endif /* MOE_ROUTER_EXP_HPP */
