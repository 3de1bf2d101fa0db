# cybn._kernels: the batch-norm kernels for the baseline instruction set of the target
# (SSE2 on x86-64). Every wheel has it, and every CPU the wheel installs on runs it.
#
# The code lives in _kernels_impl.pxi, shared with _kernels_avx2.pyx and _kernels_avx512.pyx;
# cybn._backend picks one of the modules at import time.

include "_kernels_impl.pxi"
