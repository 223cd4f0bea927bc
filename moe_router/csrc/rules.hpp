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
#include "sigmoid_approx_avx2.hpp"

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
    constexpr int G = mr_exp_blocks<S>(); /* blocks whose exps interleave */
    while (i + MR_BLOCK <= n) {
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::set(0);
        int b = 0;
        /* G blocks at a time, then one: each lane adds the blocks in order */
        for (; b + G <= 8 && i + G * MR_BLOCK <= n; b += G, i += G * MR_BLOCK) {
            V v[G * MR_NV];
            for (int q = 0; q < G * MR_NV; q++)
                v[q] = S::sub(S::load(z + i + q * S::W), vm);
            mr_exp_vs<S, G * MR_NV, true>(v);
            for (int q = 0; q < G * MR_NV; q++) {
                S::store(e + i + q * S::W, v[q]);
                acc[q % MR_NV] = S::add(acc[q % MR_NV], v[q]);
            }
        }
        for (; b < 8 && i + MR_BLOCK <= n; b++, i += MR_BLOCK) {
            V v[MR_NV];
            for (int j = 0; j < MR_NV; j++)
                v[j] = S::sub(S::load(z + i + j * S::W), vm);
            mr_exp_vs<S, MR_NV, true>(v);
            for (int j = 0; j < MR_NV; j++) {
                S::store(e + i + j * S::W, v[j]);
                acc[j] = S::add(acc[j], v[j]);
            }
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

/* mr_div_bias_into (below), storing p or not: a row that forms only the
 * picked experts' p saves a store per vector (the same product, the same
 * bits). */
template <class T, bool STORE_P>
static MR_HOT void mr_div_bias_keys(const T *e, Py_ssize_t n, T total, const T *bias, T *p, T *key, T *lanes)
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
            if constexpr (STORE_P)
                S::store(p + i + j * S::W, v);
            S::store(key + i + j * S::W, kv);
            acc[j] = S::max(kv, acc[j]);
        }
    for (int j = 0; j < MR_NV; j++)
        S::store(lanes + j * S::W, acc[j]);
    const T inv_s = (T)1 / total;
    for (int l = 0; i < n; i++, l++) { /* one multiply and one add: the same in any lane */
        const T v = e[i] * inv_s;
        if constexpr (STORE_P)
            p[i] = v;
        key[i] = v + bias[i];
        lanes[l] = key[i] > lanes[l] ? key[i] : lanes[l];
    }
}

/* p[i] = e[i] * (1 / total) (in place allowed), key[i] = p[i] + bias[i]:
 * the softmax probabilities and their biased selection scores; lanes[l] =
 * the max of the keys whose index is l modulo MR_BLOCK (mr_max_lanes'
 * lanes, for the top-k; no NaN is left here). */
