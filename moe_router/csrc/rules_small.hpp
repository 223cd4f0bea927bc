/*
 * The small-row path of the scoring rules (_rules_kernels.pxi): rows of
 * n <= MR_BLOCK experts held in MR_BLOCK / W vectors, for the softmax rules
 * without a bias or a cap (DBRX's p-norm, moe_norm_min, ...; k <= 8) and
 * PhiMoE's sparsemixer.  The general row path spends most of a 16-expert
 * row in fixed costs (a max pass, the rank top-k through memory, the picked
 * exps gathered back from the row, the sums' blocks); here the row stays in
 * registers: the top-k is k passes of a vector arg max (all lanes equal to
 * the max leave together, ids in index order: the smaller index first on a
 * tie), each pass's max is the picked value, and the two rows of a pair go
 * through the same steps side by side so that their dependent steps
 * overlap; with k <= 4 their picked values share one vector of 8 lanes (4
 * a row), so the pair takes one exp, one sum tree, one divide and one store
 * of its weights.  The loop over the pairs is here too (mr_small_pairs),
 * with k = 4 and sparsemixer's 2 known when compiled; it returns to Cython
 * only at a pair with a row for the general path.
 *
 * Every value is computed with the same operations, in the same order, as
 * the general path (mr_picked_exp's exp of z - m, mr_sum_k's tree of the K
 * picked exps, the Wide lane totals of mr_sum_exp and mr_sparsemixer_sum,
 * _p_norm in double, _rules_weights' divisor), so a row gets the general
 * path's bits (tests/test_rules.py compares them); rows holding a
 * non-finite value are left to the general path (the returned mask), which
 * has their special cases.
 */
#ifndef MOE_ROUTER_RULES_SMALL_HPP
#define MOE_ROUTER_RULES_SMALL_HPP

