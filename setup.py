"""Build of the compiled router core.

The kernels live in one Cython source, moe_router/_router_kernels.pxi, which
each `moe_router/_core_<isa>.pyx` includes, over the C++ headers in
moe_router/csrc/.  Every module is compiled as C++ with its own
instruction-set flags; moe_router/_dispatch.py imports, per logits dtype, the
best one the running CPU supports, so a wheel built here runs on any x86-64.

Environment switches:
  MOE_ROUTER_DEBUG=1     bounds/wraparound/initialisation checks on, -O0 -g
  MOE_ROUTER_SANITIZE=1  also -fsanitize=address,undefined (implies DEBUG)
  MOE_ROUTER_OPENMP=0    build without OpenMP even if the compiler has it
  MOE_ROUTER_ISA=baseline[,avx2...]  build only these modules (baseline is
                         always built: the dispatch asks the CPU through it)
  MOE_ROUTER_WERROR=1    compiler warnings are errors (CI: the build has none
                         at -Wall, and must not gain any)

The modules are compiled in parallel, one per core (pip runs build_ext
without -j, so it is set here; `-j N` on the command line still wins).
"""

import glob
import os
import platform
import sys
import tempfile
import textwrap
import time

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _env_flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


SANITIZE = _env_flag("MOE_ROUTER_SANITIZE")
DEBUG = _env_flag("MOE_ROUTER_DEBUG") or SANITIZE
WANT_OPENMP = _env_flag("MOE_ROUTER_OPENMP", "1")
WERROR = _env_flag("MOE_ROUTER_WERROR")
ONLY_ISAS = {
    isa.strip() for isa in os.environ.get("MOE_ROUTER_ISA", "").lower().split(",") if isa.strip()
}

HERE = os.path.dirname(os.path.abspath(__file__))
X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# Instruction-set variants: module suffix -> extra compiler flags (gcc/clang).
# AVX-512 code uses the 512-bit registers: -mprefer-vector-width=512, since
# generic tuning would otherwise stay on 256-bit vectors.
ISA_VARIANTS = {"baseline": []}
if X86_64:
    ISA_VARIANTS["avx2"] = ["-mavx2", "-mfma", "-mpopcnt", "-mf16c"]
    ISA_VARIANTS["avx512"] = [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512dq",
        "-mavx512vl",
        "-mavx2",
        "-mfma",
        "-mpopcnt",
        "-mf16c",
        "-mprefer-vector-width=512",
    ]
if ONLY_ISAS:
    _unknown = ONLY_ISAS - set(ISA_VARIANTS)
    if _unknown:
        raise SystemExit(
            f"MOE_ROUTER_ISA: unknown {sorted(_unknown)}; expected some of {sorted(ISA_VARIANTS)}"
        )
    ISA_VARIANTS = {
        isa: flags for isa, flags in ISA_VARIANTS.items() if isa == "baseline" or isa in ONLY_ISAS
    }

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}


def _can_compile(compiler, flags, source="int main(void) { return 0; }\n"):
    """True if `compiler` accepts `flags` for a small C program."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
    }
""")


class BuildExt(build_ext):
    """Adds per-variant ISA flags and OpenMP where the compiler supports them."""

    def finalize_options(self):
        super().finalize_options()
        # The three modules take about a minute each: one per core at once.
        if not self.parallel:
            self.parallel = min(len(self.extensions), os.cpu_count() or 1)

    def build_extension(self, ext):
        # pip shows this only with -v (it hides a backend's output otherwise).
        start = time.monotonic()
        print(f"moe_router: compiling {ext.name} ...", file=sys.stderr, flush=True)
        super().build_extension(ext)
        took = time.monotonic() - start
        print(f"moe_router: {ext.name} done in {took:.0f} s", file=sys.stderr, flush=True)

    def build_extensions(self):
        unix_like = self.compiler.compiler_type == "unix"
        openmp = []
        if WANT_OPENMP and unix_like and _can_compile(self.compiler, ["-fopenmp"], OPENMP_PROBE):
            openmp = ["-fopenmp"]
        elif WANT_OPENMP:
            print(
                "WARNING: moe_router: the C compiler has no usable OpenMP; "
                "building the serial kernels (num_threads is then ignored).",
                file=sys.stderr,
            )
        # -fno-trapping-math lets gcc if-convert the float compares of the
        # kernels (we never rely on FP exceptions); results are unchanged.
        opt = (["-O0", "-g"] if DEBUG else ["-O3"]) + ["-fno-trapping-math"]
        if WERROR and unix_like:
            opt += ["-Wall", "-Werror"]
        # The GNU dialect: its default -ffp-contract=fast is the contraction
        # the kernels' results are defined with (ISO -std=c++17 turns it off).
        std = ["-std=gnu++17"]
        # Keep the short copies of K ids / K weights inline: gcc turns such
        # loops into memcpy calls (docs/performance.md).
        no_memcpy = ["-fno-tree-loop-distribute-patterns"]
        if unix_like and _can_compile(self.compiler, ["-Werror"] + no_memcpy):
            opt += no_memcpy
        if SANITIZE:
            opt += [
                "-fsanitize=address,undefined",
                "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined",
            ]
        kept = []
        for ext in self.extensions:
            isa = ext.name.rsplit("_", 1)[-1]
            isa_flags = ISA_VARIANTS.get(isa, [])
            if isa != "baseline" and not (unix_like and _can_compile(self.compiler, isa_flags)):
                print(
                    f"WARNING: moe_router: compiler lacks {isa_flags}; skipping {ext.name}",
                    file=sys.stderr,
                )
                continue
            ext.extra_compile_args = (std + opt + isa_flags + openmp) if unix_like else []
            ext.extra_link_args = (openmp + (opt if SANITIZE else [])) if unix_like else []
            kept.append(ext)
        # Widest instruction set first: the largest modules start first, so
        # the parallel build does not end on one of them alone.
        self.extensions = sorted(
            kept, key=lambda e: -list(ISA_VARIANTS).index(e.name[len("moe_router._core_") :])
        )
        super().build_extensions()


# Everything each _core_<isa> module is built from besides its own .pyx.
KERNEL_SOURCES = [
    "moe_router/_router_kernels.pxi",
    "moe_router/_rules_kernels.pxi",
    "moe_router/_plan_kernels.pxi",
] + sorted(
    glob.glob("moe_router/csrc/*.h", root_dir=HERE)
    + glob.glob("moe_router/csrc/*.hpp", root_dir=HERE)
)


def _extensions():
    exts = []
    for isa in ISA_VARIANTS:
        exts.append(
            Extension(
                f"moe_router._core_{isa}",
                [f"moe_router/_core_{isa}.pyx"],
                include_dirs=[np.get_include(), "moe_router"],
                depends=KERNEL_SOURCES,
                language="c++",
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    # Cython's translation too runs one module per core.
    return cythonize(
        exts,
        compiler_directives=COMPILER_DIRECTIVES,
        include_path=["moe_router"],
        quiet=True,
        nthreads=min(len(exts), os.cpu_count() or 1),
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