template <class T>
static inline void mr_div_bias_into(const T *e, Py_ssize_t n, T total, const T *bias, T *p, T *key, T *lanes)
{
    mr_div_bias_keys<T, true>(e, n, total, bias, p, key, lanes);
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

/* Each step for row 0, then (ROWS == 2) for row 1, before the next step:
 * a row's steps are a chain of dependent ones (a reduction, then what it
 * decides) that one row alone leaves the core mostly waiting on (as
 * mr_topk_pair). */
#define MR_RULE_EACH(h, ...)   \
    {                          \
        enum { h = 0 };        \
        __VA_ARGS__;           \
    }                          \
    if constexpr (ROWS == 2) { \
        enum { h = 1 };        \
        __VA_ARGS__;           \
    }

/*
 * The first steps of mr_softmax_bias_rows for a row of n = NB * MR_BLOCK
 * experts (NB <= 4: ERNIE's 64 in float32), its values held in registers
 * from the max through the keys: mr_max_lanes, mr_exp_into and
 * mr_div_bias_keys' operations in their order (the sum's lanes add the
 * blocks in order, one carry into Wide: n <= 8 blocks), so their bits.
 * Stores e, key, the keys' lanes and *total; returns 0 (nothing useful
 * written) for a row left to the general path (a NaN, an infinite max).
 */
template <int NB, class T>
static MR_HOT int mr_softmax_bias_regs(const T *z, const T *bias, T *e, T *key, T *lanes, T *total)
{
    using S = Vec<T>;
    typedef typename S::V V;
    V v[NB][MR_NV], acc[MR_NV];
    typename S::N nan_acc = S::nan_init();
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(-INFINITY);
    for (int b = 0; b < NB; b++) {
        for (int j = 0; j < MR_NV; j++) {
            v[b][j] = S::load(z + b * MR_BLOCK + j * S::W);
            acc[j] = S::max(v[b][j], acc[j]);
        }
        for (int j = 0; j < MR_NV; j += 2)
            nan_acc = S::nan_acc(nan_acc, v[b][j], v[b][j + 1 < MR_NV ? j + 1 : j]);
    }
    const T m = mr_max_of_lanes<S>(acc);
    if (S::nan_any(nan_acc) || !(m > -INFINITY && m < INFINITY))
        return 0;
    const V vm = S::set(m);
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(0);
    for (int b = 0; b < NB; b++)
        for (int j = 0; j < MR_NV; j++)
            v[b][j] = S::sub(v[b][j], vm);
    mr_exp_vs<S, NB * MR_NV, true>(&v[0][0]);
    for (int b = 0; b < NB; b++)
        for (int j = 0; j < MR_NV; j++) {
            S::store(e + b * MR_BLOCK + j * S::W, v[b][j]);
            acc[j] = S::add(acc[j], v[b][j]);
        }
    typename S::Wide wide = S::Wide::zero();
    wide.add(acc);
    *total = (T)wide.total();
    const V inv = S::set((T)1 / *total);
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(-INFINITY);
    for (int b = 0; b < NB; b++)
        for (int j = 0; j < MR_NV; j++) {
            const V kv = S::add(S::mul(v[b][j], inv), S::load(bias + b * MR_BLOCK + j * S::W));
            S::store(key + b * MR_BLOCK + j * S::W, kv);
            acc[j] = S::max(kv, acc[j]);
        }
    for (int j = 0; j < MR_NV; j++)
        S::store(lanes + j * S::W, acc[j]);
    return 1;
}

/* The first steps of mr_softmax_bias_rows for one row (the registers'
 * form where n is 1 to 4 blocks); the same returns. */
template <class T>
static MR_HOT int mr_softmax_bias_first(const T *z, Py_ssize_t n, const T *bias, T *e, T *key, T *lanes,
                                        T *total)
{
    switch (n) {
    case MR_BLOCK: return mr_softmax_bias_regs<1>(z, bias, e, key, lanes, total);
    case 2 * MR_BLOCK: return mr_softmax_bias_regs<2>(z, bias, e, key, lanes, total);
    case 3 * MR_BLOCK: return mr_softmax_bias_regs<3>(z, bias, e, key, lanes, total);
    case 4 * MR_BLOCK: return mr_softmax_bias_regs<4>(z, bias, e, key, lanes, total);
    }
    int has_nan;
    const T m = mr_max_lanes(z, n, lanes, &has_nan);
    if (has_nan || !(m > -INFINITY && m < INFINITY))
        return 0;
    *total = mr_exp_into(z, n, m, e);
    mr_div_bias_keys<T, false>(e, n, *total, bias, (T *)NULL, key, lanes);
    return 1;
}

/*
 * ROWS (1 or 2) consecutive rows z + h * n of the softmax routers with a
 * selection bias and neither a cap, a table nor a p-norm (ERNIE 4.5,
 * LongCat-Flash): the steps of _rules_row and _rules_weights, with the
 * same operations in the same order (the same bits), each for both rows
 * before the next.  The general path spent about half of a 64-expert row
 * between its steps and on storing every probability, of which only the
 * picked are read: here p = e * (1 / total) is formed for them alone (the
 * product the keys were made of).  e and key hold ROWS * n values each;
 * norm, norm_min, eps and scale are RulesCtx's; ids and w hold ROWS * k.
 * Returns a mask: bit h when row h is left to the general path (nothing
 * written: a NaN, an infinite max, k > MR_BLOCK, candidates that do not
 * decide the top-k); bit ROWS + h when a weight of row h overflowed Wt
 * (written, as the general path writes it).
 */
template <int ROWS, class T, class I, class Wt>
static MR_HOT int mr_softmax_bias_rows(const T *z, Py_ssize_t n, int k, const T *bias, int norm,
                                       double norm_min, double eps, double scale, T *e, T *key, I *ids, Wt *w)
{
    using S = Vec<T>;
    T lanes[ROWS][MR_BLOCK], total[ROWS] = {};
    Py_ssize_t idx[ROWS][MR_BLOCK + 1];
    MrCand<T> cd[ROWS];
    int ok[ROWS], out = 0;
    if (k > MR_BLOCK)
        return (1 << ROWS) - 1;
    MR_RULE_EACH(
        h, ok[h] = mr_softmax_bias_first(z + h * n, n, bias, e + h * n, key + h * n, lanes[h], &total[h]))
    MR_RULE_EACH(h, ok[h] = ok[h] && mr_cand_gather(key + h * n, n, n, (const Py_ssize_t *)NULL, 1, k,
                                                    lanes[h], (T)0, &cd[h]) == 0)
    /* (late: the other row's gather ran since this one's; a lone row's
     * select follows its own gather) */
    MR_RULE_EACH(h, if (ok[h]) mr_cand_select(&cd[h], k, idx[h], (T)0, (T *)NULL, ROWS == 2))
    /* _rules_weights' with every score known (its total is 1): the sum in
     * double, + eps, clamped below at moe_norm_min */
    MR_RULE_EACH(h, {
        if (ok[h]) {
            /* p a vector at a time (0 past k: mr_sum_k reads 8), written
             * as vectors: a vector load of scalar stores would wait for
             * them (no store forwarding) */
            typename S::V pv[MR_NV];
            T p[MR_BLOCK], wv[MR_BLOCK];
            const typename S::V inv = S::set((T)1 / total[h]);
            for (int j = 0; j < MR_NV && j * S::W < k; j++) {
                pv[j] = S::mul(S::gather(e + h * n, idx[h] + j * S::W, k - j * S::W, 0, 0), inv);
                S::store(p + j * S::W, pv[j]);
            }
            T divisor = 1;
            if (norm) {
                divisor = (T)((double)mr_sum_k(p, k) + eps);
                if (norm_min > 0 && divisor < (T)norm_min)
                    divisor = (T)norm_min;
            }
            /* (p * scale) / divisor, lane by lane as the general path's */
            const typename S::V vs = S::set((T)scale), vd = S::set(divisor);
            for (int j = 0; j < MR_NV && j * S::W < k; j++)
                S::store(wv + j * S::W, S::div(S::mul(pv[j], vs), vd));
            int overflow = 0;
            for (int j = 0; j < k; j++) {
                ids[h * k + j] = (I)idx[h][j];
                w[h * k + j] = (Wt)wv[j];
                overflow |= w[h * k + j] == (Wt)INFINITY;
            }
            out |= overflow << (ROWS + h);
        } else {
            out |= 1 << h;
        }
    })
    return out;
}

/* mr_softmax_bias_rows for two rows (_rules_pair) and one (_rules_row),
 * Cython-callable.  The one-row form is out of line: inlined, its steps
 * made _rules_row too large for gcc to inline _rules_weights and
 * _picked_block into it (the hash-routed rows, which take those, went
 * from 107 to 134 ns/token). */
template <class T, class I, class Wt>
static MR_HOT int mr_softmax_bias_pair(const T *z, Py_ssize_t n, int k, const T *bias, int norm,
                                       double norm_min, double eps, double scale, T *e, T *key, I *ids, Wt *w)
{
    return mr_softmax_bias_rows<2>(z, n, k, bias, norm, norm_min, eps, scale, e, key, ids, w);
}
template <class T, class I, class Wt>
static MR_NOINLINE int mr_softmax_bias_one(const T *z, Py_ssize_t n, int k, const T *bias, int norm,
                                           double norm_min, double eps, double scale, T *e, T *key, I *ids,
                                           Wt *w)
{
    return mr_softmax_bias_rows<1>(z, n, k, bias, norm, norm_min, eps, scale, e, key, ids, w);
}

#if MR_HAVE_NET8
/*
 * AVX2+ float32: the selection of the biased sigmoid (soft-capped: Laguna)
 * and sqrtsoftplus (DeepSeek-V4) routers on approximate scores, decided
 * exactly, as mr_sigmoid_topk does for DeepSeek-V3 (kernels.hpp): the
 * exact score pass spends most of a row on a divide and a square root
 * (or two divides) per vector.
 */

/* sqrt(softplus(x)) = sqrt(max(x, 0) + log1p(e)), e = exp(-|x|), within
 * 8e-4 relative plus 2e-15 absolute of the true value (the exact
 * mr_sqrtsoftplus_v is within a few ulp of it): e from the cubic 2^f of
 * vf_sigmoid_approx (7.5e-5 relative), log1p(e) = e q(e) with q a
 * degree-3 near-minimax fit of log1p(e) / e on [0, 1] (3.9e-4 relative
 * in float32), so the softplus is within 4.7e-4 relative (both terms are
 * >= 0) and its square root within 2.4e-4; the root as sp * rsqrt(sp)
 * adds the estimate's 2^-11 (architectural 1.5 * 2^-12).  Below x = -69
 * both this and the exact score are under 1.2e-15 (the clamp at |x| = 80
 * lives there).  NaN and +inf give NaN (inf * rsqrt(inf) = inf * 0). */
static MR_HOT __m256 vf_sqrtsoftplus_approx(__m256 x)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 magic = _mm256_set1_ps(12583039.0f); /* as vf_sigmoid_approx's */
    /* |x| clamped to 80 (min returns its second operand, a NaN |x|, on
     * NaN): e >= 1.8e-35, so the softplus is a normal float for rsqrt */
    const __m256 ac = _mm256_min_ps(_mm256_set1_ps(80.0f), _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x));
    const __m256 t = _mm256_fnmadd_ps(ac, log2e, magic); /* magic + round(-|x| log2 e) */
    const __m256 nn = _mm256_sub_ps(t, magic);
    const __m256 f = _mm256_fnmsub_ps(ac, log2e, nn); /* |f| <= 1/2 */
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.05517167f), f, _mm256_set1_ps(0.24261114f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69326097f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.99992806f));
    const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(-0.0743422359f), e, _mm256_set1_ps(0.254023731f));
    q = _mm256_fmadd_ps(q, e, _mm256_set1_ps(-0.486413628f));
    q = _mm256_fmadd_ps(q, e, _mm256_set1_ps(0.999606907f));
    const __m256 sp = _mm256_fmadd_ps(e, q, _mm256_max_ps(x, _mm256_setzero_ps()));
    return _mm256_mul_ps(sp, _mm256_rsqrt_ps(sp));
}

