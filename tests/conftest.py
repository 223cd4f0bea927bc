import numpy as np
import pytest

from moe_router import _dispatch

# Every instruction-set path this machine can run; the precision and parity
# tests run on each of them (MOE_ROUTER_PATH only changes the default).
COMPILED_PATHS = _dispatch.available_paths()


def _use(path):
    old = _dispatch.select(path)
    return old


@pytest.fixture(params=COMPILED_PATHS)
def kernel_path(request):
    """Run the test on each compiled kernel path the CPU supports."""
    old = _use(request.param)
    yield request.param
    _dispatch.select(old)


@pytest.fixture(params=COMPILED_PATHS + ("reference",))
def any_path(request):
    """Each compiled path and the NumPy reference behind the same public API."""
    old = _use(request.param)
    yield request.param
    _dispatch.select(old)


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)
