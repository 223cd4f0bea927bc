"""The public API: validation, allocation and composition around the kernels.

Everything a caller can get wrong is checked here, with the GIL held, before
the compiled kernel runs; the kernel itself never raises.
"""

from __future__ import annotations

import numbers
import operator
import threading
from collections.abc import Iterator
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from . import _dispatch, _tensors

__all__ = ["RouterOutput", "Router", "route", "route_into"]

_ndarray = np.ndarray  # a module global: one lookup on the hot paths, not two
_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
ID_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int64))
WEIGHT_DTYPES = (_F32, _F64)

# Batches smaller than this run on one thread whatever num_threads says.
PARALLEL_MIN_ROWS = _dispatch.PARALLEL_MIN_ROWS
# num_threads=None (the default) splits only batches at least this large.
DEFAULT_PARALLEL_MIN_ROWS = _dispatch.DEFAULT_PARALLEL_MIN_ROWS


def _dtype_names(dtypes):
    return "/".join(str(d) for d in dtypes)


def check_int(value, name, low=None, high=None, high_name=None):
    """`value` as an int: TypeError unless an integer (bool rejected), ValueError out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high_name or high}={high}, got {name}={value}")
    return value


def check_bool(value, name):
    """`value` as a bool: TypeError unless a bool (or numpy.bool_); "false" is not False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def as_logits(logits):
    """`logits` as the kernels read them: (C-contiguous array of shape
    [..., num_experts], bf16_bits).

    float32 / float64 / float16 / bfloat16 arrays are taken as they are (a
    non-contiguous one is copied once); torch tensors and other DLPack
    producers are viewed without a copy; bf16_bits says that a uint16 array
    holds bfloat16 bits (a DLPack bfloat16 viewed without ml_dtypes).
    """
    bf16_bits = False
    if type(logits) is _ndarray:
        arr = logits
    else:
        arr, dt_name, _ = _tensors.asarray(logits, "logits")
        bf16_bits = dt_name == "bfloat16" and arr.dtype == np.uint16
    dt = arr.dtype
    if (
        not bf16_bits
        and dt.name != "bfloat16"
        and not (dt is _F32 or dt is _F64 or dt == _F32 or dt == _F64 or dt == _F16)
    ):
        if dt.kind == "f" and dt.itemsize in (4, 8):  # non-native byte order
            arr = arr.astype(dt.newbyteorder("="))
        elif dt.kind == "f" and dt.itemsize == 2:
            arr = arr.astype(np.float16)
        elif dt.kind == "f":  # long double
            arr = arr.astype(_F64)
        else:
            raise TypeError(
                f"logits must be a floating-point array ({_tensors.LOGITS_DTYPES}), got dtype {dt}"
            )
    if arr.ndim == 0:
        raise ValueError("logits must have shape [..., num_experts], got a 0-d array")
    if arr.shape[-1] == 0:
        raise ValueError(
            f"num_experts (logits.shape[-1]) must be >= 1, got logits of shape {arr.shape}"
        )
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr, bf16_bits


def _as_float(arr, bf16_bits):
    """The values of validated logits as a float32/float64 array (for messages)."""
    if bf16_bits:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if arr.dtype is _F32 or arr.dtype is _F64 or arr.dtype == _F32 or arr.dtype == _F64:
        return arr
    return arr.astype(np.float32)


def _check_buffer(arr, name, dtypes):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous, got strides {arr.strides} for shape {arr.shape}"
        )
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")


