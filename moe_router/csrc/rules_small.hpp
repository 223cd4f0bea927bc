/*
 * The small-row path of the scoring rules (_rules_kernels.pxi): rows of
 * n <= MR_BLOCK experts held in MR_BLOCK / W vectors, for the softmax rules
 * without a bias or a cap (DBRX's p-norm, moe_norm_min, ...; k <= 8) and
 * PhiMoE's sparsemixer.  The general row path spends most of a 16-expert
 * row in fixed costs (a max pass, the rank top-k through memory, the picked
 * exps gathered back from the row, the sums' blocks); here the row stays in
 * registers: the top-k is k passes of a vector arg max (all lanes equal to
 * the max leave together, ids in index order: the smaller index first on a
 * tie), each pass's max is the picked value, and one or two rows go through
 * the same steps side by side so that their dependent steps overlap.
 *
 * Every value is computed with the same operations, in the same order, as
 * the general path (mr_picked_exp's exp of z - m, mr_sum_k's tree of the K
 * picked exps, the Wide lane totals of mr_sum_exp and mr_sparsemixer_sum,
 * _p_norm in double, _rules_weights' divisor), so a row gets the general
 * path's bits; rows holding a non-finite value are left to the general
 * path (the returned mask), which has their special cases.
 */
#ifndef MOE_ROUTER_RULES_SMALL_HPP
#define MOE_ROUTER_RULES_SMALL_HPP

#include <cmath>
#include <limits>

#include "rules.hpp"

