"""The public API: validation, allocation and composition around the kernels.

Everything a caller can get wrong is checked here, with the GIL held, before
the compiled kernel runs; the kernel itself never raises.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _dispatch

__all__ = ["RouterOutput", "Router", "route", "route_into"]

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
ID_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int64))
WEIGHT_DTYPES = (_F32, _F64)

# Batches smaller than this run on one thread whatever num_threads says.
PARALLEL_MIN_ROWS = _dispatch.PARALLEL_MIN_ROWS


def _dtype_names(dtypes):
    return "/".join(str(d) for d in dtypes)


def check_int(value, name, low=None, high=None, high_name=None):
    """`value` as an int; TypeError unless an integer (bool rejected), ValueError if out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high_name or high}={high}, got {name}={value}")
    return value


def as_logits(logits):
    """`logits` as a C-contiguous float32/float64 array of shape [..., num_experts]."""
    arr = logits if type(logits) is np.ndarray else np.asarray(logits)
    dt = arr.dtype
    if dt is not _F32 and dt is not _F64 and dt != _F32 and dt != _F64:
        if dt == _F16:
            arr = arr.astype(_F32)  # converted once; float32 math from here
        elif dt.kind == "f":  # non-native byte order or long double
            arr = arr.astype(_F32 if dt.itemsize <= 4 else _F64)
        else:
            raise TypeError(
                f"logits must be a floating-point array (float16, float32 or float64), "
                f"got dtype {dt}")
    if arr.ndim == 0:
        raise ValueError("logits must have shape [..., num_experts], got a 0-d array")
    if arr.shape[-1] == 0:
        raise ValueError(f"num_experts (logits.shape[-1]) must be >= 1, got logits of shape {arr.shape}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _check_buffer(arr, name, dtypes):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {arr.strides} for shape {arr.shape}")
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")