class RouterOutput:
    """Selected experts and combine weights, flat `[t * top_k + k]` underneath.

    `expert_ids` and `expert_weights` are views shaped `[..., top_k]` (the
    leading dimensions of the logits).  `ids, weights = out` unpacks them.

    A RouterOutput from `empty()` (or `route`) owns its memory and grows it on
    demand, keeping its capacity; one that wraps your arrays
    (`RouterOutput(expert_ids=..., expert_weights=...)`: NumPy arrays, torch
    tensors or any CPU DLPack arrays) never reallocates them and raises
    ValueError when they are too small.

    When the logits were a torch tensor, `expert_ids` and `expert_weights`
    of an owning output are torch tensors over the same memory, made once
    per shape (no allocation per call); otherwise NumPy arrays.
    """

    __slots__ = (
        "_ids",
        "_weights",
        "_owns",
        "_logits_shape",
        "_batch",
        "_top_k",
        "_torch",
        "_torch_views",
        "_given_torch",
        "_foreign_shape",
        "_foreign_type",
        "_np_shape",
        "expert_ids",
        "expert_weights",
    )

    def __init__(self, expert_ids, expert_weights) -> None:
        given_ids, given_weights = expert_ids, expert_weights
        if not isinstance(expert_ids, np.ndarray) and hasattr(type(expert_ids), "__dlpack__"):
            expert_ids = _tensors.asarray(expert_ids, "expert_ids", writeable=True)[0]
        if not isinstance(expert_weights, np.ndarray) and hasattr(
            type(expert_weights), "__dlpack__"
        ):
            expert_weights = _tensors.asarray(expert_weights, "expert_weights", writeable=True)[0]
        _check_buffer(expert_ids, "expert_ids", ID_DTYPES)
        _check_buffer(expert_weights, "expert_weights", WEIGHT_DTYPES)
        if expert_ids.size != expert_weights.size:
            raise ValueError(
                f"expert_ids and expert_weights must have the same size, got "
                f"{expert_ids.size} (shape {expert_ids.shape}) and "
                f"{expert_weights.size} (shape {expert_weights.shape})"
            )
        if np.may_share_memory(expert_ids, expert_weights):
            raise ValueError("expert_ids and expert_weights must not overlap in memory")
        self._owns = False
        self._ids = expert_ids.reshape(-1)
        self._weights = expert_weights.reshape(-1)
        self.expert_ids = given_ids
        self.expert_weights = given_weights
        self._torch = False
        self._np_shape = None  # the logits shape of the current NumPy views
        self._torch_views = None
        # Wrapped torch buffers give torch views whatever the logits.
        self._given_torch = _tensors.is_torch(given_ids) or _tensors.is_torch(given_weights)
        self._foreign_shape = self._foreign_type = None
        self._logits_shape = None  # views are the caller's arrays as given
        if expert_ids.ndim >= 1 and expert_ids.shape[-1] > 0:
            self._top_k = expert_ids.shape[-1]
            self._batch = expert_ids.size // self._top_k
        else:
            self._top_k = 0
            self._batch = 0

    @classmethod
    def empty(
        cls, ids_dtype: npt.DTypeLike = np.int32, weights_dtype: npt.DTypeLike = np.float32
    ) -> RouterOutput:
        """An owning, zero-capacity output; `route_into` grows it on demand.

        The dtypes may be NumPy or torch dtypes (`torch.int64`)."""
        ids_dtype = _tensors.as_numpy_dtype(ids_dtype, "ids_dtype")
        weights_dtype = _tensors.as_numpy_dtype(weights_dtype, "weights_dtype")
        if ids_dtype not in ID_DTYPES:
            raise TypeError(f"ids_dtype must be {_dtype_names(ID_DTYPES)}, got {ids_dtype}")
        if weights_dtype not in WEIGHT_DTYPES:
            raise TypeError(
                f"weights_dtype must be {_dtype_names(WEIGHT_DTYPES)}, got {weights_dtype}"
            )
        self = cls.__new__(cls)
        self._owns = True
        self._ids = np.empty(0, ids_dtype)
        self._weights = np.empty(0, weights_dtype)
        self._torch = False
        self._np_shape = None  # the logits shape of the current NumPy views
        self._torch_views = None
        self._given_torch = False
        self._foreign_shape = self._foreign_type = None
        self._logits_shape = None
        self._top_k = 0
        self._set_view((0, 0), 0)
        return self

    @property
    def batch(self) -> int:
        """Number of tokens routed (the product of the leading dimensions)."""
        return self._batch

    @property
    def top_k(self) -> int:
        """Experts selected per token."""
        return self._top_k

    @property
    def capacity(self) -> int:
        """Elements each buffer holds: no reallocation while batch * top_k <= capacity."""
        return self._ids.size

    @property
    def owns_memory(self) -> bool:
        """True if this output allocated its buffers (and may grow them)."""
        return self._owns

    def __iter__(self) -> Iterator[np.ndarray]:
        """`ids, weights = out`: the two views, as from a pair."""
        yield self.expert_ids
        yield self.expert_weights

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[np.ndarray, ...]: ...
    def __getitem__(self, index):
        """`out[0]` is expert_ids, `out[1]` expert_weights (negative indices and slices too)."""
        return (self.expert_ids, self.expert_weights)[index]

    def __repr__(self):
        return (
            f"RouterOutput(batch={self._batch}, top_k={self._top_k}, "
            f"expert_ids={self.expert_ids!r}, expert_weights={self.expert_weights!r})"
        )

    def reset(self, batch: int | tuple[int, ...], top_k: int) -> RouterOutput:
        """Shape the output for `batch` tokens (an int or a tuple of leading dims) x `top_k`.

        Reuses the existing buffers when they are large enough; an owning
        output grows them otherwise (old contents are not preserved).
        """
        shape = (batch,) if isinstance(batch, numbers.Integral) else tuple(batch)  # type: ignore[arg-type]
        dims = tuple(check_int(d, "batch", low=0) for d in shape)
        top_k = check_int(top_k, "top_k", low=1)
        self._prepare(dims + (0,), top_k)
        return self

    def _prepare(self, logits_shape, top_k):
        """Make room for routing logits of `logits_shape` with `top_k`, and shape the views."""
        n_tokens = 1
        for d in logits_shape[:-1]:
            n_tokens *= d
        n = n_tokens * top_k
        if self._ids.size < n:
            if not self._owns:
                raise ValueError(
                    f"out holds {self._ids.size} elements per buffer, routing {n_tokens} "
                    f"tokens x top_k={top_k} needs {n}; a RouterOutput wrapping your "
                    f"arrays never reallocates them"
                )
            # Amortised growth, as the seed's Vec::resize: continuous batching
            # settles on its largest batch after a few reallocations.
            cap = max(n, 2 * self._ids.size)
            self._ids = np.empty(cap, self._ids.dtype)
            self._weights = np.empty(cap, self._weights.dtype)
            self._logits_shape = None
            self._torch_views = None
        if not self._owns:
            _check_buffer(self._ids, "out.expert_ids", ID_DTYPES)
            _check_buffer(self._weights, "out.expert_weights", WEIGHT_DTYPES)
        self._set_view(logits_shape, top_k)

    def _set_view(self, logits_shape, top_k, torch=False):
        """Views shaped [..., top_k] over the first batch * top_k elements
        (torch tensors with `torch`, once per shape)."""
        if not self._owns:
            torch = self._given_torch
        if self._logits_shape == logits_shape and self._top_k == top_k and self._torch == torch:
            return
        logits_shape = tuple(logits_shape)
        shape = logits_shape[:-1] + (top_k,)
        n_tokens = 1
        for d in logits_shape[:-1]:
            n_tokens *= d
        n = n_tokens * top_k
        if torch:
            views = self._torch_views
            if views is None:
                views = self._torch_views = {}
            pair = views.get(shape)
            if pair is None:
                if len(views) >= 256:  # a bound, for callers of ever-new shapes
                    views.clear()
                pair = views[shape] = (
                    _tensors.to_torch(self._ids[:n].reshape(shape)),
                    _tensors.to_torch(self._weights[:n].reshape(shape)),
                )
            self.expert_ids, self.expert_weights = pair
        else:
            self.expert_ids = self._ids[:n].reshape(shape)
            self.expert_weights = self._weights[:n].reshape(shape)
        self._torch = torch
        # The fast paths compare this one attribute: None under torch views.
        self._np_shape = None if torch else logits_shape
        self._logits_shape = logits_shape
        self._batch = n_tokens
        self._top_k = top_k
        self._foreign_shape = self._foreign_type = None

    def _finish_foreign(self, logits, top_k):
        """The views after routing a tensor read through DLPack.

        Records its shape and type: the next call's kernel compares the
        shape itself (`views_shape`), which spares reading it from Python."""
        shape = tuple(logits.shape)
        torch = _tensors.is_torch(logits)
        self._set_view(shape, top_k, torch)
        self._foreign_shape = shape
        self._foreign_type = type(logits)
        return self