/* vf_sigmoid_approx without its clamp to [-87, 87]: the same operations,
 * so the same values, where |x| <= 87 (a logit soft-capped at cap <= 87). */
static MR_HOT __m256 vf_sigmoid_approx_bounded(__m256 x)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 magic = _mm256_set1_ps(12583039.0f);
    const __m256 t = _mm256_fnmadd_ps(x, log2e, magic);
    const __m256 nn = _mm256_sub_ps(t, magic);
    const __m256 f = _mm256_fnmsub_ps(x, log2e, nn);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.05517167f), f, _mm256_set1_ps(0.24261114f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69326097f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.99992806f));
    const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
    return _mm256_rcp_ps(_mm256_fmadd_ps(p, pow2n, _mm256_set1_ps(1.0f)));
}

/* The approximate score of mr_rule_score_v<Avx2F32, SQRTSP>: the logit
 * soft-capped, then the cheap sigmoid or sqrtsoftplus.  The capped logit
 * cap * tanh(x / cap) is within cap * 2^-19 of the exact path's: where
 * every w = (x / cap)^2 < 0.09 (capped logits mostly are: cap 30, |x| < 9)
 * as x (1 - w/3 + 2w^2/15 - 17w^3/315), the tanh series truncated after
 * u^7 (the next term is below 4.3e-7 at |u| = 0.3; with the roundings and
 * the exact path's few ulp, 7.4e-7 < 2^-20 of cap), elsewhere mr_tanh_v of
 * x * (1 / cap) (the two arguments of tanh within 3 ulp, tanh' <= 1,
 * |tanh| <= 1).  The sigmoid's slope is <= 1/4 and the sqrtsoftplus'
 * below 1/2, so the score moves by less than that.  BOUNDED (the sigmoid
 * with cap <= 87): the capped logit is within [-87, 87], no clamp. */
