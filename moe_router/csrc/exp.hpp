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

/* The exp of xc within the clamps below (mr_exp_sat_v's core). */
template <class S> static MR_HOT typename S::V mr_exp_clamped_v(typename S::V xc)
{
    typedef typename S::V V;
    if constexpr (mr_is_f32<typename S::T>) {
        const V magic = S::set(12582912.0f);
        V t = S::fma(xc, S::set(1.44269504088896341f), magic);
        V n = S::sub(t, magic);
        V r = S::fma(n, S::set(-0.693359375f), xc);
        r = S::fma(n, S::set(2.12194440e-4f), r);
        V p = S::set(1.9875691500e-4f);
        p = S::fma(p, r, S::set(1.3981999507e-3f));
        p = S::fma(p, r, S::set(8.3334519073e-3f));
        p = S::fma(p, r, S::set(4.1665795894e-2f));
        p = S::fma(p, r, S::set(1.6666665459e-1f));
        p = S::fma(p, r, S::set(5.0000001201e-1f));
        p = S::fma(p, S::mul(r, r), S::add(r, S::set(1.0f)));
        return S::mul(p, S::pow2i(t));
    } else {
        const V magic = S::set(6755399441055744.0);
        V t = S::fma(xc, S::set(1.4426950408889634074), magic);
        V n = S::sub(t, magic);
        V r = S::fma(n, S::set(-6.93147180369123816490e-01), xc);
        r = S::fma(n, S::set(-1.90821492927058770002e-10), r);
        V p = S::set(1.0 / 479001600.0);
        p = S::fma(p, r, S::set(1.0 / 39916800.0));
        p = S::fma(p, r, S::set(1.0 / 3628800.0));
        p = S::fma(p, r, S::set(1.0 / 362880.0));
        p = S::fma(p, r, S::set(1.0 / 40320.0));
        p = S::fma(p, r, S::set(1.0 / 5040.0));
        p = S::fma(p, r, S::set(1.0 / 720.0));
        p = S::fma(p, r, S::set(1.0 / 120.0));
        p = S::fma(p, r, S::set(1.0 / 24.0));
        p = S::fma(p, r, S::set(1.0 / 6.0));
        p = S::fma(p, r, S::set(0.5));
        p = S::fma(p, r, S::set(1.0));
        p = S::fma(p, r, S::set(1.0));
        return S::mul(p, S::pow2i(t));
    }
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

/* mr_exp_v of x <= 0 (z - the row max: the softmax routers' exps), the
 * same bits without the two clamps: they change nothing above the low one,
 * and below it the flush to 0 masks whatever the polynomial gave (a
 * bitwise mask: inf and NaN lanes are zeroed too). */
template <class S> static MR_HOT typename S::V mr_exp_nonpos_v(typename S::V x)
{
    typedef typename S::T T;
    const T lo = mr_is_f32<T> ? (T)-87.3f : (T)-708.0;
    return S::zero_if_lt(x, S::set(lo), mr_exp_clamped_v<S>(x));
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
