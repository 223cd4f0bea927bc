/*
 * The AVX2 tuned routines of the float32 softmax router (every build with
 * AVX2, the AVX-512 one included): bitonic sorting networks on the 8 lanes
 * of a vector, the byte-id candidate gather, and put8, the vector output of
 * a row of 8.
 */
#ifndef MOE_ROUTER_NETWORKS_AVX2_HPP
#define MOE_ROUTER_NETWORKS_AVX2_HPP

#include "cand.hpp"
#include "exp.hpp"

#if MR_HAVE_NET8

namespace {

/*
 * A bitonic sorting network on the 8 lanes of a vector, for the threshold
 * (the k-th of the 16 lane maxima) and the order of up to 16 top-k
 * candidates: about 10 dependent steps, where counting every pair of
 * candidates takes 16 broadcasts and 48 compares.  A
 * step pairs lane l with lane l ^ j; while the network builds sorted runs of
 * kk lanes (kk = 8: the whole vector, descending), lane l keeps the smaller
 * of its pair iff ((l & j) != 0) == ((l & kk) == 0).
 *
 * The threshold network sorts the lane maxima as floats (they hold no NaN).
 * The candidates' network sorts int32 keys: a float's order as a signed
 * integer (negative floats with their magnitude bits flipped; -0.0 made
 * +0.0 first, the two compare equal) with its low 4 bits replaced by 15 -
 * the candidate's slot: a key sorts
 * without a payload (integer min and max: 4 operations a step, not 6 with
 * the ids carried alongside), and the slot comes
 * back from its low bits.  Keys order as the values do except between
 * different values less than 16 units in the last place apart, which
 * callers must leave to exact code (vi_net_close); equal values order by
 * slot, which is index order.
 */
static MR_HOT __m256i vi_swap(__m256i v, int j)
{
    return _mm256_castps_si256(Avx2F32::swap(_mm256_castsi256_ps(v), j));
}
/* The max of the 8 lanes, in every lane. */
static MR_HOT __m256i vi_hmax(__m256i v)
{
    v = _mm256_max_epi32(v, vi_swap(v, 4));
    v = _mm256_max_epi32(v, vi_swap(v, 2));
    return _mm256_max_epi32(v, vi_swap(v, 1));
}
/* One step (j, kk) per function, so that which lanes keep the smaller of
 * their pair (bit l of MR_NET_IMM) is an immediate: a blend with an
 * immediate in place of a variable blend (blendv) on a constant mask
 * (docs/performance.md). */
#define MR_NET_KM(l, J, KK) ((((((l) & (J)) != 0) == (((l) & (KK)) == 0))) << (l))
#define MR_NET_IMM(J, KK)                                                                    \
    (MR_NET_KM(0, J, KK) | MR_NET_KM(1, J, KK) | MR_NET_KM(2, J, KK) | MR_NET_KM(3, J, KK) | \
     MR_NET_KM(4, J, KK) | MR_NET_KM(5, J, KK) | MR_NET_KM(6, J, KK) | MR_NET_KM(7, J, KK))
#define MR_NET_STEP_FN(J, KK)                                                                         \
    static MR_HOT __m256i vi_net_step_##J##_##KK(__m256i v)                                           \
    {                                                                                                 \
        const __m256i p = vi_swap(v, J);                                                              \
        return _mm256_blend_epi32(_mm256_max_epi32(v, p), _mm256_min_epi32(v, p), MR_NET_IMM(J, KK)); \
    }                                                                                                 \
    static MR_HOT __m256i vi_net_astep_##J##_##KK(__m256i v) /* every pair the other way */           \
    {                                                                                                 \
        const __m256i p = vi_swap(v, J);                                                              \
        return _mm256_blend_epi32(_mm256_min_epi32(v, p), _mm256_max_epi32(v, p), MR_NET_IMM(J, KK)); \
    }                                                                                                 \
    static MR_HOT __m256 vf_net_step_##J##_##KK(__m256 v) /* on floats (no NaN) */                    \
    {                                                                                                 \
        const __m256 p = Avx2F32::swap(v, J);                                                         \
        return _mm256_blend_ps(_mm256_max_ps(v, p), _mm256_min_ps(v, p), MR_NET_IMM(J, KK));          \
    }                                                                                                 \
    static MR_HOT __m256 vf_net_astep_##J##_##KK(__m256 v)                                            \
    {                                                                                                 \
        const __m256 p = Avx2F32::swap(v, J);                                                         \
        return _mm256_blend_ps(_mm256_min_ps(v, p), _mm256_max_ps(v, p), MR_NET_IMM(J, KK));          \
    }
MR_NET_STEP_FN(1, 2)
MR_NET_STEP_FN(2, 4)
MR_NET_STEP_FN(1, 4)
MR_NET_STEP_FN(4, 8)
MR_NET_STEP_FN(2, 8)
MR_NET_STEP_FN(1, 8)
#undef MR_NET_STEP_FN
#undef MR_NET_IMM
#undef MR_NET_KM
/* The sort of 8 lanes (vi_net_step descending; vi_net_astep ascending:
 * every pair kept the other way, so that a merge needs no lane reversal, a
 * 3-cycle permute on the chain), and its last three steps alone, which
 * sort a bitonic sequence (a merge's), for keys and for floats. */
#define MR_NET_SORT_FN(NAME, STEP)                                                        \
    static MR_HOT __m256i NAME(__m256i v)                                                 \
    {                                                                                     \
        return STEP##_1_8(STEP##_2_8(STEP##_4_8(STEP##_1_4(STEP##_2_4(STEP##_1_2(v)))))); \
    }
#define MR_NET_BITONIC_FN(NAME, T, STEP) \
    static MR_HOT T NAME(T v) { return STEP##_1_8(STEP##_2_8(STEP##_4_8(v))); }
MR_NET_SORT_FN(vi_net_sort8, vi_net_step)
MR_NET_SORT_FN(vi_net_sort8_asc, vi_net_astep)
MR_NET_BITONIC_FN(vi_net_bitonic8, __m256i, vi_net_step)
MR_NET_BITONIC_FN(vf_net_bitonic8, __m256, vf_net_step)
#undef MR_NET_SORT_FN
#undef MR_NET_BITONIC_FN
/* a sorted descending, rb ascending: the 8 largest of both, sorted
 * descending, into *top; with next, the 9th largest into *next (all lanes). */
static MR_HOT void vi_net_merge8(__m256i a, __m256i rb, __m256i *top, __m256i *next)
{
    if (next) /* the 8 smallest: their max is the 9th */
        *next = vi_hmax(_mm256_min_epi32(a, rb));
    const __m256i t = _mm256_max_epi32(a, rb); /* the 8 largest, bitonic */
    *top = vi_net_bitonic8(t);
}
static MR_HOT __m256i vi_order(__m256 v)
{
    const __m256i b = _mm256_castps_si256(_mm256_add_ps(v, _mm256_setzero_ps()));
    return _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(b, 31), _mm256_set1_epi32(0x7fffffff)));
}
/* The k-th largest (1 <= k <= 8) of x[0..16), no NaN among them: the two
 * halves sorted as floats (no order keys to make and undo), one descending
 * and one ascending, so their lane maxima are the 8 largest. */
