# Stub for cybn._kernels (compiled from cybn/_kernels.pyx): batch-norm kernels, arithmetic only.
#
# Private module: cybn.functional validates and prepares every argument. Data arrays are
# C-contiguous (N, C, L) float32 or float64 arrays of one dtype; per-channel parameters and
# running statistics are C-contiguous (C,) arrays of the module dtype (float32 or float64, may
# differ from the data's); statistics buffers are float64. Calling these with unchecked
# arguments is undefined behaviour. Arguments documented "or None" are optional arrays.
# forward_training, forward_inference, backward_training and backward_inference take two
# scalar markers first (x_type, p_type: pass 0.0): they select the specialisation through
# __signatures__ (e.g. "double|float": float64 data, float32 parameters); the arrays are
# then checked against it (dtype, dimensions, shapes, writability) and rejected otherwise.
# plan_info reports the schedule and tiling of a shape (for the tests and the benchmark).
# activation: 0 (none) or 1 (ReLU, fused after the normalisation, with the residual added
# before it when given); the backward recomputes the forward's mask from x, the statistics,
# weight, bias and residual, and writes the masked grad_output to grad_residual.

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_Data: TypeAlias = npt.NDArray[np.float32] | npt.NDArray[np.float64]  # (N, C, L), C-contiguous
_Param: TypeAlias = npt.NDArray[np.float32] | npt.NDArray[np.float64]  # (C,), module dtype
_F64: TypeAlias = npt.NDArray[np.float64]

def plan_info(N: int, C: int, L: int, itemsize: int, fused: bool) -> dict[str, int | str]: ...
def batch_stats(x: _Data, mean: _F64, m2: _F64, n_threads: int) -> None: ...
def normalize(
    x: _Data, center: _F64, scale: _F64, shift: _F64, out: _Data, n_threads: int
) -> None: ...
def forward_training(
    x_type: float,
    p_type: float,
    x: _Data,
    weight: _Param | None,
    bias: _Param | None,
    running_mean: _Param | None,
    running_var: _Param | None,
    eps: float,
    factor: float,
    var_scale: float,
    out: _Data,
    stats: _F64,
    check_finite: bool,
    n_threads: int,
    activation: int = 0,
    residual: _Data | None = None,
) -> int: ...
def forward_inference(
    x_type: float,
    p_type: float,
    x: _Data,
    weight: _Param | None,
    bias: _Param | None,
    running_mean: _Param,
    running_var: _Param,
    eps: float,
    out: _Data,
    stats: _F64 | None,
    n_threads: int,
    activation: int = 0,
    residual: _Data | None = None,
) -> None: ...
def backward_reduce(
    grad_output: _Data,
    x: _Data,
    center: _F64,
    sum_dy: _F64,
    sum_dy_xmu: _F64,
    n_threads: int,
) -> None: ...
def backward_input(
    grad_output: _Data,
    x: _Data,
    center: _F64,
    mean_dy: _F64 | None,
    k: _F64 | None,
    scale: _F64,
    grad_input: _Data,
    n_threads: int,
) -> None: ...
def backward_training(
    x_type: float,
    p_type: float,
    grad_output: _Data,
    x: _Data,
    weight: _Param | None,
    save_mean: _F64,
    save_invstd: _F64,
    grad_input: _Data | None,
    grad_weight: _Param | None,
    grad_bias: _Param | None,
    n_threads: int,
    activation: int = 0,
    bias: _Param | None = None,
    residual: _Data | None = None,
    grad_residual: _Data | None = None,
) -> None: ...
def backward_inference(
    x_type: float,
    p_type: float,
    grad_output: _Data,
    x: _Data,
    weight: _Param | None,
    center: _F64,
    invstd: _F64,
    grad_input: _Data | None,
    grad_weight: _Param | None,
    grad_bias: _Param | None,
    n_threads: int,
    activation: int = 0,
    bias: _Param | None = None,
    residual: _Data | None = None,
    grad_residual: _Data | None = None,
) -> None: ...
def update_running_stats(
    running_mean: _Param,
    running_var: _Param,
    batch_mean: _F64,
    batch_var: _F64,
    var_scale: float,
    factor: float,
) -> None: ...
