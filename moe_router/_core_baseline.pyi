# Stub of the compiled kernel module; _core_avx2 and _core_avx512 share it.
# CI checks it against the built modules with mypy.stubtest (.ci/run).
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_LIST_TOP_K: int
PARALLEL_MIN_ROWS: int
DEFAULT_PARALLEL_MIN_ROWS: int

# Keys: simd (str), openmp (bool), openmp_max_threads (int), cpu_avx2, cpu_avx512 (bool).
def build_info() -> dict[str, Any]: ...
def set_parallel_min_rows(rows: int) -> int: ...
def set_default_parallel_min_rows(rows: int) -> int: ...
def sigmoid_approx_into(
    x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]
) -> bool | None: ...
def sigmoid_topk_rows(
    z: npt.NDArray[np.float32],
    top_k: int,
    n_group: int,
    topk_group: int,
    bias: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...
def route_rows_foreign(
    logits: object,
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.integer[Any]],
    expert_weights: npt.NDArray[np.floating[Any]],
    num_threads: int,
    num_experts: int,
    views_shape: object,
) -> int: ...
def route_rows(
    logits: object,
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.integer[Any]],
    expert_weights: npt.NDArray[np.floating[Any]],
    num_threads: int = 1,
    num_experts: int = 0,
    sigmoid: bool = False,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling_factor: float = 1.0,
    bias: npt.NDArray[np.floating[Any]] | None = None,
    bf16_bits: bool = False,
    views_shape: object = None,
) -> int: ...
def dlpack_view(
    obj: object, name: str = "array", writeable: bool = False
) -> tuple[npt.NDArray[Any], str, bool]: ...
def route_rows_seed(
    logits: npt.NDArray[np.float32],
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.int32],
    expert_weights: npt.NDArray[np.float32],
) -> None: ...
def exp_into(x: npt.NDArray[np.floating[Any]], out: npt.NDArray[np.floating[Any]]) -> None: ...

# The scoring rules of _rules_kernels.pxi: name -> the `score` code.
SCORE_KINDS: dict[str, int]

def route_rows_rules(
    logits: object,
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.integer[Any]],
    expert_weights: npt.NDArray[np.floating[Any]],
    num_threads: int,
    num_experts: int,
    score: int,
    softcap: float = 0.0,
    p_norm: float = 0.0,
    norm_min: float = 0.0,
    eps: float = 0.0,
    routed_scaling_factor: float = 1.0,
    jitter_eps: float = 0.0,
    bias: npt.NDArray[np.floating[Any]] | None = None,
    tid2eid: npt.NDArray[np.int64] | None = None,
    input_ids: npt.NDArray[np.int64] | None = None,
    bf16_bits: bool = False,
    views_shape: object = None,
) -> int: ...
def exp_pass_into(
    x: npt.NDArray[np.floating[Any]], m: float, out: npt.NDArray[np.floating[Any]]
) -> float: ...
def rule_approx_scores_into(
    x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], sqrtsoftplus: bool, cap: float = 0.0
) -> bool | None: ...
def rule_topk_rows(
    z: npt.NDArray[np.float32],
    top_k: int,
    sqrtsoftplus: bool,
    cap: float,
    bias: npt.NDArray[np.float32],
    approx: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...

# Dispatch kernels (_plan_kernels.pxi); moe_router/_plan.py validates around them.
DISPATCH_PARALLEL_MIN_BYTES: int

def set_dispatch_parallel_min_bytes(n_bytes: int) -> int: ...
def plan_rows(
    expert_ids: object,
    num_experts: int,
    identity_start: int,
    expert_map: object,
    num_local: int,
    capacity: int,
    block_size: int,
    bufs: tuple[npt.NDArray[np.int64], ...] | None,
    num_threads: int = 1,
) -> int: ...
def plan_plain(
    expert_ids: object,
    num_experts: int,
    bufs: tuple[npt.NDArray[np.int64], ...] | None,
    num_threads: int,
) -> int: ...
def permute_rows(
    hidden: object,
    dtype_code: int,
    width: int,
    n_tokens: int,
    sorted_token_ids: object,
    slot_of: object,
    top_k: int,
    n_rows: int,
    weights: object,
    out: object,
    num_threads: int = 1,
) -> int: ...
def combine_rows(
    expert_out: object,
    dtype_code: int,
    width: int,
    n_rows: int,
    slot_of: object,
    n_tokens: int,
    top_k: int,
    weights: object,
    hidden: object,
    out: object,
    num_threads: int = 1,
) -> int: ...
def permute_fast(
    hidden: object,
    bufs: tuple[npt.NDArray[np.int64], ...],
    shape: tuple[int, ...],
    out: object,
    scale_by: object,
    num_threads: object,
) -> Any: ...
def combine_fast(
    expert_out: object,
    bufs: tuple[npt.NDArray[np.int64], ...],
    shape: tuple[int, ...],
    expert_weights: object,
    out: object,
    hidden: object,
    num_threads: object,
) -> Any: ...

DISPATCH_STREAM_MIN_BYTES: int
PLAN_PARALLEL_MIN_SLOTS: int

def set_plan_parallel_min_slots(n_slots: int) -> int: ...
def set_dispatch_stream_min_bytes(n_bytes: int) -> int: ...