class RouterOutput:
    """Selected experts and combine weights, flat `[t * top_k + k]` underneath.

    `expert_ids` and `expert_weights` are views shaped `[..., top_k]` (the
    leading dimensions of the logits).  `ids, weights = out` unpacks them.

    A RouterOutput from `empty()` (or `route`) owns its memory and grows it on
    demand, keeping its capacity; one that wraps your arrays
    (`RouterOutput(expert_ids=..., expert_weights=...)`) never reallocates
    them and raises ValueError when they are too small.
    """

    __slots__ = ("_ids", "_weights", "_owns", "_logits_shape", "_batch", "_top_k",
                 "expert_ids", "expert_weights")

    def __init__(self, expert_ids, expert_weights):
        _check_buffer(expert_ids, "expert_ids", ID_DTYPES)
        _check_buffer(expert_weights, "expert_weights", WEIGHT_DTYPES)
        if expert_ids.size != expert_weights.size:
            raise ValueError(
                f"expert_ids and expert_weights must have the same size, got "
                f"{expert_ids.size} (shape {expert_ids.shape}) and "
                f"{expert_weights.size} (shape {expert_weights.shape})")
        if np.may_share_memory(expert_ids, expert_weights):
            raise ValueError("expert_ids and expert_weights must not overlap in memory")
        self._owns = False
        self._ids = expert_ids.reshape(-1)
        self._weights = expert_weights.reshape(-1)
        self.expert_ids = expert_ids
        self.expert_weights = expert_weights
        self._logits_shape = None  # views are the caller's arrays as given
        if expert_ids.ndim >= 1 and expert_ids.shape[-1] > 0:
            self._top_k = expert_ids.shape[-1]
            self._batch = expert_ids.size // self._top_k
        else:
            self._top_k = 0
            self._batch = 0

    @classmethod
    def empty(cls, ids_dtype=np.int32, weights_dtype=np.float32):
        """An owning, zero-capacity output; `route_into` grows it on demand."""
        ids_dtype, weights_dtype = np.dtype(ids_dtype), np.dtype(weights_dtype)
        if ids_dtype not in ID_DTYPES:
            raise TypeError(f"ids_dtype must be {_dtype_names(ID_DTYPES)}, got {ids_dtype}")
        if weights_dtype not in WEIGHT_DTYPES:
            raise TypeError(f"weights_dtype must be {_dtype_names(WEIGHT_DTYPES)}, got {weights_dtype}")
        self = cls.__new__(cls)
        self._owns = True
        self._ids = np.empty(0, ids_dtype)
        self._weights = np.empty(0, weights_dtype)
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
        """Elements each buffer holds: routing fits without reallocating while batch * top_k <= capacity."""
        return self._ids.size

    @property
    def owns_memory(self) -> bool:
        """True if this output allocated its buffers (and may grow them)."""
        return self._owns

    def __iter__(self):
        yield self.expert_ids
        yield self.expert_weights

    def __repr__(self):
        return (f"RouterOutput(batch={self._batch}, top_k={self._top_k}, "
                f"expert_ids={self.expert_ids!r}, expert_weights={self.expert_weights!r})")

    def reset(self, batch, top_k):
        """Shape the output for `batch` tokens (an int or a tuple of leading dims) x `top_k`.

        Reuses the existing buffers when they are large enough; an owning
        output grows them otherwise (old contents are not preserved).
        """
        shape = (batch,) if isinstance(batch, numbers.Integral) else tuple(batch)
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
                    f"arrays never reallocates them")
            # Amortised growth, as the seed's Vec::resize: continuous batching
            # settles on its largest batch after a few reallocations.
            cap = max(n, 2 * self._ids.size)
            self._ids = np.empty(cap, self._ids.dtype)
            self._weights = np.empty(cap, self._weights.dtype)
            self._logits_shape = None
        if not self._owns:
            _check_buffer(self._ids, "out.expert_ids", ID_DTYPES)
            _check_buffer(self._weights, "out.expert_weights", WEIGHT_DTYPES)
        self._set_view(logits_shape, top_k)

    def _set_view(self, logits_shape, top_k):
        """Views shaped [..., top_k] over the first batch * top_k elements."""
        if self._logits_shape == logits_shape and self._top_k == top_k:
            return
        shape = logits_shape[:-1] + (top_k,)
        n_tokens = 1
        for d in logits_shape[:-1]:
            n_tokens *= d
        n = n_tokens * top_k
        self.expert_ids = self._ids[:n].reshape(shape)
        self.expert_weights = self._weights[:n].reshape(shape)
        self._logits_shape = logits_shape
        self._batch = n_tokens
        self._top_k = top_k


def _threads_arg(num_threads):
    """num_threads as the kernel takes it: 0 for the default."""
    return 0 if num_threads is None else check_int(num_threads, "num_threads", low=1)


def _raise_bad_rows(flat, batch_shape):
    """Name the first row the kernel could not route (NaN or all -inf)."""
    nan_rows = np.isnan(flat).any(axis=1)
    neginf_rows = (flat == -np.inf).all(axis=1)
    bad = np.flatnonzero(nan_rows | neginf_rows)
    r = int(bad[0])
    where = f"row {r}"
    if len(batch_shape) > 1:
        where += f" (index {tuple(int(i) for i in np.unravel_index(r, batch_shape))})"
    if nan_rows[r]:
        raise ValueError(f"logits {where} contains NaN ({bad.size} bad row(s) in all)")
    raise ValueError(f"logits {where} is all -inf: no expert can be selected "
                     f"({bad.size} bad row(s) in all)")