static MR_HOT float vf_net_kth16(const float *x, int k)
{
    /* The two sorts step by step side by side: gcc keeps this order, which
     * two sort calls in turn lose. */
    __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
    a = vf_net_step_1_2(a);
    b = vf_net_astep_1_2(b);
    a = vf_net_step_2_4(a);
    b = vf_net_astep_2_4(b);
    a = vf_net_step_1_4(a);
    b = vf_net_astep_1_4(b);
    a = vf_net_step_4_8(a);
    b = vf_net_astep_4_8(b);
    a = vf_net_step_2_8(a);
    b = vf_net_astep_2_8(b);
    a = vf_net_step_1_8(a);
    b = vf_net_astep_1_8(b);
    __m256 top = _mm256_max_ps(a, b); /* the 8 largest, bitonic */
    if (k == 8) {                     /* the smallest of the 8 largest: no need to sort them */
        top = _mm256_min_ps(top, Avx2F32::swap(top, 4));
        top = _mm256_min_ps(top, Avx2F32::swap(top, 2));
        top = _mm256_min_ps(top, Avx2F32::swap(top, 1));
    } else {
        top = vf_net_bitonic8(top);
        top = _mm256_permutevar8x32_ps(top, _mm256_set1_epi32(k - 1));
    }
    return _mm256_cvtss_f32(top);
}
/* Keys of the 8 values v, low = 15 - slot per lane. */
static MR_HOT __m256i vi_net_key(__m256 v, __m256i low)
{
    return _mm256_or_si256(_mm256_andnot_si256(_mm256_set1_epi32(15), vi_order(v)), low);
}
/* The 8 largest keys of the 16 values (v0: slots 0-7, v1: slots 8-15),
 * sorted descending, into *top; the 9th largest key into *next (all lanes). */