namespace {

enum { MR_SMALL_NONE = 0, MR_SMALL_SOFTMAX = 1, MR_SMALL_SPARSEMIXER = 2 };

/* The most experts picked on the small path (the picked values fill 8 lanes). */
#define MR_SMALL_KMAX 8

/* A router's settings on the small path (RulesCtx's, as the row needs them). */
struct MrSmallRule {
    int kind; /* MR_SMALL_SOFTMAX or MR_SMALL_SPARSEMIXER */
    int k;
    int norm;
    double p_norm, norm_min, eps, scale, thr;
};

/* Which small path a router's rows take (MR_SMALL_NONE: the general one),
 * from the router's shape and settings.  eps is 0 for every softmax rule
 * without a bias (the Python layer's; sparsemixer does not read it); with
 * eps > 0 the divisor's p-norm + eps * total contracts differently here
 * than in Cython. */
static inline int mr_small_kind(Py_ssize_t n, Py_ssize_t k, int softmax, int sparsemixer, double cap,
                                double eps, int has_bias, int has_table)
{
    if (n > MR_BLOCK || cap > 0 || has_bias || has_table)
        return MR_SMALL_NONE;
    if (softmax && k <= MR_SMALL_KMAX && eps == 0)
        return MR_SMALL_SOFTMAX;
    if (sparsemixer && k == 2)
        return MR_SMALL_SPARSEMIXER;
    return MR_SMALL_NONE;
}

/* _rules_kernels.pxi's _p_norm, operation for operation, inlined as that
 * one is (its last product may fuse with the caller's + eps * total). */
template <class T> static MR_HOT double mr_small_p_norm(const T *e, int k, double p)
{
    double mx = 0, acc = 0;
    for (int j = 0; j < k; j++)
        if (e[j] > mx)
            mx = e[j];
    if (mx == 0 || p == INFINITY)
        return mx;
    if (p == 2) {
        for (int j = 0; j < k; j++)
            acc += (e[j] / mx) * (e[j] / mx);
        return mx * std::sqrt(acc);
    }
    for (int j = 0; j < k; j++)
        acc += std::pow(e[j] / mx, p);
    return mx * std::pow(acc, 1.0 / p);
}

/* Lane l of every vector of the traits: l (up to 8 lanes), and one-hot rows. */
template <class T> struct MrSmallConst {
    static constexpr T pos[MR_BLOCK] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static constexpr T onehot[8][8] = {{1, 0, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 0, 0},
                                       {0, 0, 1, 0, 0, 0, 0, 0}, {0, 0, 0, 1, 0, 0, 0, 0},
                                       {0, 0, 0, 0, 1, 0, 0, 0}, {0, 0, 0, 0, 0, 1, 0, 0},
                                       {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 0, 0, 0, 0, 1}};
};

/* The horizontal max of NV vectors, in every lane. */
template <class S, int NV> static MR_HOT typename S::V mr_small_hmax(const typename S::V *v)
{
    typename S::V m = v[0];
    for (int j = 1; j < NV; j++)
        m = S::max(m, v[j]);
    for (int s = S::W / 2; s >= 1; s /= 2)
        m = S::max(m, S::swap(m, s));
    return m;
}

/* The first lane of a vector. */
template <class S> static inline typename S::T mr_small_first(typename S::V v)
{
    typename S::T t[S::W];
    S::store(t, v);
    return t[0];
}

/* Lane bits of x == m over NV vectors (lane j * W + l is bit j * W + l). */
template <class S, int NV> static MR_HOT unsigned mr_small_eq_bits(const typename S::V *v, typename S::V m)
{
    unsigned bits = 0;
    for (int j = 0; j < NV; j++)
        bits |= (unsigned)S::eq_bits(v[j], m) << (j * S::W);
    return bits;
}

/* Sparsemixer's masked sum over one block (mr_sparsemixer_sum's lanes):
 * exp(z - m) where (m - z) / max(|z|, m) <= thr, 0 on lane `skip` (< 0:
 * none) and on the padding (-inf, whose exp is 0). */
template <class S, int NV>
static MR_HOT typename S::T mr_small_sparsemixer_sum(const typename S::V *v, typename S::T m,
                                                     typename S::T thr, int skip)
{
    typedef typename S::T T;
    typedef typename S::V V;
    const V vm = S::set(m), vt = S::set(thr);
    V acc[NV];
    typename S::Wide total = S::Wide::zero();
    for (int j = 0; j < NV; j++) {
        const V r = S::div(S::sub(vm, v[j]), S::max(mr_abs_v<S>(v[j]), vm));
        acc[j] = S::zero_if_lt(vt, r, mr_exp_v<S>(S::sub(v[j], vm)));
        if (skip >= 0) { /* 0 where pos == skip: -(pos - skip)^2 >= -0.25 */
            const V d = S::sub(S::load(MrSmallConst<T>::pos + j * S::W), S::set((T)skip));
            acc[j] = S::zero_if_lt(S::set((T)-0.25), S::mul(d, S::sub(S::set(0), d)), acc[j]);
        }
    }
    total.add(acc);
    return (T)total.total();
}

/*
 * Route R (1 or 2) consecutive rows of n <= MR_BLOCK logits z under rule
 * into ids / w (R * k each, _rules_row's layout).  Returns a mask: bit r
 * set when row r is left to the general path (a non-finite value, or a tie
 * among its picked values, whose order the passes below do not resolve:
 * nothing written for it); bit R + r when row r's
 * weights overflowed the weights' type (written, as the general path
 * writes them).  The passes run for every row, whatever its values (a NaN
 * row gives garbage ids, never an out-of-bounds access).
 */
template <int R, class T, class I, class Wt>
static MR_HOT int mr_small_rows_r(const T *z, Py_ssize_t n, const MrSmallRule *rule, I *ids, Wt *w)
{
    using S = Vec<T>;
    typedef typename S::V V;
    constexpr int NV = MR_BLOCK / S::W;
    constexpr int KV = S::W >= MR_SMALL_KMAX ? 1 : MR_SMALL_KMAX / S::W;
    const int k = rule->k;
    const T big = std::numeric_limits<T>::max();
    V zv[R][NV], v[R][NV], pv[R][KV];
    T m0[R] = {}, picked1[R] = {};
    unsigned tie[R] = {};
    int id[R][MR_SMALL_KMAX] = {};
    int out = 0;
    const unsigned all = (1u << n) - 1;
    for (int r = 0; r < R; r++) {
        const T *zr = z + r * n;
        if (n == MR_BLOCK) {
            for (int j = 0; j < NV; j++)
                zv[r][j] = S::load(zr + j * S::W);
        } else { /* padded with -inf: never a max, exp 0 */
            T buf[MR_BLOCK];
            for (int l = 0; l < MR_BLOCK; l++)
                buf[l] = l < n ? zr[l] : -INFINITY;
            for (int j = 0; j < NV; j++)
                zv[r][j] = S::load(buf + j * S::W);
        }
        unsigned fin = 0; /* lanes with |z| <= max (not inf, not NaN) */
        for (int j = 0; j < NV; j++) {
            v[r][j] = zv[r][j];
            fin |= (unsigned)S::ge_bits(S::set(big), mr_abs_v<S>(zv[r][j])) << (j * S::W);
        }
        out |= ((fin & all) != all) << r;
        for (int q = 0; q < KV; q++)
            pv[r][q] = S::set(0);
    }
    /* The top-k: pass p takes the row max (the p-th picked value, into lane
     * p of pv: m * 1 + 0, the other lanes + m * 0), its lane (the only one
     * unless there is a tie), and removes it (+ -inf). */
    const V ninf = S::set(-INFINITY);
#pragma GCC unroll 8
    for (int p = 0; p < MR_SMALL_KMAX; p++) {
        if (p >= k)
            break;
        for (int r = 0; r < R; r++) {
            const V m = mr_small_hmax<S, NV>(v[r]);
            const unsigned bits = mr_small_eq_bits<S, NV>(v[r], m);
            tie[r] |= bits & (bits - 1);
            id[r][p] = __builtin_ctz(bits | 1u << MR_BLOCK); /* (a NaN row: no bit) */
            pv[r][p / S::W] = S::fma(m, S::load(MrSmallConst<T>::onehot[p % S::W]), pv[r][p / S::W]);
            if (p == 0)
                m0[r] = mr_small_first<S>(m);
            if (p == 1)
                picked1[r] = mr_small_first<S>(m);
            for (int j = 0; j < NV; j++)
                v[r][j] = S::add(v[r][j], S::zero_if_lt(v[r][j], m, ninf));
        }
    }
    for (int r = 0; r < R; r++)
        out |= (tie[r] != 0) << r;
    for (int r = 0; r < R; r++) {
        if (out >> r & 1)
            continue;
        Wt *wr = w + r * k;
#pragma GCC unroll 8
        for (int j = 0; j < MR_SMALL_KMAX; j++) {
            if (j >= k)
                break;
            ids[r * k + j] = (I)id[r][j];
        }
        if (rule->kind == MR_SMALL_SPARSEMIXER) {
            /* _sparsemixer_row: the softmax at the arg max over the unmasked
             * experts, then at the second over the others but the first */
            const T scale = (T)rule->scale, thr = (T)rule->thr;
            const T w1 = 1 / mr_small_sparsemixer_sum<S, NV>(zv[r], m0[r], thr, -1);
            const T w2 = 1 / mr_small_sparsemixer_sum<S, NV>(zv[r], picked1[r], thr, id[r][0]);
            wr[0] = (Wt)(w1 * scale);
            wr[1] = (Wt)(w2 * scale);
            continue;
        }
        /* The softmax rules: the picked exps (mr_picked_exp's, 0 past k),
         * their sum as mr_sum_k's tree, the divisor as _rules_weights'. */
        V e[KV], t[KV];
        T es[KV * S::W];
        const V vm = S::set(m0[r]), kh = S::set((T)k - (T)0.5);
        for (int q = 0; q < KV; q++) {
            e[q] = S::zero_if_lt(kh, S::load(MrSmallConst<T>::pos + q * S::W),
                                 mr_exp_v<S>(S::sub(pv[r][q], vm)));
            t[q] = e[q];
        }
        for (int h = KV / 2; h >= 1; h /= 2)
            for (int q = 0; q < h; q++)
                t[q] = S::add(t[q], t[q + h]);
        V ts = t[0];
        for (int s = S::W / 2; s >= 1; s /= 2)
            ts = S::add(ts, S::swap(ts, s));
        const double sel_sum = mr_small_first<S>(ts);
        T total = 1, divisor;
        if (!rule->norm || rule->norm_min > 0) { /* the full softmax sum (mr_sum_exp's) */
            V acc[NV];
            typename S::Wide wide = S::Wide::zero();
            for (int j = 0; j < NV; j++)
                acc[j] = S::add(S::set(0), mr_exp_v<S>(S::sub(zv[r][j], vm)));
            wide.add(acc);
            total = (T)wide.total();
        }
        if (!rule->norm) {
            divisor = total;
        } else if (rule->p_norm > 0) {
            for (int q = 0; q < KV; q++)
                S::store(es + q * S::W, e[q]);
            divisor = (T)mr_small_p_norm(es, k, rule->p_norm);
        } else {
            divisor = (T)sel_sum;
            if (rule->norm_min > 0 && divisor < (T)rule->norm_min * total)
                divisor = (T)rule->norm_min * total;
        }
        const V vs = S::set((T)rule->scale), vd = S::set(divisor);
        T wq[KV * S::W];
        for (int q = 0; q < KV; q++)
            S::store(wq + q * S::W, S::div(S::mul(e[q], vs), vd));
        int overflow = 0;
#pragma GCC unroll 8
        for (int j = 0; j < MR_SMALL_KMAX; j++) {
            if (j >= k)
                break;
            wr[j] = (Wt)wq[j];
            overflow |= wr[j] == (Wt)INFINITY;
        }
        out |= overflow << (R + r);
    }
    return out;
}

/* mr_small_rows_r for rows = 1 or 2 (a Cython-callable template). */
template <class T, class I, class Wt>
static MR_HOT int mr_small_rows(const T *z, Py_ssize_t n, int rows, const MrSmallRule *rule, I *ids, Wt *w)
{
    if (rows == 2)
        return mr_small_rows_r<2>(z, n, rule, ids, w);
    return mr_small_rows_r<1>(z, n, rule, ids, w);
}

}  // namespace

#endif /* MOE_ROUTER_RULES_SMALL_HPP */