template <bool SQRTSP, bool BOUNDED>
static MR_HOT __m256 vf_rule_score_approx(__m256 x, int capped, __m256 vc, __m256 inv_c)
{
    if (capped) {
        const __m256 u = _mm256_mul_ps(x, inv_c);
        const __m256 w = _mm256_mul_ps(u, u);
        if (_mm256_movemask_ps(_mm256_cmp_ps(w, _mm256_set1_ps(0.09f), _CMP_LT_OQ)) == 0xff) { /* (not NaN) */
            __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(-17.0f / 315), w, _mm256_set1_ps(2.0f / 15));
            p = _mm256_fmadd_ps(p, w, _mm256_set1_ps(-1.0f / 3));
            x = _mm256_fmadd_ps(_mm256_mul_ps(p, w), x, x);
        } else {
            x = _mm256_mul_ps(vc, mr_tanh_v<Avx2F32>(u));
        }
    }
    if constexpr (SQRTSP)
        return vf_sqrtsoftplus_approx(x);
    else if constexpr (BOUNDED)
        return vf_sigmoid_approx_bounded(x);
    else
        return vf_sigmoid_approx(x);
}

/* Whether vf_rule_score_approx may take BOUNDED for these settings. */
static inline int mr_rule_bounded(int sqrtsp, float cap) { return !sqrtsp && cap > 0 && cap <= 87; }

