"""Coverage-guided fuzz target (atheris) over the public API.

    pip install atheris
    python tests/fuzz/fuzz_route.py tests/fuzz/corpus -max_total_time=60   # CI
    python tests/fuzz/fuzz_route.py tests/fuzz/corpus                       # by hand, until stopped

Each input builds logits (any dtype, shape, NaN/inf pattern), a top_k and a
router variant from the fuzzer's bytes, and routes through route /
route_into / Router.  A rejected call must raise TypeError or ValueError; an
accepted one must keep the invariants (distinct ids in range, finite
non-negative weights, the float64 reference's answer up to near ties).  A
crash, another exception or a broken invariant fails the run.
"""

import os
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import moe_router as mr
    from moe_router import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from test_variants import assert_routes_like  # noqa: E402

DTYPES = [np.float32, np.float64, np.float16, ">f4", np.int32]


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    num_experts = fdp.ConsumeIntInRange(0, 48)
    batch = fdp.ConsumeIntInRange(0, 5)
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    values = [fdp.ConsumeFloat() for _ in range(batch * num_experts)]
    with np.errstate(over="ignore", invalid="ignore"):
        z = (
            np.array(values, np.float64).reshape(batch, num_experts).astype(dtype)
            if dtype != np.int32
            else np.zeros((batch, num_experts), np.int32)
        )
    if fdp.ConsumeBool() and z.ndim == 2 and z.shape[1] > 1:
        z = z[:, ::-1]  # non-contiguous
    top_k = fdp.ConsumeIntInRange(-1, num_experts + 1)
    norm = fdp.ConsumeBool()
    opts = {}
    variant = fdp.ConsumeIntInRange(0, 4)
    if variant == 1:
        opts = dict(scoring_func="sigmoid")
    elif variant == 2:
        opts = dict(
            n_group=fdp.ConsumeIntInRange(0, 5),
            topk_group=fdp.ConsumeIntInRange(0, 5),
            routed_scaling_factor=fdp.ConsumeFloat(),
        )
    elif variant == 3:
        n_group = fdp.ConsumeIntInRange(1, 4)
        opts = dict(
            scoring_func="sigmoid",
            n_group=n_group,
            topk_group=fdp.ConsumeIntInRange(1, n_group),
            e_score_correction_bias=[fdp.ConsumeFloat() for _ in range(num_experts)],
        )
    elif variant == 4:
        opts = dict(
            topk_on_logits=True, scoring_func=["softmax", "sigmoid"][fdp.ConsumeIntInRange(0, 1)]
        )
        norm = norm or opts["scoring_func"] == "softmax"
    api = fdp.ConsumeIntInRange(0, 2)
    try:
        if api == 0:
            out = mr.route(z, top_k, norm, **opts)
        elif api == 1:
            out = mr.route_into(z, top_k, mr.RouterOutput.empty(), norm, **opts)
        else:
            out = mr.Router(num_experts, top_k, norm, **opts)(z)
    except (TypeError, ValueError):
        return
    # The output is the pair it unpacks as (issue 17).
    assert len(out) == 2 and out[0] is out.expert_ids and out[-1] is out.expert_weights
    zz = np.asarray(z, np.float64)
    oracle = ref.route_reference(zz, top_k, norm, **opts)
    assert_routes_like(zz, out.expert_ids, out.expert_weights, *oracle, top_k, norm, opts)


def main():
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