#include <cmath>
#include <limits>
#include <type_traits>

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
 * one is (its last product may fuse with the caller's + eps * total).  The
 * softmax rules' first picked value is the row max, whose exp is exp(0) = 1
 * exactly, so mx is 1 on every finite row: then e / mx is e and mx * x is
 * x bit for bit, and the divides and the product are left out.  (p = 2 in
 * float32 only: there e * e is exact in double, so a fused multiply-add
 * gives the same sum as a separate add, wherever the compiler fuses.) */
template <class T> static MR_HOT double mr_small_p_norm(const T *e, int k, double p)
{
    double mx = 0, acc = 0;
    for (int j = 0; j < k; j++)
        if (e[j] > mx)
            mx = e[j];
    if (mx == 0 || p == INFINITY)
        return mx;
    if (mx == 1 && p == 2 && mr_is_f32<T>) {
        for (int j = 0; j < k; j++)
            acc += (double)e[j] * (double)e[j];
        return std::sqrt(acc);
    }
    if (mx == 1 && p != 2) {
        for (int j = 0; j < k; j++)
            acc += std::pow((double)e[j], p);
        return std::pow(acc, 1.0 / p);
    }
    if (p == 2) {
        for (int j = 0; j < k; j++)
            acc += (e[j] / mx) * (e[j] / mx);
        return mx * std::sqrt(acc);
    }
    for (int j = 0; j < k; j++)
        acc += std::pow(e[j] / mx, p);
    return mx * std::pow(acc, 1.0 / p);
}

/* Per lane of every vector of the traits: its index, its place in a block
 * of 4 and of 8; and a 1 at MR_BLOCK (a load at unit + MR_BLOCK - l has its
 * one 1 in lane l). */
template <class T> struct MrSmallConst {
    static constexpr T pos[MR_BLOCK] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static constexpr T pos_in4[MR_BLOCK] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
    static constexpr T pos_in8[MR_BLOCK] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7};
    static constexpr T unit[2 * MR_BLOCK] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
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
 * (kind KIND; k = KC, or rule->k when KC is 0) into ids / w (R * k each,
 * _rules_row's layout).  Returns a mask: bit r set when row r is left to
 * the general path (a non-finite value, or a tie among its picked values,
 * whose order the passes below do not resolve: its weights not written,
 * its ids garbage, for the general path to overwrite);
 * bit R + r when row r's weights overflowed the weights' type (written, as
 * the general path writes them).  The passes run for every row, whatever
 * its values (a NaN row gives garbage ids, never an out-of-bounds access).
 */
template <int R, int KC, int KIND, class T, class I, class Wt>
static MR_HOT int mr_small_rows_r(const T *z, Py_ssize_t n, const MrSmallRule *rule, I *ids, Wt *w)
{
    using S = Vec<T>;
    typedef typename S::V V;
    constexpr int W = S::W;
    constexpr int NV = MR_BLOCK / W;
    /* Row r's picked values go to lanes r * B + p of the NP vectors d (as
     * z - the row max, the exps' arguments): B = 4 when k <= 4, so that
     * the two rows of a pair share one vector of 8 lanes and its exp, sum
     * and divide; a block spans BV vectors when it is wider than one. */
    constexpr int B = KC > 0 && KC <= 4 ? 4 : MR_SMALL_KMAX;
    constexpr int NP = (R * B + W - 1) / W;
    constexpr int BV = B >= W ? B / W : 1;
    const int k = KC > 0 ? KC : rule->k;
    const V zero = S::set(0);
    V zv[R][NV], v[R][NV], mv[R][2], d[NP];
    unsigned tie[R] = {};
    int id[R][MR_SMALL_KMAX] = {};
    int out = 0;
    for (int q = 0; q < NP; q++)
        d[q] = zero;
    for (int r = 0; r < R; r++)
        mv[r][0] = mv[r][1] = zero;
    for (int r = 0; r < R; r++) {
        const T *zr = z + r * n;
        /* Non-finite lanes: z * 0 is NaN for +-inf and NaN, else +-0. */
        if (n == MR_BLOCK) {
            for (int j = 0; j < NV; j++)
                zv[r][j] = S::load(zr + j * W);
            V t = S::mul(zv[r][0], zero);
            for (int j = 1; j < NV; j++)
                t = S::fma(zv[r][j], zero, t);
            out |= ((unsigned)S::eq_bits(t, zero) != (1u << W) - 1) << r;
        } else { /* padded with -inf: never a max, exp 0 */
            T buf[MR_BLOCK];
            const unsigned all = (1u << n) - 1;
            unsigned fin = 0;
            for (int l = 0; l < MR_BLOCK; l++)
                buf[l] = l < n ? zr[l] : -INFINITY;
            for (int j = 0; j < NV; j++) {
                zv[r][j] = S::load(buf + j * W);
                fin |= (unsigned)S::eq_bits(S::mul(zv[r][j], zero), zero) << (j * W);
            }
            out |= ((fin & all) != all) << r;
        }
        for (int j = 0; j < NV; j++)
            v[r][j] = zv[r][j];
    }
    /* The top-k: pass p takes the row max m (the p-th picked value: m - the
     * first pass's into lane r * B + p of d, + the others * 0), its lane
     * (the only one unless there is a tie), and removes it (+ -inf) for the
     * next pass. */
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
            /* stored now: kept for the end, the pair's ids are spilled */
            ids[r * k + p] = (I)id[r][p];
            if (p < 2)
                mv[r][p] = m;
            if constexpr (KIND != MR_SMALL_SPARSEMIXER) {
                const int lane = r * B + p;
                /* m - max overflows to -inf for finite values far apart
                 * (-3e38 - 3.4e38), and a row left to the general path may
                 * give NaN: either times the unit vector's zeros would
                 * spoil the other lanes (the other picked values', the
                 * other row's).  exp(-max) is exp(-inf), 0: the same bits;
                 * max keeps its second operand, -max, for a NaN x. */
                const V x = S::max(S::sub(m, mv[r][0]), S::set(-std::numeric_limits<T>::max()));
                d[lane / W] = S::fma(x, S::load(MrSmallConst<T>::unit + MR_BLOCK - lane % W), d[lane / W]);
            }
            if (p + 1 < k)
                for (int j = 0; j < NV; j++)
                    v[r][j] = S::add(v[r][j], S::zero_if_lt(v[r][j], m, ninf));
        }
    }
    for (int r = 0; r < R; r++)
        out |= (tie[r] != 0) << r;
    if (out == (1 << R) - 1) /* (also keeps the passes' masks from being sunk past the
                              * weights, which would keep every pass's row in memory) */
        return out;
    if constexpr (KIND == MR_SMALL_SPARSEMIXER) {
        /* _sparsemixer_row: the softmax at the arg max over the unmasked
         * experts, then at the second over the others but the first */
        const T scale = (T)rule->scale, thr = (T)rule->thr;
        for (int r = 0; r < R; r++) {
            if (out >> r & 1)
                continue;
            const T w1 = 1 / mr_small_sparsemixer_sum<S, NV>(zv[r], mr_small_first<S>(mv[r][0]), thr, -1);
            const T w2 =
                1 / mr_small_sparsemixer_sum<S, NV>(zv[r], mr_small_first<S>(mv[r][1]), thr, id[r][0]);
            w[r * 2] = (Wt)(w1 * scale);
            w[r * 2 + 1] = (Wt)(w2 * scale);
        }
        return out;
    } else {
        /* The softmax rules: the picked exps (mr_picked_exp's exp of z - m,
         * 0 past k), their sum as mr_sum_k's tree (the block's vectors, then
         * its lanes: ((e0 + e4) + (e2 + e6)) + ((e1 + e5) + (e3 + e7)), the
         * adds of 0 exact when B = 4), the divisor as _rules_weights'. */
        V e[NP], t[NP];
        for (int q = 0; q < NP; q++) {
            e[q] = mr_exp_v<S>(d[q]);
            if constexpr (KC != B) {
                const T *in_block = B >= W ? MrSmallConst<T>::pos + (q % BV) * W
                                           : (B == 4 ? MrSmallConst<T>::pos_in4 : MrSmallConst<T>::pos_in8);
                e[q] = S::zero_if_lt(S::set((T)k - (T)0.5), S::load(in_block), e[q]);
            }
            t[q] = e[q];
        }
        for (int g = 0; g < NP; g += BV)
            for (int h = BV / 2; h >= 1; h /= 2)
                for (int q = 0; q < h; q++)
                    t[g + q] = S::add(t[g + q], t[g + q + h]);
        for (int g = 0; g < NP; g += BV)
            for (int s = (B < W ? B : W) / 2; s >= 1; s /= 2)
                t[g] = S::add(t[g], S::swap(t[g], s)); /* (in every lane of the block) */
        /* The divisor in each lane of its row's block: the sum, already
         * there; else each row's (a p-norm, the full softmax sum, the
         * clamp) broadcast to its block. */
        V vd[NP];
        if (rule->norm && !(rule->p_norm > 0) && !(rule->norm_min > 0)) {
            for (int q = 0; q < NP; q++)
                vd[q] = t[q - q % BV];
        } else {
            T es[NP * W], ts[NP * W], dr[R];
            for (int q = 0; q < NP; q++) {
                S::store(es + q * W, e[q]);
                S::store(ts + q * W, t[q]);
            }
            for (int r = 0; r < R; r++) {
                T total = 1, divisor;
                if (!rule->norm || rule->norm_min > 0) { /* the full softmax sum (mr_sum_exp's) */
                    V acc[NV];
                    typename S::Wide wide = S::Wide::zero();
                    for (int j = 0; j < NV; j++)
                        acc[j] = S::add(zero, mr_exp_v<S>(S::sub(zv[r][j], mv[r][0])));
                    wide.add(acc);
                    total = (T)wide.total();
                }
                if (!rule->norm) {
                    divisor = total;
                } else if (rule->p_norm > 0) {
                    divisor = (T)mr_small_p_norm(es + r * B, k, rule->p_norm);
                } else {
                    divisor = ts[r * B]; /* (the block's first vector, lane r * B mod W) */
                    if (rule->norm_min > 0 && divisor < (T)rule->norm_min * total)
                        divisor = (T)rule->norm_min * total;
                }
                dr[r] = divisor;
            }
            for (int q = 0; q < NP; q++) {
                if constexpr (B < W && R > 1) { /* row 0's lanes < B, row 1's from B (+ 0: exact) */
                    const V half = S::set((T)B - (T)0.5), lane = S::load(MrSmallConst<T>::pos);
                    vd[q] = S::add(S::zero_if_lt(half, lane, S::set(dr[0])),
                                   S::zero_if_lt(lane, half, S::set(dr[1])));
                } else {
                    vd[q] = S::set(dr[B >= W ? q * W / B : 0]);
                }
            }
        }
        const V vs = S::set((T)rule->scale);
        V wv[NP];
        for (int q = 0; q < NP; q++)
            wv[q] = S::div(S::mul(e[q], vs), vd[q]);
        if constexpr (KC == B && std::is_same<T, Wt>::value && R * B % W == 0) {
            if (out == 0) { /* the rows' weights are the vectors' lanes */
                unsigned inf_bits = 0;
                for (int q = 0; q < NP; q++) {
                    S::store(w + q * W, wv[q]);
                    inf_bits |= (unsigned)S::eq_bits(wv[q], S::set((T)INFINITY)) << (q * W);
                }
                for (int r = 0; r < R; r++)
                    out |= ((inf_bits >> (r * B) & ((1u << B) - 1)) != 0) << (R + r);
                return out;
            }
        }
        T wq[NP * W];
        for (int q = 0; q < NP; q++)
            S::store(wq + q * W, wv[q]);
        for (int r = 0; r < R; r++) {
            if (out >> r & 1)
                continue;
            const T *wb = wq + r * B;
            int overflow = 0;
#pragma GCC unroll 8
            for (int j = 0; j < MR_SMALL_KMAX; j++) {
                if (j >= k)
                    break;
                w[r * k + j] = (Wt)wb[j];
                overflow |= w[r * k + j] == (Wt)INFINITY;
            }
            out |= overflow << (R + r);
        }
        return out;
    }
}

