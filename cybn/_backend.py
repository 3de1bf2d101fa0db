"""Which compiled build of the kernels this process runs (private).

cybn ships the kernels twice, compiled from one source (``cybn/_kernels_impl.pxi``):

* ``cybn._kernels``: the target's baseline instruction set (SSE2 on x86-64); always built;
* ``cybn._kernels_avx2``: the same code with AVX2 enabled; built for x86-64 targets only.

At import, the AVX2 build is used when it was built and :func:`cybn._cpu.has_avx2` says the
CPU and the OS support it. Both builds return bitwise-identical results (floating-point
contraction is off and the kernels vectorise only across independent accumulators), so the
choice changes speed only.

``CYBN_KERNELS`` overrides the choice: ``auto`` (default), ``baseline`` or ``avx2``. An
unknown value, or ``avx2`` where it cannot run, raises at ``import cybn`` rather than being
ignored (running AVX2 code on a CPU without it would kill the process with SIGILL).
"""

from __future__ import annotations

import os
from types import ModuleType

from . import _cpu
from . import _kernels as _baseline

__all__ = ["KERNEL_BUILDS", "kernels", "kernels_info"]

KERNEL_BUILDS = ("baseline", "avx2")
_ENV = "CYBN_KERNELS"


def _avx2_module() -> ModuleType | None:
    try:
        from . import _kernels_avx2
    except ImportError:  # not built: a non-x86-64 target, or a compiler without AVX2
        return None
    return _kernels_avx2


def _select(request: str) -> tuple[str, ModuleType]:
    choice = request.strip().lower() or "auto"
    if choice not in ("auto", *KERNEL_BUILDS):
        raise ValueError(
            f"{_ENV}={request!r} is not understood; expected one of 'auto', "
            + ", ".join(repr(b) for b in KERNEL_BUILDS))
    if choice == "baseline":
        return "baseline", _baseline
    avx2 = _avx2_module()
    if avx2 is not None and _cpu.has_avx2():
        return "avx2", avx2
    if choice == "avx2":
        why = ("this copy of cybn has no AVX2 build (cybn._kernels_avx2 is built only for"
               " x86-64 targets, and not when CYBN_AVX2=0 was set or the compiler rejected"
               " the AVX2 flag; cybn.show_config() shows the build)" if avx2 is None
               else "this CPU or operating system does not support AVX2")
        raise RuntimeError(f"{_ENV}=avx2 was requested, but {why}; unset {_ENV} or use"
                           " 'baseline'")
    return "baseline", _baseline


_REQUEST = os.environ.get(_ENV)  # read once: the choice is made at import
_NAME, kernels = _select("auto" if _REQUEST is None else _REQUEST)


def kernels_info() -> dict[str, object]:
    """The kernel build in use and why: reported by :func:`cybn.show_config`."""
    return {
        "selected": _NAME,
        "module": kernels.__name__,
        "built": ["baseline", *(["avx2"] if _avx2_module() is not None else [])],
        "cpu_has_avx2": _cpu.has_avx2(),
        _ENV: _REQUEST,
    }
