# cybn._kernels_avx512: the same kernels as cybn._kernels (the code is _kernels_impl.pxi),
# compiled for x86-64-v4's AVX-512 subsets (build_support.ISA_BUILDS: -mavx512f -mavx512bw
# -mavx512dq -mavx512vl, MSVC /arch:AVX512). Built for x86-64 targets only, and imported only
# when cybn._cpu reports that the CPU and the OS support AVX-512 (F, BW, DQ, VL and the
# opmask/ZMM register state).
#
# Floating-point contraction is off in every build (-ffp-contract=off), and the kernels
# vectorise only across independent accumulators, so wider vectors change the speed, not
# the bits: all kernel modules return identical results (tests/test_kernel_builds.py).

include "_kernels_impl.pxi"
