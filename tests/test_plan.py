"""Dispatch (plan, permute, combine) against independent NumPy constructions.

The plan's oracle is a stable argsort of the flat ids with bincount and
cumsum; permute's is np.take; combine's a float32 (float64) loop over k in
NumPy, whose elementwise products and sums round exactly once each, as the
kernel's must: results are compared bit for bit, on every kernel path.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moe_router as mr
from moe_router import _dispatch

ID_DTYPES = [np.int32, np.uint32, np.int64]

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def numpy_plan(ids, num_experts, block_size=None, capacity=None, expert_map=None, identity=None):
    """The plan built from NumPy primitives: dict of the plan's arrays and counts."""
    ids = np.asarray(ids)
    K = ids.shape[-1]
    flat = ids.reshape(-1).astype(np.int64)
    n = flat.size
    T = n // K
    S = num_experts if identity is None else identity
    is_identity = flat >= S
    if expert_map is None:
        L = S
        local = np.where(is_identity, -1, flat)
    else:
        expert_map = np.asarray(expert_map, np.int64)
        L = int((expert_map >= 0).sum())
        local = np.where(is_identity, -1, expert_map[np.minimum(flat, S - 1)])
    kept = local >= 0
    n_dropped = 0
    if capacity is not None:
        # Priority k * T + t: every first choice before any second choice.
        slot = np.arange(n)
        prio = (slot % K) * T + slot // K
        cand = slot[kept]
        order = cand[np.lexsort((prio[cand], local[cand]))]  # by expert, then priority
        e_sorted = local[order]
        first = np.searchsorted(e_sorted, e_sorted, side="left")
        rank = np.arange(order.size) - first
        drop = order[rank >= capacity]
        kept[drop] = False
        n_dropped = drop.size
    slots = np.flatnonzero(kept)
    order = slots[np.argsort(local[slots], kind="stable")]
    counts = np.bincount(local[slots], minlength=L)[:L]
    B = 1 if block_size is None else block_size
    padded = -(-counts // B) * B
    offsets = np.concatenate(([0], np.cumsum(padded))).astype(np.int64)
    rows = int(offsets[-1])
    sorted_slot = np.full(rows, n, np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)))
    for e in range(L):
        sorted_slot[offsets[e] : offsets[e] + counts[e]] = order[starts[e] : starts[e + 1]]
    sorted_tok = np.where(sorted_slot == n, T, sorted_slot // K)
    slot_of = np.full(n, -1, np.int64)
    slot_of[is_identity] = -2
    real = sorted_slot < n
    slot_of[sorted_slot[real]] = np.flatnonzero(real)
    return dict(
        tokens_per_expert=counts.astype(np.int64),
        expert_offsets=offsets,
        sorted_token_ids=sorted_tok,
        sorted_slot_ids=sorted_slot,
        slot_of=slot_of.reshape(ids.shape),
        active_experts=np.flatnonzero(counts),
        block_expert_ids=np.repeat(np.arange(L), padded // B) if block_size else None,
        num_dropped=n_dropped,
        num_identity_slots=int(is_identity.sum()),
    )


def assert_plan_equal(p, want):
    for name, value in want.items():
        got = getattr(p, name)
        if value is None:
            assert got is None, name
        elif isinstance(value, int):
            assert got == value, name
        else:
            assert got.dtype == np.int64, name
            np.testing.assert_array_equal(got, value, err_msg=name)
    assert p.num_rows == want["sorted_slot_ids"].size


def random_ids(rng, T, K, E, dtype=np.int32, distinct=True):
    if distinct and K <= E:
        ids = np.argsort(rng.random((T, E)), axis=1)[:, :K]
    else:
        ids = rng.integers(0, E, (T, K))
    return ids.astype(dtype)


def test_hand_computed_plan(kernel_path):
    ids = np.array([[3, 1], [1, 0], [3, 3]], np.int32)
    p = mr.plan(ids, 4)
    np.testing.assert_array_equal(p.tokens_per_expert, [1, 2, 0, 3])
    np.testing.assert_array_equal(p.expert_offsets, [0, 1, 3, 3, 6])
    np.testing.assert_array_equal(p.sorted_token_ids, [1, 0, 1, 0, 2, 2])
    np.testing.assert_array_equal(p.sorted_slot_ids, [3, 1, 2, 0, 4, 5])
    np.testing.assert_array_equal(p.slot_of, [[3, 1], [2, 0], [4, 5]])
    np.testing.assert_array_equal(p.active_experts, [0, 1, 3])
    # Capacity 1: first choices 3, 1, 3 -> token 2's first choice is dropped,
    # then the second choices 1 (full), 0 (kept), 3 (full).
    p = mr.plan(ids, 4, capacity=1)
    np.testing.assert_array_equal(p.slot_of, [[2, -1], [1, 0], [-1, -1]])
    assert p.num_dropped == 3
    # Block size 4: every non-empty expert padded to 4 rows with the sentinels.
    p = mr.plan(ids, 4, block_size=4)
    np.testing.assert_array_equal(p.expert_offsets, [0, 4, 8, 8, 12])
    np.testing.assert_array_equal(p.sorted_slot_ids, [3, 6, 6, 6, 1, 2, 6, 6, 0, 4, 5, 6])
    np.testing.assert_array_equal(p.block_expert_ids, [0, 1, 3])


@pytest.mark.parametrize("dtype", ID_DTYPES)
def test_plan_matches_torch_sort(kernel_path, dtype, rng):
    torch = pytest.importorskip("torch")
    ids = random_ids(rng, 300, 8, 64, dtype)
    p = mr.plan(ids, 64)
    flat = torch.from_numpy(ids.astype(np.int64).reshape(-1))
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=64)
    np.testing.assert_array_equal(p.sorted_slot_ids, order.numpy())
    np.testing.assert_array_equal(p.tokens_per_expert, counts.numpy())
    np.testing.assert_array_equal(p.expert_offsets[1:], torch.cumsum(counts, 0).numpy())


@st.composite
def plan_problems(draw):
    T = draw(st.integers(0, 4096))
    E = draw(st.integers(1, 300))
    K = draw(st.integers(1, min(E, 8) if draw(st.booleans()) else 8))
    dtype = draw(st.sampled_from(ID_DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    options = {}
    if draw(st.booleans()):
        options["block_size"] = draw(st.sampled_from([1, 2, 16, 64]))
    if draw(st.booleans()):
        options["capacity"] = draw(st.integers(0, max(1, 2 * T * K // E)))
    S = E
    if draw(st.booleans()) and E > 1:
        S = draw(st.integers(0, E - 1))
        options["identity"] = S
    if draw(st.booleans()) and S > 0:
        options["expert_map"] = "random"
    return T, K, E, dtype, seed, options


@SETTINGS
@given(plan_problems())
def test_plan_against_numpy(kernel_path, problem):
    T, K, E, dtype, seed, options = problem
    rng = np.random.default_rng(seed)
    ids = random_ids(rng, T, K, E, dtype, distinct=bool(seed % 2))
    if options.get("expert_map") == "random":
        S = options.get("identity", E)
        m = np.full(S, -1, np.int64)
        local = rng.permutation(S)[: rng.integers(0, S + 1)]
        m[local] = np.arange(local.size)
        options["expert_map"] = m
    want = numpy_plan(ids, E, **options)
    kw = dict(options)
    if "identity" in kw:
        kw["identity_expert_start"] = kw.pop("identity")
    assert_plan_equal(mr.plan(ids, E, **kw), want)
    p = mr.DispatchPlan.empty()
    mr.plan_into(random_ids(rng, 7, K, E, dtype), E, p)  # warm with another batch
    assert mr.plan_into(ids, E, p, **kw) is p
    assert_plan_equal(p, want)


def test_plan_leading_shape_and_router_output(kernel_path, rng):
    out = mr.route(rng.standard_normal((2, 3, 32)).astype(np.float32), 4)
    p = mr.plan(out, 32)
    assert p.batch_shape == (2, 3) and p.slot_of.shape == (2, 3, 4)
    assert_plan_equal(p, numpy_plan(out.expert_ids, 32))


def test_plan_into_reuses_memory(kernel_path, rng):
    p = mr.DispatchPlan.empty()
    mr.plan_into(random_ids(rng, 256, 8, 128), 128, p)
    bufs = [b.__array_interface__["data"][0] for b in p._bufs]
    for T in (1, 32, 256, 100):
        ids = random_ids(rng, T, 8, 128)
        mr.plan_into(ids, 128, p)
        assert [b.__array_interface__["data"][0] for b in p._bufs] == bufs
        assert_plan_equal(p, numpy_plan(ids, 128))


def test_plan_arrays_are_read_only(kernel_path):
    p = mr.plan(np.array([[0, 1]], np.int32), 2)
    with pytest.raises(ValueError, match="read-only"):
        p.slot_of[0, 0] = 5


# --- permute / combine --------------------------------------------------


def _row_dtypes():
    out = [np.float32, np.float64, np.float16]
    try:
        import ml_dtypes

        out.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


ROW_DTYPES = _row_dtypes()


def acc_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def numpy_permute(hidden, want, weights=None):
    H = hidden.shape[-1]
    T = want["slot_of"].size // want["slot_of"].shape[-1]
    h2 = np.concatenate([hidden.reshape(T, H), np.zeros((1, H), hidden.dtype)])
    x = np.take(h2, want["sorted_token_ids"], axis=0)
    if weights is not None:
        a = acc_dtype(hidden.dtype)
        wf = np.concatenate([weights.reshape(-1), [0]]).astype(a)
        x = (x.astype(a) * wf[want["sorted_slot_ids"]][:, None]).astype(hidden.dtype)
    return x


def numpy_combine(expert_out, slot_of, weights, hidden=None):
    """Float32 (float64) loop over k, one rounding per product and per sum."""
    a = acc_dtype(expert_out.dtype)
    K = slot_of.shape[-1]
    so = slot_of.reshape(-1, K)
    T, H = so.shape[0], expert_out.shape[-1]
    acc = np.zeros((T, H), a)
    w = np.ones(so.shape, a) if weights is None else weights.reshape(-1, K).astype(a)
    for k in range(K):
        s = so[:, k]
        rows = np.flatnonzero(s >= 0)
        acc[rows] = acc[rows] + w[rows, k][:, None] * expert_out[s[rows]].astype(a)
        if hidden is not None:
            rows = np.flatnonzero(s == -2)
            acc[rows] = acc[rows] + w[rows, k][:, None] * hidden.reshape(T, H)[rows].astype(a)
    return acc.astype(expert_out.dtype)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", ROW_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "options",
    [{}, {"block_size": 16}, {"capacity": 20}, {"identity_expert_start": 24}, {"expert_map": 1}],
    ids=["plain", "block", "capacity", "identity", "expert_map"],
)
def test_permute_combine_against_numpy(kernel_path, dtype, options, rng):
    T, K, E, H = 150, 4, 32, 200
    ids = random_ids(rng, T, K, E)
    if "expert_map" in options:
        m = np.full(E, -1)
        m[::2] = np.arange(E // 2)
        options = {"expert_map": m}
    hidden = (rng.standard_normal((T, H)) * 3).astype(dtype)
    weights = rng.random((T, K)).astype(np.float32)
    p = mr.plan(ids, E, **options)
    want = numpy_plan(
        ids,
        E,
        options.get("block_size"),
        options.get("capacity"),
        options.get("expert_map"),
        options.get("identity_expert_start"),
    )
    x = mr.permute(hidden, p)
    same_bits(x, numpy_permute(hidden, want))
    same_bits(mr.permute(hidden, p, scale_by=weights), numpy_permute(hidden, want, weights))
    expert_out = (rng.standard_normal((p.num_rows, H))).astype(dtype)
    kw = {"hidden_states": hidden} if "identity_expert_start" in options else {}
    y = mr.combine(expert_out, p, weights, **kw)
    same_bits(y, numpy_combine(expert_out, want["slot_of"], weights, kw.get("hidden_states")))
    same_bits(
        mr.combine(expert_out, p, None, **kw),
        numpy_combine(expert_out, want["slot_of"], None, kw.get("hidden_states")),
    )
    # And within rounding of an exact float64 sum.
    exact = numpy_combine(expert_out.astype(np.float64), want["slot_of"], weights)
    if not kw:
        tol = {2: 2e-2, 4: 1e-4, 8: 1e-12}[np.dtype(dtype).itemsize]
        np.testing.assert_allclose(y.astype(np.float64), exact, rtol=tol, atol=tol * 10)


def test_round_trip_identity_experts_sum(kernel_path, rng):
    # Experts that return their input, weights summing to 1: combine(permute(h)) == h.
    out = mr.route(rng.standard_normal((64, 16)), 4)
    hidden = rng.standard_normal((64, 48)).astype(np.float32)
    p = mr.plan(out, 16)
    y = mr.combine(mr.permute(hidden, p), p, out)
    np.testing.assert_allclose(y, hidden, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_and_paths_give_the_same_bits(threads, rng):
    T, K, E, H = 2048, 8, 64, 128
    ids = random_ids(rng, T, K, E)
    hidden = rng.standard_normal((T, H)).astype(np.float32)
    w = rng.random((T, K)).astype(np.float32)
    results = []
    old = _dispatch.select("auto")
    try:
        for path in _dispatch.available_paths():
            _dispatch.select(path)
            kernel = _dispatch.kernel
            old_min = kernel.set_dispatch_parallel_min_bytes(1)
            try:
                p = mr.plan(ids, E)
                x = mr.permute(hidden, p, scale_by=w, num_threads=threads)
                results.append((x, mr.combine(x, p, w, num_threads=threads)))
            finally:
                kernel.set_dispatch_parallel_min_bytes(old_min)
    finally:
        _dispatch.select(old)
    want = numpy_plan(ids, E)
    for x, y in results:
        same_bits(x, numpy_permute(hidden, want, w))
        same_bits(y, numpy_combine(x, want["slot_of"], w))


def test_out_buffers_are_used_and_returned(kernel_path, rng):
    ids = random_ids(rng, 10, 2, 8)
    hidden = rng.standard_normal((10, 6)).astype(np.float32)
    p = mr.plan(ids, 8)
    x_out = np.empty((p.num_rows, 6), np.float32)
    assert mr.permute(hidden, p, out=x_out) is x_out
    y_out = np.empty((10, 6), np.float32)
    assert mr.combine(x_out, p, np.ones((10, 2), np.float32), out=y_out) is y_out
    np.testing.assert_allclose(y_out, 2 * hidden, rtol=1e-6)


def test_empty_batch(kernel_path):
    p = mr.plan(np.zeros((0, 4), np.int32), 8)
    assert p.num_rows == 0 and p.active_experts.size == 0
    np.testing.assert_array_equal(p.expert_offsets, np.zeros(9))
    x = mr.permute(np.zeros((0, 5), np.float32), p)
    assert x.shape == (0, 5)
    assert mr.combine(x, p, np.zeros((0, 4), np.float32)).shape == (0, 5)


def test_float16_conversions_round_like_numpy(kernel_path):
    # Every float16 bit pattern through permute(scale_by=1) and combine(w=1):
    # loads and stores must be exact (NaN payloads aside).
    bits = np.arange(65536, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    hidden = finite.view(np.float16).reshape(-1, 1)
    T = hidden.shape[0]
    p = mr.plan(np.zeros((T, 1), np.int32), 1)
    ones = np.ones((T, 1), np.float32)
    same_bits(mr.permute(hidden, p, scale_by=ones), hidden)
    # combine starts from +0: a sum of -0 alone is +0, as in the NumPy loop.
    same_bits(mr.combine(hidden, p, ones), numpy_combine(hidden, p.slot_of, ones))
    # Rounding float32 products to float16 (NumPy's cast is the oracle):
    # wide weights reach overflow and the subnormals; the fixed cases are ties.
    rng = np.random.default_rng(3)
    n = 20000
    e16 = (rng.standard_normal(n) * 4).astype(np.float16)
    w = (10.0 ** rng.uniform(-9, 6, n) * rng.choice([-1, 1], n)).astype(np.float32)
    ties = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 2.0**-24 * 1.5, 2.0**-25, 65520, 65519.996])
    e16[: ties.size] = 1
    w[: ties.size] = ties
    one = mr.plan(np.zeros((n, 1), np.int32), 1)
    with np.errstate(over="ignore"):
        want = (e16.astype(np.float32) * w).astype(np.float16).reshape(-1, 1)
    same_bits(mr.permute(e16.reshape(-1, 1), one, scale_by=w.reshape(-1, 1)), want)
    same_bits(mr.combine(e16.reshape(-1, 1), one, w.reshape(-1, 1)), want)


def test_bfloat16_rounds_like_ml_dtypes(kernel_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    src = rng.standard_normal((4096, 1)).astype(ml_dtypes.bfloat16)
    p = mr.plan(np.zeros((4096, 1), np.int32), 1)
    w = (rng.random((4096, 1)) * 3).astype(np.float32)
    y = mr.combine(src, p, w)
    assert y.dtype == src.dtype
    same_bits(y, (src.astype(np.float32) * w).astype(ml_dtypes.bfloat16))


def test_torch_tensors_in_tensors_out(kernel_path, rng):
    torch = pytest.importorskip("torch")
    ids = torch.from_numpy(random_ids(rng, 40, 4, 16, np.int64))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        hidden = torch.randn(40, 24).to(dtype)
        w = torch.rand(40, 4)
        p = mr.plan(ids, 16)
        x = mr.permute(hidden, p)
        assert isinstance(x, torch.Tensor) and x.dtype == dtype
        assert torch.equal(x, hidden.index_select(0, torch.from_numpy(p.sorted_token_ids.copy())))
        y = mr.combine(x, p, w)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype
        ref = torch.zeros(40, 24, dtype=torch.float32)
        ref.index_add_(
            0,
            torch.from_numpy(p.sorted_token_ids.copy()),
            x.float() * w.reshape(-1)[torch.from_numpy(p.sorted_slot_ids.copy())][:, None],
        )
        torch.testing.assert_close(y.float(), ref.to(dtype).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", ROW_DTYPES, ids=lambda d: np.dtype(d).name)
def test_streaming_copies_give_the_same_rows(kernel_path, dtype, rng):
    # Large outputs are copied with non-temporal stores: the same rows,
    # padding zeros included, for aligned and unaligned outputs.
    ids = random_ids(rng, 100, 4, 16)
    hidden = rng.standard_normal((100, 64)).astype(dtype)
    kernel = _dispatch.kernel
    old = kernel.set_dispatch_stream_min_bytes(0)
    try:
        for options in ({}, {"block_size": 8}):
            p = mr.plan(ids, 16, **options)
            want = numpy_permute(hidden, numpy_plan(ids, 16, options.get("block_size")))
            same_bits(mr.permute(hidden, p), want)
            block = np.zeros(p.num_rows * 64 + 8, dtype)
            out = block[1 : 1 + p.num_rows * 64].reshape(p.num_rows, 64)  # not 16-byte aligned
            same_bits(mr.permute(hidden, p, out), want)
    finally:
        kernel.set_dispatch_stream_min_bytes(old)


def test_router_identity_experts_feed_the_plan(kernel_path, rng):
    # LongCat-Flash style: the Router's identity_expert_start is the plan's;
    # identity slots take no rows and add w * hidden[t] (a float64 loop here).
    router = mr.Router(24, 4, zero_expert_num=8)
    assert router.identity_expert_start == 16
    out = router(rng.standard_normal((50, 24)).astype(np.float32))
    p = mr.plan(out, 24, identity_expert_start=router.identity_expert_start)
    ids = out.expert_ids
    assert p.num_identity_slots == int((ids >= 16).sum())
    assert p.num_rows == int((ids < 16).sum())
    hidden = rng.standard_normal((50, 12)).astype(np.float32)
    y = mr.combine(mr.permute(hidden, p), p, out, hidden_states=hidden)
    want = np.zeros((50, 12))
    w = out.expert_weights.astype(np.float64)
    for t, k in np.ndindex(ids.shape):
        want[t] += w[t, k] * hidden[t]  # routed experts are the identity here too
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_torch_inputs_that_cannot_be_read_are_explained(kernel_path):
    torch = pytest.importorskip("torch")
    p = mr.plan(np.array([[0, 1]], np.int32), 2)
    hidden = torch.randn(1, 4, requires_grad=True)
    with pytest.raises(TypeError, match="hidden_states requires grad"):
        mr.permute(hidden, p)
    x = mr.permute(hidden.detach(), p)
    out = torch.empty(1, 8)[:, ::2]  # not contiguous
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        mr.combine(x, p, torch.ones(1, 2), out)
    y = mr.combine(x, p, torch.ones(1, 2))
    assert torch.equal(y, 2 * hidden.detach())


@pytest.mark.parametrize("threads", [2, 3, 64])
def test_plan_on_threads_is_the_serial_plan(kernel_path, threads, rng):
    kernel = _dispatch.kernel
    old = kernel.set_plan_parallel_min_slots(1)
    try:
        for T, K, E, dtype in [(1, 1, 1, np.int32), (5, 2, 3, np.uint32), (300, 8, 64, np.int64),
                               (2049, 6, 160, np.int32)]:  # fmt: skip
            ids = random_ids(rng, T, K, E, dtype, distinct=False)
            for block in (None, 16):
                want = numpy_plan(ids, E, block)
                assert_plan_equal(mr.plan(ids, E, block_size=block, num_threads=threads), want)
                p = mr.DispatchPlan.empty()
                got = mr.plan_into(ids, E, p, block_size=block, num_threads=threads)
                assert_plan_equal(got, want)
            # The first bad id is the serial plan's first, whatever share holds it.
            bad = ids.astype(np.int64)
            bad[T // 2 :, -1] = E
            bad[T - 1, 0] = -1
            t, k = (T // 2, K - 1) if K > 1 or T // 2 < T - 1 else (T - 1, 0)
            with pytest.raises(ValueError, match=f"token {t}, k={k} has id"):
                mr.plan(bad, E, num_threads=threads)
    finally:
        kernel.set_plan_parallel_min_slots(old)


# --- the warm path: permute_fast / combine_fast check in C what _plan.py checks


def test_warm_out_calls_follow_the_plan_and_the_buffers(kernel_path, rng):
    # The same out buffers call after call while the plan, the inputs and the
    # buffers themselves change: every answer is still the NumPy oracle's,
    # every bad call still the validating path's error.
    T, K, E, H = 24, 4, 16, 40
    ids = random_ids(rng, T, K, E)
    hidden = rng.standard_normal((T, H)).astype(np.float32)
    w = rng.random((T, K)).astype(np.float32)
    p = mr.plan(ids, E)
    x = np.empty((p.num_rows, H), np.float32)
    y = np.empty((T, H), np.float32)
    for _ in range(3):  # warm
        assert mr.permute(hidden, p, x) is x and mr.combine(x, p, w, y) is y
    want = numpy_plan(ids, E)
    same_bits(x, numpy_permute(hidden, want))
    same_bits(y, numpy_combine(x, want["slot_of"], w))
    # A new plan in the same object (same sizes): the new order.
    ids2 = random_ids(rng, T, K, E)
    mr.plan_into(ids2, E, p)
    want2 = numpy_plan(ids2, E)
    mr.permute(hidden, p, x, scale_by=w)
    same_bits(x, numpy_permute(hidden, want2, w))
    mr.combine(x, p, None, y)
    same_bits(y, numpy_combine(x, want2["slot_of"], None))
    # The plan shrinks (fewer tokens): the old buffers no longer fit.
    mr.plan_into(ids2[: T // 2], E, p)
    with pytest.raises(ValueError, match=r"out must have shape \(48, 40\)"):
        mr.permute(hidden[: T // 2], p, x)
    with pytest.raises(ValueError, match="expert_out must have shape"):
        mr.combine(x, p, w[: T // 2], y[: T // 2])
    with pytest.raises(ValueError, match="num_tokens=12"):
        mr.permute(hidden, p, x[: p.num_rows])
    mr.plan_into(ids2, E, p)
    # A buffer reshaped in place, made read-only, or overlapping an input.
    x.shape = (p.num_rows * 2, H // 2)
    with pytest.raises(ValueError, match="out must have shape"):
        mr.permute(hidden, p, x)
    x.shape = (p.num_rows, H)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        mr.combine(x, p, w, y)
    y.flags.writeable = True
    with pytest.raises(ValueError, match="out must not overlap"):
        mr.combine(x, p, w, x[:T])
    with pytest.raises(ValueError, match="out must not overlap"):
        mr.permute(x[: p.num_tokens], p, x)
    # Another dtype, the weights' shape, the thread count.
    with pytest.raises(TypeError, match="out must have dtype float64"):
        mr.permute(hidden.astype(np.float64), p, x)
    with pytest.raises(ValueError, match="expert_weights must have the plan's shape"):
        mr.combine(x, p, w[:, :2].copy(), y)
    with pytest.raises(ValueError, match="num_threads"):
        mr.combine(x, p, w, y, num_threads=0)
    with pytest.raises(TypeError, match="num_threads"):
        mr.permute(hidden, p, x, num_threads=1.0)
    # And the buffers still give the oracle's answer after all that.
    mr.permute(hidden, p, x)
    mr.combine(x, p, w, y)
    same_bits(x, numpy_permute(hidden, want2))
    same_bits(y, numpy_combine(x, want2["slot_of"], w))


def test_warm_calls_with_views_other_shapes_and_weights(kernel_path, rng):
    # Leading batch shapes, float64 weights, [T, K] weights for a 3-D plan,
    # out as [T, H] or [..., H], non-contiguous inputs (converted by the
    # validating path), identity experts: each against the oracle.
    ids = random_ids(rng, 30, 3, 12).reshape(5, 6, 3)
    hidden = rng.standard_normal((5, 6, 20)).astype(np.float64)
    w = rng.random((5, 6, 3))
    p = mr.plan(ids, 12, identity_expert_start=10)
    want = numpy_plan(ids, 12, identity=10)
    x = np.empty((p.num_rows, 20))
    mr.permute(hidden, p, x, scale_by=w.reshape(30, 3))
    same_bits(x, numpy_permute(hidden, want, w))
    for out in (np.empty((5, 6, 20)), np.empty((30, 20))):
        got = mr.combine(x, p, w, out, hidden_states=hidden)
        assert got is out
        same_bits(out.reshape(30, 20), numpy_combine(x, want["slot_of"], w, hidden))
    with pytest.raises(ValueError, match="needs hidden_states="):
        mr.combine(x, p, w, np.empty((30, 20)))
    strided = np.asfortranarray(hidden.reshape(30, 20))
    same_bits(mr.permute(strided, p), numpy_permute(hidden, want))
    y = mr.combine(np.asfortranarray(x), p, np.asfortranarray(w), hidden_states=hidden)
    same_bits(y.reshape(30, 20), numpy_combine(x, want["slot_of"], w, hidden))


def test_warm_torch_out_buffers(kernel_path, rng):
    # Tensors in and out= tensors, read through the DLPack table: resized,
    # strided or grad-requiring buffers fall back to the explained errors.
    torch = pytest.importorskip("torch")
    T, K, E, H = 20, 4, 16, 32
    ids = random_ids(rng, T, K, E, np.int64)
    p = mr.plan(torch.from_numpy(ids), E)
    want = numpy_plan(ids, E)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        hidden = torch.randn(T, H).to(dtype)
        w = torch.rand(T, K)
        x = torch.empty(p.num_rows, H, dtype=dtype)
        y = torch.empty(T, H, dtype=dtype)
        for _ in range(2):
            assert mr.permute(hidden, p, x) is x and mr.combine(x, p, w, y) is y
        h_np = hidden.float().numpy()
        np.testing.assert_array_equal(x.float().numpy(), numpy_permute(h_np, want))
        x32 = x.float().numpy().astype(np.float32)
        ref = numpy_combine(x32, want["slot_of"], w.numpy())
        # float32: the oracle's bits; 16-bit rows: one rounding of the float32 sum.
        exact = torch.from_numpy(ref).to(dtype).float().numpy()
        np.testing.assert_array_equal(y.float().numpy(), exact)
    y.resize_(T + 1, H)
    with pytest.raises(ValueError, match="out must have shape"):
        mr.combine(x, p, w, y)
    y.resize_(T, H)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        mr.permute(hidden, p, torch.empty(H, p.num_rows, dtype=dtype).t())
    with pytest.raises(TypeError, match="expert_out requires grad"):
        mr.combine(x.float().requires_grad_(), p, w, y.float())
    with pytest.raises(TypeError, match="out must have dtype float16"):
        mr.combine(x, p, w, torch.empty(T, H))


@pytest.mark.parametrize("threads", [2, 3])
def test_scatter_shares_with_padding_and_dropped_slots(kernel_path, threads, rng):
    # permute scatters each token's row to its slots' rows in shares of
    # tokens, and zeroes padding rows in shares of rows: padding, dropped
    # and other ranks' slots on several threads against the NumPy oracle.
    T, K, E, H = 300, 4, 16, 32
    ids = random_ids(rng, T, K, E)
    hidden = rng.standard_normal((T, H)).astype(np.float32)
    w = rng.random((T, K)).astype(np.float32)
    m = np.where(np.arange(E) % 3 == 0, -1, np.cumsum(np.arange(E) % 3 != 0) - 1)
    kernel = _dispatch.kernel
    old = kernel.set_dispatch_parallel_min_bytes(1)
    try:
        for options in ({"block_size": 8}, {"capacity": 40}, {"expert_map": m, "block_size": 4}):
            p = mr.plan(ids, E, **options)
            get = options.get
            want = numpy_plan(ids, E, get("block_size"), get("capacity"), get("expert_map"))
            out = np.full((p.num_rows, H), np.nan, np.float32)  # every row must be written
            mr.permute(hidden, p, out, num_threads=threads)
            same_bits(out, numpy_permute(hidden, want))
            same_bits(
                mr.permute(hidden, p, scale_by=w, num_threads=threads),
                numpy_permute(hidden, want, w),
            )
    finally:
        kernel.set_dispatch_parallel_min_bytes(old)
