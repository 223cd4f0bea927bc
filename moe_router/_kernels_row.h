/*
 * Row operations, written once for both precisions: _kernels.h includes this
 * file twice, with MR_T / MR_V / MR_OP / MR_EXPV / MR_SFX defined
 * for float and then for double.  Every loop works on blocks of MR_BLOCK
 * values, MR_BLOCK / MR_W vectors each.
 */
#define MR_NV (MR_BLOCK / MR_W)

/* x[0..MR_BLOCK) = exp(x), in place. */
static inline void MR_SFX(mr_exp_block)(MR_T *x)
{
    for (int j = 0; j < MR_NV; j++)
        MR_OP(store)(x + j * MR_W, MR_EXPV(MR_OP(load)(x + j * MR_W)));
}

/* out[0..len) = exp(x[0..len)) for len <= MR_BLOCK, through one padded block. */
static inline void MR_SFX(mr_exp_short)(const MR_T *x, int len, MR_T *out)
{
    MR_T buf[MR_BLOCK];
    for (int l = 0; l < MR_BLOCK; l++) buf[l] = l < len ? x[l] : 0;
    MR_SFX(mr_exp_block)(buf);
    for (int l = 0; l < len; l++) out[l] = buf[l];
}

/*
 * Max of z[0..n), also leaving in lanes[l] the max of the elements whose
 * index is l modulo MR_BLOCK (-inf for an empty lane), and setting
 * *has_nan.  NaN does not enter the max.  The lane maxima are MR_BLOCK
 * distinct elements: their k-th largest is a lower bound of the row's
 * k-th largest.
 */
static MR_HOT MR_T MR_SFX(mr_max_lanes)(const MR_T *z, Py_ssize_t n, MR_T *lanes, int *has_nan)
{
    MR_V acc[MR_NV];
    MR_N nan_acc = MR_OP(nan_init)();
    Py_ssize_t i = 0;
    int nan_tail = 0;
    for (int j = 0; j < MR_NV; j++) acc[j] = MR_OP(set)(-INFINITY);
    for (; i + MR_BLOCK <= n; i += MR_BLOCK) {
        MR_V v[MR_NV];
        for (int j = 0; j < MR_NV; j++) {
            v[j] = MR_OP(load)(z + i + j * MR_W);
            acc[j] = MR_OP(max)(v[j], acc[j]);
        }
        /* One unordered compare finds a NaN in either of two vectors. */
        for (int j = 0; j < MR_NV; j += 2)
            nan_acc = MR_OP(nan_acc)(nan_acc, v[j], v[j + 1 < MR_NV ? j + 1 : j]);
    }
    for (int j = 0; j < MR_NV; j++) MR_OP(store)(lanes + j * MR_W, acc[j]);
    if (i < n) {
        for (int l = 0; i < n; i++, l++) {
            lanes[l] = z[i] > lanes[l] ? z[i] : lanes[l];
            nan_tail |= z[i] != z[i];
        }
        for (int j = 0; j < MR_NV; j++) acc[j] = MR_OP(load)(lanes + j * MR_W);
    }
    /* The max of the lanes by a tree of lane swaps (no NaN is left here). */
    MR_V mv = acc[0];
    for (int j = 1; j < MR_NV; j++) mv = MR_OP(max)(mv, acc[j]);
    for (int s = MR_W / 2; s >= 1; s /= 2) mv = MR_OP(max)(mv, MR_OP(swap)(mv, s));
    MR_T ml[MR_W];
    MR_OP(store)(ml, mv);
    *has_nan = MR_OP(nan_any)(nan_acc) | nan_tail;
    return ml[0];
}

/* sigmoid(x) = 1 / (1 + exp(-x)) on a vector (exactly 0 below about -88.4
 * in float32, where the exp is +inf). */
static MR_HOT MR_V MR_SFX(mr_sigmoid_v)(MR_V x)
{
    const MR_V one = MR_OP(set)(1);
    return MR_OP(div)(one, MR_OP(add)(one, MR_EXPSATV(MR_OP(sub)(MR_OP(set)(0), x))));
}

/* x[0..MR_BLOCK) = sigmoid(x), in place. */
static inline void MR_SFX(mr_sigmoid_block)(MR_T *x)
{
    for (int j = 0; j < MR_NV; j++)
        MR_OP(store)(x + j * MR_W, MR_SFX(mr_sigmoid_v)(MR_OP(load)(x + j * MR_W)));
}

/*
 * out[0..k) = exp(z[idx[j]] - m) (k <= MR_BLOCK; only the vectors that
 * hold them are computed);
 * mr_picked_sigmoid: sigmoid(z[idx[j]]).  The weights of the K picked
 * experts.  The vectors are built from scalar loads in registers: a block
 * written with scalar stores and reloaded as vectors stalls on store
 * forwarding (measured: about a tenth of the 8-expert router).
 */
static inline void MR_SFX(mr_picked_exp)(const MR_T *z, const Py_ssize_t *idx, int k, MR_T m, MR_T *out)
{
    for (int j = 0; j < MR_NV && j * MR_W < k; j++)
        MR_OP(store)(out + j * MR_W, MR_EXPV(MR_OP(gather)(z, idx + j * MR_W, k - j * MR_W, m, -INFINITY)));
}

static inline void MR_SFX(mr_picked_sigmoid)(const MR_T *z, const Py_ssize_t *idx, int k, MR_T *out)
{
    for (int j = 0; j < MR_NV && j * MR_W < k; j++)
        MR_OP(store)(out + j * MR_W, MR_SFX(mr_sigmoid_v)(MR_OP(gather)(z, idx + j * MR_W, k - j * MR_W, 0, 0)));
}

/*
 * c[i] = sigmoid(z[i]), plus bias[i] when a bias is given: the selection
 * score of sigmoid routers.  (The weights, sigmoid of the K picked logits,
 * are recomputed from z rather than stored here.)  Returns whether z holds
 * a NaN (its score is NaN; the bias is finite), so that these routers need
 * no pass over z of their own.  The tail goes through a padded block.
 */
static inline int MR_SFX(mr_sigmoid_into)(const MR_T *z, Py_ssize_t n, const MR_T *bias, MR_T *c)
{
    MR_N nan_acc = MR_OP(nan_init)();
    Py_ssize_t i = 0;
    int nan_tail = 0;
    for (; i + MR_W <= n; i += MR_W) {
        MR_V v = MR_SFX(mr_sigmoid_v)(MR_OP(load)(z + i));
        if (bias)
            v = MR_OP(add)(v, MR_OP(load)(bias + i));
        nan_acc = MR_OP(nan_acc)(nan_acc, v, v);
        MR_OP(store)(c + i, v);
    }
    if (i < n) {
        MR_T buf[MR_BLOCK];
        int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++) buf[l] = l < len ? z[i + l] : 0;
        MR_SFX(mr_sigmoid_block)(buf);
        for (int l = 0; l < len; l++) {
            c[i + l] = buf[l] + (bias ? bias[i + l] : 0);
            nan_tail |= c[i + l] != c[i + l];
        }
    }
    return MR_OP(nan_any)(nan_acc) | nan_tail;
}