/* Pairs [p0, p1) of the n_rows rows at z (pair p: rows 2p and 2p + 1, the
 * last one alone when n_rows is odd) by mr_small_rows_r, up to the first
 * pair whose mask is not 0: its index, the mask in *st; p1 when none. */
template <int KC, int KIND, class T, class I, class Wt>
static MR_HOT Py_ssize_t mr_small_pairs_k(const T *z, Py_ssize_t n, Py_ssize_t n_rows, Py_ssize_t p0,
                                          Py_ssize_t p1, const MrSmallRule *rule, I *ids, Wt *w, int *st)
{
    const Py_ssize_t k = KC > 0 ? KC : rule->k;
    const Py_ssize_t full = p1 < n_rows / 2 ? p1 : n_rows / 2;
    Py_ssize_t p = p0;
    for (; p < full; p++) {
        const int s = mr_small_rows_r<2, KC, KIND>(z + 2 * p * n, n, rule, ids + 2 * p * k, w + 2 * p * k);
        if (s) {
            *st = s;
            return p;
        }
    }
    if (p < p1) { /* the odd row */
        const int s = mr_small_rows_r<1, KC, KIND>(z + 2 * p * n, n, rule, ids + 2 * p * k, w + 2 * p * k);
        if (s) {
            *st = s;
            return p;
        }
    }
    return p1;
}