def _threads_arg(num_threads):
    """num_threads as the kernel takes it: 0 for the default."""
    return 0 if num_threads is None else check_int(num_threads, "num_threads", low=1)


def _raise_bad_rows(flat, batch_shape, sigmoid=False):
    """Name the first row the kernel could not route (NaN, or all -inf under softmax)."""
    nan_rows = np.isnan(flat).any(axis=1)
    neginf_rows = np.zeros_like(nan_rows) if sigmoid else (flat == -np.inf).all(axis=1)
    bad = np.flatnonzero(nan_rows | neginf_rows)
    r = int(bad[0])
    where = f"row {r}"
    if len(batch_shape) > 1:
        where += f" (index {tuple(int(i) for i in np.unravel_index(r, batch_shape))})"
    if nan_rows[r]:
        raise ValueError(f"logits {where} contains NaN ({bad.size} bad row(s) in all)")
    raise ValueError(
        f"logits {where} is all -inf: no expert can be selected ({bad.size} bad row(s) in all)"
    )


_SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus", "sparsemixer")


def _check_real(value, name, low=None, allow_inf=False, allow_none=False):
    """`value` as a float: TypeError unless a real number, ValueError if NaN,
    infinite (unless allow_inf) or below `low`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v != v or (not allow_inf and not np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


def _as_input_ids(input_ids, batch_shape, variant):
    """input_ids as the kernel reads them (int64, one per token), checked."""
    if variant.tid2eid is None:
        if input_ids is not None:
            raise ValueError("input_ids are for hash routing: the router has no tid2eid table")
        return None
    if input_ids is None:
        raise ValueError("this router routes by tid2eid[input_id]: pass input_ids=")
    ids = np.asarray(input_ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must be an integer array, got dtype {ids.dtype}")
    if ids.shape != tuple(batch_shape):
        raise ValueError(
            f"input_ids must have the logits' leading shape {tuple(batch_shape)}, got {ids.shape}"
        )
    vocab = variant.tid2eid.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"input_ids must be in [0, vocab_size={vocab}) (the rows of tid2eid)")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _call_rules(arr, top_k, out, v, threads, input_ids, bf16_bits=False):
    """route_rows_rules with a variant's settings."""
    return _dispatch.kernel.route_rows_rules(
        arr,
        top_k,
        v.norm_topk_prob,
        out._ids,
        out._weights,
        threads,
        0,
        v.score,
        v.softcap,
        v.p_norm,
        v.norm_min,
        v.eps,
        v.scale,
        v.jitter,
        v.bias_for(arr.dtype),
        v.tid2eid,
        input_ids,
        bf16_bits,
    )


def _raise_bad_rule_rows(flat, batch_shape, v, weights_dtype=_F32):
    """Name the first row the rules kernel could not route, and why."""
    z = np.asarray(flat, np.float64)
    if v.softcap:
        z = v.softcap * np.tanh(z / v.softcap)
    sf = v.scoring_func
    nan_rows = np.isnan(z).any(axis=1)
    none = np.zeros_like(nan_rows)
    neginf = (z == -np.inf).all(axis=1) if sf in ("softmax", "sparsemixer") else none
    posinf = (z == np.inf).any(axis=1) if sf == "sqrtsoftplus" else none
    one = (z > -np.inf).sum(axis=1) < 2 if sf == "sparsemixer" else none
    bad = np.flatnonzero(nan_rows | neginf | posinf | one)
    if bad.size == 0 and sf == "sqrtsoftplus":  # a weight beyond the weights' dtype
        with np.errstate(over="ignore", invalid="ignore"):
            big = np.sqrt(np.logaddexp(0, z)) * v.scale > np.finfo(weights_dtype).max
        rows = np.flatnonzero(big.any(axis=1))
        r = int(rows[0]) if rows.size else 0
        where = f"row {r}"
        if len(batch_shape) > 1:
            where += f" (index {tuple(int(i) for i in np.unravel_index(r, batch_shape))})"
        raise ValueError(
            f"logits {where}: its unnormalised sqrtsoftplus weights (they grow as "
            f"sqrt(logit)) overflow weights_dtype={np.dtype(weights_dtype)}; use "
            f"weights_dtype=float64 or renormalise (norm_topk_prob=True)"
        )
    r = int(bad[0])
    where = f"row {r}"
    if len(batch_shape) > 1:
        where += f" (index {tuple(int(i) for i in np.unravel_index(r, batch_shape))})"
    tail = f" ({bad.size} bad row(s) in all)"
    if nan_rows[r]:
        raise ValueError(f"logits {where} contains NaN{tail}")
    if neginf[r]:
        raise ValueError(f"logits {where} is all -inf: no expert can be selected{tail}")
    if posinf[r]:
        raise ValueError(f"logits {where} contains +inf: its sqrtsoftplus score is infinite{tail}")
    raise ValueError(
        f"logits {where} has fewer than 2 experts above -inf: sparsemixer's second "
        f"expert is undefined{tail}"
    )


