"""Tensors as an inference loop has them (issue 14): bfloat16 / float16 logits,
DLPack producers, torch tensors in and out.

The oracle for half-precision logits is the float32 routing of the same
values (widening is exact): ids and weights must be bit-identical, on every
kernel path and variant.  DLPack is tested with NumPy's own producer and a
hand-made one, so the protocol path runs without torch.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moe_router as mr
from moe_router import _core_baseline

try:
    import ml_dtypes
except ImportError:  # optional: those tests skip
    ml_dtypes = None

needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")

VARIANTS = {
    "softmax": dict(top_k=8),
    "softmax unnormalised": dict(top_k=8, norm_topk_prob=False),
    "softmax top-1": dict(top_k=1),
    "softmax top-20": dict(top_k=20),
    "grouped softmax": dict(top_k=6, n_group=8, topk_group=3, routed_scaling_factor=16.0),
    "sigmoid": dict(top_k=4, scoring_func="sigmoid"),
    "deepseek-v3": dict(
        top_k=8,
        scoring_func="sigmoid",
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        e_score_correction_bias="bias",
    ),
    "gpt-oss": dict(top_k=4, topk_on_logits=True),
    "llama4": dict(top_k=1, scoring_func="sigmoid", topk_on_logits=True, norm_topk_prob=False),
    # The scoring rules (route_rows_rules) read half precision the same way.
    "ernie softmax+bias": dict(top_k=6, e_score_correction_bias="bias", moe_norm_min=1e-12),
    "deepseek-v4 sqrtsoftplus": dict(
        top_k=6,
        scoring_func="sqrtsoftplus",
        e_score_correction_bias="bias",
        routed_scaling_factor=1.5,
    ),
    "laguna softcap": dict(
        top_k=8,
        scoring_func="sigmoid",
        moe_router_logit_softcapping=2.0,
        e_score_correction_bias="bias",
    ),
    "dbrx p-norm": dict(top_k=4, moe_normalize_expert_weights=2.0),
    "phimoe sparsemixer": dict(top_k=2, scoring_func="sparsemixer", norm_topk_prob=False),
    "longcat zero experts": dict(
        top_k=12,
        e_score_correction_bias="bias",
        zero_expert_num=32,
        norm_topk_prob=False,
        routed_scaling_factor=6.0,
    ),
}


def _router(num_experts, spec, rng):
    spec = dict(spec)
    if spec.get("e_score_correction_bias") == "bias":
        spec["e_score_correction_bias"] = rng.standard_normal(num_experts) * 0.1
    top_k = spec.pop("top_k")
    return mr.Router(num_experts, top_k, **spec)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def _half(values32, kind):
    """(half-precision array, its exact float32 values)."""
    if kind == "bfloat16":
        h = values32.astype(ml_dtypes.bfloat16)
    else:
        h = values32.astype(np.float16)
    return h, h.astype(np.float32)


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_half_logits_bit_identical_to_float32(kernel_path, rng, kind, variant):
    if kind == "bfloat16" and ml_dtypes is None:
        pytest.skip("ml_dtypes not installed")
    router = _router(128, VARIANTS[variant], rng)
    # Rows of a pair, an odd last row, more rows than one stack chunk (16
    # rows of 128) and enough for threads.
    for rows in (1, 2, 7, 33, 300):
        h, f = _half(rng.standard_normal((rows, 128)).astype(np.float32) * 3, kind)
        want = router(f)
        want_ids, want_w = want.expert_ids.copy(), want.expert_weights.copy()
        got = router(h)
        _bits_equal(got.expert_ids, want_ids)
        _bits_equal(got.expert_weights, want_w)


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_half_logits_long_rows_and_specials(kernel_path, rng, kind):
    if kind == "bfloat16" and ml_dtypes is None:
        pytest.skip("ml_dtypes not installed")
    # 3000 experts: two rows no longer fit the stack chunk (the heap buffer).
    h, f = _half(rng.standard_normal((5, 3000)).astype(np.float32), kind)
    _bits_equal(mr.route(h, 9).expert_weights, mr.route(f, 9).expert_weights)
    # +-inf, subnormals and ties widen exactly too.
    z = np.zeros((4, 16), np.float32)
    z[0, 3] = np.inf
    z[1, :] = -np.inf
    z[1, 5] = 0
    z[2, :] = 6e-8  # float16 subnormal
    z[3, ::2] = 1.0
    h, f = _half(z, kind)
    got, want = mr.route(h, 4), mr.route(f, 4)
    _bits_equal(got.expert_ids, want.expert_ids)
    _bits_equal(got.expert_weights, want.expert_weights)


@needs_ml_dtypes
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 70),
    num_experts=st.sampled_from([1, 3, 16, 31, 64, 160]),
    data=st.data(),
)
def test_bfloat16_hypothesis_shapes(rows, num_experts, data):
    top_k = data.draw(st.integers(1, num_experts))
    seed = data.draw(st.integers(0, 2**32 - 1))
    z = np.random.default_rng(seed).standard_normal((rows, num_experts)).astype(np.float32)
    h = z.astype(ml_dtypes.bfloat16)
    got, want = mr.route(h, top_k), mr.route(h.astype(np.float32), top_k)
    _bits_equal(got.expert_ids, want.expert_ids)
    _bits_equal(got.expert_weights, want.expert_weights)


@needs_ml_dtypes
def test_bfloat16_ties_take_the_smaller_index():
    # bfloat16 has 8 bits of mantissa: equal logits are common.
    z = np.array([[1.0, 2.0, 2.0, 0.5, 2.0]], np.float32).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(mr.route(z, 2).expert_ids, [[1, 2]])


def test_nan_in_half_logits_is_named(rng):
    z = rng.standard_normal((3, 16)).astype(np.float16)
    z[1, 4] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        mr.route(z, 2)


# --- DLPack ------------------------------------------------------------------


class Producer:
    """A minimal DLPack producer: only __dlpack__ / __dlpack_device__."""

    def __init__(self, array, legacy=False, device=None):
        self.array, self.legacy, self.device = array, legacy, device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self.legacy:
            if max_version is not None:
                raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
            return self.array.__dlpack__()
        return self.array.__dlpack__(max_version=max_version)

    def __dlpack_device__(self):
        return self.device or self.array.__dlpack_device__()


@pytest.mark.parametrize("legacy", [False, True])
def test_dlpack_producer_is_read_without_a_copy(any_path, rng, legacy):
    z = rng.standard_normal((5, 3, 32)).astype(np.float32)
    out = mr.route(Producer(z, legacy), 4)
    want = mr.route(z, 4)
    assert isinstance(out.expert_ids, np.ndarray) and out.expert_ids.shape == (5, 3, 4)
    _bits_equal(out.expert_ids, want.expert_ids)
    _bits_equal(out.expert_weights, want.expert_weights)
    view, name, read_only = _core_baseline.dlpack_view(Producer(z, legacy))
    assert name == "float32" and not read_only and np.shares_memory(view, z)


def test_dlpack_views_honour_strides_and_read_only(rng):
    z = rng.standard_normal((6, 40)).astype(np.float64)[::2, ::3]
    view, name, _ = _core_baseline.dlpack_view(Producer(z))
    assert name == "float64" and np.shares_memory(view, z)
    np.testing.assert_array_equal(view, z)
    _bits_equal(mr.route(Producer(z), 3).expert_weights, mr.route(z, 3).expert_weights)
    ro = np.ascontiguousarray(z)
    ro.flags.writeable = False
    view, _, read_only = _core_baseline.dlpack_view(Producer(ro))
    assert read_only and not view.flags.writeable
    _bits_equal(mr.route(Producer(ro), 3).expert_ids, mr.route(z, 3).expert_ids)
    ids = np.zeros((3, 3), np.int32)
    ids.flags.writeable = False
    with pytest.raises(ValueError, match="expert_ids must be writeable"):
        mr.RouterOutput(expert_ids=Producer(ids), expert_weights=np.zeros((3, 3), np.float32))


def test_dlpack_output_buffers(rng):
    z = rng.standard_normal((4, 32)).astype(np.float32)
    g_ids, g_w = np.full(4 * 3 + 8, -7, np.int64), np.full(4 * 3 + 8, -7, np.float64)
    out = mr.RouterOutput(expert_ids=Producer(g_ids[4:-4]), expert_weights=Producer(g_w[4:-4]))
    mr.route_into(z, 3, out)
    want = mr.route(z, 3, ids_dtype=np.int64, weights_dtype=np.float64)
    np.testing.assert_array_equal(g_ids[4:-4].reshape(4, 3), want.expert_ids)
    _bits_equal(g_w[4:-4].reshape(4, 3), want.expert_weights)
    assert (g_ids[:4] == -7).all() and (g_ids[-4:] == -7).all()
    assert (g_w[:4] == -7).all() and (g_w[-4:] == -7).all()


# --- torch -------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
@pytest.mark.parametrize(
    "variant", ["softmax", "deepseek-v3", "gpt-oss", "deepseek-v4 sqrtsoftplus"]
)
def test_torch_logits_match_numpy_float(kernel_path, rng, torch, dtype, variant):
    router = _router(64, VARIANTS[variant], rng)
    t = torch.from_numpy(rng.standard_normal((2, 9, 64)).astype(np.float32)).to(
        getattr(torch, dtype)
    )
    want = router(t.double().numpy().astype(np.float64 if dtype == "float64" else np.float32))
    want_ids, want_w = want.expert_ids.copy(), want.expert_weights.copy()
    got = router(t)
    assert isinstance(got.expert_ids, torch.Tensor) and got.expert_ids.shape == (
        2,
        9,
        want_ids.shape[-1],
    )
    _bits_equal(got.expert_ids.numpy(), want_ids)
    _bits_equal(got.expert_weights.numpy(), want_w)


def test_torch_non_contiguous_and_read_only_inputs(rng, torch):
    base = torch.from_numpy(rng.standard_normal((6, 128)).astype(np.float32)).to(torch.bfloat16)
    t = base[::2]  # non-contiguous: one copy, same results
    want = mr.route(t.float().numpy(), 8)
    got = mr.route(t, 8)
    _bits_equal(got.expert_ids.numpy(), want.expert_ids)
    _bits_equal(got.expert_weights.numpy(), want.expert_weights)
    # An inference-mode tensor cannot be written: reading it is fine.
    with torch.inference_mode():
        ti = base.clone()
    _bits_equal(mr.route(ti, 8).expert_ids.numpy(), mr.route(base.float().numpy(), 8).expert_ids)


def test_torch_outputs_share_memory_and_stay_allocation_free(rng, torch):
    router = mr.Router(128, 8)
    views = {}
    for step in range(3):
        for batch in (1, 4, 64, 4, 1):
            t = torch.from_numpy(rng.standard_normal((batch, 128)).astype(np.float32))
            out = router(t.to(torch.bfloat16))
            ids, w = out.expert_ids, out.expert_weights
            assert ids.data_ptr() == out._ids.ctypes.data
            assert w.data_ptr() == out._weights.ctypes.data
            want = mr.route(t.to(torch.bfloat16).float().numpy(), 8)
            _bits_equal(ids.numpy(), want.expert_ids)
            # The same tensor objects for a shape seen before: nothing made per call.
            if step:
                assert views[batch][0] is ids and views[batch][1] is w
            views[batch] = (ids, w)
    # NumPy logits after torch ones: NumPy views again.
    assert isinstance(router(np.zeros((2, 128), np.float32)).expert_ids, np.ndarray)
    # torch.from_dlpack on the NumPy outputs shares their memory.
    out = mr.route(np.zeros((2, 128), np.float32), 8)
    assert torch.from_dlpack(out.expert_ids).data_ptr() == out.expert_ids.ctypes.data


def test_torch_warm_calls_after_changes(any_path, rng, torch):
    # Once the views are made for a tensor type, Router.__call__ takes a
    # shorter path for it; whatever changes between calls must still route
    # like the reference or raise the catalogue's error.
    router8, router3 = mr.Router(64, 8), mr.Router(64, 3)
    out = mr.RouterOutput.empty()

    def check(t, router):
        got = router(t, out=out)
        want = mr.route(t.detach().float().contiguous().numpy(), router.top_k)
        _bits_equal(got.expert_ids.numpy(), want.expert_ids)
        _bits_equal(got.expert_weights.numpy(), want.expert_weights)

    def tensor(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    for _ in range(2):
        check(tensor(4, 64), router8)
        check(tensor(4, 64), router8)  # warm
        check(tensor(2, 3, 64), router8)  # another shape
        check(tensor(64, 2).T, router8)  # not contiguous: copied once
        check(tensor(4, 64).to(torch.bfloat16), router8)
        check(tensor(4, 64), router3)  # another top_k into the same output
        check(tensor(4, 64), router8)
        with pytest.raises(TypeError, match="logits.*detach"):
            router8(tensor(4, 64).requires_grad_(), out=out)
        bad = tensor(4, 64)
        bad[2, 5] = float("nan")
        with pytest.raises(ValueError, match="row 2"):
            router8(bad, out=out)
        with pytest.raises(ValueError, match="num_experts"):
            router8(tensor(4, 32), out=out)


def test_torch_caller_buffers(rng, torch):
    z = rng.standard_normal((4, 32)).astype(np.float32)
    ids, w = torch.full((4, 3), -7, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.float64)
    out = mr.RouterOutput(expert_ids=ids, expert_weights=w)
    got = mr.route_into(torch.from_numpy(z), 3, out)
    want = mr.route(z, 3, ids_dtype=np.int64, weights_dtype=np.float64)
    np.testing.assert_array_equal(ids.numpy(), want.expert_ids)
    _bits_equal(w.numpy(), want.expert_weights)
    assert got.expert_ids.data_ptr() == ids.data_ptr()


def test_torch_settings(rng, torch):
    assert mr.Router(8, 2, ids_dtype=torch.int64)(np.zeros((1, 8))).expert_ids.dtype == np.int64
    bias = rng.standard_normal(64).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(bias).to(torch.bfloat16))
    kw = dict(scoring_func="sigmoid", n_group=8, topk_group=4)
    router = mr.Router(64, 6, e_score_correction_bias=param, **kw)
    want = mr.Router(64, 6, e_score_correction_bias=param.detach().float().numpy(), **kw)
    z = rng.standard_normal((5, 64)).astype(np.float32)
    _bits_equal(router(z).expert_ids, want(z).expert_ids)
    np.testing.assert_array_equal(router.e_score_correction_bias, param.detach().double().numpy())


def test_dlpack_device_error_without_torch():
    with pytest.raises(
        ValueError, match=r"logits is on device cuda:1; moe_router routes on the CPU"
    ):
        mr.route(Producer(np.zeros((2, 8), np.float32), device=(2, 1)), 2)


def test_readme_torch_loop_runs_and_routes_like_the_reference(torch):
    import contextlib
    import io
    import pathlib
    import re

    from moe_router import reference as ref

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    match = re.search(
        r"^## Tensors: torch, bfloat16, DLPack\n.*?^```python\n(.*?)^```", readme, re.S | re.M
    )
    assert match, "README has no python block under '## Tensors'"
    namespace = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(match.group(1), "README.md tensors", "exec"), namespace)
    assert printed.getvalue().count("\n") == 3
    ids, weights = namespace["expert_ids"], namespace["expert_weights"]
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int32
    with torch.no_grad():
        logits = namespace["gate"](namespace["hidden"]).float().numpy()
    ref_ids, ref_w = ref.softmax_topk(logits, 8, True)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_allclose(weights.numpy(), ref_w, rtol=0, atol=2e-6)
