# The same kernel API as the baseline module (one .pxi, compiled per ISA).
from ._core_baseline import *