class _Variant:
    """A validated router variant: what the kernel needs besides top_k and the buffers."""

    __slots__ = (
        "sigmoid",
        "n_group",
        "topk_group",
        "scale",
        "bias32",
        "bias64",
        "plain",
        "scoring_func",
        "topk_on_logits",
        "norm_topk_prob",
        "rules",
        "score",
        "softcap",
        "p_norm",
        "norm_min",
        "eps",
        "jitter",
        "tid2eid",
        "zero_expert_num",
        "moe_normalize_expert_weights",
    )

    def __init__(
        self,
        num_experts,
        top_k,
        norm_topk_prob=True,
        scoring_func="softmax",
        topk_on_logits=False,
        n_group=1,
        topk_group=None,
        routed_scaling_factor=1.0,
        e_score_correction_bias=None,
        moe_norm_min=None,
        moe_router_logit_softcapping=None,
        moe_normalize_expert_weights=None,
        router_jitter_noise=None,
        tid2eid=None,
        zero_expert_num=None,
    ):
        norm_topk_prob = check_bool(norm_topk_prob, "norm_topk_prob")
        topk_on_logits = check_bool(topk_on_logits, "topk_on_logits")
        if scoring_func not in _SCORING_FUNCS:
            raise ValueError(
                f"scoring_func must be one of {', '.join(map(repr, _SCORING_FUNCS))}, "
                f"got {scoring_func!r}"
            )
        n_group = check_int(n_group, "n_group", low=1, high=num_experts, high_name="num_experts")
        if num_experts % n_group:
            raise ValueError(f"num_experts={num_experts} must be divisible by n_group={n_group}")
        topk_group = (
            n_group
            if topk_group is None
            else check_int(topk_group, "topk_group", low=1, high=n_group, high_name="n_group")
        )
        group_size = num_experts // n_group
        if topk_group * group_size < top_k:
            raise ValueError(
                f"top_k={top_k} exceeds the {topk_group * group_size} experts of "
                f"the topk_group={topk_group} kept groups of {group_size}"
            )
        if n_group > 1 and scoring_func == "sigmoid" and group_size < 2:
            raise ValueError(
                f"sigmoid group scores sum each group's two best experts: "
                f"groups need >= 2 experts, got num_experts/n_group={group_size}"
            )
        if isinstance(routed_scaling_factor, bool) or not isinstance(
            routed_scaling_factor, numbers.Real
        ):
            raise TypeError(
                f"routed_scaling_factor must be a real number, got "
                f"{type(routed_scaling_factor).__name__}"
            )
        scale = float(routed_scaling_factor)
        if not (np.isfinite(scale) and 0 < scale <= 1e38):
            # Weights are <= 1 before scaling: this keeps them finite in float32.
            raise ValueError(
                f"routed_scaling_factor must be finite, > 0 and <= 1e38 "
                f"(weights stay finite in float32), got {scale}"
            )
        self.bias32 = self.bias64 = None
        if e_score_correction_bias is not None:
            if scoring_func == "sparsemixer":
                raise ValueError(
                    "e_score_correction_bias does not apply to scoring_func='sparsemixer' "
                    "(its experts are the arg maxes of the logits)"
                )
            bias = _tensors.bias_values(e_score_correction_bias, "e_score_correction_bias")
            if bias.dtype.kind not in "fiu":
                raise TypeError(
                    f"e_score_correction_bias must be a real array, got dtype {bias.dtype}"
                )
            if bias.shape != (num_experts,):
                raise ValueError(
                    f"e_score_correction_bias must have shape ({num_experts},), got {bias.shape}"
                )
            if not np.isfinite(bias).all():
                raise ValueError("e_score_correction_bias must be finite (it has NaN or inf)")
            with np.errstate(over="ignore"):
                self.bias32 = np.ascontiguousarray(bias, dtype=np.float32)
            if not np.isfinite(self.bias32).all():
                raise ValueError(
                    "e_score_correction_bias must be finite in float32 "
                    "(|bias| <= 3.4e38): it is added to float32 scores"
                )
            self.bias64 = np.ascontiguousarray(bias, dtype=np.float64)
        if topk_on_logits:
            if n_group > 1 or self.bias32 is not None:
                raise ValueError(
                    "topk_on_logits takes the top-K of the raw logits: it does not "
                    "combine with n_group > 1 or e_score_correction_bias"
                )
            if scoring_func == "softmax" and not norm_topk_prob:
                raise ValueError(
                    "topk_on_logits with softmax scoring is a softmax over the K "
                    "picked logits: its weights always sum to 1 "
                    "(norm_topk_prob=False contradicts it)"
                )
        self.scoring_func = scoring_func
        self.topk_on_logits = bool(topk_on_logits)
        self.norm_topk_prob = bool(norm_topk_prob)
        self.sigmoid = scoring_func == "sigmoid"
        self.n_group = n_group
        self.topk_group = topk_group
        self.scale = scale
        self._set_rules(
            num_experts,
            top_k,
            moe_norm_min,
            moe_router_logit_softcapping,
            moe_normalize_expert_weights,
            router_jitter_noise,
            tid2eid,
            zero_expert_num,
        )
        self.plain = not self.sigmoid and n_group == 1 and scale == 1.0 and not self.rules

    def _set_rules(
        self, num_experts, top_k, norm_min, softcap, p_norm, jitter, tid2eid, zero_expert_num
    ):
        """The settings of route_rows_rules (moe_router/_rules_kernels.pxi)."""
        sf = self.scoring_func
        self.softcap = _check_real(
            softcap, "moe_router_logit_softcapping", low=0.0, allow_none=True
        )
        if self.softcap and not 1e-6 <= self.softcap <= 1e38:
            # (it divides and multiplies float32 logits: keep it finite there)
            raise ValueError(
                f"moe_router_logit_softcapping must be 0 or None (no cap) or in "
                f"[1e-6, 1e38], got {self.softcap}"
            )
        self.norm_min = _check_real(norm_min, "moe_norm_min", low=0.0, allow_none=True)
        if self.norm_min and not self.norm_min >= np.finfo(np.float32).tiny:
            # The clamp is applied in the logits' precision: a value that is 0
            # (or subnormal) in float32 would divide 0 by 0 for a row whose
            # scores are all 0.
            raise ValueError(
                f"moe_norm_min must be 0 or None (no clamp) or >= "
                f"{float(np.finfo(np.float32).tiny):.4g} (a normal float32), got {self.norm_min}"
            )
        self.jitter = _check_real(jitter, "router_jitter_noise", low=0.0, allow_none=True)
        self.moe_normalize_expert_weights = p_norm
        q = _check_real(
            p_norm, "moe_normalize_expert_weights", low=0.0, allow_inf=True, allow_none=True
        )
        if p_norm is not None and q <= 0:
            raise ValueError(
                f"moe_normalize_expert_weights (the p of the p-norm) must be > 0 "
                f"(or inf, or None for no renormalisation), got {p_norm}"
            )
        if p_norm is not None and not self.norm_topk_prob:
            raise ValueError(
                f"moe_normalize_expert_weights={p_norm} renormalises the weights: it "
                f"contradicts norm_topk_prob=False"
            )
        if self.norm_min and not self.norm_topk_prob:
            raise ValueError(
                f"moe_norm_min={norm_min} clamps the renormalisation's divisor: it "
                f"contradicts norm_topk_prob=False"
            )
        if self.norm_min and p_norm is not None:
            raise ValueError("moe_norm_min and moe_normalize_expert_weights do not combine")
        if sf == "sparsemixer":
            if top_k != 2:
                raise ValueError(
                    f"scoring_func='sparsemixer' routes top_k=2 experts, got top_k={top_k}"
                )
            if self.norm_topk_prob or p_norm is not None or self.norm_min:
                raise ValueError(
                    "scoring_func='sparsemixer' weights are its masked softmaxes, not "
                    "renormalised: pass norm_topk_prob=False"
                )
            if self.jitter is None:
                self.jitter = 0.01  # PhiMoE's config default
        elif self.jitter is not None:
            raise ValueError(
                "router_jitter_noise is sparsemixer's mask threshold "
                "(scoring_func='sparsemixer'); other routers use it only in training"
            )
        self.tid2eid = None
        if tid2eid is not None:
            table = np.asarray(tid2eid)
            if table.dtype.kind not in "iu":
                raise TypeError(f"tid2eid must be an integer array, got dtype {table.dtype}")
            if table.ndim != 2 or table.shape[1] != top_k or table.shape[0] < 1:
                raise ValueError(
                    f"tid2eid must have shape (vocab_size >= 1, top_k={top_k}), got {table.shape}"
                )
            if ((table < 0) | (table >= num_experts)).any():
                raise ValueError(f"tid2eid holds expert ids outside [0, num_experts={num_experts})")
            if sf == "sparsemixer":
                raise ValueError("tid2eid (hash routing) does not combine with sparsemixer")
            if self.bias32 is not None:
                raise ValueError(
                    "e_score_correction_bias selects experts, which tid2eid (hash routing) "
                    "already does: pass one of them"
                )
            self.tid2eid = np.array(table, dtype=np.int64, order="C")  # a private copy
            self.tid2eid.flags.writeable = False
        if zero_expert_num is None:
            zero_expert_num = 0
        self.zero_expert_num = check_int(
            zero_expert_num,
            "zero_expert_num",
            low=0,
            high=num_experts - 1,
            high_name="num_experts - 1",
        )
        self.rules = bool(
            sf in ("sqrtsoftplus", "sparsemixer")
            or (sf == "softmax" and self.bias32 is not None)
            or self.softcap
            or p_norm is not None
            or self.norm_min
            or self.tid2eid is not None
        )
        if self.rules and (self.n_group > 1 or self.topk_on_logits):
            raise ValueError(
                "n_group > 1 and topk_on_logits do not combine with the scoring rules of "
                "sqrtsoftplus, sparsemixer, a softmax bias, soft-capping, "
                "moe_normalize_expert_weights, moe_norm_min or tid2eid"
            )
        self.score = _SCORING_FUNCS.index(sf)
        q = 0.0 if p_norm is None or q == 1.0 else q  # the 1-norm of weights >= 0: their sum
        self.p_norm = q
        self.softcap = self.softcap or 0.0
        self.norm_min = self.norm_min or 0.0
        self.jitter = self.jitter or 0.0
        # Routers whose selection is not on the weights' own order divide by
        # (sum + 1e-20), as DeepSeek's: the picked scores may all be 0.
        self.eps = (
            1e-20
            if (sf != "softmax" or self.bias32 is not None or self.tid2eid is not None)
            and not self.norm_min
            else 0.0
        )

    def bias_for(self, dtype):
        # `is` first: native float32 / float64 dtypes are single objects,
        # and `==` between dtypes costs about 0.2 us (a tenth of a decode step).
        if dtype is _F32:
            return self.bias32
        if dtype is _F64:
            return self.bias64
        return self.bias64 if dtype == _F64 else self.bias32


