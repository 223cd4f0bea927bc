/*
 * The candidates of a row's top-k (row_ops.hpp, mr_cand_gather): the
 * values >= a threshold and their expert ids, in index order.
 */
#ifndef MOE_ROUTER_CAND_HPP
#define MOE_ROUTER_CAND_HPP

#include "simd.h"

#ifndef MR_MAX_CAND
#define MR_MAX_CAND 64
#endif

namespace {

/* A block adds at most MR_BLOCK candidates (and may write that many past
 * the count), so the buffers hold MR_MAX_CAND + 2 blocks. */
template <class T> struct MrCand {
    T v[MR_MAX_CAND + 2 * MR_BLOCK];
    int32_t i[MR_MAX_CAND + 2 * MR_BLOCK];
    int c;
};

}  // namespace

#endif /* MOE_ROUTER_CAND_HPP */
