/*
 * The row operations, written once for both precisions as templates over
 * T (float or double) against the vector traits Vec<T> of the build
 * (simd.h): no intrinsics here.  Every loop works on blocks of MR_BLOCK
 * values, MR_NV vectors each, so a row's summation order is the same
 * whatever the vector width.  Where the AVX2 tuned routines of
 * networks_avx2.hpp apply (float32 in a build with MR_HAVE_NET8), a branch
 * that the compiler resolves takes them.
 */
#ifndef MOE_ROUTER_ROW_OPS_HPP
#define MOE_ROUTER_ROW_OPS_HPP

#include "cand.hpp"
#include "exp.hpp"
#include "networks_avx2.hpp"

namespace {

template <class T> using Vec = typename VecOf<T>::type;

/* Vectors per block, in a function whose traits are S. */
#define MR_NV (MR_BLOCK / S::W)

/* x[0..MR_BLOCK) = exp(x), in place. */
template <class T> static inline void mr_exp_block(T *x)
{
    using S = Vec<T>;
    for (int j = 0; j < MR_NV; j++)
        S::store(x + j * S::W, mr_exp_v<S>(S::load(x + j * S::W)));
}

/* out[0..len) = exp(x[0..len)) for len <= MR_BLOCK, through one padded block. */
template <class T> static inline void mr_exp_short(const T *x, int len, T *out)
{
    T buf[MR_BLOCK];
    for (int l = 0; l < MR_BLOCK; l++)
        buf[l] = l < len ? x[l] : 0;
    mr_exp_block(buf);
    for (int l = 0; l < len; l++)
        out[l] = buf[l];
}

/*
 * Max of z[0..n), also leaving in lanes[l] the max of the elements whose
 * index is l modulo MR_BLOCK (-inf for an empty lane), and setting
 * *has_nan.  NaN does not enter the max.  The lane maxima are MR_BLOCK
 * distinct elements: their k-th largest is a lower bound of the row's
 * k-th largest.
 */
/* Where mr_max_lanes_of reads a row: z itself. */
template <class T> struct MrRowOf {
    MR_HOT typename Vec<T>::V block(const T *z, Py_ssize_t i) const { return Vec<T>::load(z + i); }
    void tail(const T *, Py_ssize_t, Py_ssize_t) const {}
};

/* The max of a block's MR_NV lane vectors, by a tree of lane swaps (no
 * NaN is left in them). */
template <class S> static MR_HOT typename S::T mr_max_of_lanes(const typename S::V *acc)
{
    typename S::V mv = acc[0];
    for (int j = 1; j < MR_NV; j++)
        mv = S::max(mv, acc[j]);
    for (int s = S::W / 2; s >= 1; s /= 2)
        mv = S::max(mv, S::swap(mv, s));
    typename S::T ml[S::W];
    S::store(ml, mv);
    return ml[0];
}

/* mr_max_lanes, the row's values taken through `src`: src.block(z, i) gives
 * the vector at z + i, src.tail(z, i, n) makes z[i..n) readable (a source
 * that writes the row into z as it goes, half.hpp's MrWidenRow, fuses that
 * pass into this one). */
template <class T, class Src>
static MR_HOT T mr_max_lanes_of(const T *z, Py_ssize_t n, T *lanes, int *has_nan, const Src &src)
{
    using S = Vec<T>;
    typedef typename S::V V;
    typedef typename S::N N;
    V acc[MR_NV];
    N nan_acc = S::nan_init();
    Py_ssize_t i = 0;
    int nan_tail = 0;
    for (int j = 0; j < MR_NV; j++)
        acc[j] = S::set(-INFINITY);
    for (; i + MR_BLOCK <= n; i += MR_BLOCK) {
        V v[MR_NV];
        for (int j = 0; j < MR_NV; j++) {
            v[j] = src.block(z, i + j * S::W);
            acc[j] = S::max(v[j], acc[j]);
        }
        /* One unordered compare finds a NaN in either of two vectors. */
        for (int j = 0; j < MR_NV; j += 2)
            nan_acc = S::nan_acc(nan_acc, v[j], v[j + 1 < MR_NV ? j + 1 : j]);
    }
    for (int j = 0; j < MR_NV; j++)
        S::store(lanes + j * S::W, acc[j]);
    if (i < n) {
        src.tail(z, i, n);
        for (int l = 0; i < n; i++, l++) {
            lanes[l] = z[i] > lanes[l] ? z[i] : lanes[l];
            nan_tail |= z[i] != z[i];
        }
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::load(lanes + j * S::W);
    }
    *has_nan = S::nan_any(nan_acc) | nan_tail;
    return mr_max_of_lanes<S>(acc);
}

template <class T> static MR_HOT T mr_max_lanes(const T *z, Py_ssize_t n, T *lanes, int *has_nan)
{
    return mr_max_lanes_of(z, n, lanes, has_nan, MrRowOf<T>());
}

/* x[0..MR_BLOCK) = sigmoid(x), in place. */
template <class T> static inline void mr_sigmoid_block(T *x)
{
    using S = Vec<T>;
    for (int j = 0; j < MR_NV; j++)
        S::store(x + j * S::W, mr_sigmoid_v<S>(S::load(x + j * S::W)));
}

/*
 * out[0..k) = exp(z[idx[j]] - m) (k <= MR_BLOCK; only the vectors that
 * hold them are computed);
 * mr_picked_sigmoid: sigmoid(z[idx[j]]).  The weights of the K picked
 * experts.  The vectors are built from scalar loads in registers: a block
 * written with scalar stores and reloaded as vectors stalls on store
 * forwarding.
 */
template <class T> static inline void mr_picked_exp(const T *z, const Py_ssize_t *idx, int k, T m, T *out)
{
    using S = Vec<T>;
    for (int j = 0; j < MR_NV && j * S::W < k; j++)
        S::store(out + j * S::W, mr_exp_v<S>(S::gather(z, idx + j * S::W, k - j * S::W, m, -INFINITY)));
}

template <class T> static inline void mr_picked_sigmoid(const T *z, const Py_ssize_t *idx, int k, T *out)
{
    using S = Vec<T>;
    for (int j = 0; j < MR_NV && j * S::W < k; j++)
        S::store(out + j * S::W, mr_sigmoid_v<S>(S::gather(z, idx + j * S::W, k - j * S::W, 0, 0)));
}

/*
 * c[i] = sigmoid(z[i]), plus bias[i] when a bias is given: the selection
 * score of sigmoid routers.  (The weights, sigmoid of the K picked logits,
 * are recomputed from z rather than stored here.)  Returns whether z holds
 * a NaN (its score is NaN; the bias is finite), so that these routers need
 * no pass over z of their own.  The tail goes through a padded block.
 */
template <class T> static inline int mr_sigmoid_into(const T *z, Py_ssize_t n, const T *bias, T *c)
{
    using S = Vec<T>;
    typedef typename S::V V;
    typedef typename S::N N;
    N nan_acc = S::nan_init();
    Py_ssize_t i = 0;
    int nan_tail = 0;
    for (; i + S::W <= n; i += S::W) {
        V v = mr_sigmoid_v<S>(S::load(z + i));
        if (bias)
            v = S::add(v, S::load(bias + i));
        nan_acc = S::nan_acc(nan_acc, v, v);
        S::store(c + i, v);
    }
    if (i < n) {
        T buf[MR_BLOCK];
        int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++)
            buf[l] = l < len ? z[i + l] : 0;
        mr_sigmoid_block(buf);
        for (int l = 0; l < len; l++) {
            c[i + l] = buf[l] + (bias ? bias[i + l] : 0);
            nan_tail |= c[i + l] != c[i + l];
        }
    }
    return S::nan_any(nan_acc) | nan_tail;
}