_DEFAULT_VARIANT_OPTIONS = dict(
    scoring_func="softmax",
    topk_on_logits=False,
    n_group=1,
    topk_group=None,
    routed_scaling_factor=1.0,
    e_score_correction_bias=None,
    moe_norm_min=None,
    moe_router_logit_softcapping=None,
    moe_normalize_expert_weights=None,
    router_jitter_noise=None,
    tid2eid=None,
    zero_expert_num=None,
)


def _route_checked(
    logits,
    top_k,
    out,
    norm_topk_prob,
    num_threads,
    num_experts=None,
    variant=None,
    options=None,
    input_ids=None,
):
    """The validating path: explain what is wrong, or convert / grow and route.

    `variant` is a validated _Variant (a Router's), or None to build one from
    `options` (the keywords of route / route_into) once num_experts is known.
    """
    arr, bf16_bits = as_logits(logits)
    if num_experts is not None and arr.shape[-1] != num_experts:
        raise ValueError(
            f"logits must have shape [..., num_experts={num_experts}], got {arr.shape}"
        )
    top_k = check_int(top_k, "top_k", low=1, high=arr.shape[-1], high_name="num_experts")
    if variant is None:
        variant = _Variant(arr.shape[-1], top_k, norm_topk_prob, **(options or {}))
    threads = _threads_arg(num_threads)
    id_limit = int(np.iinfo(out._ids.dtype).max) + 1
    if arr.shape[-1] > id_limit:
        raise ValueError(
            f"expert_ids of dtype {out._ids.dtype} hold ids below {id_limit}, "
            f"but num_experts={arr.shape[-1]}: use int64 ids"
        )
    out._prepare(arr.shape, top_k)
    if np.may_share_memory(arr, out._ids) or np.may_share_memory(arr, out._weights):
        raise ValueError("out's buffers must not overlap the logits")
    if variant.rules:
        tokens = _as_input_ids(input_ids, arr.shape[:-1], variant)
        n_bad = _call_rules(arr, top_k, out, variant, threads, tokens, bf16_bits)
        if n_bad < 0:
            raise RuntimeError(
                "moe_router: the kernel refused validated input (a bug; please report)"
            )
        if n_bad:
            flat = _as_float(arr, bf16_bits).reshape(-1, arr.shape[-1])
            _raise_bad_rule_rows(flat, arr.shape[:-1], variant, out._weights.dtype)
        if type(logits) is not _ndarray and _tensors.is_torch(logits):
            out._set_view(arr.shape, top_k, True)
        return out
    if input_ids is not None:
        raise ValueError("input_ids are for hash routing: the router has no tid2eid table")
    n_bad = _dispatch.kernel.route_rows(
        arr,
        top_k,
        variant.norm_topk_prob,
        out._ids,
        out._weights,
        threads,
        0,
        variant.sigmoid,
        variant.n_group,
        variant.topk_group,
        variant.scale,
        variant.bias_for(arr.dtype),
        bf16_bits,
    )
    if n_bad < 0:  # every precondition of the kernel was checked above
        raise RuntimeError("moe_router: the kernel refused validated input (a bug; please report)")
    if n_bad:
        flat = _as_float(arr, bf16_bits).reshape(-1, arr.shape[-1])
        _raise_bad_rows(flat, arr.shape[:-1], variant.sigmoid)
    if type(logits) is not _ndarray and _tensors.is_torch(logits):
        out._set_view(arr.shape, top_k, True)
    return out


