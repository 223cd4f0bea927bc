/*
 * The row operations of the scoring rules beyond softmax and sigmoid
 * (_rules_kernels.pxi): tanh soft-capping of the logits, softmax scores
 * with a selection bias, sqrt(softplus) scores (DeepSeek-V4) and
 * sparsemixer's masked sums (PhiMoE).  Templates over T (float or double)
 * against the vector traits of the build, as row_ops.hpp; every tail goes
 * through one padded block, so each value comes from the same vector code
 * whatever its position, and sums run in a fixed order (the results do not
 * depend on the thread count).
 */
#ifndef MOE_ROUTER_RULES_HPP
#define MOE_ROUTER_RULES_HPP

#include "row_ops.hpp"

namespace {

/* Vectors per block, in a function whose traits are S (as row_ops.hpp's). */
#define MR_NV (MR_BLOCK / S::W)

/* |x| (NaN stays NaN: max(x, -x) returns its second argument on NaN). */
template <class S> static inline typename S::V mr_abs_v(typename S::V x)
{
    return S::max(x, S::sub(S::set(0), x));
}

/* y where mask_x >= mask_lo, x where mask_x < mask_lo (a blend from the
 * traits' zero_if_lt; both x and y must be finite or the same NaN). */
template <class S>
static inline typename S::V mr_select_lt(typename S::V mx, typename S::V lo, typename S::V x, typename S::V y)
{
    return S::add(S::zero_if_lt(mx, lo, y), S::sub(x, S::zero_if_lt(mx, lo, x)));
}

template <class S> static inline typename S::V mr_tanh_small_v(typename S::V as)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const V a2 = S::mul(as, as);
    V p;
    if constexpr (mr_is_f32<T>) {
        p = S::set(0.0035921280365724811f);
        p = S::fma(p, a2, S::set(-0.0088632355299021973f));
        p = S::fma(p, a2, S::set(0.021869488536155203f));
        p = S::fma(p, a2, S::set(-0.053968253968253971f));
        p = S::fma(p, a2, S::set(0.13333333333333333f));
        p = S::fma(p, a2, S::set(-0.33333333333333331f));
    } else {
        p = S::set(1.5918905069328964e-05);
        p = S::fma(p, a2, S::set(-3.9278323883316833e-05));
        p = S::fma(p, a2, S::set(9.6915379569294509e-05));
        p = S::fma(p, a2, S::set(-0.00023912911424355248));
        p = S::fma(p, a2, S::set(0.00059002744094558595));
        p = S::fma(p, a2, S::set(-0.0014558343870513183));
        p = S::fma(p, a2, S::set(0.0035921280365724811));
        p = S::fma(p, a2, S::set(-0.0088632355299021973));
        p = S::fma(p, a2, S::set(0.021869488536155203));
        p = S::fma(p, a2, S::set(-0.053968253968253971));
        p = S::fma(p, a2, S::set(0.13333333333333333));
        p = S::fma(p, a2, S::set(-0.33333333333333331));
    }
    return S::fma(S::mul(p, a2), as, as);
}

template <class S> static inline typename S::V mr_tanh_big_v(typename S::V a)
{
    typedef typename S::V V;
    const V one = S::set(1);
    const V e = mr_exp_v<S>(S::mul(S::set(-2), a));
    return S::div(S::sub(one, e), S::add(one, e));
}

/*
 * tanh(u).  For |u| >= 0.3: (1 - e) / (1 + e), e = exp(-2|u|) (1 - e loses
 * at most about a bit there); below, the odd Taylor series of tanh (7
 * terms for float32, 13 for float64: truncation below half an ulp at
 * |u| = 0.3), which keeps tanh(u) ~ u accurate to the ulp where the exp
 * form would cancel.  A vector whose lanes all take one form computes only
 * that one (capped logits are mostly small: cap 30, |z| < 9); a lane's
 * value is its form's either way.  The sign is put back with two masks.
 * tanh(+-inf) = +-1 exactly; NaN stays NaN (a NaN lane takes the exp form).
 */