/* The largest |x[i]| of x[0..n) (NaN left out; 0 for n == 0). */
template <class T> static inline T mr_abs_max(const T *x, Py_ssize_t n)
{
    using S = Vec<T>;
    typedef typename S::V V;
    const V zero = S::set(0);
    V acc = zero;
    T lanes[S::W], m = 0;
    Py_ssize_t i = 0;
    for (; i + S::W <= n; i += S::W) {
        const V v = S::load(x + i);
        acc = S::max(S::max(v, S::sub(zero, v)), acc); /* (a NaN v keeps acc) */
    }
    S::store(lanes, acc);
    for (int l = 0; l < S::W; l++)
        m = lanes[l] > m ? lanes[l] : m;
    for (; i < n; i++) {
        const T a = x[i] < 0 ? -x[i] : x[i];
        m = a > m ? a : m;
    }
    return m;
}

/*
 * Sum of x[0..k), k <= MR_BLOCK, in the row's precision: the divisor of the
 * weights (x holds at least 8 readable values: the AVX2 form loads them).
 * Each block of 8 (zero-padded) is added as a tree,
 * ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)), the blocks in order.
 * One order for every path of a row (mr_sum8 is the vector form of the same
 * adds), so a row's weights do not depend on which path routed it; a tree,
 * not a running sum: this sits on the row's critical path.
 */
