# Stub for cybn._sol: the benchmark's "speed of light" streaming loops (private module).
# Each function takes flat, C-contiguous float32 or float64 arrays of one dtype and length;
# ``out`` must not overlap the inputs (unchecked).

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_Floating: TypeAlias = np.float32 | np.float64

def stream_fwd_train(
    x: npt.NDArray[_Floating], out: npt.NDArray[_Floating], n_threads: int
) -> float: ...
def stream_bwd(
    dy: npt.NDArray[_Floating],
    x: npt.NDArray[_Floating],
    out: npt.NDArray[_Floating],
    n_threads: int,
) -> float: ...
def stream_eval(
    x: npt.NDArray[_Floating],
    out: npt.NDArray[_Floating],
    scale: float,
    shift: float,
    n_threads: int,
) -> None: ...