/* The largest |x[i]| of x[0..n) (NaN left out; 0 for n == 0). */
static inline MR_T MR_SFX(mr_abs_max)(const MR_T *x, Py_ssize_t n)
{
    const MR_V zero = MR_OP(set)(0);
    MR_V acc = zero;
    MR_T lanes[MR_W], m = 0;
    Py_ssize_t i = 0;
    for (; i + MR_W <= n; i += MR_W) {
        const MR_V v = MR_OP(load)(x + i);
        acc = MR_OP(max)(MR_OP(max)(v, MR_OP(sub)(zero, v)), acc);  /* (a NaN v keeps acc) */
    }
    MR_OP(store)(lanes, acc);
    for (int l = 0; l < MR_W; l++) m = lanes[l] > m ? lanes[l] : m;
    for (; i < n; i++) {
        const MR_T a = x[i] < 0 ? -x[i] : x[i];
        m = a > m ? a : m;
    }
    return m;
}

/*
 * Sum of x[0..k), k <= MR_BLOCK, in the row's precision: the divisor of the
 * weights (x holds at least 8 readable values: the AVX2 form loads them).  Each block of 8 (zero-padded) is added as a tree,
 * ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)), the blocks in order.
 * One order for every path of a row (mr_sum8_f32 is the vector form of the
 * same adds), so a row's weights do not depend on which path routed it; a
 * tree, not a running sum: this sits on the row's critical path (a double
 * sum and divide there cost about 7% of the 128-expert row, measured).
 */
static MR_HOT MR_T MR_SFX(mr_sum_k)(const MR_T *x, int k)
{
#ifdef MR_NET8
    if (k <= 8)
        return mr_sum8_f32(x, k);
#endif
    MR_T s = 0;
    for (int b = 0; b < k; b += 8) {
        MR_T t[8];
        for (int l = 0; l < 8; l++) t[l] = b + l < k ? x[b + l] : 0;
        const MR_T block = ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
        s = b == 0 ? block : s + block;
    }
    return s;
}

/*
 * Sum of exp(z[i] - m).  A NaN anywhere in z makes the sum NaN: that is how
 * the kernels find NaN rows without a pass of their own.  The lanes add at
 * most 8 blocks in the row's precision before they are carried into double
 * (a float32 lane adding every block of a 2048-expert row drifted by about
 * 8e-6, measured; a carry every 4 blocks cost the SSE2 128-expert row 9%),
 * and are added in a fixed order, so the sum does not depend on the thread
 * count.
 */
