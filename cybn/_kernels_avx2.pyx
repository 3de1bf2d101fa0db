# cybn._kernels_avx2: the same kernels as cybn._kernels (the code is _kernels_impl.pxi),
# compiled with AVX2 enabled (build_support.ISA_BUILDS: -mavx2, MSVC /arch:AVX2). Built for
# x86-64 targets only, and imported only when cybn._cpu reports that the CPU and the OS support
# AVX2 (and, where they support AVX-512 too, cybn._kernels_avx512 is imported instead).
#
# Floating-point contraction is off in every build (-ffp-contract=off), and the kernels
# vectorise only across independent accumulators, so wider vectors change the speed, not
# the bits: all kernel modules return identical results (tests/test_kernel_builds.py).

include "_kernels_impl.pxi"
