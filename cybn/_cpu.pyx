"""What the CPU this process runs on can execute (private; used by cybn._backend).

The check is CPUID plus XGETBV: AVX2 is usable only when the CPU reports it *and* the
operating system saves the 256-bit YMM registers on context switches (OSXSAVE set and XCR0
bits 1-2 on). A CPU flag alone is not enough: a kernel or hypervisor that does not enable
the YMM state would fault on the first AVX instruction. AVX-512 likewise needs the CPU flags of
the subsets cybn._kernels_avx512 is compiled for (F, BW, DQ, VL) and XCR0 bits 5-7 (the opmask
registers and the upper halves and upper sixteen of the ZMM registers) on top of AVX2's.
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
      #if defined(_MSC_VER)
        #include <intrin.h>
        static void cybn_cpuid(int leaf, unsigned int r[4]) {
            int a[4];
            __cpuidex(a, leaf, 0);
            r[0] = (unsigned int)a[0]; r[1] = (unsigned int)a[1];
            r[2] = (unsigned int)a[2]; r[3] = (unsigned int)a[3];
        }
        static unsigned long long cybn_xcr0(void) { return _xgetbv(0); }
      #else
        #include <cpuid.h>
        static void cybn_cpuid(int leaf, unsigned int r[4]) {
            __cpuid_count(leaf, 0, r[0], r[1], r[2], r[3]);
        }
        /* inline asm: the _xgetbv intrinsic would need -mxsave for this one file */
        static unsigned long long cybn_xcr0(void) {
            unsigned int lo, hi;
            __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            return ((unsigned long long)hi << 32) | lo;
        }
      #endif
      static int cybn_cpu_avx2(void) {
          unsigned int r[4];
          cybn_cpuid(0, r);
          if (r[0] < 7) return 0;                       /* no leaf 7: no AVX2 */
          cybn_cpuid(1, r);
          if (!((r[2] >> 27) & 1u) || !((r[2] >> 28) & 1u))
              return 0;                                  /* OSXSAVE and AVX */
          if ((cybn_xcr0() & 6u) != 6u) return 0;        /* OS saves XMM and YMM state */
          cybn_cpuid(7, r);
          return (int)((r[1] >> 5) & 1u);                /* leaf 7 EBX bit 5: AVX2 */
      }
      /* leaf 7 EBX: bits 16 AVX512F, 17 AVX512DQ, 30 AVX512BW, 31 AVX512VL */
      #define CYBN_AVX512_EBX ((1u << 16) | (1u << 17) | (1u << 30) | (1u << 31))
      static int cybn_cpu_avx512(void) {
          unsigned int r[4];
          if (!cybn_cpu_avx2()) return 0;                /* also: leaf 7 and OSXSAVE exist */
          /* XCR0 bits 1, 2 (XMM, YMM), 5, 6, 7 (opmask, ZMM_Hi256, Hi16_ZMM) */
          if ((cybn_xcr0() & 0xE6u) != 0xE6u) return 0;
          cybn_cpuid(7, r);
          return (r[1] & CYBN_AVX512_EBX) == CYBN_AVX512_EBX;
      }
    #else
      static int cybn_cpu_avx2(void) { return 0; }       /* not x86: no AVX2 */
      static int cybn_cpu_avx512(void) { return 0; }     /* nor AVX-512 */
    #endif
    """
    int cybn_cpu_avx2() noexcept nogil
    int cybn_cpu_avx512() noexcept nogil


def has_avx2() -> bool:
    """Return True if this CPU and operating system can run AVX2 code (False off x86)."""
    return cybn_cpu_avx2() == 1


def has_avx512() -> bool:
    """Return True if this CPU and operating system can run the AVX-512 code of
    cybn._kernels_avx512 (AVX512F, BW, DQ and VL, and AVX2; False off x86)."""
    return cybn_cpu_avx512() == 1
