"""Behaviour of route / route_into / Router / RouterOutput against independent oracles."""

import math

import numpy as np
import pytest

import moe_router as mr
from moe_router import _core_baseline
from moe_router import reference as ref

WEIGHT_ATOL = 2e-6  # the precision contract (README)


def assert_matches_reference(logits, out, top_k, norm=True):
    ref_ids, ref_w = ref.softmax_topk(logits, top_k, norm)
    np.testing.assert_array_equal(out.expert_ids, ref_ids)
    np.testing.assert_allclose(out.expert_weights, ref_w, rtol=0, atol=WEIGHT_ATOL)


# --- hand-computed cases -------------------------------------------------


def test_hand_computed_renormalised(any_path):
    # exp of the logits is [1, 2, 4, 8]: top-2 are experts 3 and 2, 8/12 and 4/12.
    out = mr.route(np.log(np.array([1, 2, 4, 8], np.float32)), 2)
    assert out.expert_ids.tolist() == [3, 2]
    np.testing.assert_allclose(out.expert_weights, [2 / 3, 1 / 3], rtol=1e-6)


def test_hand_computed_raw_probabilities(any_path):
    out = mr.route(np.log(np.array([[1, 2, 4, 8]], np.float32)), 3, norm_topk_prob=False)
    assert out.expert_ids.tolist() == [[3, 2, 1]]
    np.testing.assert_allclose(out.expert_weights, [[8 / 15, 4 / 15, 2 / 15]], rtol=1e-6)


def test_uniform_row_picks_lowest_indices(any_path):
    out = mr.route(np.zeros((2, 8), np.float32), 3, norm_topk_prob=False)
    assert out.expert_ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    np.testing.assert_allclose(out.expert_weights, np.full((2, 3), 1 / 8), rtol=1e-6)


def test_ties_resolve_to_smaller_index(any_path):
    row = np.array([1.0, 5.0, 5.0, 1.0, 5.0, 2.0], np.float32)
    out = mr.route(row, 4)
    assert out.expert_ids.tolist() == [1, 2, 4, 5]