/* c[0..n) = approximate score + bias (n a multiple of 16), lanes[l] = the
 * max of c over the indices l modulo MR_BLOCK; returns 0 when a key is
 * NaN (a NaN logit; a +inf one under sqrtsoftplus). */
template <bool SQRTSP, bool BOUNDED>
static MR_HOT int mr_rule_approx_keys(const float *z, Py_ssize_t n, float cap, const float *bias, float *c,
                                      float *lanes)
{
    const __m256 vc = _mm256_set1_ps(cap), inv_c = _mm256_set1_ps(cap > 0 ? 1.0f / cap : 0.0f);
    const int capped = cap > 0;
    __m256 acc0 = _mm256_set1_ps(-INFINITY), acc1 = acc0;
    __m256 nan_acc = _mm256_setzero_ps();
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __m256 s0 = vf_rule_score_approx<SQRTSP, BOUNDED>(_mm256_loadu_ps(z + i), capped, vc, inv_c);
        const __m256 s1 =
            vf_rule_score_approx<SQRTSP, BOUNDED>(_mm256_loadu_ps(z + i + 8), capped, vc, inv_c);
        const __m256 k0 = _mm256_add_ps(s0, _mm256_loadu_ps(bias + i));
        const __m256 k1 = _mm256_add_ps(s1, _mm256_loadu_ps(bias + i + 8));
        nan_acc = _mm256_or_ps(nan_acc, _mm256_cmp_ps(k0, k1, _CMP_UNORD_Q));
        _mm256_storeu_ps(c + i, k0);
        _mm256_storeu_ps(c + i + 8, k1);
        acc0 = _mm256_max_ps(acc0, k0);
        acc1 = _mm256_max_ps(acc1, k1);
    }
    _mm256_storeu_ps(lanes, acc0);
    _mm256_storeu_ps(lanes + 8, acc1);
    return !_mm256_movemask_ps(nan_acc);
}

/* The candidates' exact keys, with the exact pass's operations
 * (mr_scores_bias_into: the same bits), and their exact scores to s at
 * their expert ids; the padding stays below every key. */
template <bool SQRTSP>
static MR_HOT void mr_rule_exact_keys(const float *z, float cap, const float *bias, MrCand<float> *cd,
                                      float *s)
{
    const __m256 vc = _mm256_set1_ps(cap);
    const int capped = cap > 0;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    float sv[8];
    for (int j = 0; j < cd->c; j += 8) {
        const __m256i id = _mm256_loadu_si256((const __m256i *)(cd->i + j));
        const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cd->c - j), iota));
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        const __m256 v =
            mr_rule_score_v<Avx2F32, SQRTSP>(_mm256_mask_i32gather_ps(ninf, z, id, live, 4), capped, vc);
        _mm256_storeu_ps(cd->v + j, _mm256_add_ps(v, _mm256_mask_i32gather_ps(ninf, bias, id, live, 4)));
        _mm256_storeu_ps(sv, v);
        for (int l = 0; l < 8 && j + l < cd->c; l++)
            s[cd->i[j + l]] = sv[l];
    }
}