static MR_HOT void vi_net_top8(__m256 v0, __m256 v1, __m256i *top, __m256i *next)
{
    vi_net_merge8(vi_net_sort8(vi_net_key(v0, _mm256_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8))),
                  vi_net_sort8_asc(vi_net_key(v1, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0))), top, next);
}
/* The slots of keys (15 - their low 4 bits), and the values v0 (slots
 * 0-7) and v1 (slots 8-15) in the order of those slots. */
static MR_HOT __m256i vi_net_slot(__m256i key)
{
    return _mm256_sub_epi32(_mm256_set1_epi32(15), _mm256_and_si256(key, _mm256_set1_epi32(15)));
}
static MR_HOT __m256 vf_by_slot(__m256 v0, __m256 v1, __m256i slot)
{
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v0, slot), _mm256_permutevar8x32_ps(v1, slot),
                            _mm256_castsi256_ps(_mm256_slli_epi32(slot, 28)));
}
/* Nonzero where the k best keys may not stand for the k best values in
 * order.  Keys with the same bits above the low 4 (a run) order by slot
 * alone, and runs are contiguous in the sorted keys.  A run that stays
 * within the first k keys is in order iff its values are all equal (slot
 * order is index order, as ties must go): bit l, for l < k - 1, is set
 * where keys l and l + 1 share their high bits but not their value.  A run
 * that crosses from key k - 1 to key k (`next` for k = 8) may hide a larger
 * value past the k-th: bit k - 1 is set whenever those two keys share their
 * high bits, equal values or not.  So ties among the k best (common with
 * bfloat16 logits) need no exact code; ties at the k-th do. */
static MR_HOT unsigned vi_net_close(__m256i top, __m256i next, int k, __m256 v0, __m256 v1)
{
    __m256i after = _mm256_permutevar8x32_epi32(top, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
    after = _mm256_blend_epi32(after, next, 0x80);
    const __m256i hi = _mm256_set1_epi32(~15);
    const __m256i eq = _mm256_cmpeq_epi32(_mm256_and_si256(top, hi), _mm256_and_si256(after, hi));
    const __m256 ne = _mm256_cmp_ps(vf_by_slot(v0, v1, vi_net_slot(top)),
                                    vf_by_slot(v0, v1, vi_net_slot(after)), _CMP_NEQ_UQ);
    const unsigned same_run = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(eq));
    const unsigned differ = (unsigned)_mm256_movemask_ps(_mm256_and_ps(_mm256_castsi256_ps(eq), ne));
    return (differ & ((1u << (k - 1)) - 1u)) | (same_run & (1u << (k - 1)));
}
/* Lanes l < k set. */
static MR_HOT __m256i vi_first_k(int k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* mr_sum_k<float> for k <= 8, x holding 8 readable values (the lanes past k
 * are masked off; the tree's adds of 0 are exact, so k <= 4 takes one
 * 4-lane vector: (x0 + x2) + (x1 + x3)). */
static MR_HOT float mr_sum8(const float *x, int k)
{
    __m128 s;
    if (k <= 4) {
        s = _mm_and_ps(_mm_loadu_ps(x), _mm_castsi128_ps(_mm256_castsi256_si128(vi_first_k(k))));
    } else {
        const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x), _mm256_castsi256_ps(vi_first_k(k)));
        s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* x0 + x4, ... */
    }
    s = _mm_add_ps(s, _mm_permute_ps(s, 0x4E)); /* + (x2 + x6), ... */
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_permute_ps(s, 0xB1)));
}
/* A row's output for k == 8, float32 weights and 32-bit ids: ids_out[j] =
 * idx[j], w_out[j] = (e[j] * scale) / divisor, as the scalar loops of
 * _put_weights writes them for other k (a masked store for k < 8 is
 * slower than those loops). */
