# Stub of a compiled kernel module (all _core_<isa> modules share this API).
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_LIST_TOP_K: int

def build_info() -> dict[str, Any]: ...
def route_rows(
    logits: npt.NDArray[np.floating[Any]],
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.integer[Any]],
    expert_weights: npt.NDArray[np.floating[Any]],
    num_threads: int = 1,
) -> int: ...
def route_rows_seed(
    logits: npt.NDArray[np.float32],
    top_k: int,
    norm_topk_prob: bool,
    expert_ids: npt.NDArray[np.int32],
    expert_weights: npt.NDArray[np.float32],
) -> None: ...
def exp_into(x: npt.NDArray[np.floating[Any]], out: npt.NDArray[np.floating[Any]]) -> None: ...
