"""moe_router: the gating step of Mixture-of-Experts inference, fast, on the CPU.

    import moe_router as mr
    out = mr.route(logits, top_k=8)            # softmax, top-K, renormalise
    ids, weights = out                         # [..., 8] int32 / float32

See README.md for the API, the error policy and the precision contract.
"""

from . import _dispatch
from ._api import PARALLEL_MIN_ROWS, Router, RouterOutput, route, route_into

__version__ = "0.1.0"

__all__ = ["Router", "RouterOutput", "route", "route_into", "show_config",
           "PARALLEL_MIN_ROWS", "__version__"]


def show_config(print_out=True):
    """Report the version, the kernel path in use, the paths compiled in and OpenMP.

    Returns the same facts as a dict; prints them unless print_out is False.
    """
    info = _dispatch.kernel.build_info() if hasattr(_dispatch.kernel, "build_info") else {}
    config = {
        "version": __version__,
        "kernel_path": _dispatch.path,
        "simd": info.get("simd", "numpy"),
        "compiled_paths": _dispatch.compiled_paths(),
        "available_paths": _dispatch.available_paths(),
        "openmp": info.get("openmp", False),
        "default_threads": _dispatch.default_threads,
        "parallel_min_rows": PARALLEL_MIN_ROWS,
    }
    if print_out:
        for key, value in config.items():
            print(f"{key:>16}: {value}")
    return config
