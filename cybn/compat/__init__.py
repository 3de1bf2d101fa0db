"""Drop-in batch norm for legacy NumPy codebases, switched in one step.

Two conventions of hand-written NumPy networks are covered, each with its own math (not
PyTorch's):

* the Stanford CS231n assignment-2 layer functions, every year 2016-2025
  (:mod:`cybn.compat.cs231n`): ``batchnorm_forward``, ``batchnorm_forward_alt``,
  ``batchnorm_backward``, ``batchnorm_backward_alt``, ``spatial_batchnorm_forward``,
  ``spatial_batchnorm_backward``;
* the ``BatchNormalization`` layer class of the book "Deep Learning from Scratch"
  (:mod:`cybn.compat.dlfs`).

Switch a whole codebase with :func:`patch` (every module of a package, star-imported
names included; :func:`unpatch` undoes it)::

    import cybn.compat
    import cs231n.classifiers.fc_net          # the network's modules, loaded first
    cybn.compat.patch("cs231n")

or, in a module that imports the legacy names, put ``from cybn.compat import *`` after
its own imports: it binds every name of both conventions, forward and backward together.
"""

from . import cs231n, dlfs
# public, but not in __all__: a star import binds only the legacy names
from ._common import Cache as Cache
from ._patch import PatchReport as PatchReport
from ._patch import patch as patch
from ._patch import unpatch as unpatch
from .cs231n import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    batchnorm_forward_alt,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from .dlfs import BatchNormalization

# What `from cybn.compat import *` binds: every legacy name of both conventions, so that
# forwards and backwards are always switched together (patch/unpatch stay out: a module's
# own `patch`, e.g. unittest.mock's, must not be shadowed).
__all__ = [
    "BatchNormalization",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "batchnorm_forward",
    "batchnorm_forward_alt",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]
assert sorted(__all__) == sorted([*cs231n.__all__, *dlfs.__all__])  # one list, checked