template <class S> static inline typename S::V mr_tanh_v(typename S::V u)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const V zero = S::set(0), th = S::set((T)0.3);
    const V a = mr_abs_v<S>(u);
    const int small_bits = S::gt_bits(th, a); /* a < 0.3 (not NaN) */
    V t;
    if (small_bits == (1 << S::W) - 1)
        t = mr_tanh_small_v<S>(a);
    else if (small_bits == 0)
        t = mr_tanh_big_v<S>(a);
    else /* small where a < 0.3; the series of min(a, 0.3) stays finite */
        t = mr_select_lt<S>(a, th, mr_tanh_small_v<S>(S::min(a, th)), mr_tanh_big_v<S>(a));
    /* +t where u >= 0, -t where u < 0 (t is 0 at u = 0). */
    return S::sub(S::zero_if_lt(u, zero, t), S::zero_if_lt(zero, u, t));
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), log1p(e) for e in [0, 1] as
 * 2 atanh(t), t = e / (2 + e) <= 1/3 (no cancellation for small e), by its
 * odd series (7 terms for float32, 18 for float64: truncation (1/9)^J / (2J + 1)
 * below half an ulp).  sqrt(softplus(x)):
 * the scores of DeepSeek-V4; +inf gives +inf, -inf 0, NaN NaN. */
template <class S> static inline typename S::V mr_sqrtsoftplus_v(typename S::V x)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const V zero = S::set(0);
    /* (exp flushed to 0 below -87.3 in float32, -708 in float64: the
     * score of a -inf logit is exactly 0, and of one below that 0 too) */
    const V e = mr_exp_v<S>(S::sub(zero, mr_abs_v<S>(x)));
    const V t = S::div(e, S::add(S::set(2), e));
    const V t2 = S::mul(t, t);
    const int terms = mr_is_f32<T> ? 7 : 18;
    V p = S::set((T)(1.0 / (2 * terms - 1)));
    for (int j = terms - 2; j >= 0; j--)
        p = S::fma(p, t2, S::set((T)(1.0 / (2 * j + 1))));
    const V log1p_e = S::mul(S::add(t, t), p);
    return S::sqrt(S::add(S::max(x, zero), log1p_e));
}

/* out[0..n) = cap * tanh(z / cap): the soft-capped logits. */
template <class T> static inline void mr_softcap_into(const T *z, Py_ssize_t n, T cap, T *out)
{
    using S = Vec<T>;
    const typename S::V vc = S::set(cap);
    Py_ssize_t i = 0;
    for (; i + S::W <= n; i += S::W)
        S::store(out + i, S::mul(vc, mr_tanh_v<S>(S::div(S::load(z + i), vc))));
    if (i < n) {
        T buf[MR_BLOCK];
        const int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++)
            buf[l] = l < len ? z[i + l] : 0;
        for (int j = 0; j < MR_NV; j++)
            S::store(buf + j * S::W, S::mul(vc, mr_tanh_v<S>(S::div(S::load(buf + j * S::W), vc))));
        for (int l = 0; l < len; l++)
            out[i + l] = buf[l];
    }
}

/*
 * e[0..n) = exp(z - m) (m the finite row max); returns their sum, added
 * as mr_sum_exp adds (MR_BLOCK lanes, carried into double every 8 blocks,
 * in a fixed order).
 */
template <class T> static inline T mr_exp_into(const T *z, Py_ssize_t n, T m, T *e)
{
    using S = Vec<T>;
    typedef typename S::V V;
    V acc[MR_NV];
    const V vm = S::set(m);
    Py_ssize_t i = 0;
    typename S::Wide total = S::Wide::zero();
    while (i + MR_BLOCK <= n) {
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::set(0);
        for (int b = 0; b < 8 && i + MR_BLOCK <= n; b++, i += MR_BLOCK)
            for (int j = 0; j < MR_NV; j++) {
                const V v = mr_exp_v<S>(S::sub(S::load(z + i + j * S::W), vm));
                S::store(e + i + j * S::W, v);
                acc[j] = S::add(acc[j], v);
            }
        total.add(acc);
    }
    if (i < n) {
        T buf[MR_BLOCK];
        const int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++)
            buf[l] = l < len ? z[i + l] - m : 0;
        mr_exp_short(buf, len, buf);
        for (int l = len; l < MR_BLOCK; l++)
            buf[l] = 0;
        for (int l = 0; l < len; l++)
            e[i + l] = buf[l];
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::load(buf + j * S::W);
        total.add(acc);
    }
    return (T)total.total();
}

/* p[i] = e[i] * (1 / total) (in place allowed), key[i] = p[i] + bias[i]:
 * the softmax probabilities and their biased selection scores; lanes[l] =
 * the max of the keys whose index is l modulo MR_BLOCK (mr_max_lanes'
 * lanes, for the top-k; no NaN is left here). */
