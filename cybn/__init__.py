"""cybn: fast, exact batch normalization for NumPy, with PyTorch's BatchNorm1d contract.

Cython/OpenMP kernels behind a NumPy API:

* :class:`BatchNorm1d` -- the module (train/eval forward, backward, running statistics,
  state_dict), like ``torch.nn.BatchNorm1d``;
* :mod:`cybn.functional` -- ``batch_norm``, ``batch_norm_forward``, ``batch_norm_backward``;
* :mod:`cybn.compat` -- legacy NumPy conventions (the cs231n layer functions, the "Deep
  Learning from Scratch" ``BatchNormalization`` class) and ``patch`` to switch a codebase;
* :class:`SyncBatchNorm` -- batch statistics synchronised over MPI ranks (needs the
  optional mpi4py, ``pip install "cybn[mpi]"``).
"""

import os as _os

try:
    from . import _kernels  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on how Python was started
    raise ImportError(
        f"cybn's compiled extensions are not in {_os.path.dirname(__file__)}. If that is the "
        "source checkout, Python found it before the installed package because the current "
        "directory comes first on sys.path: run from another directory, or with "
        "`python -P` (Python >= 3.11). Otherwise reinstall cybn (pip install .)."
    ) from _exc

from . import compat, functional
from ._config import show_config
from ._openmp import openmp_enabled
from ._threads import get_num_threads, set_num_threads
from ._torch_io import TorchCheckpointError, UnsafeCheckpointError, load_torch_state_dict
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .fold import fold_conv, fold_linear
from .lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d
from .population import population_stats
from .serialization import StateFileError, load, save
from .sync import SyncBatchNorm  # imports mpi4py only when one is constructed

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "StateFileError",
    "SyncBatchNorm",
    "TorchCheckpointError",
    "UnsafeCheckpointError",
    "__version__",
    "compat",
    "fold_conv",
    "fold_linear",
    "functional",
    "get_num_threads",
    "load",
    "load_torch_state_dict",
    "openmp_enabled",
    "population_stats",
    "save",
    "set_num_threads",
    "show_config",
]