/* mr_small_pairs_k for the rule (a Cython-callable template): k = 4
 * (DBRX's top-4, float32) and sparsemixer's k = 2 known when compiled.
 * Not k = 4 in float64: there the p-norm's (e / mx)^2 + acc is rounded
 * once or twice as GCC fuses it or not, which it decides by the loop's
 * shape (_p_norm's runtime-k loop: pairs unfused, an odd last one fused);
 * mr_small_p_norm's loop keeps that shape only with k unknown. */
template <class T, class I, class Wt>
static MR_HOT Py_ssize_t mr_small_pairs(const T *z, Py_ssize_t n, Py_ssize_t n_rows, Py_ssize_t p0,
                                        Py_ssize_t p1, const MrSmallRule *rule, I *ids, Wt *w, int *st)
{
    if (rule->kind == MR_SMALL_SPARSEMIXER)
        return mr_small_pairs_k<2, MR_SMALL_SPARSEMIXER>(z, n, n_rows, p0, p1, rule, ids, w, st);
    if (rule->k == 4 && mr_is_f32<T>)
        return mr_small_pairs_k<4, MR_SMALL_SOFTMAX>(z, n, n_rows, p0, p1, rule, ids, w, st);
    return mr_small_pairs_k<0, MR_SMALL_SOFTMAX>(z, n, n_rows, p0, p1, rule, ids, w, st);
}

}  // namespace

#endif /* MOE_ROUTER_RULES_SMALL_HPP */
