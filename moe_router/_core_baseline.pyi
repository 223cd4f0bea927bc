# Stub of the compiled kernel module; _core_avx2 and _core_avx512 share it.
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_LIST_TOP_K: int
PARALLEL_MIN_ROWS: int

def build_info() -> dict[str, Any]: ...
def set_parallel_min_rows(rows: int) -> int: ...
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
) -> int: ...
def route_rows_seed(
    logits: npt.NDArray[np.float32],
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.int32],
    expert_weights: npt.NDArray[np.float32],
) -> None: ...
def exp_into(x: npt.NDArray[np.floating[Any]], out: npt.NDArray[np.floating[Any]]) -> None: ...