/* The candidates of row h: every expert whose key, within `slack` of
 * the exact one, may be among the k best or tie the k-th (mr_sigmoid_topk's
 * argument: within 2 slacks of the k-th best approximate key); 0 when
 * there are more than MR_MAX_CAND (or no threshold). */
static MR_HOT int mr_rule_cands(const float *c, Py_ssize_t n, int k, const float *lanes, float slack,
                                MrCand<float> *cd)
{
    const float t = mr_kth_lane(lanes, k) - 2 * slack;
    if (n <= 256 && t > -INFINITY) {
        /* byte ids (networks_avx2.hpp): fewer operations per vector than
         * mr_cand_gather's compress */
        uint8_t ids8[256 + 8];
        const int nc = mr_ids8_gather(c, n, t, ids8);
        if (nc > 0 && nc <= MR_BLOCK) {
            for (int j = 0; j < MR_BLOCK; j++) {
                cd->i[j] = j < nc ? ids8[j] : 0;
                cd->v[j] = -INFINITY; /* the block's padding (the keys overwrite the rest) */
            }
            cd->c = nc;
            return 1;
        }
    }
    return mr_cand_gather<float>(c, n, n, NULL, 1, k, lanes, 2 * slack, cd) == 0;
}

/* Rows z + h * n (h < ROWS): ok[h] = whether idx + h * (MR_BLOCK + 1)
 * holds row h's ids (and s + h * n its candidates' exact scores); c holds
 * ROWS * n approximate keys. */
template <bool SQRTSP, int ROWS>
static inline void mr_rule_approx_rows(const float *z, Py_ssize_t n, float cap, const float *bias,
                                       float bias_max, int k, float *c, float *s, Py_ssize_t *idx, int *ok)
{
    float lanes[ROWS][MR_BLOCK], slack[ROWS];
    MrCand<float> cd[ROWS];
    const int applies = n % 16 == 0 && k <= MR_BLOCK;
    const int bounded = mr_rule_bounded(SQRTSP, cap);
    MR_RULE_EACH(
        h,
        ok[h] = applies &&
                (bounded ? mr_rule_approx_keys<SQRTSP, true>(z + h * n, n, cap, bias, c + h * n, lanes[h])
                         : mr_rule_approx_keys<SQRTSP, false>(z + h * n, n, cap, bias, c + h * n, lanes[h])))
    /* |approximate key - exact key|: the score's error (and the cap's),
     * and the rounding of the two bias adds, which 16 ulps of the largest
     * |key| cover with room (as _sigmoid_slack).  The scores are at most
     * the largest key plus max |bias| (1.002: the roundings, and the exact
     * score's distance from the approximate one).  A slack of 0.01 or more
     * (a huge score or bias) would make most of the row candidates. */
    MR_RULE_EACH(h, {
        float key_max = lanes[h][0];
        for (int l = 1; l < MR_BLOCK; l++)
            key_max = lanes[h][l] > key_max ? lanes[h][l] : key_max;
        const float score_max = SQRTSP ? (key_max + bias_max) * 1.002f : 1.0f;
        slack[h] = (SQRTSP ? 8e-4f * score_max + 1e-14f : 5.2e-4f) + cap * 0x1p-19f +
                   16 * 0x1p-23f * (score_max + bias_max);
        ok[h] = ok[h] && slack[h] < 0.01f;
    })
    MR_RULE_EACH(h, ok[h] = ok[h] && mr_rule_cands(c + h * n, n, k, lanes[h], slack[h], &cd[h]))
    MR_RULE_EACH(h, if (ok[h]) mr_rule_exact_keys<SQRTSP>(z + h * n, cap, bias, &cd[h], s + h * n))
    MR_RULE_EACH(h, if (ok[h]) mr_cand_select<float>(&cd[h], k, idx + h * (MR_BLOCK + 1), 0, NULL, 1))
}

