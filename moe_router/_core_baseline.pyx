# The router core compiled for the x86-64 baseline (SSE2) or, elsewhere,
# the compiler's default target: always built, always importable.
include "_router_kernels.pxi"
include "_rules_kernels.pxi"
include "_plan_kernels.pxi"