template <class T> static MR_HOT T mr_sum_k(const T *x, int k)
{
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>)
        if (k <= 8)
            return mr_sum8(x, k);
#endif
    T s = 0;
    for (int b = 0; b < k; b += 8) {
        T t[8];
        for (int l = 0; l < 8; l++)
            t[l] = b + l < k ? x[b + l] : 0;
        const T block = ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
        s = b == 0 ? block : s + block;
    }
    return s;
}

/*
 * Sum of exp(z[i] - m).  A NaN anywhere in z makes the sum NaN: that is how
 * the kernels find NaN rows without a pass of their own.  The lanes add at
 * most 8 blocks in the row's precision before they are carried into double
 * (a float32 lane adding every block of a 2048-expert row drifts by about
 * 8e-6, past the precision contract; S::Wide holds the carries), and are
 * added in a fixed order, so the sum does not depend on the thread count.
 * Out of line: a pass over the row, called from the weights' cold branch,
 * whose inlining would make the row kernels' callers too large to inline
 * their own steps.
 */
template <class T> static MR_NOINLINE T mr_sum_exp(const T *z, Py_ssize_t n, T m)
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
            mr_exp_vs<S, G * MR_NV, false>(v);
            for (int q = 0; q < G * MR_NV; q++)
                acc[q % MR_NV] = S::add(acc[q % MR_NV], v[q]);
        }
        for (; b < 8 && i + MR_BLOCK <= n; b++, i += MR_BLOCK)
            for (int j = 0; j < MR_NV; j++)
                acc[j] = S::add(acc[j], mr_exp_v<S>(S::sub(S::load(z + i + j * S::W), vm)));
        total.add(acc);
    }
    if (i < n) { /* the tail (< MR_BLOCK values) through one padded block */
        T e[MR_BLOCK];
        int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++)
            e[l] = l < len ? z[i + l] - m : 0;
        mr_exp_short(e, len, e);
        for (int l = len; l < MR_BLOCK; l++)
            e[l] = 0;
        for (int j = 0; j < MR_NV; j++)
            acc[j] = S::load(e + j * S::W);
        total.add(acc);
    }
    return (T)total.total();
}

/*
 * The two largest of x[0..len) (NaN-free, len >= 1; top2 is -inf when
 * len == 1): per-lane running top-2 in vectors, then the lanes' (top1,
 * top2) pairs merged as a tree of lane swaps (not a scalar merge through
 * memory).
 */
template <class T> static inline void mr_top2(const T *x, Py_ssize_t len, T *top1, T *top2)
{
    using S = Vec<T>;
    typedef typename S::V V;
    V t1 = S::set(-INFINITY), t2 = S::set(-INFINITY);
    T l1[S::W], l2[S::W];
    T a, b;
    Py_ssize_t i = 0;
    for (; i + S::W <= len; i += S::W) {
        const V v = S::load(x + i);
        t2 = S::max(t2, S::min(v, t1));
        t1 = S::max(t1, v);
    }
    for (int s = S::W / 2; s >= 1; s /= 2) {
        const V x1 = S::swap(t1, s), x2 = S::swap(t2, s);
        t2 = S::max(S::max(t2, x2), S::min(t1, x1));
        t1 = S::max(t1, x1);
    }
    S::store(l1, t1);
    S::store(l2, t2);
    a = l1[0];
    b = l2[0];
    for (; i < len; i++) {
        b = b > (a < x[i] ? a : x[i]) ? b : (a < x[i] ? a : x[i]);
        a = a > x[i] ? a : x[i];
    }
    *top1 = a;
    *top2 = b;
}

