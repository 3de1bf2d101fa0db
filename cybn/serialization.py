"""Saving and loading batch-norm modules as ``.npz`` files (no pickle).

The file holds the module's ``state_dict`` under PyTorch's keys plus the
hyper-parameters needed to rebuild it, so ``load(save(m))`` round-trips exactly.
"""

from __future__ import annotations

import numpy as np

from . import batchnorm

__all__ = ["load", "save"]

_CLASSES = {cls.__name__: cls for cls in
            (batchnorm.BatchNorm1d, batchnorm.BatchNorm2d, batchnorm.BatchNorm3d)}
_FORMAT = 1
_STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def save(module, path):
    """Write ``module`` to ``path`` as an uncompressed ``.npz``.

    Parameters
    ----------
    module : BatchNorm1d, BatchNorm2d or BatchNorm3d
    path : str or os.PathLike or file-like
        As for :func:`numpy.savez` (which appends ``.npz`` to a name without it).

    Raises
    ------
    TypeError
        If ``module`` is not one of the supported classes.
    """
    name = type(module).__name__
    if _CLASSES.get(name) is not type(module):
        raise TypeError(f"save() supports {sorted(_CLASSES)}, got {name}")
    meta = {
        "__cybn_format__": np.array(_FORMAT),
        "__class__": np.array(name),
        "num_features": np.array(module.num_features),
        "eps": np.array(float(module.eps)),
        # None (cumulative average) has no float encoding: NaN stands for it
        "momentum": np.array(np.nan if module.momentum is None else float(module.momentum)),
        "affine": np.array(module.affine),
        "has_bias": np.array(module.bias is not None),
        "track_running_stats": np.array(module.track_running_stats),
        "dtype": np.array(module.dtype.name),
        "axis": np.array(module.axis),
        "check_finite": np.array(module.check_finite),
        "training": np.array(module.training),
    }
    np.savez(path, **meta, **module.state_dict())


def load(path):
    """Rebuild a module written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike or file-like

    Returns
    -------
    BatchNorm1d, BatchNorm2d or BatchNorm3d
        With the saved hyper-parameters, state and training flag.

    Raises
    ------
    ValueError
        If the file was not written by :func:`save` (or by a newer format).
    """
    with np.load(path, allow_pickle=False) as f:
        if "__cybn_format__" not in f.files:
            raise ValueError(f"{path!r} is not a file written by cybn.save()")
        if int(f["__cybn_format__"]) > _FORMAT:
            raise ValueError(f"{path!r} has format {int(f['__cybn_format__'])}; this cybn "
                             f"reads format {_FORMAT} and older")
        name = str(f["__class__"])
        if name not in _CLASSES:
            raise ValueError(f"{path!r} holds an unknown module class {name!r}")
        momentum = float(f["momentum"])
        eps = float(f["eps"])
        module = _CLASSES[name](
            int(f["num_features"]), eps=eps,
            momentum=None if np.isnan(momentum) else momentum,
            affine=bool(f["affine"]), track_running_stats=bool(f["track_running_stats"]),
            bias=bool(f["has_bias"]), dtype=str(f["dtype"]), axis=int(f["axis"]),
            check_finite=bool(f["check_finite"]))
        module.load_state_dict({k: f[k] for k in _STATE_KEYS if k in f.files})
        module.train(bool(f["training"]))
    return module
