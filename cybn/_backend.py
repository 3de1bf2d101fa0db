"""Which compiled build of the kernels this process runs (private).

cybn ships the kernels up to three times, compiled from one source (``cybn/_kernels_impl.pxi``):

* ``cybn._kernels``: the target's baseline instruction set (SSE2 on x86-64); always built;
* ``cybn._kernels_avx2``: the same code with AVX2 enabled; built for x86-64 targets only;
* ``cybn._kernels_avx512``: the same code with AVX-512 (F, BW, DQ, VL: x86-64-v4) enabled;
  built for x86-64 targets only.

At import, the highest build that was built and that the CPU and the OS support
(:func:`cybn._cpu.has_avx512`, :func:`cybn._cpu.has_avx2`) is used: avx512, else avx2, else
baseline. All builds return bitwise-identical results (floating-point contraction is off and
the kernels vectorise only across independent accumulators), so the choice changes speed only.

``CYBN_KERNELS`` overrides the choice: ``auto`` (default), ``baseline``, ``avx2`` or
``avx512``. An unknown value, or a build that was not built or cannot run here, raises at
``import cybn`` rather than being ignored (running AVX2 or AVX-512 code on a CPU without it
would kill the process with SIGILL).

An ISA module is imported only after its CPU check passed: importing runs the module's own
initialisation code, compiled with its flags too. ``import cybn._kernels_avx512`` under
``qemu-x86_64 -cpu Haswell`` (AVX2, no AVX-512) dies with SIGILL before any kernel runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from . import _cpu
from . import _kernels as _baseline

__all__ = ["KERNEL_BUILDS", "kernels", "kernels_info"]


class _IsaBuild(NamedTuple):
    """The run-time side of build_support.ISA_BUILDS (which holds the flags)."""

    name: str
    module: str  # relative to the cybn package
    label: str  # for messages
    switch: str  # the build's environment switch (0 skips the module)
    cpu_check: str  # name of the cybn._cpu function; looked up per call (tests patch it)


# Highest first: auto picks the first that is built and runnable.
_ISA_BUILDS = (
    _IsaBuild("avx512", "_kernels_avx512", "AVX-512", "CYBN_AVX512", "has_avx512"),
    _IsaBuild("avx2", "_kernels_avx2", "AVX2", "CYBN_AVX2", "has_avx2"),
)
KERNEL_BUILDS = ("baseline", *(b.name for b in reversed(_ISA_BUILDS)))
_ENV = "CYBN_KERNELS"


def _built(build: _IsaBuild) -> bool:
    """Whether the module is installed (found, not imported: see the module docstring). It is
    not on non-x86-64 targets, with its switch 0, or when the compiler rejected its flags."""
    return importlib.util.find_spec(f"{__package__}.{build.module}") is not None


def _runs_here(build: _IsaBuild) -> bool:
    check: Callable[[], bool] = getattr(_cpu, build.cpu_check)
    return check()


def _module(build: _IsaBuild) -> ModuleType:
    """Import the module; only after _built() and _runs_here() said yes."""
    return importlib.import_module(f".{build.module}", __package__)


def _select(request: str) -> tuple[str, ModuleType]:
    choice = request.strip().lower() or "auto"
    if choice not in ("auto", *KERNEL_BUILDS):
        raise ValueError(
            f"{_ENV}={request!r} is not understood; expected one of 'auto', "
            + ", ".join(repr(b) for b in KERNEL_BUILDS))
    if choice == "baseline":
        return "baseline", _baseline
    for build in _ISA_BUILDS:
        if choice not in ("auto", build.name):
            continue
        built = _built(build)
        if built and _runs_here(build):
            return build.name, _module(build)
        if choice == build.name:
            why = (f"this copy of cybn has no {build.label} build (cybn.{build.module} is built"
                   f" only for x86-64 targets, and not when {build.switch}=0 was set or the"
                   f" compiler rejected the {build.label} flags; cybn.show_config() shows the"
                   " build)" if not built
                   else f"this CPU or operating system does not support {build.label}")
            raise RuntimeError(f"{_ENV}={build.name} was requested, but {why}; unset {_ENV}"
                               " or use 'baseline'")
    return "baseline", _baseline


_REQUEST = os.environ.get(_ENV)  # read once: the choice is made at import
_NAME, kernels = _select("auto" if _REQUEST is None else _REQUEST)


def kernels_info() -> dict[str, object]:
    """The kernel build in use and why: reported by :func:`cybn.show_config`."""
    return {
        "selected": _NAME,
        "module": kernels.__name__,
        "built": ["baseline", *(b.name for b in reversed(_ISA_BUILDS) if _built(b))],
        **{f"cpu_has_{b.name}": _runs_here(b) for b in reversed(_ISA_BUILDS)},
        _ENV: _REQUEST,
    }