static inline MR_T MR_SFX(mr_sum_exp)(const MR_T *z, Py_ssize_t n, MR_T m)
{
    MR_V acc[MR_NV];
    const MR_V vm = MR_OP(set)(m);
    Py_ssize_t i = 0;
#ifdef MR_NET8  /* AVX2 float: the 16 lanes carried in four double vectors */
    __m256d total[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
#define MR_CARRY()                                                                                  \
    for (int j = 0; j < MR_NV; j++) {                                                             \
        total[2 * j] = _mm256_add_pd(total[2 * j], _mm256_cvtps_pd(_mm256_castps256_ps128(acc[j]))); \
        total[2 * j + 1] = _mm256_add_pd(total[2 * j + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(acc[j], 1))); \
    }
#elif defined(MR_SSE2_F32)  /* SSE2 float: in eight double vectors */
    __m128d total[8];
    for (int l = 0; l < 8; l++) total[l] = _mm_setzero_pd();
#define MR_CARRY()                                                                                  \
    for (int j = 0; j < MR_NV; j++) {                                                             \
        total[2 * j] = _mm_add_pd(total[2 * j], _mm_cvtps_pd(acc[j]));                            \
        total[2 * j + 1] = _mm_add_pd(total[2 * j + 1], _mm_cvtps_pd(_mm_movehl_ps(acc[j], acc[j]))); \
    }
#else
    MR_T lanes[MR_BLOCK];
    double total[MR_BLOCK] = {0};
#define MR_CARRY()                                                                                  \
    for (int j = 0; j < MR_NV; j++) MR_OP(store)(lanes + j * MR_W, acc[j]);                        \
    for (int l = 0; l < MR_BLOCK; l++) total[l] += lanes[l];
#endif
    while (i + MR_BLOCK <= n) {
        for (int j = 0; j < MR_NV; j++) acc[j] = MR_OP(set)(0);
        for (int b = 0; b < 8 && i + MR_BLOCK <= n; b++, i += MR_BLOCK)
            for (int j = 0; j < MR_NV; j++)
                acc[j] = MR_OP(add)(acc[j], MR_EXPV(MR_OP(sub)(MR_OP(load)(z + i + j * MR_W), vm)));
        MR_CARRY()
    }
    if (i < n) {  /* the tail (< MR_BLOCK values) through one padded block */
        MR_T e[MR_BLOCK];
        int len = (int)(n - i);
        for (int l = 0; l < MR_BLOCK; l++) e[l] = l < len ? z[i + l] - m : 0;
        MR_SFX(mr_exp_short)(e, len, e);
        for (int l = len; l < MR_BLOCK; l++) e[l] = 0;
        for (int j = 0; j < MR_NV; j++) acc[j] = MR_OP(load)(e + j * MR_W);
        MR_CARRY()
    }
#undef MR_CARRY
#ifdef MR_NET8
    const __m256d t = _mm256_add_pd(_mm256_add_pd(total[0], total[1]), _mm256_add_pd(total[2], total[3]));
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return (MR_T)_mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#elif defined(MR_SSE2_F32)
    const __m128d h = _mm_add_pd(_mm_add_pd(_mm_add_pd(total[0], total[1]), _mm_add_pd(total[2], total[3])),
                                 _mm_add_pd(_mm_add_pd(total[4], total[5]), _mm_add_pd(total[6], total[7])));
    return (MR_T)_mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#else
    double s = 0;
    for (int l = 0; l < MR_BLOCK; l++) s += total[l];
    return (MR_T)s;
#endif
}

/*
 * The two largest of x[0..len) (NaN-free, len >= 1; top2 is -inf when
 * len == 1): per-lane running top-2 in vectors, then the lanes' (top1,
 * top2) pairs merged as a tree of lane swaps (a scalar merge through memory
 * was most of the group-limited routers' group scoring: measured).
 */
static inline void MR_SFX(mr_top2)(const MR_T *x, Py_ssize_t len, MR_T *top1, MR_T *top2)
{
    MR_V t1 = MR_OP(set)(-INFINITY), t2 = MR_OP(set)(-INFINITY);
    MR_T l1[MR_W], l2[MR_W];
    MR_T a, b;
    Py_ssize_t i = 0;
    for (; i + MR_W <= len; i += MR_W) {
        const MR_V v = MR_OP(load)(x + i);
        t2 = MR_OP(max)(t2, MR_OP(min)(v, t1));
        t1 = MR_OP(max)(t1, v);
    }
    for (int s = MR_W / 2; s >= 1; s /= 2) {
        const MR_V x1 = MR_OP(swap)(t1, s), x2 = MR_OP(swap)(t2, s);
        t2 = MR_OP(max)(MR_OP(max)(t2, x2), MR_OP(min)(t1, x1));
        t1 = MR_OP(max)(t1, x1);
    }
    MR_OP(store)(l1, t1);
    MR_OP(store)(l2, t2);
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
static inline Py_ssize_t MR_SFX(mr_limit_groups)(const MR_T *sel, Py_ssize_t n, Py_ssize_t n_group,
                                                 Py_ssize_t topk_group, int top2_sum,
                                                 MR_T *group_score, Py_ssize_t *kept, MR_T *lanes)
{
    const Py_ssize_t size = n / n_group;
    Py_ssize_t n_kept = 0;
    /* With lanes: the kept groups' two best values (-inf beyond), for
     * mr_kth_lane's threshold in place of a pass over the kept values; they
     * are distinct elements of them.  Only for n_group <= MR_BLOCK and
     * 2 * topk_group + 2 <= MR_BLOCK (else pass NULL). */
    MR_T best2[2 * MR_BLOCK];
    for (Py_ssize_t g = 0; g < n_group; g++) {
        MR_T t1, t2;
        MR_SFX(mr_top2)(sel + g * size, size, &t1, &t2);
        group_score[g] = top2_sum ? t1 + t2 : t1;
        if (g < MR_BLOCK) {
            best2[2 * g] = t1;
            best2[2 * g + 1] = t2;
        }
    }
    if (lanes)
        for (int l = 0; l < MR_BLOCK; l++) lanes[l] = -INFINITY;
    for (Py_ssize_t g = 0; g < n_group; g++) {
        const MR_T sg = group_score[g];
        Py_ssize_t rank = 0;
        for (Py_ssize_t h = 0; h < g; h++) rank += group_score[h] >= sg;
        for (Py_ssize_t h = g + 1; h < n_group; h++) rank += group_score[h] > sg;
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
    if (lanes) {  /* the last dropped group's pair, if any, is past the kept */
        const Py_ssize_t slot = n_kept < topk_group ? n_kept : topk_group;
        lanes[2 * slot] = -INFINITY;
        lanes[2 * slot + 1] = -INFINITY;
    }
    return n_kept < topk_group ? n_kept : topk_group;
}

/* Bit l set where z[l] > t (gt) or == t (eq), over one block of MR_BLOCK values. */
#define MR_BLOCK_BITS(NAME, CMP)                                                    \
static inline unsigned MR_SFX(NAME)(const MR_T *z, MR_T t)                          \
{                                                                                   \
    const MR_V vt = MR_OP(set)(t);                                                  \
    unsigned bits = 0;                                                              \
    for (int j = 0; j < MR_NV; j++)                                                 \
        bits |= (unsigned)MR_OP(CMP)(MR_OP(load)(z + j * MR_W), vt) << (j * MR_W);  \
    return bits;                                                                    \
}
MR_BLOCK_BITS(mr_block_gt, gt_bits)
MR_BLOCK_BITS(mr_block_eq, eq_bits)
#undef MR_BLOCK_BITS

/*
 * rank[j] lane l = how many of v[0..MR_BLOCK) are greater than lane l of
 * vv[j] (vv holds the same values, loaded).  Four independent counts per
 * vector, added at the end: one running count made a chain of 16 dependent
 * adds (the lane ranks were latency-bound).
 */
static inline void MR_SFX(mr_rank_gt)(const MR_T *v, const MR_V *vv, MR_V *rank)
{
    MR_V acc[4][MR_NV];
    for (int a = 0; a < 4; a++)
        for (int j = 0; j < MR_NV; j++) acc[a][j] = MR_OP(set)(0);
    for (int q = 0; q < MR_BLOCK; q += 4)
        for (int a = 0; a < 4; a++) {
            const MR_V vq = MR_OP(set)(v[q + a]);
            for (int j = 0; j < MR_NV; j++) acc[a][j] = MR_OP(count_gt)(acc[a][j], vq, vv[j]);
        }
    for (int j = 0; j < MR_NV; j++)
        rank[j] = MR_OP(add)(MR_OP(add)(acc[0][j], acc[1][j]), MR_OP(add)(acc[2][j], acc[3][j]));
}

/*
 * Top-k of a NaN-free row for k <= MR_BLOCK, in the order (value
 * descending, index ascending), in two parts so that two rows can be
 * interleaved (mr_topk_pair):
 *
 * 1. mr_cand_gather: t = the k-th largest lane maximum (`lanes`, from
 *    mr_max_lanes): at least k elements are >= t.  The elements >= t
 *    (about 10 of 128 for k = 8 on random logits) are the candidates, taken
 *    in index order with one vector compress per vector, so that no branch
 *    depends on the data (AVX-512, or a lookup table of permutations on
 *    AVX2).
 * 2. mr_cand_select: the k best candidates; equal values rank by index,
 *    the smaller first.
 */
#ifndef MR_MAX_CAND
#define MR_MAX_CAND 64
#endif
/* A block adds at most MR_BLOCK candidates (and may write that many past
 * the count), so the buffers hold MR_MAX_CAND + 2 blocks. */
typedef struct {
    MR_T v[MR_MAX_CAND + 2 * MR_BLOCK];
    int32_t i[MR_MAX_CAND + 2 * MR_BLOCK];
    int c;
} MR_SFX(mr_cand);

/* The k-th largest of lanes[0..MR_BLOCK), 1 <= k <= MR_BLOCK. */
static MR_HOT MR_T MR_SFX(mr_kth_lane)(const MR_T *lanes, int k)
{
#ifdef MR_NET8
    if (k <= 8)
        return vf_net_kth16(lanes, k);
#endif
    /* rank[l] = number of lanes above lane l, for all l at once; the
     * answer is the smallest lane ranked < k.  All vector operations: a
     * scalar loop here compiled to data-dependent branches (measured:
     * 95 ns/row). */
    MR_V lv[MR_NV], rank[MR_NV];
    MR_T tl[MR_W];
    MR_T t = INFINITY;
    const MR_V vk = MR_OP(set)((MR_T)k);
    for (int j = 0; j < MR_NV; j++) lv[j] = MR_OP(load)(lanes + j * MR_W);
    MR_SFX(mr_rank_gt)(lanes, lv, rank);
    MR_V tv = MR_OP(keep_lt)(lv[0], rank[0], vk);
    for (int j = 1; j < MR_NV; j++) tv = MR_OP(min)(tv, MR_OP(keep_lt)(lv[j], rank[j], vk));
    MR_OP(store)(tl, tv);
    for (int l = 0; l < MR_W; l++) t = tl[l] < t ? tl[l] : t;
    return t;
}

/* Part 1, over the n_kept groups of `size` values that start at kept[g] *
 * size (kept NULL: one group, the row z[0..n)); ids are positions in z.
 * The threshold is lowered by `slack` (0 but for approximate scores:
 * mr_sigmoid_topk).  Returns 0, or -1 when the method does not apply (t is
 * -inf, or more than MR_MAX_CAND candidates: many ties); the caller then
 * takes the general path. */
static MR_HOT int MR_SFX(mr_cand_gather)(const MR_T *z, Py_ssize_t n, Py_ssize_t size,
                                                const Py_ssize_t *kept, Py_ssize_t n_kept, int k,
                                                const MR_T *lanes, MR_T slack, MR_SFX(mr_cand) *cd)
{
    MR_T *cv = cd->v;
    int32_t *ci = cd->i;
    int c = 0;
    if (k > MR_BLOCK || n > INT32_MAX)  /* ids are int32 */
        return -1;
    const MR_T t = MR_SFX(mr_kth_lane)(lanes, k) - slack;
    if (t == -INFINITY)
        return -1;
    for (Py_ssize_t g = 0; g < n_kept; g++) {
        const Py_ssize_t base = kept ? kept[g] * size : 0;
        const MR_T *zg = z + base;
        Py_ssize_t i = 0;
        for (; i + MR_BLOCK <= size; i += MR_BLOCK) {
            if (c > MR_MAX_CAND)
                return -1;
            for (int j = 0; j < MR_NV; j++)
                c += MR_OP(compress_ge)(zg + i + j * MR_W, t, (int32_t)(base + i + j * MR_W), cv + c, ci + c);
        }
        if (c > MR_MAX_CAND)
            return -1;
        for (; i < size; i++) {  /* fewer than MR_BLOCK */
            cv[c] = zg[i];
            ci[c] = (int32_t)(base + i);
            c += zg[i] >= t;
        }
    }
    for (int j = 0; j < MR_NV; j++)  /* pads the last block: below every candidate */
        MR_OP(store)(cv + c + j * MR_W, MR_OP(set)(-INFINITY));
    memset(ci + c, 0, MR_BLOCK * sizeof(int32_t));
    cd->c = c;
    return 0;
}

#ifdef MR_NET8
/* The 16 candidates' exp(value - m), slots 0-7 into *e0 and 8-15 into *e1,
 * when wanted (e_out given).  Taken before the network, beside it, so that the exp
 * is not on the row's chain of dependent steps after the sort. */
static MR_HOT void mr_net8_exp(__m256 v0, __m256 v1, float m, int want, __m256 *e0, __m256 *e1)
{
    *e0 = *e1 = _mm256_setzero_ps();
    if (want) {
        *e0 = MR_EXPV(_mm256_sub_ps(v0, _mm256_set1_ps(m)));
        *e1 = MR_EXPV(_mm256_sub_ps(v1, _mm256_set1_ps(m)));
    }
}
/* The networks' answer: the 8 best candidates' ids and their exps (e0, e1
 * of mr_net8_exp), in order, into idx[0..8) and (when given) e_out[0..8). */
static MR_HOT void mr_net8_put(__m256i ids, __m256i slot, __m256 e0, __m256 e1, Py_ssize_t *idx, float *e_out)
{
    _mm256_storeu_si256((__m256i *)idx, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ids)));
    _mm256_storeu_si256((__m256i *)(idx + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ids, 1)));
    if (e_out)
        _mm256_storeu_ps(e_out, vf_by_slot(e0, e1, slot));
}