static MR_HOT void mr_put8(const Py_ssize_t *idx, const float *e, float scale, float divisor,
                           int32_t *ids_out, float *w_out)
{
    const __m256i low = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6); /* the low halves of int64 */
    _mm256_storeu_si256(
        (__m256i *)ids_out,
        _mm256_blend_epi32(_mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)idx), low),
                           _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(idx + 4)), low),
                           0xF0));
    _mm256_storeu_ps(w_out, _mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(e), _mm256_set1_ps(scale)),
                                          _mm256_set1_ps(divisor)));
}

/* The 16 candidates' exp(value - m), slots 0-7 into *e0 and 8-15 into *e1,
 * when wanted (e_out given).  Taken before the network, beside it, so that the exp
 * is not on the row's chain of dependent steps after the sort. */
static MR_HOT void mr_net8_exp(__m256 v0, __m256 v1, float m, int want, __m256 *e0, __m256 *e1)
{
    *e0 = *e1 = _mm256_setzero_ps();
    if (want) {
        *e0 = mr_exp_v<Avx2F32>(_mm256_sub_ps(v0, _mm256_set1_ps(m)));
        *e1 = mr_exp_v<Avx2F32>(_mm256_sub_ps(v1, _mm256_set1_ps(m)));
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
 * stores waits for those stores to reach the cache (store forwarding
 * fails).  `late`: enough work ran since the compress for its stores to
 * have reached the cache (mr_topk_pair), so two vector loads do. */
static MR_HOT int mr_cand_net8(const MrCand<float> *cd, int k, Py_ssize_t *idx, float m, float *e_out,
                               int late)
{
    const float *cv = cd->v;
    const __m256 v0 =
        late ? _mm256_loadu_ps(cv) : _mm256_setr_ps(cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7]);
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
 * time on those shuffles and stores.  Returns the number of
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
    const uint64_t step = 0x0808080808080808ull; /* + 8 in every byte */
    uint64_t first = 0;                          /* the vector's first id, in every byte */
    size_t c = 0;
    Py_ssize_t i = 0;
    memset(ids8, 0, 16); /* (bytes past c are read, never used) */
    /* Two vectors a step: one loop overhead and one id update per 16
     * experts. */
    for (; i + 16 <= n; i += 16, first += 2 * step)
        c = mr_ids8_put(z + i + 8, vt, first + step, ids8, mr_ids8_put(z + i, vt, first, ids8, c));
    if (i < n) /* n % 16 == 8 */
        c = mr_ids8_put(z + i, vt, first, ids8, c);
    return (int)c;
}

/* mr_cand_net8 on the c <= 16 candidates of mr_ids8_gather: their values
 * gathered from z (slots past c: -inf), then the same keys, network and
 * outputs.  Where the network leaves the order to exact code
 * (vi_net_close) it returns 0 with the candidates in *cd, one padded block
 * as mr_cand_gather leaves them, for mr_cand_rank_block (not gathered
 * again: rows of bfloat16 logits send many ties that way). */
static MR_HOT int mr_ids8_net8(const float *z, const uint8_t *ids8, int c, int k, Py_ssize_t *idx, float m,
                               float *e_out, MrCand<float> *cd)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)ids8);
    const __m256i i0 = _mm256_cvtepu8_epi32(b), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vc = _mm256_set1_epi32(c);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256 v0 =
        _mm256_mask_i32gather_ps(ninf, z, i0, _mm256_castsi256_ps(_mm256_cmpgt_epi32(vc, lane)), 4);
    const __m256 v1 = _mm256_mask_i32gather_ps(
        ninf, z, i1,
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(vc, _mm256_add_epi32(lane, _mm256_set1_epi32(8)))), 4);
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
    mr_net8_put(_mm256_castps_si256(vf_by_slot(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(i1), slot)), slot,
                e0, e1, idx, e_out);
    return 1;
}

}  // namespace

#endif /* MR_HAVE_NET8 */

#endif /* MOE_ROUTER_NETWORKS_AVX2_HPP */