def route(
    logits: npt.ArrayLike,
    top_k: int,
    norm_topk_prob: bool = True,
    *,
    num_threads: int | None = None,
    ids_dtype: npt.DTypeLike = np.int32,
    weights_dtype: npt.DTypeLike = np.float32,
    input_ids: npt.ArrayLike | None = None,
    **variant_options,
) -> RouterOutput:
    """Route tokens to their top-K experts; allocates a new RouterOutput.

    logits: [..., num_experts] floating array (anything numpy converts).
    top_k: experts per token, 1 <= top_k <= num_experts.
    norm_topk_prob: renormalise the K weights of a token to sum to 1.
    num_threads: None (default): one thread below DEFAULT_PARALLEL_MIN_ROWS
        (4096) rows, all OpenMP threads from there; N: N threads from
        PARALLEL_MIN_ROWS (64) rows.  Results are bit-identical for any count.
    ids_dtype: int32 (default), uint32 or int64 for expert_ids (NumPy or
        torch dtypes).
    weights_dtype: float32 (default) or float64 for expert_weights.
    input_ids: the tokens' ids [...] (the logits' leading shape), for a
        hash-routed variant (tid2eid).
    variant_options: the router variant, as for Router (scoring_func,
        topk_on_logits, n_group, topk_group, routed_scaling_factor,
        e_score_correction_bias, moe_norm_min, moe_router_logit_softcapping,
        moe_normalize_expert_weights, router_jitter_noise, tid2eid,
        zero_expert_num).

    Raises TypeError for a wrong kind (logits not floating point, top_k not
    an int, norm_topk_prob not a bool, an unsupported dtype, an unknown
    keyword) and ValueError for a wrong value (top_k outside
    [1, num_experts], a row with NaN or all -inf under softmax, variant
    settings out of range), each naming the argument (README, "Errors").
    """
    _check_options(variant_options)
    out = RouterOutput.empty(ids_dtype, weights_dtype)
    return _route_checked(
        logits,
        top_k,
        out,
        norm_topk_prob,
        num_threads,
        options=variant_options,
        input_ids=input_ids,
    )


def _check_options(options):
    unknown = set(options) - set(_DEFAULT_VARIANT_OPTIONS)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {sorted(unknown)}; router options are "
            f"{sorted(_DEFAULT_VARIANT_OPTIONS)}"
        )


def route_into(
    logits: npt.ArrayLike,
    top_k: int,
    out: RouterOutput,
    norm_topk_prob: bool = True,
    *,
    num_threads: int | None = None,
    input_ids: npt.ArrayLike | None = None,
    **variant_options,
) -> RouterOutput:
    """Route into `out` (a RouterOutput), reusing its memory; returns `out`.

    Takes the same router options as `route` (validated on every call: for a
    variant in a loop, a Router is faster).  Does not allocate when `out`
    already holds batch * top_k elements.  On error, `out`'s contents are
    unspecified but nothing outside it is written.
    """
    if type(out) is not RouterOutput and not isinstance(out, RouterOutput):
        raise TypeError(f"out must be a RouterOutput, got {type(out).__name__}")
    if (
        not variant_options
        and input_ids is None
        and type(top_k) is int
        and type(norm_topk_prob) is bool
        and (num_threads is None or (type(num_threads) is int and num_threads >= 1))
    ):
        # The plain case in a few C checks; anything else takes the validating path.
        if type(logits) is _ndarray:
            rc = _dispatch.kernel.route_rows(
                logits, top_k, norm_topk_prob, out._ids, out._weights, num_threads or 0
            )
            if rc == 0:
                shape = logits.shape
                if out._np_shape != shape or out._top_k != top_k:
                    out._set_view(shape, top_k)  # (skipped when unchanged)
                return out
        else:  # a tensor: its shape is compared in the kernel (views_shape)
            rc = _dispatch.kernel.route_rows(
                logits,
                top_k,
                norm_topk_prob,
                out._ids,
                out._weights,
                num_threads or 0,
                0,
                False,
                1,
                1,
                1.0,
                None,
                False,
                out._foreign_shape,
            )
            if rc == 0:
                if out._top_k == top_k and type(logits) is out._foreign_type:
                    return out  # a tensor of the shape the views have
                return out._finish_foreign(logits, top_k)
        if rc == -2:  # a tensor of another shape
            return out._finish_foreign(logits, top_k)
    _check_options(variant_options)
    return _route_checked(
        logits,
        top_k,
        out,
        norm_topk_prob,
        num_threads,
        options=variant_options,
        input_ids=input_ids,
    )