#endif

/*
 * The top-k of key = score(z soft-capped at cap when cap > 0) + bias, the
 * score the sigmoid (sqrtsp 0) or sqrtsoftplus (sqrtsp 1): ids to
 * idx[0..k) (idx holds MR_BLOCK + 1), in the exact pass's order (key
 * descending, index ascending), and 1; 0 when the row is left to the exact
 * pass (mr_scores_bias_into, then the top-k): a NaN or +inf key, a shape
 * or slack it does not take, too many candidates, and always for double
 * and builds without MR_HAVE_NET8.  The ids are the exact pass's, bit for
 * bit: its keys are ranked for the candidates.  bias_max: max |bias|; c
 * holds n values (the approximate keys); s[id] = the exact score of each
 * candidate id (the picked among them: the weights need no recompute).
 */
template <class T>
static inline int mr_rule_approx_topk(const T *z, Py_ssize_t n, int sqrtsp, T cap, const T *bias, T bias_max,
                                      int k, T *c, T *s, Py_ssize_t *idx)
{
    int ok[1] = {0};
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>) {
        if (sqrtsp)
            mr_rule_approx_rows<true, 1>(z, n, cap, bias, bias_max, k, c, s, idx, ok);
        else
            mr_rule_approx_rows<false, 1>(z, n, cap, bias, bias_max, k, c, s, idx, ok);
        return ok[0];
    }
#endif
    (void)z, (void)n, (void)sqrtsp, (void)cap, (void)bias, (void)bias_max, (void)k, (void)c, (void)s,
        (void)idx;
    return ok[0];
}

/* The same for the two rows z[0..n) and z[n..2n), each step for both
 * before the next: ok[h] for row h, its ids at idx + h * (MR_BLOCK + 1)
 * (idx holds 2 * (MR_BLOCK + 1)), its candidates' exact scores in
 * s[h * n...]; c holds 2n keys.  The same bits as one row at a time. */
template <class T>
static inline void mr_rule_approx_topk_pair(const T *z, Py_ssize_t n, int sqrtsp, T cap, const T *bias,
                                            T bias_max, int k, T *c, T *s, Py_ssize_t *idx, int *ok)
{
    ok[0] = ok[1] = 0;
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>) {
        if (sqrtsp)
            mr_rule_approx_rows<true, 2>(z, n, cap, bias, bias_max, k, c, s, idx, ok);
        else
            mr_rule_approx_rows<false, 2>(z, n, cap, bias, bias_max, k, c, s, idx, ok);
        return;
    }
#endif
    (void)z, (void)n, (void)sqrtsp, (void)cap, (void)bias, (void)bias_max, (void)k, (void)c, (void)s,
        (void)idx;
}

/* For tests: out[0..n) = mr_rule_approx_topk's approximate scores of x (no
 * bias; n a multiple of 16).  -1 where there are none (nothing written),
 * else whether a key is NaN. */
template <class T> static inline int mr_rule_approx_scores(const T *x, Py_ssize_t n, int sqrtsp, T cap,
                                                           T *out)
{
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>) {
        if (n % 16)
            return -1;
        const __m256 vc = _mm256_set1_ps(cap), inv_c = _mm256_set1_ps(cap > 0 ? 1.0f / cap : 0.0f);
        const int bounded = mr_rule_bounded(sqrtsp, cap);
        int nan_bits = 0;
        for (Py_ssize_t i = 0; i < n; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            const __m256 v = sqrtsp    ? vf_rule_score_approx<true, false>(xv, cap > 0, vc, inv_c)
                             : bounded ? vf_rule_score_approx<false, true>(xv, cap > 0, vc, inv_c)
                                       : vf_rule_score_approx<false, false>(xv, cap > 0, vc, inv_c);
            nan_bits |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            _mm256_storeu_ps(out + i, v);
        }
        return nan_bits != 0;
    }
#endif
    (void)x, (void)n, (void)sqrtsp, (void)cap, (void)out;
    return -1;
}

#undef MR_RULE_EACH
#undef MR_NV

}  // namespace

#endif /* MOE_ROUTER_RULES_HPP */
