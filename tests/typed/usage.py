"""The typed API as a user's code meets it: checked by mypy in CI (.ci/run).

    mypy --strict --warn-unused-ignores tests/typed/usage.py

Each assert_type fails the check if the API's types regress (to Any, say);
each `# type: ignore[...]` marks a call mypy must reject, and
--warn-unused-ignores fails the check if it stops rejecting it.  The script
also runs (tests/test_readme.py executes it), so the calls are real ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

import moe_router as mr

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:

    def assert_type(value, _type):
        return value


logits = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)

router = mr.Router(num_experts=16, top_k=2, norm_topk_prob=True, num_threads=1)
out = router(logits)
assert_type(out, mr.RouterOutput)
ids, weights = out
assert_type(ids, np.ndarray)
assert_type(weights, np.ndarray)
assert_type(out[0], np.ndarray)
assert_type(len(out), int)
assert_type(out.batch, int)
assert_type(out.top_k, int)

sigmoid = mr.Router(16, 2, scoring_func="sigmoid", n_group=4, topk_group=2)
assert_type(sigmoid(logits), mr.RouterOutput)
try:
    mr.Router(16, 2, scoring_func="relu")  # type: ignore[arg-type]  # not a scoring rule
except ValueError:
    pass  # and at run time a ValueError
else:
    raise AssertionError("scoring_func='relu' was accepted")

again = mr.route_into(logits, 2, mr.RouterOutput.empty(np.int64, np.float64))
assert_type(again, mr.RouterOutput)
assert_type(mr.route(logits, 2, ids_dtype=np.uint32), mr.RouterOutput)

config = mr.show_config(print_out=False)
assert_type(config, dict[str, Any])
assert_type(mr.DEFAULT_PARALLEL_MIN_ROWS, int)