/* mr_cand_select for k <= 8 and at most 16 candidates, by sorting network
 * on keys (vi_net_top8).  Returns 1 when it wrote idx[0..8) (and e_out[0..8),
 * when given; the first k are the answer), 0 when the keys may not keep
 * the values' order (vi_net_close: close values, or a tie at the k-th),
 * which leaves the order to the exact code.  The candidates are loaded as
 * scalars: a vector load of what the compress wrote with overlapping vector
 * stores waits for those stores to reach the cache (store forwarding fails;
 * measured: about 60 cycles a row).  `late`: enough work ran since the compress for its stores to have
 * reached the cache (mr_topk_pair), so two vector loads do. */
static MR_HOT int MR_SFX(mr_cand_net8)(const MR_SFX(mr_cand) *cd, int k, Py_ssize_t *idx,
                                       MR_T m, MR_T *e_out, int late)
{
    const float *cv = cd->v;
    const __m256 v0 = late ? _mm256_loadu_ps(cv)
                           : _mm256_setr_ps(cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7]);
    const __m256 v1 = late ? _mm256_loadu_ps(cv + 8)
                           : _mm256_setr_ps(cv[8], cv[9], cv[10], cv[11], cv[12], cv[13], cv[14], cv[15]);
    __m256i top, next;
    __m256 e0, e1;
    mr_net8_exp(v0, v1, m, e_out != NULL, &e0, &e1);
    vi_net_top8(v0, v1, &top, &next);
    if (vi_net_close(top, next, k, v0, v1))
        return 0;
    const __m256i slot = vi_net_slot(top);
    mr_net8_put(_mm256_i32gather_epi32((const int *)cd->i, slot, 4), slot, e0, e1, idx, e_out);
    return 1;
}
/*
 * The plain router's candidates for n <= 256 experts (a multiple of 8) and
 * k <= 8: only their ids, as bytes, straight from the 8-byte lookup table
 * (its entry plus the vector's first id in every byte), with no vector
 * shuffle or store for the values; mr_ids8_net8 gathers the values.  The
 * compress of values and int32 ids (mr_cand_gather) spent most of its
 * time on those shuffles and stores (measured).  Returns the number of
 * candidates; ids8 holds at least max(n, 16) bytes.
 */
/* One vector of 8 values at v: the ids (its first id `first` in every byte)
 * of those >= t to ids8[c...]; returns the new count. */
static MR_HOT size_t mr_ids8_put(const float *v, __m256 vt, uint64_t first, uint8_t *ids8, size_t c)
{
    const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v), vt, _CMP_GE_OQ));
    const uint64_t ids = mr_pack_lut[m] + first;
    memcpy(ids8 + c, &ids, 8);
    return c + (size_t)_mm_popcnt_u32(m);
}
static MR_HOT int mr_ids8_gather(const float *z, Py_ssize_t n, float t, uint8_t *ids8)
{
    const __m256 vt = _mm256_set1_ps(t);
    const uint64_t step = 0x0808080808080808ull;  /* + 8 in every byte */
    uint64_t first = 0;  /* the vector's first id, in every byte */
    size_t c = 0;
    Py_ssize_t i = 0;
    memset(ids8, 0, 16);  /* (bytes past c are read, never used) */
    /* Two vectors a step: one loop overhead and one id update per 16
     * experts (measured: 15 instructions per vector, now about 10). */
    for (; i + 16 <= n; i += 16, first += 2 * step)
        c = mr_ids8_put(z + i + 8, vt, first + step, ids8, mr_ids8_put(z + i, vt, first, ids8, c));
    if (i < n)  /* n % 16 == 8 */
        c = mr_ids8_put(z + i, vt, first, ids8, c);
    return (int)c;
}

