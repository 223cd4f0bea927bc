# The router core compiled with avx2 flags (see setup.py); imported only
# when the CPU supports them (see moe_router/_dispatch.py).
include "_router_kernels.pxi"
include "_rules_kernels.pxi"
include "_plan_kernels.pxi"