/*
 * Pick the best topk_group of the n_group groups of sel[0..n): their group
 * indices go to kept[] in ascending order (so the kept values, group after
 * group, are still in expert order, and ties still go to the smaller
 * expert).  Returns how many groups were kept.  The other groups' experts
 * are out of the top-k altogether (as if -inf, never 0: 0 would beat
 * negative biased scores).  A group's score is the sum of its two best
 * values (top2_sum: sigmoid routers) or its best (softmax routers); equal
 * group scores keep the smaller group.
 *
 * Branch-free: a group is kept when fewer than topk_group groups rank
 * above it; every group writes its index at the next free slot, which only
 * a kept group advances.  (Picking the best group topk_group times
 * branched on the data.)
 */
template <class T> static inline Py_ssize_t mr_limit_groups(const T *sel, Py_ssize_t n, Py_ssize_t n_group,
                                                            Py_ssize_t topk_group, int top2_sum,
                                                            T *group_score, Py_ssize_t *kept, T *lanes)
{
    const Py_ssize_t size = n / n_group;
    Py_ssize_t n_kept = 0;
    /* With lanes: the kept groups' two best values (-inf beyond), for
     * mr_kth_lane's threshold in place of a pass over the kept values; they
     * are distinct elements of them.  Only for n_group <= MR_BLOCK and
     * 2 * topk_group + 2 <= MR_BLOCK (else pass NULL). */
    T best2[2 * MR_BLOCK];
    for (Py_ssize_t g = 0; g < n_group; g++) {
        T t1, t2;
        mr_top2(sel + g * size, size, &t1, &t2);
        group_score[g] = top2_sum ? t1 + t2 : t1;
        if (g < MR_BLOCK) {
            best2[2 * g] = t1;
            best2[2 * g + 1] = t2;
        }
    }
    if (lanes)
        for (int l = 0; l < MR_BLOCK; l++)
            lanes[l] = -INFINITY;
    for (Py_ssize_t g = 0; g < n_group; g++) {
        const T sg = group_score[g];
        Py_ssize_t rank = 0;
        for (Py_ssize_t h = 0; h < g; h++)
            rank += group_score[h] >= sg;
        for (Py_ssize_t h = g + 1; h < n_group; h++)
            rank += group_score[h] > sg;
        /* The slot is capped at topk_group: with finite scores the ranks
         * are a permutation and n_kept never passes it, but a NaN group
         * score (a non-finite bias given to the kernel directly) ranks 0
         * for every group and would write past lanes[MR_BLOCK).  (kept
         * needs no cap: slot <= n_kept <= g < n_group.) */
        const Py_ssize_t slot = n_kept < topk_group ? n_kept : topk_group;
        kept[slot] = g;
        if (lanes) {
            lanes[2 * slot] = best2[2 * g];
            lanes[2 * slot + 1] = best2[2 * g + 1];
        }
        n_kept += rank < topk_group;
    }
    if (lanes) { /* the last dropped group's pair, if any, is past the kept */
        const Py_ssize_t slot = n_kept < topk_group ? n_kept : topk_group;
        lanes[2 * slot] = -INFINITY;
        lanes[2 * slot + 1] = -INFINITY;
    }
    return n_kept < topk_group ? n_kept : topk_group;
}

/* Bit l set where z[l] == t (eq) or z[l] > t (not eq), over one block of
 * MR_BLOCK values. */
template <class T> static inline unsigned mr_block_bits(const T *z, T t, int eq)
{
    using S = Vec<T>;
    const typename S::V vt = S::set(t);
    unsigned bits = 0;
    for (int j = 0; j < MR_NV; j++) {
        const typename S::V v = S::load(z + j * S::W);
        bits |= (unsigned)(eq ? S::eq_bits(v, vt) : S::gt_bits(v, vt)) << (j * S::W);
    }
    return bits;
}

/*
 * rank[j] lane l = how many of v[0..MR_BLOCK) are greater than lane l of
 * vv[j] (vv holds the same values, loaded).  Four independent counts per
 * vector, added at the end: one running count made a chain of 16 dependent
 * adds (the lane ranks were latency-bound).  Out of line: its 4 * MR_NV
 * accumulators spill where the compiler inlines it into the pair kernel.
 */