/* mr_cand_net8 on the c <= 16 candidates of mr_ids8_gather: their values
 * gathered from z (slots past c: -inf), then the same keys, network and
 * outputs.  Where the network leaves the order to exact code
 * (vi_net_close) it returns 0 with the candidates in *cd, one padded block
 * as mr_cand_gather leaves them, for mr_cand_rank_block (gathering them
 * again was measured 1.13-1.25x slower on rows of bfloat16 logits, when
 * every tie went that way). */
static MR_HOT int mr_ids8_net8(const float *z, const uint8_t *ids8, int c, int k, Py_ssize_t *idx,
                               float m, float *e_out, mr_cand_f32 *cd)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)ids8);
    const __m256i i0 = _mm256_cvtepu8_epi32(b), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vc = _mm256_set1_epi32(c);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256 v0 = _mm256_mask_i32gather_ps(ninf, z, i0, _mm256_castsi256_ps(_mm256_cmpgt_epi32(vc, lane)), 4);
    const __m256 v1 = _mm256_mask_i32gather_ps(
        ninf, z, i1, _mm256_castsi256_ps(_mm256_cmpgt_epi32(vc, _mm256_add_epi32(lane, _mm256_set1_epi32(8)))), 4);
    __m256i top, next;
    __m256 e0, e1;
    mr_net8_exp(v0, v1, m, e_out != NULL, &e0, &e1);
    vi_net_top8(v0, v1, &top, &next);
    if (vi_net_close(top, next, k, v0, v1)) {
        _mm256_storeu_ps(cd->v, v0);
        _mm256_storeu_ps(cd->v + 8, v1);
        _mm256_storeu_si256((__m256i *)cd->i, i0);
        _mm256_storeu_si256((__m256i *)(cd->i + 8), i1);
        cd->c = c;
        return 0;
    }
    const __m256i slot = vi_net_slot(top);
    mr_net8_put(_mm256_castps_si256(vf_by_slot(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(i1), slot)),
                slot, e0, e1, idx, e_out);
    return 1;
}
#endif

/* mr_cand_select for at most MR_BLOCK candidates (the cases
 * mr_cand_net8 leaves: see vi_net_close; k > 8). */