class Router:
    """A configured router that owns and reuses its output buffers.

    `router(logits)` returns the same RouterOutput object every call (one per
    calling thread), overwritten in place (copy what you need to keep across
    calls), so a decode loop allocates nothing after the first step.  Pass
    `out=` to route into your own RouterOutput instead.

    The variant (the names are those of the models' configs):
      scoring_func: "softmax" (p = softmax(z)) or "sigmoid" (s = sigmoid(z)).
      topk_on_logits: take the top-K of the raw logits, then score only
        those (gpt-oss: softmax over the K; Llama 4: sigmoid of each).
      n_group, topk_group: group-limited routing (DeepSeek): keep the
        topk_group best of n_group expert groups, pick the K among them.
      routed_scaling_factor: multiplies the final weights.
      e_score_correction_bias: [num_experts] bias added to the scores for
        selection only (sigmoid: DeepSeek-V3, GLM-4.5; softmax: ERNIE 4.5,
        LongCat-Flash; sqrtsoftplus: DeepSeek-V4); weights stay unbiased.
      scoring_func="sqrtsoftplus": s = sqrt(softplus(z)) (DeepSeek-V4);
        "sparsemixer": PhiMoE's top-2 at inference (top_k=2,
        norm_topk_prob=False), masking at router_jitter_noise (0.01).
      moe_router_logit_softcapping: cap > 0: z = cap * tanh(z / cap) before
        scoring (Laguna); None or 0: no cap.
      moe_normalize_expert_weights: p: the weights divided by their p-norm
        (DBRX; p may be inf); None: the sum, as norm_topk_prob says.
      moe_norm_min: the renormalisation divides by max(sum, moe_norm_min)
        (ERNIE 4.5).
      tid2eid: [vocab_size, top_k] expert ids per token id: hash routing
        (DeepSeek-V4's first layers); call with input_ids=.
      zero_expert_num: the last zero_expert_num of the num_experts ranked
        are identity experts (LongCat-Flash); `identity_expert_start` is
        the first such id (None without).
    `Router.from_hf_config(config)` sets all of these from a model's config.

    num_threads: None (default) routes batches below DEFAULT_PARALLEL_MIN_ROWS
      (4096) rows on the calling thread and splits larger ones over all
      OpenMP threads; N uses N threads from PARALLEL_MIN_ROWS (64) rows on
      (README, "Threads": how to choose).  Results are bit-identical for any
      count.
    ids_dtype: int32 (default), uint32 or int64 expert ids; weights_dtype:
      float32 (default) or float64 weights.

    Every setting is validated here, once: TypeError for a wrong kind (top_k
    not an int, norm_topk_prob not a bool, an unknown dtype), ValueError for
    a value out of range (top_k > num_experts, groups that do not divide the
    experts, a non-finite bias ...), each naming the setting.  The settings
    are read-only afterwards (assigning one raises AttributeError): the fast
    path was set up from them.
    """

    # Fixed at construction: assigning one after __init__ raises AttributeError.
    _SETTINGS = frozenset(
        {
            "num_experts",
            "top_k",
            "norm_topk_prob",
            "scoring_func",
            "topk_on_logits",
            "n_group",
            "topk_group",
            "routed_scaling_factor",
            "e_score_correction_bias",
            "num_threads",
            "ids_dtype",
            "weights_dtype",
        }
    )

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool = True,
        *,
        scoring_func: Literal["softmax", "sigmoid"] = "softmax",
        topk_on_logits: bool = False,
        n_group: int = 1,
        topk_group: int | None = None,
        routed_scaling_factor: float = 1.0,
        e_score_correction_bias: npt.ArrayLike | None = None,
        moe_norm_min: float | None = None,
        moe_router_logit_softcapping: float | None = None,
        moe_normalize_expert_weights: float | None = None,
        router_jitter_noise: float | None = None,
        tid2eid: npt.ArrayLike | None = None,
        zero_expert_num: int | None = None,
        num_threads: int | None = None,
        ids_dtype: npt.DTypeLike = np.int32,
        weights_dtype: npt.DTypeLike = np.float32,
    ) -> None:
        self.num_experts = check_int(num_experts, "num_experts", low=1)
        self.top_k = check_int(
            top_k, "top_k", low=1, high=self.num_experts, high_name="num_experts"
        )
        self._variant = _Variant(
            self.num_experts,
            self.top_k,
            norm_topk_prob,
            scoring_func,
            topk_on_logits,
            n_group,
            topk_group,
            routed_scaling_factor,
            e_score_correction_bias,
            moe_norm_min,
            moe_router_logit_softcapping,
            moe_normalize_expert_weights,
            router_jitter_noise,
            tid2eid,
            zero_expert_num,
        )
        self.num_threads = num_threads
        self._threads = _threads_arg(num_threads)
        self._dtypes = (
            _tensors.as_numpy_dtype(ids_dtype, "ids_dtype"),
            _tensors.as_numpy_dtype(weights_dtype, "weights_dtype"),
        )
        RouterOutput.empty(*self._dtypes)  # validates the dtypes now
        # One output per calling thread: a Router shared by threads never
        # hands two of them the same buffers.
        self._local = threading.local()
        self._frozen = True

    def __setattr__(self, name, value):
        if name in Router._SETTINGS and getattr(self, "_frozen", False):
            raise AttributeError(
                f"Router.{name} is read-only: the settings are validated once, at "
                f"construction; build a new Router with {name}={value!r} instead"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name in Router._SETTINGS:
            raise AttributeError(f"Router.{name} is read-only: it cannot be deleted")
        object.__delattr__(self, name)

    ids_dtype = property(lambda self: self._dtypes[0], doc="dtype of the expert ids")
    weights_dtype = property(lambda self: self._dtypes[1], doc="dtype of the expert weights")

    norm_topk_prob = property(lambda self: self._variant.norm_topk_prob)
    scoring_func = property(lambda self: self._variant.scoring_func)
    topk_on_logits = property(lambda self: self._variant.topk_on_logits)
    n_group = property(lambda self: self._variant.n_group)
    topk_group = property(lambda self: self._variant.topk_group)
    routed_scaling_factor = property(lambda self: self._variant.scale)
    e_score_correction_bias = property(lambda self: self._variant.bias64)
    moe_norm_min = property(lambda self: self._variant.norm_min or None)
    moe_router_logit_softcapping = property(lambda self: self._variant.softcap or None)
    moe_normalize_expert_weights = property(lambda self: self._variant.moe_normalize_expert_weights)
    router_jitter_noise = property(
        lambda self: self._variant.jitter if self._variant.scoring_func == "sparsemixer" else None
    )
    tid2eid = property(lambda self: self._variant.tid2eid)
    zero_expert_num = property(lambda self: self._variant.zero_expert_num)

    @property
    def identity_expert_start(self) -> int | None:
        """The first identity-expert id (ids >= it pass the token through:
        LongCat-Flash's zero-computation experts), None without any."""
        z = self._variant.zero_expert_num
        return self.num_experts - z if z else None

    @classmethod
    def from_hf_config(
        cls,
        config,
        e_score_correction_bias: npt.ArrayLike | None = None,
        layer_idx: int | None = None,
        **overrides,
    ) -> Router:
        """A Router for the MoE layers of a Hugging Face model config.

        `config`: a dict (a model's config.json) or an object with those
        attributes (a transformers config); transformers is not imported.
        `e_score_correction_bias`: the gate's bias weight, for the models that
        have one (deepseek_v3, glm4_moe, ...).  `layer_idx`: the layer, for
        configs with per-layer settings (moe_router.moe_layers(config) lists
        the MoE layers).  `overrides` go to Router().
        See moe_router.presets() for the supported model types.
        """
        from ._presets import router_kwargs_from_config

        return cls(
            **router_kwargs_from_config(config, e_score_correction_bias, layer_idx, overrides)
        )

    def __repr__(self):
        v = self._variant
        extra = (
            ""
            if v.plain and not v.topk_on_logits
            else (
                f", scoring_func={v.scoring_func!r}, topk_on_logits={v.topk_on_logits}, "
                f"n_group={v.n_group}, topk_group={v.topk_group}, "
                f"routed_scaling_factor={v.scale}, bias={v.bias32 is not None}"
            )
        )
        if v.rules or v.zero_expert_num:
            extra += (
                f", moe_router_logit_softcapping={v.softcap or None}, "
                f"moe_normalize_expert_weights={v.moe_normalize_expert_weights}, "
                f"moe_norm_min={v.norm_min or None}, tid2eid={v.tid2eid is not None}, "
                f"zero_expert_num={v.zero_expert_num}"
            )
        return (
            f"Router(num_experts={self.num_experts}, top_k={self.top_k}, "
            f"norm_topk_prob={v.norm_topk_prob}{extra})"
        )

    def __call__(
        self,
        logits: npt.ArrayLike,
        out: RouterOutput | None = None,
        input_ids: npt.ArrayLike | None = None,
    ) -> RouterOutput:
        """Route `logits` [..., num_experts]; returns a RouterOutput shaped [..., top_k].

        Without `out`, the result is this Router's own output for the calling
        thread, overwritten by that thread's next call (copy what you keep);
        with `out`, it is routed into that RouterOutput and `out` is returned.
        Raises TypeError for logits that are not floating point or an `out`
        that is not a RouterOutput, ValueError for a last dimension other than
        num_experts, a row with NaN (or all -inf under softmax: the message
        names the row), or an `out` too small for the batch that it cannot
        grow.  The GIL is released while the kernel runs.
        """
        if out is None:
            try:
                out = self._local.out
            except AttributeError:
                out = self._local.out = RouterOutput.empty(*self._dtypes)
        elif type(out) is not RouterOutput and not isinstance(out, RouterOutput):
            raise TypeError(f"out must be a RouterOutput, got {type(out).__name__}")
        v = self._variant
        # The plain case in a few C checks; anything else takes the validating path.
        if v.plain and type(logits) is _ndarray and input_ids is None:
            rc = _dispatch.kernel.route_rows(
                logits,
                self.top_k,
                v.norm_topk_prob,
                out._ids,
                out._weights,
                self._threads,
                self.num_experts,
            )
            if rc == 0:
                shape = logits.shape
                if out._np_shape != shape or out._top_k != self.top_k:
                    out._set_view(shape, self.top_k)  # (skipped when unchanged)
                return out
        elif (
            v.plain
            and type(logits) is out._foreign_type
            and input_ids is None
            and out._top_k == self.top_k
        ):
            # A tensor of the type the views were made for: the plain
            # router's entry point, its shape compared in the kernel.
            rc = _dispatch.kernel.route_rows_foreign(
                logits,
                self.top_k,
                v.norm_topk_prob,
                out._ids,
                out._weights,
                self._threads,
                self.num_experts,
                out._foreign_shape,
            )
            if rc == 0:
                return out
        elif input_ids is not None and not v.rules:
            rc = -1
        else:  # a variant or a scoring rule, or a tensor (its shape is compared in the kernel)
            bias = None if v.bias32 is None else v.bias_for(getattr(logits, "dtype", None))
            if v.rules:
                rc = _dispatch.kernel.route_rows_rules(
                    logits,
                    self.top_k,
                    v.norm_topk_prob,
                    out._ids,
                    out._weights,
                    self._threads,
                    self.num_experts,
                    v.score,
                    v.softcap,
                    v.p_norm,
                    v.norm_min,
                    v.eps,
                    v.scale,
                    v.jitter,
                    bias,
                    v.tid2eid,
                    input_ids,
                    False,
                    out._foreign_shape,
                )
            else:
                rc = _dispatch.kernel.route_rows(
                    logits,
                    self.top_k,
                    v.norm_topk_prob,
                    out._ids,
                    out._weights,
                    self._threads,
                    self.num_experts,
                    v.sigmoid,
                    v.n_group,
                    v.topk_group,
                    v.scale,
                    bias,
                    False,
                    out._foreign_shape,
                )
            if rc == 0:
                if type(logits) is _ndarray:
                    shape = logits.shape
                    if out._np_shape != shape or out._top_k != self.top_k:
                        out._set_view(shape, self.top_k)  # (skipped when unchanged)
                    return out
                if out._top_k == self.top_k and type(logits) is out._foreign_type:
                    return out  # a tensor of the shape the views have
                return out._finish_foreign(logits, self.top_k)
        if rc == -2:  # a tensor of another shape
            return out._finish_foreign(logits, self.top_k)
        return _route_checked(
            logits,
            self.top_k,
            out,
            v.norm_topk_prob,
            self.num_threads,
            self.num_experts,
            variant=v,
            input_ids=input_ids,
        )