template <class T> static MR_NOINLINE void mr_rank_gt(const T *v, const typename Vec<T>::V *vv,
                                                      typename Vec<T>::V *rank)
{
    using S = Vec<T>;
    typedef typename S::V V;
    V acc[4][MR_NV];
    for (int a = 0; a < 4; a++)
        for (int j = 0; j < MR_NV; j++)
            acc[a][j] = S::set(0);
    for (int q = 0; q < MR_BLOCK; q += 4)
        for (int a = 0; a < 4; a++) {
            const V vq = S::set(v[q + a]);
            for (int j = 0; j < MR_NV; j++)
                acc[a][j] = S::count_gt(acc[a][j], vq, vv[j]);
        }
    for (int j = 0; j < MR_NV; j++)
        rank[j] = S::add(S::add(acc[0][j], acc[1][j]), S::add(acc[2][j], acc[3][j]));
}

/*
 * Top-k of a NaN-free row for k <= MR_BLOCK, in the order (value
 * descending, index ascending), in two parts so that two rows can be
 * interleaved (mr_topk_pair):
 *
 * 1. mr_cand_gather: t = the k-th largest lane maximum (`lanes`, from
 *    mr_max_lanes): at least k elements are >= t.  The elements >= t
 *    (about 10 of 128 for k = 8 on random logits) are the candidates, taken
 *    in index order with one compress per vector (S::compress_ge: a lookup
 *    table of permutations for AVX2 float32, the compress instruction for
 *    AVX-512 float64, a write of every lane for SSE2, a loop over the set
 *    bits elsewhere).
 * 2. mr_cand_select: the k best candidates; equal values rank by index,
 *    the smaller first.
 */
/* The k-th largest of lanes[0..MR_BLOCK), 1 <= k <= MR_BLOCK. */
template <class T> static MR_HOT T mr_kth_lane(const T *lanes, int k)
{
    using S = Vec<T>;
    typedef typename S::V V;
#if MR_HAVE_NET8
    if constexpr (mr_is_f32<T>)
        if (k <= 8)
            return vf_net_kth16(lanes, k);
#endif
    /* rank[l] = number of lanes above lane l, for all l at once; the
     * answer is the smallest lane ranked < k.  All vector operations: a
     * scalar loop here compiles to data-dependent branches. */
    V lv[MR_NV], rank[MR_NV];
    T tl[S::W];
    T t = INFINITY;
    const V vk = S::set((T)k);
    for (int j = 0; j < MR_NV; j++)
        lv[j] = S::load(lanes + j * S::W);
    mr_rank_gt(lanes, lv, rank);
    V tv = S::keep_lt(lv[0], rank[0], vk);
    for (int j = 1; j < MR_NV; j++)
        tv = S::min(tv, S::keep_lt(lv[j], rank[j], vk));
    S::store(tl, tv);
    for (int l = 0; l < S::W; l++)
        t = tl[l] < t ? tl[l] : t;
    return t;
}

/* Part 1, over the n_kept groups of `size` values that start at kept[g] *
 * size (kept NULL: one group, the row z[0..n)); ids are positions in z.
 * The threshold is lowered by `slack` (0 but for approximate scores:
 * mr_sigmoid_topk).  Returns 0, or -1 when the method does not apply (t is
 * -inf, or more than MR_MAX_CAND candidates: many ties); the caller then
 * takes the general path. */