template <class T>
static inline void mr_div_bias_into(const T *e, Py_ssize_t n, T total, const T *bias, T *p, T *key, T *lanes)
{
    using S = Vec<T>;
    typedef typename S::V V;
    const V inv = S::set((T)1 / total);
    V acc[MR_NV];
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(-INFINITY);
    Py_ssize_t i = 0;
    for (; i + MR_BLOCK <= n; i += MR_BLOCK)
        for (int j = 0; j < MR_NV; j++) {
            const V v = S::mul(S::load(e + i + j * S::W), inv);
            const V kv = S::add(v, S::load(bias + i + j * S::W));
            S::store(p + i + j * S::W, v);
            S::store(key + i + j * S::W, kv);
            acc[j] = S::max(kv, acc[j]);
        }
    for (int j = 0; j < MR_NV; j++)
        S::store(lanes + j * S::W, acc[j]);
    const T inv_s = (T)1 / total;
    for (int l = 0; i < n; i++, l++) { /* one multiply and one add: the same in any lane */
        const T v = e[i] * inv_s;
        p[i] = v;
        key[i] = v + bias[i];
        lanes[l] = key[i] > lanes[l] ? key[i] : lanes[l];
    }
}

/* The score of the sigmoid (SQRTSP false) or sqrtsoftplus routers, of the
 * logit soft-capped at cap when cap > 0 (vc = set(cap)). */
template <class S, bool SQRTSP>
static inline typename S::V mr_rule_score_v(typename S::V x, int capped, typename S::V vc)
{
    if (capped)
        x = S::mul(vc, mr_tanh_v<S>(S::div(x, vc)));
    if constexpr (SQRTSP)
        return mr_sqrtsoftplus_v<S>(x);
    else
        return mr_sigmoid_v<S>(x);
}

/*
 * s[0..n) = score(z soft-capped at cap, when cap > 0), key = s + bias, in
 * one pass: the scores of the sigmoid / sqrtsoftplus routers with a bias.
 * Also leaves in lanes[l] the max of the keys whose index is l modulo
 * MR_BLOCK (mr_max_lanes' lanes, for the top-k) and returns the keys' max
 * (NaN when z holds a NaN: the key is NaN there), so that these routers
 * need no pass over z of their own.
 */
template <class T, bool SQRTSP>
static inline T mr_scores_bias_into(const T *z, Py_ssize_t n, T cap, const T *bias, T *s, T *key, T *lanes)
{
    using S = Vec<T>;
    typedef typename S::V V;
    const V vc = S::set(cap);
    const int capped = cap > 0;
    V acc[MR_NV];
    typename S::N nan_acc = S::nan_init();
    int nan_tail = 0;
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(-INFINITY);
    Py_ssize_t i = 0;
    for (; i + MR_BLOCK <= n; i += MR_BLOCK)
        for (int j = 0; j < MR_NV; j++) {
            const V v = mr_rule_score_v<S, SQRTSP>(S::load(z + i + j * S::W), capped, vc);
            const V kv = S::add(v, S::load(bias + i + j * S::W));
            S::store(s + i + j * S::W, v);
            S::store(key + i + j * S::W, kv);
            acc[j] = S::max(kv, acc[j]);
            nan_acc = S::nan_acc(nan_acc, kv, kv);
        }
    for (int j = 0; j < MR_NV; j++)
        S::store(lanes + j * S::W, acc[j]);
    if (i < n) {
        T buf[MR_BLOCK];
        const int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++)
            buf[l] = l < len ? z[i + l] : 0;
        for (int j = 0; j < MR_NV; j++)
            S::store(buf + j * S::W, mr_rule_score_v<S, SQRTSP>(S::load(buf + j * S::W), capped, vc));
        for (int l = 0; l < len; l++) {
            const T kv = buf[l] + bias[i + l];
            s[i + l] = buf[l];
            key[i + l] = kv;
            lanes[l] = kv > lanes[l] ? kv : lanes[l];
            nan_tail |= kv != kv;
        }
    }
    T m = lanes[0];
    for (int l = 1; l < MR_BLOCK; l++)
        m = lanes[l] > m ? lanes[l] : m;
    return S::nan_any(nan_acc) | nan_tail ? (T)NAN : m;
}

template <class T>
static inline T mr_sigmoid_bias_into(const T *z, Py_ssize_t n, T cap, const T *bias, T *s, T *key, T *lanes)
{
    return mr_scores_bias_into<T, false>(z, n, cap, bias, s, key, lanes);
}

template <class T>
static inline T mr_sqrtsoftplus_into(const T *z, Py_ssize_t n, T cap, const T *bias, T *s, T *key, T *lanes)
{
    return mr_scores_bias_into<T, true>(z, n, cap, bias, s, key, lanes);
}

/*
 * The top-k of a NaN-free row of n <= 2 * MR_BLOCK values, k <= n, into
 * idx[0..k) (idx holds k + 1), in the order (value descending, index
 * ascending), without branches on the data: each value's rank (how many
 * values are greater, plus the equal ones before it) is counted with vector
 * compares, and value i is written at slot min(rank, k).  The insertion list
 * of _topk_list mispredicts on short rows, where this costs a few dozen
 * vector operations.
 */
