"""Dispatch, the step after routing: plan, permute, combine.

    plan = mr.plan(out.expert_ids, num_experts)      # slots sorted by expert
    x = mr.permute(hidden, plan)                     # [num_rows, H], expert order
    # ... expert e runs on x[plan.expert_offsets[e]:plan.expert_offsets[e + 1]] ...
    y = mr.combine(expert_out, plan, out.expert_weights)   # [..., H]

Validation, conversion and allocation live here, with the GIL held; the
compiled kernels (moe_router/_plan_kernels.pxi over csrc/plan.hpp) re-check
every size they index with and never raise.  permute and combine first try
the kernels' warm path (permute_fast / combine_fast), which checks in C the
rules checked here for arrays and tensors that need no conversion and
declines anything else, so every error still comes from this module.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _dispatch, _tensors
from ._api import RouterOutput, check_int

__all__ = ["DispatchPlan", "plan", "plan_into", "permute", "combine"]

_I64 = np.dtype(np.int64)
_ID_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32), _I64)
# Row dtype codes of the kernels (csrc/plan.hpp).
_ROW_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
_W_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_N_STATS = 7  # MR_ST_N: rows, active, dropped, identity, remote, blocks, tokens


_kernel_seen = (None, None)  # (_dispatch.kernel, the module that runs the dispatch kernels)


def _kernel():
    """The active compiled module (the NumPy reference path has no dispatch kernels:
    it takes the baseline module's; a kernel per logits dtype: the float32 one)."""
    global _kernel_seen
    k = _dispatch.kernel
    seen = _kernel_seen
    if k is seen[0]:
        return seen[1]
    m = k.kernel_f32 if isinstance(k, _dispatch.KernelByDtype) else k
    if not hasattr(m, "plan_plain"):
        m = _dispatch.load("baseline")
    _kernel_seen = (k, m)
    return m


def _threads_arg(num_threads):
    if num_threads is None:
        return 0
    if type(num_threads) is int and num_threads >= 1:
        return num_threads
    return check_int(num_threads, "num_threads", low=1)


# --- arrays in, arrays out (NumPy, ml_dtypes bfloat16, torch) ---------------


_DTYPE_NAMES = {
    np.dtype(t): np.dtype(t).name
    for t in (np.float32, np.float64, np.float16, np.int32, np.uint32, np.int64)
}


_TORCH_NUMPY_DTYPES = None


def _torch_numpy_dtypes():
    """The torch dtypes .numpy() views (torch is imported: a tensor was seen)."""
    global _TORCH_NUMPY_DTYPES
    if _TORCH_NUMPY_DTYPES is None:
        import torch

        _TORCH_NUMPY_DTYPES = frozenset(
            (torch.float32, torch.float64, torch.float16, torch.int32, torch.int64)
        )
    return _TORCH_NUMPY_DTYPES


def _asarray(obj, name, writeable=False):
    """(ndarray, dtype name, was a torch tensor): a zero-copy view where possible.

    bfloat16 rows come back as their raw uint16 bits with dtype name
    "bfloat16" (torch tensors, DLPack, and ml_dtypes arrays, recognised by
    dtype name without importing ml_dtypes).
    """
    if _tensors.is_torch(obj) and not obj.requires_grad and obj.dtype in _torch_numpy_dtypes():
        try:  # CPU tensors of a NumPy dtype: .numpy() is the cheapest view
            arr = obj.numpy()
        except (TypeError, RuntimeError):
            pass  # another device ...: _tensors explains
        else:
            return arr, _DTYPE_NAMES.get(arr.dtype) or arr.dtype.name, True
    arr, dtype_name, is_torch = _tensors.asarray(obj, name, writeable)
    if dtype_name == "bfloat16" and arr.dtype.kind != "u":
        arr = arr.view(np.uint16)
    return arr, dtype_name, is_torch


# --- the plan -----------------------------------------------------------------


class DispatchPlan:
    """Where each (token, k) slot of a routing goes: the slots sorted by expert.

    Order: by expert, then token, then k (what a stable sort of the flat ids
    gives).  Arrays (int64, read-only views of memory the plan owns and
    reuses in `plan_into`; copy what you keep across calls):

      tokens_per_expert  [num_local_experts] slots kept per expert
      expert_offsets     [num_local_experts + 1]: expert e's rows are
                         [offsets[e], offsets[e + 1]) (padded with block_size)
      sorted_token_ids   [num_rows] the token of each row (num_tokens: padding)
      sorted_slot_ids    [num_rows] the flat slot t * top_k + k of each row
                         (num_tokens * top_k: padding, as vLLM)
      slot_of            [..., top_k] the row slot (t, k) went to; -1 where
                         it was dropped (capacity) or another rank's expert
                         (expert_map), -2 for an identity expert
      active_experts     the experts that have slots, ascending
      block_expert_ids   [num_rows // block_size] the expert of each block
                         (None without block_size)
    """

    __slots__ = ("_bufs", "_shape", "_opts", "_views")

    def __init__(self) -> None:
        raise TypeError("build a DispatchPlan with mr.plan(...) or DispatchPlan.empty()")

    @classmethod
    def empty(cls) -> DispatchPlan:
        """A plan with no memory yet; `plan_into` grows it on demand and then reuses it."""
        self = cls.__new__(cls)
        z = np.zeros
        # counts, offsets, cursor, sorted_token_ids, sorted_slot_ids, slot_of,
        # active, block_experts, stats, share counts (threads x experts): the
        # kernel's buffers.
        self._bufs = (z(0, _I64), z(1, _I64), z(0, _I64), z(0, _I64), z(0, _I64), z(0, _I64),
                      z(0, _I64), z(0, _I64), z(_N_STATS, _I64), z(0, _I64))  # fmt: skip
        self._clear()
        return self

    def _clear(self):
        self._shape = (0, 1)
        # num_experts, identity_expert_start, num_local_experts, capacity, block_size
        self._opts = (0, 0, 0, -1, 1)
        self._bufs[1][0] = 0
        self._bufs[8][:] = 0
        self._views = None

    def _reserve(self, n_slots, n_local, rows_max, blocks_max):
        counts, offsets, cursor, tok, slot, slot_of, active, blocks, stats, shares = self._bufs
        if shares.size < _dispatch.default_threads * n_local:
            shares = np.zeros(_dispatch.default_threads * n_local, _I64)
        if counts.size < n_local:
            counts, cursor, active = (np.zeros(n_local, _I64) for _ in range(3))
            offsets = np.zeros(n_local + 1, _I64)
        if tok.size < rows_max:
            # Amortised growth: continuous batching settles on its largest batch.
            cap = max(rows_max, 2 * tok.size)
            tok, slot = np.zeros(cap, _I64), np.zeros(cap, _I64)
        if slot_of.size < n_slots:
            slot_of = np.zeros(max(n_slots, 2 * slot_of.size), _I64)
        if blocks.size < blocks_max:
            blocks = np.zeros(max(blocks_max, 2 * blocks.size), _I64)
        self._bufs = (counts, offsets, cursor, tok, slot, slot_of, active, blocks, stats, shares)

    def _view(self, name):
        views = self._views
        if views is None:
            views = self._views = {}
        v = views.get(name)
        if v is None:
            v = self._make_view(name)
            views[name] = v
        return v

    def _make_view(self, name):
        counts, offsets, _, tok, slot, slot_of, active, blocks, stats, _ = self._bufs
        L = self._opts[2]
        if name == "tokens_per_expert":
            v = counts[:L]
        elif name == "expert_offsets":
            v = offsets[: L + 1]
        elif name == "sorted_token_ids":
            v = tok[: stats[0]]
        elif name == "sorted_slot_ids":
            v = slot[: stats[0]]
        elif name == "slot_of":
            v = slot_of[: self.num_slots].reshape(self._shape)
        elif name == "active_experts":
            v = active[: stats[1]]
        else:  # block_expert_ids
            v = blocks[: stats[5]]
        v = v.view()
        v.flags.writeable = False
        return v

    tokens_per_expert = property(lambda self: self._view("tokens_per_expert"))
    expert_offsets = property(lambda self: self._view("expert_offsets"))
    sorted_token_ids = property(lambda self: self._view("sorted_token_ids"))
    sorted_slot_ids = property(lambda self: self._view("sorted_slot_ids"))
    slot_of = property(lambda self: self._view("slot_of"))
    active_experts = property(lambda self: self._view("active_experts"))

    @property
    def block_expert_ids(self):
        return None if self._opts[4] == 1 else self._view("blocks")

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading shape of the expert_ids (and of combine's output)."""
        return self._shape[:-1]

    @property
    def top_k(self) -> int:
        return self._shape[-1]

    @property
    def num_tokens(self) -> int:
        return int(self._bufs[8][6])

    @property
    def num_slots(self) -> int:
        """num_tokens * top_k."""
        return self.num_tokens * self.top_k

    num_experts = property(lambda self: self._opts[0], doc="Ids run over [0, num_experts).")
    identity_expert_start = property(
        lambda self: self._opts[1], doc="Ids >= this are identity experts (num_experts: none)."
    )
    num_local_experts = property(
        lambda self: self._opts[2], doc="Experts the plan counts (this rank's, routed only)."
    )
    capacity = property(lambda self: None if self._opts[3] < 0 else self._opts[3])
    block_size = property(lambda self: None if self._opts[4] == 1 else abs(self._opts[4]))
    num_rows = property(
        lambda self: int(self._bufs[8][0]), doc="Rows of permute's output (padding included)."
    )
    num_dropped = property(lambda self: int(self._bufs[8][2]), doc="Slots dropped by the capacity.")
    num_identity_slots = property(lambda self: int(self._bufs[8][3]))
    num_remote_slots = property(
        lambda self: int(self._bufs[8][4]), doc="Slots of experts another rank holds."
    )

    def __repr__(self):
        return (
            f"DispatchPlan(num_tokens={self.num_tokens}, top_k={self.top_k}, "
            f"num_local_experts={self.num_local_experts}, num_rows={self.num_rows}, "
            f"active_experts={self.active_experts.size}, num_dropped={self.num_dropped})"
        )


def _as_ids(expert_ids):
    """expert_ids as a C-contiguous native int32 / uint32 / int64 ndarray [..., top_k]."""
    if isinstance(expert_ids, RouterOutput):
        expert_ids = expert_ids.expert_ids
    arr, _, _ = _asarray(expert_ids, "expert_ids")
    dt = arr.dtype
    if dt.kind not in "iu":
        raise TypeError(
            f"expert_ids must be an integer array (int32, uint32, int64), got dtype {dt}"
        )
    orig = arr
    if arr.dtype not in _ID_DTYPES:
        if dt.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            arr = np.minimum(arr, np.iinfo(np.int64).max)
        arr = arr.astype(_I64)
    if arr.ndim == 0:
        raise ValueError("expert_ids must have shape [..., top_k], got a 0-d array")
    if arr.shape[-1] == 0:
        raise ValueError(f"top_k (expert_ids.shape[-1]) must be >= 1, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr, orig


def _as_expert_map(expert_map, n_routed):
    m, _, _ = _asarray(expert_map, "expert_map")
    if m.dtype.kind not in "iu":
        raise TypeError(f"expert_map must be an integer array, got dtype {m.dtype}")
    if m.shape != (n_routed,):
        raise ValueError(
            f"expert_map must have shape (identity_expert_start={n_routed},): one entry per "
            f"routed expert, got {m.shape}"
        )
    m = np.ascontiguousarray(m, dtype=_I64)
    if m.size and m.min() < -1:
        raise ValueError(f"expert_map entries must be >= -1 (-1: another rank's), got {m.min()}")
    local = np.sort(m[m >= 0])
    if not np.array_equal(local, np.arange(local.size)):
        raise ValueError(
            "expert_map's local ids must be 0, 1, ..., L - 1, each once (vLLM's expert_map); "
            f"got {local.tolist()[:16]}"
        )
    return m, int(local.size)


def _raise_bad_id(ids, orig, rc, num_experts):
    flat = orig.reshape(-1)
    k_dim = ids.shape[-1]
    t, k = divmod(rc, k_dim)
    where = f"token {t}, k={k}"
    if ids.ndim > 2:
        where += f" (expert_ids{tuple(int(i) for i in np.unravel_index(rc, ids.shape))})"
    values = flat.astype(np.float64) if flat.dtype.kind == "u" else flat
    n_bad = int(((values < 0) | (values >= num_experts)).sum())
    raise ValueError(
        f"expert_ids must be in [0, num_experts={num_experts}): {where} has id {flat[rc]} "
        f"({n_bad} bad id(s) in all)"
    )


def _plan_checked(
    expert_ids, num_experts, p, block_size, capacity, expert_map, identity_start, num_threads=None
):
    threads = _threads_arg(num_threads)
    ids, orig = _as_ids(expert_ids)
    num_experts = check_int(num_experts, "num_experts", low=1)
    S = (
        num_experts
        if identity_start is None
        else check_int(
            identity_start,
            "identity_expert_start",
            low=0,
            high=num_experts,
            high_name="num_experts",
        )
    )
    B = 1 if block_size is None else check_int(block_size, "block_size", low=1)
    C = -1 if capacity is None else check_int(capacity, "capacity", low=0)
    if expert_map is None:
        m, L = None, S
    else:
        m, L = _as_expert_map(expert_map, S)
    n = ids.size
    rows_max = n + min(L, n) * (B - 1)
    p._reserve(n, L, rows_max, rows_max // B if block_size is not None else 0)
    # A negative block size asks the kernel for block_expert_ids too.
    rc = _kernel().plan_rows(
        ids, num_experts, S, m, L, C, B if block_size is None else -B, p._bufs, threads
    )
    if rc != -1:
        p._clear()
        if rc >= 0:
            _raise_bad_id(ids, orig, rc, num_experts)
        if rc == -2:
            raise ValueError("expert_map changed while the plan was built")
        raise RuntimeError(
            "moe_router: the plan kernel refused validated input (a bug; please report)"
        )
    p._shape = ids.shape
    p._opts = (num_experts, S, L, C, -B if block_size is not None else 1)
    p._views = None
    return p


def plan_into(
    expert_ids,
    num_experts: int,
    plan: DispatchPlan,
    *,
    block_size: int | None = None,
    capacity: int | None = None,
    expert_map: npt.ArrayLike | None = None,
    identity_expert_start: int | None = None,
    num_threads: int | None = None,
) -> DispatchPlan:
    """Build the dispatch plan of `expert_ids` into `plan`, reusing its memory; returns `plan`.

    Allocates nothing once the plan has held a batch this large.  On error
    the plan is left empty.  See `plan` for the arguments.
    """
    if type(plan) is not DispatchPlan:
        raise TypeError(f"plan must be a DispatchPlan, got {type(plan).__name__}")
    if type(expert_ids) is RouterOutput:
        expert_ids = expert_ids.expert_ids
    if (
        block_size is None
        and capacity is None
        and expert_map is None
        and identity_expert_start is None
        and type(num_experts) is int
        and (num_threads is None or (type(num_threads) is int and num_threads >= 1))
    ):
        # The plain case in a few C checks; anything else takes the validating path.
        if _kernel().plan_plain(expert_ids, num_experts, plan._bufs, num_threads or 0) == -1:
            plan._shape = expert_ids.shape
            plan._opts = (num_experts, num_experts, num_experts, -1, 1)
            plan._views = None
            return plan
    return _plan_checked(
        expert_ids,
        num_experts,
        plan,
        block_size,
        capacity,
        expert_map,
        identity_expert_start,
        num_threads,
    )


def plan(
    expert_ids,
    num_experts: int,
    *,
    block_size: int | None = None,
    capacity: int | None = None,
    expert_map: npt.ArrayLike | None = None,
    identity_expert_start: int | None = None,
    num_threads: int | None = None,
) -> DispatchPlan:
    """The dispatch plan of a routing: its slots sorted by expert (allocates a new plan).

    expert_ids: [..., top_k] int32 / uint32 / int64 (as `route` returns them;
        a RouterOutput or a torch tensor is accepted too), each in
        [0, num_experts).
    block_size: pad each expert's rows to a multiple of it (vLLM's
        moe_align_block_size): padding rows have token num_tokens and slot
        num_tokens * top_k; permute writes zeros there, combine skips them.
    capacity: keep at most this many slots per expert, first choices of all
        tokens before any second choice, then token order (Switch, GShard);
        the dropped slots contribute nothing to combine (num_dropped counts them).
    expert_map: [identity_expert_start] int array, global id -> local id or -1
        (vLLM's expert_map): other ranks' slots are left out, counts are per
        local expert.
    identity_expert_start: ids >= this are identity experts (LongCat-Flash's
        zero-computation experts): they take no rows; combine adds w * hidden[t].
    num_threads: None (default): one thread below DEFAULT_PARALLEL_MIN_ROWS
        (4096) tokens, all OpenMP threads above, as the router; N: N threads
        for a plain plan of at least PLAN_PARALLEL_MIN_SLOTS (8192) slots.
        The plan is the same for any count (so are permute's and combine's
        results, which take the same rule with 1 MiB of rows).
    """
    return _plan_checked(
        expert_ids,
        num_experts,
        DispatchPlan.empty(),
        block_size,
        capacity,
        expert_map,
        identity_expert_start,
        num_threads,
    )


# --- permute and combine ----------------------------------------------------

_F32, _F64, _F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
_CODE_NAMES = ("float32", "float64", "float16", "bfloat16")


def _check_plan(p):
    if type(p) is not DispatchPlan:
        raise TypeError(f"plan must be a DispatchPlan, got {type(p).__name__}")


def _native_code(dt):
    # `is` first: the native dtypes are single objects, and dtype.name costs
    # microseconds.
    if dt is _F32:
        return 0
    if dt is _F64:
        return 1
    if dt is _F16:
        return 2
    return -1


_bf16_dtype = None  # ml_dtypes' bfloat16 dtype, once seen (ml_dtypes is never imported here)


def _rows(obj, name, writeable=False):
    """(ndarray, row dtype code, was a torch tensor) of rows [..., hidden_size]."""
    global _bf16_dtype
    if type(obj) is np.ndarray:
        dt = obj.dtype
        code = _native_code(dt)
        if code >= 0 and obj.ndim and (writeable or obj.flags.c_contiguous):
            return obj, code, False
        if dt is _bf16_dtype and obj.ndim and (writeable or obj.flags.c_contiguous):
            return obj.view(np.uint16), 3, False
    arr, dtype_name, is_torch = _asarray(obj, name, writeable)
    if dtype_name == "bfloat16" and type(obj) is np.ndarray and obj.dtype.itemsize == 2:
        _bf16_dtype = obj.dtype
    code = _ROW_CODES.get(dtype_name)
    if code is None:
        raise TypeError(
            f"{name} must be float32, float64, float16 or bfloat16, got dtype {dtype_name}"
        )
    if arr.ndim == 0:
        raise ValueError(f"{name} must have shape [..., hidden_size], got a 0-d array")
    if not writeable and (not arr.flags.c_contiguous or not arr.dtype.isnative):
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return arr, code, is_torch


def _weights(obj, p, name):
    if obj is None:
        return None
    if isinstance(obj, RouterOutput):
        obj = obj.expert_weights
    if (
        type(obj) is np.ndarray
        and (obj.dtype is _F32 or obj.dtype is _F64)
        and obj.shape == p._shape
        and obj.flags.c_contiguous
    ):
        return obj
    w, dtype_name, _ = _asarray(obj, name)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {dtype_name}")
    if w.shape != p._shape and w.shape != (p.num_tokens, p.top_k):
        raise ValueError(
            f"{name} must have the plan's shape {p._shape} ([..., top_k]), got {w.shape}"
        )
    if dtype_name == "bfloat16":
        w = (w.astype(np.uint32) << 16).view(np.float32)
    elif w.dtype not in _W_DTYPES:
        w = w.astype(np.float32)
    if not w.flags.c_contiguous:
        w = np.ascontiguousarray(w)
    return w


def _out_rows(out, name, code, shapes):
    """The caller's output as an ndarray, its dtype and shape checked (the
    kernel checks the flags and overlaps; _explain_out says what failed)."""
    arr, out_code, _ = _rows(out, name, writeable=True)
    if out_code != code:
        raise TypeError(
            f"{name} must have dtype {_CODE_NAMES[code]} (the input's), got {_CODE_NAMES[out_code]}"
        )
    if arr.shape not in shapes:
        raise ValueError(f"{name} must have shape {shapes[0]}, got {arr.shape}")
    return arr


def _explain_out(arr, name, rc):
    if rc == -2:
        raise ValueError(f"{name} must not overlap the inputs in memory")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {arr.strides}")
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    if not arr.dtype.isnative:
        raise ValueError(f"{name} must have native byte order, got {arr.dtype}")
    raise RuntimeError(f"moe_router: a dispatch kernel refused validated input ({name}; a bug)")


def _result(o, code, is_torch, given):
    """A kernel output as the caller sees it: a tensor for tensor inputs, an
    ndarray of the input's dtype (ml_dtypes bfloat16 included) otherwise."""
    if is_torch:
        return _tensors.to_torch(o, _CODE_NAMES[code])
    if code == 3:
        # NumPy bfloat16 rows in, ml_dtypes bfloat16 out (uint16 bits if the
        # rows were raw bits already).
        return o.view(given.dtype) if type(given) is np.ndarray and given.dtype.itemsize == 2 else o
    return o


def permute(
    hidden_states,
    plan: DispatchPlan,
    out=None,
    *,
    scale_by=None,
    num_threads: int | None = None,
):
    """The hidden rows in the plan's order: out[r] = hidden_states[plan.sorted_token_ids[r]].

    hidden_states: [..., hidden_size] with num_tokens leading elements,
        float32 / float64 / float16 / bfloat16 (NumPy, ml_dtypes or torch).
    out: [plan.num_rows, hidden_size] of the same dtype, or None to allocate.
        Padding rows (block_size) are written as zeros.
    scale_by: the expert weights [..., top_k] (or a RouterOutput): each row
        is multiplied by its slot's weight, rounded once to the row dtype
        (Llama 4 weights the experts' input); then combine with weights None.
    Returns out (a torch tensor if hidden_states was one and out is None).
    """
    if type(plan) is not DispatchPlan:
        _check_plan(plan)
    # Arrays and tensors that need no conversion, checked in C; None: this
    # path (conversions, and the errors explained).
    r = _kernel().permute_fast(hidden_states, plan._bufs, plan._shape, out, scale_by, num_threads)
    if r is not None:
        return r
    h, code, is_torch = _rows(hidden_states, "hidden_states")
    bufs = plan._bufs
    stats = bufs[8]
    T = stats.item(6)
    H = h.shape[-1]
    if h.size != T * H or (h.ndim == 1 and T != 1):
        raise ValueError(
            f"hidden_states must have shape [..., hidden_size] with the plan's num_tokens={T} "
            f"leading elements, got {h.shape}"
        )
    w = None if scale_by is None else _weights(scale_by, plan, "scale_by")
    rows = stats.item(0)
    if out is None:
        o = np.empty((rows, H), h.dtype)
    elif type(out) is np.ndarray and out.dtype is h.dtype and out.shape == (rows, H):
        o = out  # flags and overlaps: checked by the kernel
    else:
        o = _out_rows(out, "out", code, ((rows, H),))
    rc = _kernel().permute_rows(
        h, code, H, T, bufs[3], bufs[5], plan._shape[-1], rows, w, o,
        _threads_arg(num_threads),
    )  # fmt: skip
    if rc != 0:
        _explain_out(o, "out", rc)
    return out if out is not None else _result(o, code, is_torch, hidden_states)


def combine(
    expert_out,
    plan: DispatchPlan,
    expert_weights,
    out=None,
    *,
    hidden_states=None,
    num_threads: int | None = None,
):
    """The K expert outputs of each token, weighted and summed.

    out[t] = sum over k of w[t, k] * expert_out[plan.slot_of[t, k]].

    expert_out: [plan.num_rows, hidden_size], rows in the plan's order
        (padding rows are ignored).
    expert_weights: [..., top_k] (or a RouterOutput), or None to just sum
        (after permute(..., scale_by=)).
    hidden_states: the tokens' input rows, needed when the plan has
        identity-expert slots (they add w * hidden_states[t]).
    out: [..., hidden_size] (the plan's batch shape) of expert_out's dtype,
        or None to allocate.
    The sum runs in k order in float32 (float64 for float64 rows), rounded
    once to the output dtype: the same bits on every path and thread count.
    Dropped slots (capacity, other ranks' experts) contribute nothing.
    Returns out (a torch tensor if expert_out was one and out is None).
    """
    if type(plan) is not DispatchPlan:
        _check_plan(plan)
    r = _kernel().combine_fast(
        expert_out, plan._bufs, plan._shape, expert_weights, out, hidden_states, num_threads
    )
    if r is not None:
        return r
    e, code, is_torch = _rows(expert_out, "expert_out")
    bufs = plan._bufs
    stats = bufs[8]
    rows = stats.item(0)
    if e.ndim != 2 or e.shape[0] != rows:
        raise ValueError(
            f"expert_out must have shape [plan.num_rows={rows}, hidden_size] (one row per "
            f"plan row), got {e.shape}"
        )
    H = e.shape[1]
    T = stats.item(6)
    w = None if expert_weights is None else _weights(expert_weights, plan, "expert_weights")
    h = None
    if hidden_states is not None or stats[3]:
        if hidden_states is None:
            raise ValueError(
                f"the plan has {plan.num_identity_slots} identity-expert slot(s): combine "
                f"needs hidden_states= (they add w * hidden_states[t])"
            )
        h, h_code, _ = _rows(hidden_states, "hidden_states")
        if h_code != code:
            raise TypeError(
                f"hidden_states must have expert_out's dtype {_CODE_NAMES[code]}, "
                f"got {_CODE_NAMES[h_code]}"
            )
        if h.size != T * H or h.shape[-1] != H:
            raise ValueError(
                f"hidden_states must have shape [..., {H}] with num_tokens={T} leading "
                f"elements, got {h.shape}"
            )
    shape = plan._shape[:-1] + (H,)
    if out is None:
        o = np.empty(shape, e.dtype)
    elif type(out) is np.ndarray and out.dtype is e.dtype and out.shape == shape:
        o = out  # flags and overlaps: checked by the kernel
    else:
        o = _out_rows(out, "out", code, (shape, (T, H)))
    rc = _kernel().combine_rows(
        e, code, H, rows, bufs[5], T, plan._shape[-1], w, h, o,
        _threads_arg(num_threads),
    )  # fmt: skip
    if rc != 0:
        _explain_out(o, "out", rc)
    return out if out is not None else _result(o, code, is_torch, expert_out)
