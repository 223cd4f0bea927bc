"""moe_router: the gating step of Mixture-of-Experts inference, fast, on the CPU.

    import moe_router as mr
    out = mr.route(logits, top_k=8)            # softmax, top-K, renormalise
    ids, weights = out                         # [..., 8] int32 / float32

See README.md for the API, the error policy and the precision contract.
"""

from typing import Any

from . import _dispatch
from ._api import (
    DEFAULT_PARALLEL_MIN_ROWS,
    PARALLEL_MIN_ROWS,
    Router,
    RouterOutput,
    route,
    route_into,
)
from ._plan import DispatchPlan, combine, permute, plan, plan_into
from ._presets import moe_layers, presets, unsupported

__version__ = "0.1.0"

__all__ = [
    "Router",
    "RouterOutput",
    "route",
    "route_into",
    "presets",
    "unsupported",
    "moe_layers",
    "DispatchPlan",
    "plan",
    "plan_into",
    "permute",
    "combine",
    "show_config",
    "PARALLEL_MIN_ROWS",
    "DEFAULT_PARALLEL_MIN_ROWS",
    "__version__",
]


def show_config(print_out: bool = True) -> dict[str, Any]:
    """Report the version, the kernel paths in use, the paths compiled in and OpenMP.

    Returns the same facts as a dict; prints them unless print_out is False.
    Besides the active path, "kernel_paths" maps each logits dtype to the
    path that routes it, and "path_features" gives, per path this CPU runs,
    its SIMD name and the tuned routines compiled into it.
    """
    kernel: Any = getattr(_dispatch, "kernel", None)
    info = kernel.build_info() if hasattr(kernel, "build_info") else {}
    available = _dispatch.available_paths()
    by_dtype = getattr(_dispatch, "paths_by_dtype", None)
    kernel_paths = (
        dict(by_dtype) if by_dtype else {"float32": _dispatch.path, "float64": _dispatch.path}
    )
    path_features = {}
    for p in available:
        module = _dispatch.load(p)
        p_info = module.build_info() if hasattr(module, "build_info") else {}
        path_features[p] = {
            "simd": p_info.get("simd", "numpy"),
            "features": tuple(p_info.get("features", ())),
        }
    config = {
        "version": __version__,
        "kernel_path": _dispatch.path,
        "kernel_paths": kernel_paths,
        "simd": info.get("simd", "numpy"),
        "compiled_paths": _dispatch.compiled_paths(),
        "available_paths": available,
        "path_features": path_features,
        "openmp": info.get("openmp", False),
        "default_threads": _dispatch.default_threads,
        "parallel_min_rows": PARALLEL_MIN_ROWS,
        "default_parallel_min_rows": DEFAULT_PARALLEL_MIN_ROWS,
    }
    if print_out:
        lines = []
        for key, value in config.items():
            if key == "kernel_paths":
                value = ", ".join(f"{dtype} -> {p}" for dtype, p in value.items())
            if key == "path_features":
                for p, facts in value.items():
                    routines = ", ".join(facts["features"]) or "(none listed)"
                    lines.append((f"path {p}", f"simd {facts['simd']}; features: {routines}"))
                continue
            lines.append((key, value))
        width = max(len(key) for key, _ in lines)
        for key, value in lines:
            print(f"{key:>{width}}: {value}")
    return config
