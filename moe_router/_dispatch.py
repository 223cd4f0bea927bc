"""Pick the compiled kernel modules for this CPU at import, one per logits dtype.

setup.py compiles the same kernel source (_router_kernels.pxi) into one
module per instruction set.  A module may only be imported once the CPU is
known to support it (its initialisation code may already use the wider
instructions), so the CPU is asked through the baseline module first.

Each logits dtype takes the first available path of its PREFERRED list, the
order measured fastest (docs/performance.md; `moe-router bench --paths`
measures it on any CPU).  MOE_ROUTER_PATH=baseline|avx2|avx512 forces one
path for everything; "auto" (or unset) takes the preferred ones.
"""

import importlib
import importlib.util
import os
from typing import Any

import numpy as np

try:
    from . import _core_baseline
except ImportError as e:  # the uncompiled sources, e.g. `python -m moe_router` in a checkout
    _here = os.path.dirname(os.path.abspath(__file__))
    _checkout = os.path.exists(os.path.join(_here, "..", "setup.py"))
    raise ImportError(
        "moe_router's compiled core (moe_router._core_baseline) is not built"
        + (
            f": Python imported the source tree at {_here}, which has no compiled "
            f"modules. Install the package (pip install . from the checkout) and run "
            f"from another directory, or build it in place "
            f"(python setup.py build_ext --inplace)"
            if _checkout
            else f" or cannot be loaded ({e}); reinstall moe_router"
        )
    ) from None

# Threads used by default for batches large enough to split (OMP_NUM_THREADS
# or the machine's cores; 1 when built without OpenMP).
default_threads = _core_baseline.build_info()["openmp_max_threads"]

# Batches smaller than this always run on one thread (a fact of the kernels).
PARALLEL_MIN_ROWS = _core_baseline.PARALLEL_MIN_ROWS
# The default num_threads (None) splits only batches at least this large.
DEFAULT_PARALLEL_MIN_ROWS = _core_baseline.DEFAULT_PARALLEL_MIN_ROWS

# Widest last.
PATHS = ("baseline", "avx2", "avx512")

# Per logits dtype, the paths in the order measured fastest
# (docs/performance.md).  float32 stays on the avx2 module: the avx512 module
# runs the same 256-bit float32 code, and moves ahead only once measured at
# least as fast on an AVX-512 CPU (`moe-router bench --paths`).  float64 takes
# the 512-bit vectors.
PREFERRED = {
    "float32": ("avx2", "avx512", "baseline"),
    "float64": ("avx512", "avx2", "baseline"),
}

_cpu = _core_baseline.build_info()
_cpu_ok = {"baseline": True, "avx2": _cpu["cpu_avx2"], "avx512": _cpu["cpu_avx512"]}


def _compiled(path):
    return importlib.util.find_spec(f"moe_router._core_{path}") is not None


def compiled_paths():
    """Instruction-set paths built into this installation."""
    return tuple(p for p in PATHS if _compiled(p))


def available_paths():
    """Paths that are compiled in and that this CPU can run."""
    return tuple(p for p in compiled_paths() if _cpu_ok[p])


def load(path):
    """Import and return the kernel module for `path` (must be available).

    "reference" loads the NumPy reference (moe_router.reference), which has
    the same entry point: the test suite runs the public API on it too.
    """
    if path == "reference":
        return importlib.import_module("moe_router.reference")
    if path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}; expected one of {PATHS}")
    if path not in available_paths():
        why = "not compiled in" if path not in compiled_paths() else "not supported by this CPU"
        raise ValueError(f"kernel path {path!r} is {why}; available: {available_paths()}")
    return importlib.import_module(f"moe_router._core_{path}")


def _forced_path():
    forced = os.environ.get("MOE_ROUTER_PATH", "auto").strip().lower()
    if forced in ("", "auto"):
        return None
    if forced not in PATHS:
        raise ImportError(f"MOE_ROUTER_PATH={forced!r}: expected auto or one of {PATHS}")
    if forced not in available_paths():
        raise ImportError(
            f"MOE_ROUTER_PATH={forced!r} is not available here; available: {available_paths()}"
        )
    return forced


def preferred_paths():
    """The path each logits dtype takes by default here: {"float32": ..., "float64": ...}."""
    available = available_paths()
    return {dtype: next(p for p in order if p in available) for dtype, order in PREFERRED.items()}


class KernelByDtype:
    """The kernel entry point when float32 and float64 logits take different
    modules: route_rows sends float64 logits to one and everything else (the
    float32 and the not-yet-converted logits) to the other."""

    def __init__(self, kernel_f32, kernel_f64):
        self.kernel_f32 = kernel_f32
        self.kernel_f64 = kernel_f64
        # The canonical float64 dtype: what the API's conversions produce.
        # Another float64 dtype object (with metadata) takes the float32
        # module, with the same results.
        self._f64 = np.dtype(np.float64)

    def route_rows(self, logits, *args):
        kernel = self.kernel_f64 if getattr(logits, "dtype", None) is self._f64 else self.kernel_f32
        return kernel.route_rows(logits, *args)

    def route_rows_foreign(self, logits, *args):  # (tensors: the float32 module, as route_rows)
        return self.kernel_f32.route_rows_foreign(logits, *args)

    def route_rows_rules(self, logits, *args):
        kernel = self.kernel_f64 if getattr(logits, "dtype", None) is self._f64 else self.kernel_f32
        return kernel.route_rows_rules(logits, *args)

    def set_parallel_min_rows(self, rows):
        """Set the threshold on both modules; returns the float32 module's old one."""
        self.kernel_f64.set_parallel_min_rows(rows)
        return self.kernel_f32.set_parallel_min_rows(rows)

    def set_default_parallel_min_rows(self, rows):
        """Set the default's threshold on both modules; returns the float32 module's old one."""
        self.kernel_f64.set_default_parallel_min_rows(rows)
        return self.kernel_f32.set_default_parallel_min_rows(rows)

    def __getattr__(self, name):  # build_info, exp_into, ...: the float32 module's
        return getattr(self.kernel_f32, name)


def _use(by_dtype):
    """Make `by_dtype` ({"float32": path, "float64": path}) the active paths."""
    global path, paths_by_dtype, kernel
    f32, f64 = load(by_dtype["float32"]), load(by_dtype["float64"])
    paths_by_dtype = dict(by_dtype)
    path = by_dtype["float32"]
    kernel = f32 if f32 is f64 else KernelByDtype(f32, f64)


# The active kernels: `kernel` is read by moe_router._api on every call (a
# module, or a KernelByDtype where the dtypes take different modules);
# `path` is the path of float32 logits.
path: str
paths_by_dtype: dict[str, str]
kernel: Any  # a _core_<isa> module or a KernelByDtype
_forced = _forced_path()
_use({"float32": _forced, "float64": _forced} if _forced else preferred_paths())


def select(new_path):
    """Force one path for every dtype (for tests and benchmarks).  Takes a path,
    "auto" (the preferred paths) or what an earlier call returned: the paths
    before the call, {"float32": path, "float64": path}."""
    old = paths_by_dtype
    if isinstance(new_path, dict):
        _use(new_path)
    else:
        _use(
            preferred_paths() if new_path == "auto" else {"float32": new_path, "float64": new_path}
        )
    return old