static MR_HOT int MR_SFX(mr_cand_rank_block)(const MR_SFX(mr_cand) *cd, int k, Py_ssize_t *idx,
                                             MR_T m, MR_T *e_out)
{
    const MR_T *cv = cd->v;
    const int32_t *ci = cd->i;
    const int c = cd->c;
    /* Every rank at once, with vector compares against each candidate q
     * in turn, first by value only and over the whole block (no loop
     * count that depends on c; the padding, -inf, ranks c >= k). */
    MR_V cvv[MR_NV], pos[MR_NV], rank[MR_NV];
    MR_T pos_l[MR_BLOCK], rank_l[MR_BLOCK], ev[MR_BLOCK];
    int unique = 1;
    for (int j = 0; j < MR_NV; j++) cvv[j] = MR_OP(load)(cv + j * MR_W);
    MR_SFX(mr_rank_gt)(cv, cvv, rank);
    /* rank = how many candidates are greater.  When exactly one
     * candidate has rank r for each r < k, those are the top k in
     * order: equal values would share a rank r < k (and leave r + 1
     * empty).  Ties further down do not matter.  Each winner is found
     * with a vector compare per rank (scattering every candidate to
     * its rank through memory made the reads of the result wait on
     * stores to late-known addresses: measured slower).  With e_out,
     * exp(value - m) of the picked comes from the candidates still in
     * registers (gathering them from z into a block through memory
     * stalled on store forwarding: measured). */
    if (e_out) {
        const MR_V vm = MR_OP(set)(m);
        for (int j = 0; j < MR_NV; j++)
            MR_OP(store)(ev + j * MR_W, MR_EXPV(MR_OP(sub)(cvv[j], vm)));
    }
    for (int r = 0; r < k; r++) {
        const MR_V vr = MR_OP(set)((MR_T)r);
        unsigned bits = 0;
        for (int j = 0; j < MR_NV; j++)
            bits |= (unsigned)MR_OP(eq_bits)(rank[j], vr) << (j * MR_W);
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
    for (int l = 0; l < MR_BLOCK; l++) pos_l[l] = (MR_T)l;
    for (int j = 0; j < MR_NV; j++) {
        pos[j] = MR_OP(load)(pos_l + j * MR_W);
        rank[j] = MR_OP(set)(0);
    }
    for (int q = 0; q < c; q++) {
        const MR_V vq = MR_OP(set)(cv[q]), pq = MR_OP(set)((MR_T)q);
        for (int j = 0; j < MR_NV; j++) {
            rank[j] = MR_OP(count_gt)(rank[j], vq, cvv[j]);
            rank[j] = MR_OP(count_eq_before)(rank[j], vq, cvv[j], pq, pos[j]);
        }
    }
    for (int j = 0; j < MR_NV; j++) MR_OP(store)(rank_l + j * MR_W, rank[j]);
    for (int j = 0; j < c; j++) {
        int r = (int)rank_l[j];
        idx[r < k ? r : k] = ci[j];
    }
    return 0;
}

/* Part 2 (late: see mr_cand_net8).  idx must hold MR_BLOCK + 1 entries and
 * e_out MR_BLOCK (they may be written past k).  Returns 1 when it also wrote exp(z[idx[j]] - m) into
 * e_out (the common case: no ties among the candidates), 0 when it did not
 * (or e_out is NULL). */
static MR_HOT int MR_SFX(mr_cand_select)(const MR_SFX(mr_cand) *cd, int k, Py_ssize_t *idx,
                                         MR_T m, MR_T *e_out, int late)
{
    const MR_T *cv = cd->v;
    const int32_t *ci = cd->i;
    const int c = cd->c;
    const int nb = (c + MR_BLOCK - 1) / MR_BLOCK;  /* candidate blocks */

    if (c <= MR_BLOCK) {
#ifdef MR_NET8
        if (k <= 8 && MR_SFX(mr_cand_net8)(cd, k, idx, m, e_out, late))
            return e_out != NULL;
#endif
        return MR_SFX(mr_cand_rank_block)(cd, k, idx, m, e_out);
    }

    /* Place each candidate at its rank: the number of candidates before it
     * in the order (value descending, index ascending).  Candidates are in
     * index order, so an equal value ranks above it iff it comes earlier.
     * Branch-free apart from the loop counts; ranks >= k land in the spare
     * slot idx[k]. */
    for (int j = 0; j < c; j++) {
        const MR_T v = cv[j];
        int rank = 0;
        for (int b = 0; b < nb; b++) {
            unsigned gt = MR_SFX(mr_block_gt)(cv + b * MR_BLOCK, v);
            unsigned eq = MR_SFX(mr_block_eq)(cv + b * MR_BLOCK, v);
            int before = j - b * MR_BLOCK;  /* positions of this block before j */
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
static inline int MR_SFX(mr_topk_groups)(const MR_T *z, Py_ssize_t n, Py_ssize_t size,
                                         const Py_ssize_t *kept, Py_ssize_t n_kept, int k,
                                         const MR_T *lanes, Py_ssize_t *idx, MR_T m, MR_T *e_out)
{
    MR_SFX(mr_cand) cd;
    if (MR_SFX(mr_cand_gather)(z, n, size, kept, n_kept, k, lanes, 0, &cd))
        return -1;
    return MR_SFX(mr_cand_select)(&cd, k, idx, m, e_out, 0);
}

/*
 * The top-k of c = sigmoid(z) + bias (bias may be NULL) over the best
 * topk_group of n_group groups (group score: the sum of its two best c),
 * for k <= MR_BLOCK: the selection of the biased, grouped sigmoid routers
 * (DeepSeek-V3).  Writes the expert ids, in order, to idx[0..k) (idx holds
 * MR_BLOCK + 1) and returns 1; returns 0 when the row is left to the exact
 * path (_route_row): a NaN, a group choice or a candidate set it cannot
 * be sure of, or a build without the AVX2 networks.
 *
 * Select on cheap scores, decide on exact ones.  c~ (in c[0..n)) is within
 * `slack` of the exact c that _route_row computes (mr_sigmoid_into): a
 * degree-3 polynomial for 2^f in the exp and the reciprocal estimate in
 * place of the divide (about half the cycles of the exact pass, which was
 * 40% of the DeepSeek-V3 router: measured).  Then, exactly as the exact
 * path would decide:
 * - the groups: kept from c~; certain when every kept group's score is more
 *   than 5 * slack above every dropped one's (a group score, a sum of two
 *   values, is within 2 * slack plus its rounding); else the exact path.
 * - the experts: every expert whose exact c is among the k best, or ties
 *   with the k-th, has c~ >= (k-th best c~) - 2 * slack, so those
 *   candidates hold the answer.  Their exact c, recomputed from z and the
 *   bias with the exact path's own operations (the same bits), is what
 *   mr_cand_select ranks, so the ids and their order are the exact path's.
 */
#ifdef MR_NET8
/* 1 / (1 + exp(-x)) within 5.2e-4 absolute (before any bias): 2^f on
 * |f| <= 1/2 to 7.5e-5 relative (a near-minimax cubic), the reciprocal
 * estimate to 1.5 * 2^-12 (architectural bound; 2^-11 is allowed for).
 * NaN stays NaN. */
static MR_HOT __m256 vf_sigmoid_approx(__m256 x)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    /* 1.5 * 2^23 + 127: t's low bits are n + 127, 2^n's exponent field */
    const __m256 magic = _mm256_set1_ps(12583039.0f);
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    const __m256 t = _mm256_fnmadd_ps(xc, log2e, magic);  /* magic + round(-x log2 e) */
    const __m256 nn = _mm256_sub_ps(t, magic);
    const __m256 f = _mm256_fnmsub_ps(xc, log2e, nn);      /* -x log2 e - n, |f| <= 1/2 */
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.05517167f), f, _mm256_set1_ps(0.24261114f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69326097f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.99992806f));
    const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
    return _mm256_rcp_ps(_mm256_fmadd_ps(p, pow2n, _mm256_set1_ps(1.0f)));
}
#endif

#ifdef MR_NET8
/* The two best of the union of two (best, second) pairs, lane-wise. */
static MR_HOT void vf_top2_merge(__m256 a1, __m256 b1, __m256 a2, __m256 b2, __m256 *a, __m256 *b)
{
    *b = _mm256_max_ps(_mm256_min_ps(a1, a2), _mm256_max_ps(b1, b2));
    *a = _mm256_max_ps(a1, a2);
}

/*
 * mr_limit_groups (top2_sum) for exactly 8 groups, with every group at once
 * in the lanes of a vector: each group's per-lane two best (a[g], b[g]),
 * merged down to one lane per group; the ranks by rotation.
 * Also returns the lowest kept and the highest dropped group score.
 * (mr_limit_groups' per-group horizontal merges and scalar ranking were
 * about a quarter of the DeepSeek-V3 router: measured.)
 */
static MR_HOT Py_ssize_t vf_groups8_top2(__m256 *a, __m256 *b, Py_ssize_t topk_group,
                                         Py_ssize_t *kept, float *lanes, float *lo, float *hi)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 a1[4], b1[4], a2[2], b2[2], a3, b3;
    /* a[g], b[g]: the two best of each lane of group g (mr_sig_scores).
     * Halve the lanes per group three times, packing groups together
     * (28 shuffles; two 8x8 transposes took 48): first the 128-bit halves,
     * groups g and g + 4 side by side ... */
    for (int g = 0; g < 4; g++)
        vf_top2_merge(_mm256_permute2f128_ps(a[g], a[g + 4], 0x20), _mm256_permute2f128_ps(b[g], b[g + 4], 0x20),
                      _mm256_permute2f128_ps(a[g], a[g + 4], 0x31), _mm256_permute2f128_ps(b[g], b[g + 4], 0x31),
                      &a1[g], &b1[g]);
    /* ... then lane pairs: each half holds groups g, g + 1 (2 lanes each) ... */
    for (int g = 0; g < 2; g++)
        vf_top2_merge(_mm256_shuffle_ps(a1[2 * g], a1[2 * g + 1], 0x44), _mm256_shuffle_ps(b1[2 * g], b1[2 * g + 1], 0x44),
                      _mm256_shuffle_ps(a1[2 * g], a1[2 * g + 1], 0xEE), _mm256_shuffle_ps(b1[2 * g], b1[2 * g + 1], 0xEE),
                      &a2[g], &b2[g]);
    /* ... then single lanes: lane g is group g. */
    vf_top2_merge(_mm256_shuffle_ps(a2[0], a2[1], 0x88), _mm256_shuffle_ps(b2[0], b2[1], 0x88),
                  _mm256_shuffle_ps(a2[0], a2[1], 0xDD), _mm256_shuffle_ps(b2[0], b2[1], 0xDD), &a3, &b3);
    const __m256 score = _mm256_add_ps(a3, b3);
    /* rank of group g: groups h < g scoring >= it, h > g scoring > it */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i rank = _mm256_setzero_si256();
    for (int r = 1; r < 8; r++) {
        const __m256i perm = _mm256_and_si256(_mm256_add_epi32(lane, _mm256_set1_epi32(r)), _mm256_set1_epi32(7));
        const __m256 other = _mm256_permutevar8x32_ps(score, perm);
        /* lanes g < 8 - r compare with h = g + r > g */
        const __m256 after = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8 - r), lane));
        const __m256 beats = _mm256_blendv_ps(_mm256_cmp_ps(other, score, _CMP_GE_OQ),
                                              _mm256_cmp_ps(other, score, _CMP_GT_OQ), after);
        rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
    }
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)topk_group), rank));
    unsigned bits = (unsigned)_mm256_movemask_ps(keep);
    Py_ssize_t n_kept = 0;
    for (unsigned m = bits; m; m &= m - 1)
        kept[n_kept++] = mr_ctz(m);
    _mm256_storeu_ps(lanes, _mm256_blendv_ps(ninf, a3, keep));
    _mm256_storeu_ps(lanes + 8, _mm256_blendv_ps(ninf, b3, keep));
    /* lo in the lower half, -hi in the upper: one min tree for both */
    __m256 lh = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), score, keep);
    __m256 dh = _mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), score), _mm256_set1_ps(INFINITY), keep);
    lh = _mm256_min_ps(_mm256_permute2f128_ps(lh, dh, 0x20), _mm256_permute2f128_ps(lh, dh, 0x31));
    lh = _mm256_min_ps(lh, _mm256_permute_ps(lh, 0x4E));
    lh = _mm256_min_ps(lh, _mm256_permute_ps(lh, 0xB1));
    *lo = _mm256_cvtss_f32(lh);
    *hi = -_mm256_cvtss_f32(_mm256_permute2f128_ps(lh, lh, 0x11));
    return n_kept;
}
#endif