template <class T> static inline void mr_topk_small(const T *z, Py_ssize_t n, int k, Py_ssize_t *idx)
{
    using S = Vec<T>;
    typedef typename S::V V;
    constexpr int NB = 2 * MR_BLOCK;
    constexpr int NVB = NB / S::W;
    T buf[NB], pos[NB], rk[NB];
    V vv[NVB], vp[NVB], rank[NVB];
    const int len = (int)n;
    for (int l = 0; l < NB; l++) {
        buf[l] = l < len ? z[l] : -INFINITY; /* padding ranks after every value */
        pos[l] = (T)l;
    }
    const int nv = (len + S::W - 1) / S::W;
    for (int j = 0; j < nv; j++) {
        vv[j] = S::load(buf + j * S::W);
        vp[j] = S::load(pos + j * S::W);
        rank[j] = S::set(0);
    }
    for (int q = 0; q < len; q++) {
        const V vq = S::set(buf[q]), pq = S::set((T)q);
        for (int j = 0; j < nv; j++)
            rank[j] = S::count_eq_before(S::count_gt(rank[j], vq, vv[j]), vq, vv[j], pq, vp[j]);
    }
    for (int j = 0; j < nv; j++)
        S::store(rk + j * S::W, rank[j]);
    for (int l = 0; l < len; l++) {
        const int r = (int)rk[l];
        idx[r < k ? r : k] = l;
    }
}

/* e[0..n) = exp(cap * tanh(z / cap) - m) (m the capped row max, finite);
 * returns their sum, added as mr_exp_into adds. */
template <class T> static inline T mr_exp_cap_into(const T *z, Py_ssize_t n, T cap, T m, T *e)
{
    mr_softcap_into(z, n, cap, e);
    return mr_exp_into(e, n, m, e);
}

/* out[0..k) = sqrt(softplus(z[idx[j]])), k <= MR_BLOCK (as mr_picked_sigmoid). */
template <class T> static inline void mr_picked_sqrtsoftplus(const T *z, const Py_ssize_t *idx, int k, T *out)
{
    using S = Vec<T>;
    for (int j = 0; j < MR_NV && j * S::W < k; j++)
        S::store(out + j * S::W, mr_sqrtsoftplus_v<S>(S::gather(z, idx + j * S::W, k - j * S::W, 0, 0)));
}

/*
 * Sparsemixer's softmax denominator (PhiMoE, eval mode): the sum over j !=
 * skip of exp(z[j] - m), where z[j] is masked out (left out of the sum)
 * when (m - z[j]) / max(|z[j]|, m) > thr.  m is finite; a NaN ratio (0/0,
 * inf/inf) masks nothing, as in PyTorch.  skip < 0: no expert skipped.
 * Summed as mr_exp_into.
 */
template <class T> static inline T mr_sparsemixer_sum(const T *z, Py_ssize_t n, T m, T thr, Py_ssize_t skip)
{
    using S = Vec<T>;
    typedef typename S::V V;
    V acc[MR_NV];
    const V vm = S::set(m), vt = S::set(thr);
    Py_ssize_t i = 0;
    typename S::Wide total = S::Wide::zero();
    T buf[MR_BLOCK];
    while (i < n) {
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::set(0);
        for (int b = 0; b < 8 && i < n; b++, i += MR_BLOCK) {
            const T *zb = z + i;
            const int len = n - i < MR_BLOCK ? (int)(n - i) : MR_BLOCK;
            const int padded = len < MR_BLOCK || (skip >= i && skip < i + MR_BLOCK);
            if (padded) { /* the tail, or the block that holds `skip` */
                for (int l = 0; l < MR_BLOCK; l++)
                    buf[l] = l < len ? zb[l] : -INFINITY;
                zb = buf;
            }
            for (int j = 0; j < MR_NV; j++) {
                const V v = S::load(zb + j * S::W);
                const V r = S::div(S::sub(vm, v), S::max(mr_abs_v<S>(v), vm));
                V e = S::zero_if_lt(vt, r, mr_exp_v<S>(S::sub(v, vm)));
                if (padded) {
                    T eb[S::W];
                    S::store(eb, e);
                    for (int l = 0; l < S::W; l++)
                        if (j * S::W + l >= len || i + j * S::W + l == skip)
                            eb[l] = 0;
                    e = S::load(eb);
                }
                acc[j] = S::add(acc[j], e);
            }
        }
        total.add(acc);
    }
    return (T)total.total();
}

#undef MR_NV

}  // namespace

#endif /* MOE_ROUTER_RULES_HPP */