template <class T> static MR_HOT int mr_cand_gather(const T *z, Py_ssize_t n, Py_ssize_t size,
                                                    const Py_ssize_t *kept, Py_ssize_t n_kept, int k,
                                                    const T *lanes, T slack, MrCand<T> *cd)
{
    using S = Vec<T>;
    T *cv = cd->v;
    int32_t *ci = cd->i;
    int c = 0;
    if (k > MR_BLOCK || n > INT32_MAX) /* ids are int32 */
        return -1;
    const T t = mr_kth_lane(lanes, k) - slack;
    if (t == -INFINITY)
        return -1;
    for (Py_ssize_t g = 0; g < n_kept; g++) {
        const Py_ssize_t base = kept ? kept[g] * size : 0;
        const T *zg = z + base;
        Py_ssize_t i = 0;
        for (; i + MR_BLOCK <= size; i += MR_BLOCK) {
            if (c > MR_MAX_CAND)
                return -1;
            for (int j = 0; j < MR_NV; j++)
                c += S::compress_ge(zg + i + j * S::W, t, (int32_t)(base + i + j * S::W), cv + c, ci + c);
        }
        if (c > MR_MAX_CAND)
            return -1;
        for (; i < size; i++) { /* fewer than MR_BLOCK */
            cv[c] = zg[i];
            ci[c] = (int32_t)(base + i);
            c += zg[i] >= t;
        }
    }
    for (int j = 0; j < MR_NV; j++) /* pads the last block: below every candidate */
        S::store(cv + c + j * S::W, S::set(-INFINITY));
    memset(ci + c, 0, MR_BLOCK * sizeof(int32_t));
    cd->c = c;
    return 0;
}
/* mr_cand_select for at most NB * MR_BLOCK candidates (NB 1 or 2): every
 * row of up to MR_BLOCK that the sorting networks do not take (double,
 * k > 8, builds without MR_HAVE_NET8) or leave to exact code (see
 * vi_net_close), and every row of MR_BLOCK to 2 * MR_BLOCK (long rows'
 * loose thresholds: the top-12 of 768 has about 22 candidates). */
template <class T, int NB> static MR_HOT int mr_cand_rank_blocks(const MrCand<T> *cd, int k, Py_ssize_t *idx,
                                                                 T m, T *e_out)
{
    using S = Vec<T>;
    typedef typename S::V V;
    constexpr int NVB = NB * MR_NV;
    const T *cv = cd->v;
    const int32_t *ci = cd->i;
    const int c = cd->c;
    /* Every rank at once, with vector compares against each candidate q
     * in turn, first by value only and over whole blocks (the padding,
     * -inf, ranks c >= k; one block: no loop count that depends on c). */
    V cvv[NVB], pos[NVB], rank[NVB];
    T pos_l[NB * MR_BLOCK], rank_l[NB * MR_BLOCK], ev[NB * MR_BLOCK];
    int unique = 1;
    for (int j = 0; j < NVB; j++)
        cvv[j] = S::load(cv + j * S::W);
    if constexpr (NB == 1) {
        mr_rank_gt(cv, cvv, rank);
    } else {
        for (int j = 0; j < NVB; j++)
            rank[j] = S::set(0);
        for (int q = 0; q < c; q++) {
            const V vq = S::set(cv[q]);
            for (int j = 0; j < NVB; j++)
                rank[j] = S::count_gt(rank[j], vq, cvv[j]);
        }
    }
    /* rank = how many candidates are greater.  When exactly one
     * candidate has rank r for each r < k, those are the top k in
     * order: equal values would share a rank r < k (and leave r + 1
     * empty).  Ties further down do not matter.  Each winner is found
     * with a vector compare per rank (scattering every candidate to
     * its rank through memory makes the reads of the result wait on
     * stores to late-known addresses).  With e_out,
     * exp(value - m) of the picked comes from the candidates still in
     * registers (gathering them from z into a block through memory
     * stalls on store forwarding). */
    if (e_out) {
        const V vm = S::set(m);
        for (int j = 0; j < NVB; j++)
            S::store(ev + j * S::W, mr_exp_v<S>(S::sub(cvv[j], vm)));
    }
    for (int r = 0; r < k; r++) {
        const V vr = S::set((T)r);
        unsigned bits = 0;
        for (int j = 0; j < NVB; j++)
            bits |= (unsigned)S::eq_bits(rank[j], vr) << (j * S::W);
        unique &= (bits != 0) & ((bits & (bits - 1)) == 0);
        const int at = bits ? mr_ctz(bits) : 0;
        idx[r] = ci[at];
        if (e_out)
            e_out[r] = ev[at];
    }
    if (unique)
        return e_out != NULL;
    /* Equal candidates: equal values rank by position, that is by
     * expert index. */
    for (int l = 0; l < NB * MR_BLOCK; l++)
        pos_l[l] = (T)l;
    for (int j = 0; j < NVB; j++) {
        pos[j] = S::load(pos_l + j * S::W);
        rank[j] = S::set(0);
    }
    for (int q = 0; q < c; q++) {
        const V vq = S::set(cv[q]), pq = S::set((T)q);
        for (int j = 0; j < NVB; j++) {
            rank[j] = S::count_gt(rank[j], vq, cvv[j]);
            rank[j] = S::count_eq_before(rank[j], vq, cvv[j], pq, pos[j]);
        }
    }
    for (int j = 0; j < NVB; j++)
        S::store(rank_l + j * S::W, rank[j]);
    for (int j = 0; j < c; j++) {
        int r = (int)rank_l[j];
        idx[r < k ? r : k] = ci[j];
    }
    return 0;
}