def _route_checked(logits, top_k, out, norm_topk_prob, num_threads, num_experts=None):
    """The validating path: explain what is wrong, or convert / grow and route."""
    arr = as_logits(logits)
    if num_experts is not None and arr.shape[-1] != num_experts:
        raise ValueError(f"logits must have shape [..., num_experts={num_experts}], "
                         f"got {arr.shape}")
    top_k = check_int(top_k, "top_k", low=1, high=arr.shape[-1], high_name="num_experts")
    threads = _threads_arg(num_threads)
    out._prepare(arr.shape, top_k)
    if np.may_share_memory(arr, out._ids) or np.may_share_memory(arr, out._weights):
        raise ValueError("out's buffers must not overlap the logits")
    n_bad = _dispatch.kernel.route_rows(arr, top_k, bool(norm_topk_prob), out._ids,
                                        out._weights, threads)
    if n_bad < 0:  # every precondition of the kernel was checked above
        raise RuntimeError("moe_router: the kernel refused validated input (a bug; please report)")
    if n_bad:
        _raise_bad_rows(arr.reshape(-1, arr.shape[-1]), arr.shape[:-1])
    return out


def route(logits, top_k, norm_topk_prob=True, *, num_threads=None,
          ids_dtype=np.int32, weights_dtype=np.float32):
    """Route tokens to their top-K experts; allocates a new RouterOutput.

    logits: [..., num_experts] floating array (anything numpy converts).
    top_k: experts per token, 1 <= top_k <= num_experts.
    norm_topk_prob: renormalise the K weights of a token to sum to 1.
    num_threads: threads for large batches (default: all OpenMP threads;
        batches below PARALLEL_MIN_ROWS always run on one).
    """
    out = RouterOutput.empty(ids_dtype, weights_dtype)
    return _route_checked(logits, top_k, out, norm_topk_prob, num_threads)


def route_into(logits, top_k, out, norm_topk_prob=True, *, num_threads=None):
    """Route into `out` (a RouterOutput), reusing its memory; returns `out`.

    Does not allocate when `out` already holds batch * top_k elements.  On
    error, `out`'s contents are unspecified but nothing outside it is written.
    """
    if type(out) is not RouterOutput and not isinstance(out, RouterOutput):
        raise TypeError(f"out must be a RouterOutput, got {type(out).__name__}")
    if type(top_k) is int and num_threads is None:
        # The plain case in a few C checks; anything else takes the validating path.
        if _dispatch.kernel.route_rows(logits, top_k, norm_topk_prob,
                                       out._ids, out._weights, 0) == 0:
            out._set_view(logits.shape, top_k)
            return out
    return _route_checked(logits, top_k, out, norm_topk_prob, num_threads)


class Router:
    """A configured router that owns and reuses its output buffers.

    `router(logits)` returns the same RouterOutput object every call,
    overwritten in place (copy what you need to keep across calls), so a
    decode loop allocates nothing after the first step.  Pass `out=` to
    route into your own RouterOutput instead.
    """

    def __init__(self, num_experts, top_k, norm_topk_prob=True, *, num_threads=None,
                 ids_dtype=np.int32, weights_dtype=np.float32):
        self.num_experts = check_int(num_experts, "num_experts", low=1)
        self.top_k = check_int(top_k, "top_k", low=1, high=self.num_experts,
                               high_name="num_experts")
        self.norm_topk_prob = bool(norm_topk_prob)
        self.num_threads = num_threads
        self._threads = _threads_arg(num_threads)
        self._out = RouterOutput.empty(ids_dtype, weights_dtype)

    def __repr__(self):
        return (f"Router(num_experts={self.num_experts}, top_k={self.top_k}, "
                f"norm_topk_prob={self.norm_topk_prob})")

    def __call__(self, logits, out=None):
        if out is None:
            out = self._out
        elif type(out) is not RouterOutput and not isinstance(out, RouterOutput):
            raise TypeError(f"out must be a RouterOutput, got {type(out).__name__}")
        # The plain case in a few C checks; anything else takes the validating path.
        if _dispatch.kernel.route_rows(logits, self.top_k, self.norm_topk_prob, out._ids,
                                       out._weights, self._threads, self.num_experts) == 0:
            out._set_view(logits.shape, self.top_k)
            return out
        return _route_checked(logits, self.top_k, out, self.norm_topk_prob, self.num_threads,
                              self.num_experts)
