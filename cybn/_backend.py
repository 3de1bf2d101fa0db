"""Which compiled build of the kernels this process runs (private).

cybn ships the kernels up to three times, compiled from one source (``cybn/_kernels_impl.pxi``):

* ``cybn._kernels``: the target's baseline instruction set (SSE2 on x86-64); always built;
* ``cybn._kernels_avx2``: the same code with AVX2 enabled; built for x86-64 targets only;
* ``cybn._kernels_avx512``: the same code with AVX-512 (F, BW, DQ, VL: x86-64-v4) enabled;
  built for x86-64 targets only.

At import, the highest build that was built and that the CPU and the OS support
(:func:`cybn._cpu.has_avx512`, :func:`cybn._cpu.has_avx2`) is used: avx512, else avx2, else
baseline (``kernels``). When that is avx512, inputs of fewer than AVX512_MIN_ELEMENTS
elements run the AVX2 build (``kernels_small``; cybn.functional picks per call). All builds return bitwise-identical results (floating-point contraction is off and
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

__all__ = ["AVX512_MIN_ELEMENTS", "KERNEL_BUILDS", "kernels", "kernels_info", "kernels_small"]


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


# Inputs of fewer elements run the AVX2 build in auto mode even where the AVX-512 one runs
# (bitwise the same results, so only the speed differs). Measured on 2026-12-08 (Xeon,
# Sapphire Rapids class, 2 vCPUs), AVX-512 time / AVX2 time, 1 thread, float32:
# benchmarks/compare_builds.py --kernels avx512,avx2 --rounds 41, (32, 64) = 2 Ki elements:
# training forward 1.07, backward 1.08, evaluation 1.12 (float64 1.00-1.04); direct kernel
# calls (128, 128) = 16 Ki elements: 0.86, 0.84, 0.80, and (256, 512): 0.88-0.94. At
# 4 Ki elements the two were within the noise. A forced CYBN_KERNELS build runs every size.
AVX512_MIN_ELEMENTS = 16384


def _small_inputs(name: str, module: ModuleType) -> tuple[str, ModuleType]:
    """The build for inputs below AVX512_MIN_ELEMENTS: AVX2 in auto mode when AVX-512 was
    chosen (and AVX2 runs), else the chosen build."""
    if (_REQUEST or "").strip().lower() not in ("", "auto") or name != "avx512":
        return name, module
    avx2 = next(b for b in _ISA_BUILDS if b.name == "avx2")
    if _built(avx2) and _runs_here(avx2):
        return avx2.name, _module(avx2)
    return name, module


_REQUEST = os.environ.get(_ENV)  # read once: the choice is made at import
_NAME, kernels = _select("auto" if _REQUEST is None else _REQUEST)
_SMALL_NAME, kernels_small = _small_inputs(_NAME, kernels)


def kernels_info() -> dict[str, object]:
    """The kernel build in use and why: reported by :func:`cybn.show_config`."""
    return {
        "selected": _NAME,
        "module": kernels.__name__,
        # the build of inputs below AVX512_MIN_ELEMENTS elements (the same one, or avx2)
        "small_inputs": _SMALL_NAME,
        "built": ["baseline", *(b.name for b in reversed(_ISA_BUILDS) if _built(b))],
        **{f"cpu_has_{b.name}": _runs_here(b) for b in reversed(_ISA_BUILDS)},
        _ENV: _REQUEST,
    }
