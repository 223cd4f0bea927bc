import os

# NumPy's OpenBLAS threads spin on the cores the measured code runs on
# (the router and these baselines never call BLAS): keep them to one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

from moe_router import _dispatch


@pytest.fixture(scope="session")
def torch():
    """torch with one intra-op thread, or skip."""
    from moe_router._bench import import_torch

    mod = import_torch()
    if mod is None:
        pytest.skip("PyTorch not installed (pip install torch==2.13.0)")
    return mod


@pytest.fixture(params=_dispatch.available_paths())
def kernel_path(request):
    old = _dispatch.select(request.param)
    yield request.param
    _dispatch.select(old)