#ifdef MR_NET8
/* Whether mr_sigmoid_topk can take rows of this shape at all. */
static inline int mr_sig_applies(Py_ssize_t n, Py_ssize_t n_group, Py_ssize_t topk_group, int k,
                                 float slack)
{
    return n % 16 == 0 && k <= MR_BLOCK && slack < 0.01f  /* (an infinite bias: slack is inf) */
        && (n_group == 1 || (n_group <= MR_BLOCK && 2 * topk_group + 2 <= MR_BLOCK
                             && k <= 2 * topk_group));
}

/* Whether vf_groups8_top2 takes these groups: 8 of a multiple of 16. */
static inline int mr_sig_groups8(Py_ssize_t n, Py_ssize_t n_group) { return n_group == 8 && n % 128 == 0; }

/* Step 1: c[0..n) = the approximate scores; 0 when there is a NaN.  With
 * ga, gb (mr_sig_groups8): each group's per-lane two best as well, taken
 * while the scores are in registers. */
static MR_HOT int mr_sig_scores(const float *z, Py_ssize_t n, const float *bias, float *c,
                                __m256 *ga, __m256 *gb)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const int parts = ga ? 8 : 1;
    const Py_ssize_t span = n / parts;
    __m256 nan_acc = _mm256_setzero_ps();
    for (int g = 0; g < parts; g++) {
        __m256 t1 = ninf, t2 = ninf;
        for (Py_ssize_t i = g * span; i < (g + 1) * span; i += 16) {
            __m256 v0 = vf_sigmoid_approx(_mm256_loadu_ps(z + i));
            __m256 v1 = vf_sigmoid_approx(_mm256_loadu_ps(z + i + 8));
            if (bias) {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias + i));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + i + 8));
            }
            nan_acc = _mm256_or_ps(nan_acc, _mm256_cmp_ps(v0, v1, _CMP_UNORD_Q));
            _mm256_storeu_ps(c + i, v0);
            _mm256_storeu_ps(c + i + 8, v1);
            if (ga) {
                t2 = _mm256_max_ps(t2, _mm256_min_ps(v0, t1));
                t1 = _mm256_max_ps(t1, v0);
                t2 = _mm256_max_ps(t2, _mm256_min_ps(v1, t1));
                t1 = _mm256_max_ps(t1, v1);
            }
        }
        if (ga) {
            ga[g] = t1;
            gb[g] = t2;
        }
    }
    return !_mm256_movemask_ps(nan_acc);
}

/* Step 2: the kept groups (kept[], *n_kept; one group without groups) and
 * the threshold lanes; 0 when the kept groups are not certain. */
static MR_HOT int mr_sig_groups(const float *c, Py_ssize_t n, Py_ssize_t n_group, Py_ssize_t topk_group,
                                float slack, __m256 *ga, __m256 *gb, Py_ssize_t *kept, float *lanes,
                                Py_ssize_t *n_kept)
{
    float lo = INFINITY, hi = -INFINITY, group_score[MR_BLOCK];
    if (n_group == 1) {
        int has_nan;
        mr_max_lanes_f32(c, n, lanes, &has_nan);
        kept[0] = 0;
        *n_kept = 1;
        return 1;
    }
    if (mr_sig_groups8(n, n_group)) {
        *n_kept = vf_groups8_top2(ga, gb, topk_group, kept, lanes, &lo, &hi);
    } else {
        Py_ssize_t q = 0;
        *n_kept = mr_limit_groups_f32(c, n, n_group, topk_group, 1, group_score, kept, lanes);
        for (Py_ssize_t g = 0; g < n_group; g++) {
            const int is_kept = q < *n_kept && kept[q] == g;
            q += is_kept;
            lo = is_kept && group_score[g] < lo ? group_score[g] : lo;
            hi = !is_kept && group_score[g] > hi ? group_score[g] : hi;
        }
    }
    return lo - hi > 5 * slack;
}

/* Step 4: the candidates' exact scores, with the exact path's operations;
 * the padding of the last block stays below every one of them. */
static MR_HOT void mr_sig_exact(const float *z, const float *bias, mr_cand_f32 *cd)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < cd->c; j += 8) {
        const __m256i id = _mm256_loadu_si256((const __m256i *)(cd->i + j));
        __m256 v = mr_sigmoid_v_f32(_mm256_i32gather_ps(z, id, 4));
        if (bias)
            v = _mm256_add_ps(v, _mm256_i32gather_ps(bias, id, 4));
        const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cd->c - j), iota));
        _mm256_storeu_ps(cd->v + j, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, live));
    }
}
#endif

/* For tests: out[0..n) = mr_sigmoid_topk's approximate scores of x (no
 * bias; n a multiple of 16).  Returns -1 in a build without them (nothing
 * written), else whether x holds a NaN. */
static inline int MR_SFX(mr_sigmoid_approx)(const MR_T *x, Py_ssize_t n, MR_T *out)
{
#ifdef MR_NET8
    return n % 16 ? -1 : !mr_sig_scores(x, n, NULL, out, NULL, NULL);
#else
    (void)x; (void)n; (void)out;
    return -1;
#endif
}

/* Each step written out for row 0 and row 1 of a pair (a loop over the
 * rows, which gcc kept, measured slower); MR_ONE: the same for one row. */
#define MR_PAIR(h, STMT) { enum { h = 0 }; STMT; } { enum { h = 1 }; STMT; }
#define MR_ONE(h, STMT) { enum { h = 0 }; STMT; }

#ifdef MR_NET8
/* The steps of mr_sigmoid_topk for the rows of EACH (MR_ONE, MR_PAIR): row
 * h at z + h * n, its scores at c + h * n, its groups at kept + h * n_group,
 * ids at idx + h * (MR_BLOCK + 1), weights at e_out + h * MR_BLOCK; ok[h]
 * (the caller's) says whether they were written. */