@pytest.mark.parametrize("num_experts", [17, 40, 130])
def test_ties_across_simd_blocks(any_path, num_experts):
    # Equal maxima far apart (different vector blocks and the scalar tail).
    z = np.zeros(num_experts, np.float32)
    hot = sorted({num_experts - 1, 3, num_experts // 2, 1})
    z[hot] = 7.0
    out = mr.route(z, len(hot))
    assert out.expert_ids.tolist() == hot


def test_top_k_equals_num_experts_is_a_sort(any_path, rng):
    z = rng.standard_normal(10).astype(np.float32)
    out = mr.route(z, 10, norm_topk_prob=False)
    assert out.expert_ids.tolist() == np.argsort(-z, kind="stable").tolist()
    assert math.isclose(float(out.expert_weights.sum()), 1.0, rel_tol=1e-6)


def test_top_k_above_the_stack_list(kernel_path, rng):
    # top_k > MAX_LIST_TOP_K takes the scratch-free K-pass scan.
    k = _core_baseline.MAX_LIST_TOP_K + 6
    z = rng.standard_normal((5, 200)).astype(np.float32)
    z[2, 10:20] = 1.5  # ties inside the scan
    out = mr.route(z, k, norm_topk_prob=False)
    assert_matches_reference(z, out, k, norm=False)


@pytest.mark.parametrize(
    "num_experts, top_k, norm",
    [
        (1024, 576, True),
        (1024, 1024, True),
        (2048, 2048, True),  # many blocks of picked scores
        (2048, 1, False),
        (2048, 8, False),  # a long full softmax sum
    ],
)
def test_weight_sums_do_not_drift_over_many_experts(kernel_path, num_experts, top_k, norm):
    # One logit at 0, the rest where exp is just over half a float32 ulp of
    # the running sum: a sum that rounds in float32 at every block (or every
    # lane step) drifts the same way each time; the contract still holds.
    z = np.full(
        (1, num_experts), np.log(2.0**-28 * 1.00002 if norm else 2.0**-24 * 1.00002), np.float32
    )
    z[0, 0] = 0
    assert_matches_reference(z, mr.route(z, top_k, norm_topk_prob=norm), top_k, norm)


def test_single_expert(any_path):
    out = mr.route(np.array([[3.0], [-2.0]], np.float32), 1)
    assert out.expert_ids.tolist() == [[0], [0]]
    assert out.expert_weights.tolist() == [[1.0], [1.0]]


# --- infinities ----------------------------------------------------------


def test_neg_inf_never_picked_while_finite_left(any_path):
    z = np.array([-np.inf, -200.0, -np.inf, 0.0, -np.inf], np.float32)
    out = mr.route(z, 3, norm_topk_prob=False)
    # -200 underflows to probability 0 but is still preferred over -inf.
    assert out.expert_ids.tolist() == [3, 1, 0]
    assert out.expert_weights.tolist() == [1.0, 0.0, 0.0]


def test_pos_inf_shares_mass(any_path):
    z = np.array([0.0, np.inf, 5.0, np.inf, np.inf], np.float32)
    out = mr.route(z, 2, norm_topk_prob=False)
    assert out.expert_ids.tolist() == [1, 3]
    np.testing.assert_allclose(out.expert_weights, [1 / 3, 1 / 3], rtol=1e-6)
    out = mr.route(z, 4, norm_topk_prob=True)
    assert out.expert_ids.tolist() == [1, 3, 4, 2]
    np.testing.assert_allclose(out.expert_weights, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-7)


# --- the seed's four tests, ported ----------------------------------------


def _seed_route(logits, top_k, norm):
    """The seed's algorithm (compiled scalar port), an independent implementation."""
    ids = np.empty(logits.shape[0] * top_k, np.int32)
    w = np.empty(logits.shape[0] * top_k, np.float32)
    _core_baseline.route_rows_seed(logits, top_k, norm, ids, w)
    return ids, w


@pytest.mark.parametrize(
    "batch, num_experts, top_k, norm, seed",
    [
        (32, 128, 8, True, 0xDEADBEEF),  # parity_qwen3_moe_shape
        (1, 128, 8, True, 0x1234),
        (64, 128, 8, True, 0x5678),
        (8, 64, 4, False, 0xC0FFEE),  # parity_no_renorm
        (4, 16, 1, True, 0x42),  # parity_topk_one
        (4, 16, 1, False, 0x42),
    ],
)
def test_seed_parity(kernel_path, batch, num_experts, top_k, norm, seed):
    logits = np.random.default_rng(seed).uniform(-3, 3, (batch, num_experts)).astype(np.float32)
    a = mr.route(logits, top_k, norm)
    b = mr.route_into(logits, top_k, mr.RouterOutput.empty(), norm)
    seed_ids, seed_w = _seed_route(logits, top_k, norm)
    for out in (a, b):
        np.testing.assert_array_equal(out.expert_ids.reshape(-1), seed_ids)
        np.testing.assert_allclose(out.expert_weights.reshape(-1), seed_w, rtol=0, atol=1e-6)
        assert_matches_reference(logits, out, top_k, norm)


def test_allocation_free_after_warmup(any_path):
    out = mr.RouterOutput.empty()
    logits = np.full((32, 128), 0.5, np.float32)
    mr.route_into(logits, 8, out)
    ptrs = (out.expert_ids.ctypes.data, out.expert_weights.ctypes.data, out.capacity)
    for _ in range(16):
        mr.route_into(logits, 8, out)
        assert (out.expert_ids.ctypes.data, out.expert_weights.ctypes.data, out.capacity) == ptrs
    assert out.expert_ids.tolist() == [list(range(8))] * 32


# --- continuous batching, shapes, dtypes -----------------------------------


def test_continuous_batching_reuses_memory(any_path, rng):
    router = mr.Router(num_experts=64, top_k=4)
    out_ext = mr.RouterOutput.empty()
    mr.route_into(rng.standard_normal((48, 64)).astype(np.float32), 4, out_ext)
    router(rng.standard_normal((48, 64)).astype(np.float32))
    ptrs = None
    for batch in [1, 7, 48, 3, 33, 0, 12, 48, 2]:
        z = rng.standard_normal((batch, 64)).astype(np.float32)
        a = router(z)
        b = mr.route_into(z, 4, out_ext)
        now = (
            a.expert_ids.ctypes.data,
            a.expert_weights.ctypes.data,
            b.expert_ids.ctypes.data,
            b.expert_weights.ctypes.data,
        )
        assert ptrs is None or now == ptrs
        ptrs = now
        assert a.batch == b.batch == batch and a.top_k == 4
        assert a.expert_ids.shape == (batch, 4)
        assert_matches_reference(z, a, 4)
        assert_matches_reference(z, b, 4)


def test_leading_dimensions_kept(any_path, rng):
    z = rng.standard_normal((2, 3, 5, 16)).astype(np.float32)
    out = mr.route(z, 3)
    assert out.expert_ids.shape == out.expert_weights.shape == (2, 3, 5, 3)
    assert out.batch == 30 and out.top_k == 3
    assert_matches_reference(z, out, 3)
    one = mr.route(z[0, 0, 0], 3)
    assert one.expert_ids.shape == (3,) and one.batch == 1


def test_empty_batch(any_path):
    out = mr.route(np.empty((0, 16), np.float32), 4)
    assert out.expert_ids.shape == (0, 4) and out.expert_weights.shape == (0, 4)
    assert out.batch == 0 and out.top_k == 4
    out = mr.route(np.empty((3, 0, 16), np.float64), 2)
    assert out.expert_ids.shape == (3, 0, 2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4", ">f8"])
def test_logit_dtypes(any_path, rng, dtype):
    z = rng.standard_normal((6, 40)).astype(dtype)
    out = mr.route(z, 5)
    assert_matches_reference(z.astype(np.float64), out, 5)


@pytest.mark.parametrize("ids_dtype", [np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("weights_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("logits_dtype", [np.float32, np.float64])
def test_output_dtypes_written_directly(any_path, rng, ids_dtype, weights_dtype, logits_dtype):
    z = rng.standard_normal((9, 70)).astype(logits_dtype)
    ids = np.full((9, 6), 99, ids_dtype)
    w = np.full((9, 6), -1, weights_dtype)
    out = mr.route_into(z, 6, mr.RouterOutput(expert_ids=ids, expert_weights=w))
    assert out.expert_ids is ids or np.shares_memory(out.expert_ids, ids)
    ref_ids, ref_w = ref.softmax_topk(z, 6)
    np.testing.assert_array_equal(ids, ref_ids)
    atol = 1e-12 if (weights_dtype == np.float64 and logits_dtype == np.float64) else WEIGHT_ATOL
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=atol)
    r = mr.route(z, 6, ids_dtype=ids_dtype, weights_dtype=weights_dtype)
    assert r.expert_ids.dtype == ids_dtype and r.expert_weights.dtype == weights_dtype
    np.testing.assert_array_equal(r.expert_ids, ref_ids)


def test_wrapped_buffers_larger_than_needed(any_path, rng):
    ids = np.full(100, -7, np.int32)
    w = np.full(100, -7.0, np.float32)
    out = mr.RouterOutput(expert_ids=ids, expert_weights=w)
    z = rng.standard_normal((3, 32)).astype(np.float32)
    mr.route_into(z, 4, out)
    assert out.expert_ids.shape == (3, 4) and np.shares_memory(out.expert_ids, ids)
    assert_matches_reference(z, out, 4)
    assert (ids[12:] == -7).all() and (w[12:] == -7).all()  # nothing written past batch*top_k


def test_input_kinds(any_path, rng):
    z = rng.standard_normal((4, 24))
    expected = ref.softmax_topk(z, 3)
    readonly = z.astype(np.float32)
    readonly.flags.writeable = False
    sources = [
        z.tolist(),
        readonly,
        np.asfortranarray(z),
        z[:, ::-1][:, ::-1],
        np.repeat(z, 2, axis=1)[:, ::2],
    ]
    for src in sources:
        out = mr.route(src, 3)
        np.testing.assert_array_equal(out.expert_ids, expected[0])
        np.testing.assert_allclose(out.expert_weights, expected[1], atol=WEIGHT_ATOL)


def test_memmap_input(any_path, rng, tmp_path):
    z = rng.standard_normal((5, 16)).astype(np.float32)
    mm = np.memmap(tmp_path / "logits.bin", dtype=np.float32, mode="w+", shape=z.shape)
    mm[:] = z
    mm.flush()
    ro = np.memmap(tmp_path / "logits.bin", dtype=np.float32, mode="r", shape=z.shape)
    assert_matches_reference(z, mr.route(ro, 2), 2)


# --- RouterOutput ---------------------------------------------------------


def test_router_output_empty_and_reset():
    out = mr.RouterOutput.empty()
    assert out.capacity == 0 and out.batch == 0 and out.owns_memory
    out.reset(4, 8)
    assert out.expert_ids.shape == (4, 8) and out.batch == 4 and out.top_k == 8
    cap = out.capacity
    assert cap >= 32
    ptr = out.expert_ids.ctypes.data
    out.reset(2, 8)
    assert out.capacity == cap and out.expert_ids.ctypes.data == ptr and out.batch == 2
    out.reset((2, 3), 2)
    assert out.expert_ids.shape == (2, 3, 2) and out.batch == 6
    ids, weights = out
    assert ids is out.expert_ids and weights is out.expert_weights
    assert "batch=6" in repr(out)


def test_router_output_batch_is_right_unlike_the_seed():
    # The seed's batch() always returned 1.
    out = mr.route(np.zeros((5, 8), np.float32), 2)
    assert out.batch == 5 and out.top_k == 2


def test_wrapped_output_never_reallocates():
    ids = np.zeros((2, 4), np.int32)
    w = np.zeros((2, 4), np.float32)
    out = mr.RouterOutput(expert_ids=ids, expert_weights=w)
    assert not out.owns_memory and out.batch == 2 and out.top_k == 4
    with pytest.raises(ValueError, match="needs 12"):
        mr.route_into(np.zeros((3, 8), np.float32), 4, out)
    with pytest.raises(ValueError, match="never reallocates"):
        out.reset(3, 4)


# --- Router ---------------------------------------------------------------


def test_router_matches_route(any_path, rng):
    router = mr.Router(num_experts=128, top_k=8, norm_topk_prob=False)
    z = rng.standard_normal((10, 128)).astype(np.float32)
    first = router(z)
    assert_matches_reference(z, first, 8, norm=False)
    again = router(z[:3])
    assert again is first  # the router's own buffers, reused
    mine = mr.RouterOutput.empty()
    assert router(z, out=mine) is mine
    assert_matches_reference(z, mine, 8, norm=False)
    assert "num_experts=128" in repr(router)


# --- threads ----------------------------------------------------------------


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_thread_count_does_not_change_results(kernel_path, rng, num_threads):
    z = rng.standard_normal((mr.PARALLEL_MIN_ROWS * 2 + 5, 64)).astype(np.float32)
    serial = mr.route(z, 4, num_threads=1)
    out = mr.route(z, 4, num_threads=num_threads)
    np.testing.assert_array_equal(out.expert_ids, serial.expert_ids)
    np.testing.assert_array_equal(out.expert_weights, serial.expert_weights)
    assert_matches_reference(z, out, 4)


# --- interop -----------------------------------------------------------------


def test_torch_tensor_input_and_peer_result(rng):
    torch = pytest.importorskip("torch")
    z = torch.from_numpy(rng.standard_normal((7, 64)).astype(np.float32))
    out = mr.route(z, 4)
    probs = torch.softmax(z, dim=-1, dtype=torch.float32)
    w, ids = torch.topk(probs, 4, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    # Tensors in, tensors out (issue 14): int32 ids index torch tensors directly.
    assert isinstance(out.expert_ids, torch.Tensor) and out.expert_ids.dtype == torch.int32
    np.testing.assert_array_equal(out.expert_ids.numpy(), ids.numpy())
    np.testing.assert_allclose(out.expert_weights.numpy(), w.numpy(), atol=WEIGHT_ATOL)


def test_default_threads_split_only_large_batches_bit_identically(rng):
    # The default (num_threads=None) splits from DEFAULT_PARALLEL_MIN_ROWS on;
    # explicit threads from PARALLEL_MIN_ROWS.  Both give one thread's bits.
    assert 1 <= mr.PARALLEL_MIN_ROWS <= mr.DEFAULT_PARALLEL_MIN_ROWS
    assert mr.show_config(print_out=False)["default_parallel_min_rows"] == (
        mr.DEFAULT_PARALLEL_MIN_ROWS
    )
    z = rng.standard_normal((mr.DEFAULT_PARALLEL_MIN_ROWS + 3, 32)).astype(np.float32)
    serial = mr.route(z, 4, num_threads=1)
    for out in (mr.route(z, 4), mr.Router(32, 4)(z), mr.route(z, 4, num_threads=2)):
        np.testing.assert_array_equal(out.expert_ids, serial.expert_ids)
        np.testing.assert_array_equal(out.expert_weights, serial.expert_weights)
    assert_matches_reference(z, serial, 4)


# --- settings read-only, RouterOutput as a pair (issue 17) -------------------


def test_router_settings_are_read_only_and_the_router_keeps_routing_by_them(rng):
    z = rng.standard_normal((5, 16)).astype(np.float32)
    router = mr.Router(16, 2, norm_topk_prob=False, num_threads=1, ids_dtype=np.int64)
    for name, value in [
        ("num_experts", 8),
        ("top_k", 4),
        ("norm_topk_prob", True),
        ("scoring_func", "sigmoid"),
        ("topk_on_logits", True),
        ("n_group", 2),
        ("topk_group", 1),
        ("routed_scaling_factor", 2.0),
        ("e_score_correction_bias", None),
        ("num_threads", 0),
        ("ids_dtype", np.int32),
        ("weights_dtype", np.float64),
    ]:
        before = getattr(router, name)
        with pytest.raises(AttributeError, match=f"Router.{name} is read-only"):
            setattr(router, name, value)
        assert getattr(router, name) is before or getattr(router, name) == before
    assert router.num_threads == 1 and router.top_k == 2 and router.num_experts == 16
    assert router.ids_dtype == np.int64 and router.weights_dtype == np.float32
    out = router(z)  # still the configured router: top-2, not renormalised, int64 ids
    assert out.expert_ids.dtype == np.int64 and out.expert_ids.shape == (5, 2)
    assert_matches_reference(z, out, 2, norm=False)
    router.note = "other attributes stay free"  # only the settings are fixed
    assert router.note == "other attributes stay free"


@pytest.mark.parametrize("flag", [np.bool_(True), np.bool_(False)])
def test_numpy_bools_are_bools(rng, flag):
    z = rng.standard_normal((3, 16)).astype(np.float32)
    assert_matches_reference(z, mr.route(z, 3, flag), 3, norm=bool(flag))
    assert_matches_reference(z, mr.Router(16, 3, flag)(z), 3, norm=bool(flag))
    out = mr.route_into(z, 3, mr.RouterOutput.empty(), flag)
    assert_matches_reference(z, out, 3, norm=bool(flag))


def test_router_output_is_indexable_like_the_pair_it_unpacks_as(rng):
    z = rng.standard_normal((4, 16)).astype(np.float32)
    out = mr.route(z, 2)
    ids, weights = out
    ref_ids, ref_w = ref.softmax_topk(z, 2, True)
    assert len(out) == 2
    assert out[0] is ids and out[1] is weights
    assert out[-1] is weights and out[-2] is ids
    assert out[:] == (ids, weights) and tuple(out) == (ids, weights)
    np.testing.assert_array_equal(out[0], ref_ids)
    np.testing.assert_allclose(out[1], ref_w, rtol=0, atol=WEIGHT_ATOL)
    with pytest.raises(IndexError):
        out[2]
    with pytest.raises(TypeError):
        out["expert_ids"]


def test_docstrings_cover_the_call_threads_dtypes_and_errors():
    call_doc = mr.Router.__call__.__doc__ or ""
    assert "Route `logits`" in call_doc and "ValueError" in call_doc
    for doc in (mr.Router.__doc__, mr.route.__doc__):
        for word in ("num_threads", "ids_dtype", "weights_dtype", "TypeError", "ValueError"):
            assert word in doc, word


@pytest.mark.parametrize(
    "below, at",
    [
        # The default (num_threads=None): one thread up to DEFAULT_PARALLEL_MIN_ROWS.
        ("mr.route(z[:-1], 2); mr.Router(16, 2)(z[:-1])", "mr.route(z, 2)"),
        # Explicit threads: split from PARALLEL_MIN_ROWS.
        (
            "mr.route(z[: mr.PARALLEL_MIN_ROWS - 1], 2, num_threads=2)",
            "mr.route(z[: mr.PARALLEL_MIN_ROWS], 2, num_threads=2)",
        ),
    ],
    ids=["default", "explicit"],
)
def test_calls_split_over_threads_only_from_their_threshold(below, at):
    # The OS as the oracle: libgomp starts its worker threads at the first
    # parallel region, so the process's thread count shows whether a call
    # was split.  In a fresh process with OMP_NUM_THREADS=2.
    import os
    import subprocess
    import sys

    if not mr.show_config(print_out=False)["openmp"] or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs OpenMP and Linux's /proc")
    script = f"""
import os
import numpy as np
import moe_router as mr

def threads():
    return len(os.listdir("/proc/self/task"))

z = np.random.default_rng(0).standard_normal((mr.DEFAULT_PARALLEL_MIN_ROWS, 16))
z = z.astype(np.float32)
before = threads()
{below}
print(threads() - before)
{at}
print(threads() - before)
"""
    # The subprocess imports the same moe_router this test run does.
    env = dict(
        os.environ,
        OMP_NUM_THREADS="2",
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.path.dirname(os.path.dirname(mr.__file__)),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    unsplit, split = (int(line) for line in done.stdout.split())
    assert unsplit == 0, "a call below the threshold started OpenMP workers"
    assert split >= 1, "a call at the threshold ran on one thread"
