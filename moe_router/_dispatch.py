"""Pick the compiled kernel module for this CPU at import.

setup.py compiles the same kernel source (_router_kernels.pxi) into one
module per instruction set.  A module may only be imported once the CPU is
known to support it (its initialisation code may already use the wider
instructions), so the CPU is asked through the baseline module first.

MOE_ROUTER_PATH=baseline|avx2|avx512 forces a path; "auto" (or unset) takes
the best one available.
"""

import importlib
import importlib.util
import os

from . import _core_baseline

# Threads used by default for batches large enough to split (OMP_NUM_THREADS
# or the machine's cores; 1 when built without OpenMP).
default_threads = _core_baseline.build_info()["openmp_max_threads"]

# Batches smaller than this always run on one thread (a fact of the kernels).
PARALLEL_MIN_ROWS = _core_baseline.PARALLEL_MIN_ROWS

# Best last.
PATHS = ("baseline", "avx2", "avx512")

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


def _initial_path():
    forced = os.environ.get("MOE_ROUTER_PATH", "auto").strip().lower()
    if forced in ("", "auto"):
        return available_paths()[-1]
    if forced not in PATHS:
        raise ImportError(f"MOE_ROUTER_PATH={forced!r}: expected auto or one of {PATHS}")
    if forced not in available_paths():
        raise ImportError(f"MOE_ROUTER_PATH={forced!r} is not available here; "
                          f"available: {available_paths()}")
    return forced


# The active kernel: read by moe_router._api on every call.
path = _initial_path()
kernel = load(path)


def select(new_path):
    """Switch the active kernel path (for tests and benchmarks); returns the old one."""
    global path, kernel
    module = load(new_path)
    old, path, kernel = path, new_path, module
    return old