#define MR_SIG_STEPS(EACH, ROWS)                                                               \
    float lanes[ROWS][MR_BLOCK];                                                               \
    mr_cand_f32 cd[ROWS];                                                                      \
    Py_ssize_t n_kept[ROWS];                                                                   \
    __m256 ga[ROWS][8], gb[ROWS][8];                                                           \
    const int applies = mr_sig_applies(n, n_group, topk_group, k, slack);                      \
    const int g8 = mr_sig_groups8(n, n_group);                                                 \
    EACH(h, ok[h] = applies && mr_sig_scores(z + h * n, n, bias, c + h * n,                    \
                                             g8 ? ga[h] : NULL, gb[h]))                        \
    EACH(h, ok[h] = ok[h] && mr_sig_groups(c + h * n, n, n_group, topk_group, slack, ga[h],    \
                                           gb[h], kept + h * n_group, lanes[h], &n_kept[h]))   \
    EACH(h, ok[h] = ok[h] && mr_cand_gather_f32(c + h * n, n, n / n_group, kept + h * n_group, \
                                                n_kept[h], k, lanes[h], 2 * slack, &cd[h]) == 0) \
    EACH(h, if (ok[h]) mr_sig_exact(z + h * n, bias, &cd[h]))                                 \
    EACH(h, if (ok[h]) mr_cand_select_f32(&cd[h], k, idx + h * (MR_BLOCK + 1), 0, NULL, 1))   \
    EACH(h, if (ok[h]) mr_picked_sigmoid_f32(z + h * n, idx + h * (MR_BLOCK + 1), k,           \
                                             e_out + h * MR_BLOCK))
#endif

/* mr_sigmoid_topk for one row: 1 when idx[0..k) holds the ids (idx holds
 * MR_BLOCK + 1) and e_out[0..k) their sigmoid (mr_picked_sigmoid: the
 * weights before scaling; e_out holds MR_BLOCK), 0 when the row is left to
 * the exact path. */
static inline int MR_SFX(mr_sigmoid_topk)(const MR_T *z, Py_ssize_t n, const MR_T *bias,
                                          Py_ssize_t n_group, Py_ssize_t topk_group, int k, MR_T slack,
                                          MR_T *c, Py_ssize_t *kept, Py_ssize_t *idx, MR_T *e_out)
{
#ifdef MR_NET8
    int ok[1];
    MR_SIG_STEPS(MR_ONE, 1)
    return ok[0];
#else
    (void)z; (void)n; (void)bias; (void)n_group; (void)topk_group; (void)k; (void)slack;
    (void)c; (void)kept; (void)idx; (void)e_out;
    return 0;
#endif
}

/* The same for the rows z[0..n) and z[n..2n), each step done for both rows
 * before the next (see mr_topk_pair): c holds 2n scores, kept 2 * n_group
 * groups, idx 2 * (MR_BLOCK + 1) ids, e_out 2 * MR_BLOCK weights.
 * status[h] is 1 when row h's ids are at idx[h * (MR_BLOCK + 1)...] and
 * their sigmoid at e_out[h * MR_BLOCK...], -1 when the row is left to the
 * exact path (as mr_topk_pair's status). */
static inline void MR_SFX(mr_sigmoid_topk_pair)(const MR_T *z, Py_ssize_t n, const MR_T *bias,
                                                Py_ssize_t n_group, Py_ssize_t topk_group, int k,
                                                MR_T slack, MR_T *c, Py_ssize_t *kept,
                                                Py_ssize_t *idx, MR_T *e_out, int *status)
{
#ifdef MR_NET8
    int ok[2];
    MR_SIG_STEPS(MR_PAIR, 2)
    MR_PAIR(h, status[h] = ok[h] ? 1 : -1)
#else
    (void)z; (void)n; (void)bias; (void)n_group; (void)topk_group; (void)k; (void)slack;
    (void)c; (void)kept; (void)idx; (void)e_out;
    status[0] = status[1] = -1;
#endif
}

/*
 * The softmax top-k of the two rows z[0..n) and z[n..2n) (k <= MR_BLOCK),
 * each step done for both rows before the next: a row is a chain of
 * dependent steps (max, threshold, compress, select, exp) that one row
 * alone leaves the core mostly waiting on.  Row h's ids go to
 * idx[h * (MR_BLOCK + 1) ...], exp(z[id] - max) to e_out[h * MR_BLOCK ...],
 * its max to m_out[h] and what mr_topk_groups would return to status[h]
 * (-1 also for a row with a NaN or an infinite max: the general path's).
 */
static inline void MR_SFX(mr_topk_pair)(const MR_T *z, Py_ssize_t n, int k, Py_ssize_t *idx,
                                        MR_T *e_out, MR_T *m_out, int *status)
{
    MR_T lanes[2][MR_BLOCK];
    MR_SFX(mr_cand) cd[2];
    int has_nan[2], ok[2], general[2] = {1, 1}, late = 1;
    MR_PAIR(h, m_out[h] = MR_SFX(mr_max_lanes)(z + h * n, n, lanes[h], &has_nan[h]))
    MR_PAIR(h, ok[h] = !has_nan[h] && m_out[h] < INFINITY)
#ifdef MR_NET8
    if (k <= 8 && n >= 128 && n <= 256 && n % 8 == 0) {  /* (n < 128: slower, measured) */
        uint8_t ids8[2][256 + 8];
        MR_T t[2];
        int c[2];
        MR_PAIR(h, t[h] = ok[h] ? MR_SFX(mr_kth_lane)(lanes[h], k) : -INFINITY)
        MR_PAIR(h, c[h] = t[h] > -INFINITY ? mr_ids8_gather(z + h * n, n, t[h], ids8[h]) : 0)
        MR_PAIR(h, status[h] = c[h] > 0 && c[h] <= 16
                    ? mr_ids8_net8(z + h * n, ids8[h], c[h], k, idx + h * (MR_BLOCK + 1), m_out[h],
                                   e_out + h * MR_BLOCK, &cd[h])
                    : -2)
        /* Left to exact code by the network: ranked on the same candidates. */
        MR_PAIR(h, if (status[h] == 0)
                       status[h] = MR_SFX(mr_cand_rank_block)(&cd[h], k, idx + h * (MR_BLOCK + 1), m_out[h],
                                                              e_out + h * MR_BLOCK))
        /* More than 16 candidates, or none (t = -inf): the general selection
         * below, as rows of other shapes (not late: a lone row's select
         * follows its own gather). */
        MR_PAIR(h, general[h] = status[h] == -2)
        late = 0;
    }
#endif
    MR_PAIR(h, if (general[h])
                   status[h] = ok[h] && MR_SFX(mr_cand_gather)(z + h * n, n, n, NULL, 1, k, lanes[h], 0,
                                                               &cd[h]) == 0 ? 0 : -1)
    MR_PAIR(h, if (general[h] && status[h] == 0)
                   status[h] = MR_SFX(mr_cand_select)(&cd[h], k, idx + h * (MR_BLOCK + 1), m_out[h],
                                                      e_out + h * MR_BLOCK, late))
}

#undef MR_PAIR
#undef MR_ONE
#undef MR_SIG_STEPS
#undef MR_NV
#undef MR_T
#undef MR_SFX
#undef MR_V
#undef MR_N
#undef MR_W
#undef MR_OP
#undef MR_EXPV
#undef MR_EXPSATV