/* mr_cand_rank_blocks for at most MR_BLOCK candidates. */
template <class T> static MR_HOT int mr_cand_rank_block(const MrCand<T> *cd, int k, Py_ssize_t *idx, T m,
                                                        T *e_out)
{
    return mr_cand_rank_blocks<T, 1>(cd, k, idx, m, e_out);
}

/* Part 2 (late: see mr_cand_net8).  idx must hold MR_BLOCK + 1 entries and
 * e_out MR_BLOCK (they may be written past k).  Returns 1 when it also wrote exp(z[idx[j]] - m) into
 * e_out (the common case: no ties among the candidates), 0 when it did not
 * (or e_out is NULL). */
template <class T> static MR_HOT int mr_cand_select(const MrCand<T> *cd, int k, Py_ssize_t *idx, T m,
                                                    T *e_out, int late)
{
    (void)late; /* (used by the networks only) */
    const T *cv = cd->v;
    const int32_t *ci = cd->i;
    const int c = cd->c;
    const int nb = (c + MR_BLOCK - 1) / MR_BLOCK; /* candidate blocks */

    if (c <= MR_BLOCK) {
#if MR_HAVE_NET8
        if constexpr (mr_is_f32<T>)
            if (k <= 8 && mr_cand_net8(cd, k, idx, m, e_out, late))
                return e_out != NULL;
#endif
        return mr_cand_rank_blocks<T, 1>(cd, k, idx, m, e_out);
    }
    /* (16-byte vectors: 8 of them per compare round cost more than the
     * loop below; SSE2's bfloat16-valued 128/8 rows, tied, 1.13x slower) */
    if (sizeof(typename Vec<T>::V) >= 32 && c <= 2 * MR_BLOCK)
        return mr_cand_rank_blocks<T, 2>(cd, k, idx, m, e_out);

    /* Place each candidate at its rank: the number of candidates before it
     * in the order (value descending, index ascending).  Candidates are in
     * index order, so an equal value ranks above it iff it comes earlier.
     * Branch-free apart from the loop counts; ranks >= k land in the spare
     * slot idx[k]. */
    for (int j = 0; j < c; j++) {
        const T v = cv[j];
        int rank = 0;
        for (int b = 0; b < nb; b++) {
            unsigned gt = mr_block_bits(cv + b * MR_BLOCK, v, 0);
            unsigned eq = mr_block_bits(cv + b * MR_BLOCK, v, 1);
            int before = j - b * MR_BLOCK; /* positions of this block before j */
            unsigned below = before <= 0 ? 0u : before >= MR_BLOCK ? ~0u : (1u << before) - 1u;
            rank += mr_popcount(gt) + mr_popcount(eq & below);
        }
        idx[rank < k ? rank : k] = ci[j];
    }
    return 0;
}

/* Both parts, over the kept groups of a row or (kept NULL, one group of
 * size n) the whole row: -1 (not applicable), 0 or 1 as mr_cand_select;
 * ids are positions in z. */
template <class T> static inline int mr_topk_groups(const T *z, Py_ssize_t n, Py_ssize_t size,
                                                    const Py_ssize_t *kept, Py_ssize_t n_kept, int k,
                                                    const T *lanes, Py_ssize_t *idx, T m, T *e_out)
{
    MrCand<T> cd;
    if (mr_cand_gather(z, n, size, kept, n_kept, k, lanes, (T)0, &cd))
        return -1;
    return mr_cand_select(&cd, k, idx, m, e_out, 0);
}

}  // namespace

#undef MR_NV

#endif /* MOE_ROUTER_ROW_OPS_HPP */
