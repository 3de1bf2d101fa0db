"""Saving and loading batch-norm modules as ``.npz`` files (no pickle).

The file holds the module's ``state_dict`` under PyTorch's keys plus the
hyper-parameters needed to rebuild it, so ``load(save(m))`` round-trips exactly.

:func:`load` treats the file as untrusted (docs/security.md): it reads only the entries
:func:`save` writes, each checked for kind and shape before use, refuses compressed
entries and any entry whose declared array is larger than its bytes in the file, and
turns every problem with the file into :class:`StateFileError` naming the file. Memory is
bounded by the file's size S: at most 4 S + 1 MiB (measured 3.0 S for a 2 MiB file: the
arrays read, the module's own arrays, and the cast copies load_state_dict makes before
it writes them, so that a failed load changes nothing).
"""

from __future__ import annotations

import ast
import collections
import io
import math
import os
import warnings
import zipfile
import zlib

import numpy as np

from . import batchnorm
from . import functional as F

__all__ = ["StateFileError", "load", "save"]

_CLASSES = {cls.__name__: cls for cls in
            (batchnorm.BatchNorm1d, batchnorm.BatchNorm2d, batchnorm.BatchNorm3d)}
# Format 2 adds the optional entries of _OPTIONS; save() writes format 1 (readable by
# cybn 0.1) unless the module uses one of them.
_FORMAT = 2
_STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# The hyper-parameter entries save() writes, with the NumPy kinds each may have: 'U'
# string, 'i'/'u' integer, 'f' float, 'b' bool.
_META = {
    "__cybn_format__": "iu", "__class__": "U", "num_features": "iu", "eps": "f",
    "momentum": "f", "affine": "b", "has_bias": "b", "track_running_stats": "b",
    "dtype": "U", "axis": "iu", "check_finite": "b", "training": "b",
}
# Format 2's optional hyper-parameters (batch renormalization, ghost batches, the fused
# activation), written only when one differs from its default; virtual_batch_size 0 and
# activation "" stand for None.
_OPTIONS = {"renorm": "b", "rmax": "f", "dmax": "f", "virtual_batch_size": "iu",
            "activation": "U"}
# The dtypes of the state entries save() writes: the module's float dtype (its "dtype"
# entry), int64 for num_batches_tracked.
_DTYPES = ("float16", "float32", "float64", "int64")
# The end-of-central-directory record: 22 bytes and a comment of at most 65,535.
_EOCD_SPAN = 22 + 65_535
# Longest string entry load() accepts ("BatchNorm1d", "float16"): longer is not cybn's.
_MAX_TEXT = 64


class StateFileError(ValueError):
    """The file is not a readable state file written by :func:`cybn.save`."""


def save(module, path):
    """Write ``module`` to ``path`` as an uncompressed ``.npz``.

    Parameters
    ----------
    module : BatchNorm1d, BatchNorm2d or BatchNorm3d
        The module to write: its ``state_dict`` and hyper-parameters.
    path : str or os.PathLike or file-like
        As for :func:`numpy.savez` (which appends ``.npz`` to a name without it).

    Raises
    ------
    TypeError
        If ``module`` is not one of the supported classes, or an option attribute
        (``renorm``, ``rmax``, ``dmax``, ``virtual_batch_size``, ``activation``) has the
        wrong type.
    ValueError
        If such an option is out of range (as the constructor would refuse it): nothing
        is written.

    Notes
    -----
    Modules whose ``renorm``, ``rmax``, ``dmax``, ``virtual_batch_size`` or
    ``activation`` differ from the defaults are written in format 2, which cybn 0.1 does not read (it reports more
    entries than it writes, or an unknown format); others in format 1.
    """
    name = type(module).__name__
    if _CLASSES.get(name) is not type(module):
        raise TypeError(f"save() supports {sorted(_CLASSES)}, got {name}")
    meta = {
        "__cybn_format__": np.array(1),
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
    # the options are checked as the constructor checks them, so that load() takes back
    # every file save() writes
    batchnorm._check_renorm_options(module.renorm, module.rmax, module.dmax,
                                    module.track_running_stats)
    vbs = F._check_virtual_batch_size(module.virtual_batch_size)
    if vbs is not None and vbs > np.iinfo(np.int64).max:
        raise ValueError(f"virtual_batch_size {vbs} does not fit a 64-bit integer")
    F._check_activation(module.activation)
    if (module.renorm, module.rmax, module.dmax, vbs, module.activation) != (
            False, 1.0, 0.0, None, None):
        meta["__cybn_format__"] = np.array(2)
        meta["renorm"] = np.array(bool(module.renorm))
        meta["rmax"] = np.array(float(module.rmax))
        meta["dmax"] = np.array(float(module.dmax))
        meta["virtual_batch_size"] = np.array(vbs or 0, dtype=np.int64)
        meta["activation"] = np.array(module.activation or "")
    np.savez(path, **meta, **module.state_dict())


def load(path):
    """Rebuild a module written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike or file-like
        The ``.npz`` file (a file object must be binary and seekable).

    Returns
    -------
    BatchNorm1d, BatchNorm2d or BatchNorm3d
        With the saved hyper-parameters, state and training flag.

    Raises
    ------
    StateFileError
        (a ``ValueError``) naming the file, if it was not written by :func:`save` (or by
        a newer format), is truncated or corrupt, has a compressed entry, an entry of
        the wrong kind or shape, an array larger than its bytes in the file, or
        hyper-parameters or state the module refuses.
    OSError
        If the file cannot be opened.
    """
    name = _name(path)
    # Any warning while reading is an error of the file: NumPy warns on a header only its
    # Python 2 rewrite reads (found by the fuzzer: in np.load itself for a lone .npy, and
    # per entry), a cast of complex or out-of-range state warns (the adversarial review).
    # No cybn.save() file makes anything warn. catch_warnings is process-wide while it lasts.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return _load(path, name)


def _load(path, name):
    size, tail = _size_and_tail(path)
    _check_entry_count(tail, name)
    try:
        npz = np.load(path, allow_pickle=False)
    except OSError as exc:
        if isinstance(path, (str, bytes, os.PathLike)) and not os.path.exists(path):
            raise                                   # the file cannot be opened: as documented
        raise StateFileError(f"{name}: not a file written by cybn.save() ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - NumPy's parsers of a hostile file raise
        # anything: zipfile's BadZipFile and ValueError, tokenize's TokenError for a broken
        # .npy header (found by the fuzzer), MemoryError, RecursionError ...
        raise StateFileError(f"{name}: not a file written by cybn.save() "
                             f"({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise StateFileError(f"{name}: not a file written by cybn.save() (a single .npy "
                             "array, not an .npz archive)")
    with npz:
        entries = _read_entries(npz, name, size)
    return _build(entries, name)


def _size_and_tail(path):
    """The file's size and its last bytes (where a zip's end-of-central-directory record
    is); a file object is left at the position it had."""
    if hasattr(path, "read"):
        here = path.tell()
        try:
            size = path.seek(0, os.SEEK_END)
            path.seek(max(0, size - _EOCD_SPAN))
            return size, path.read(_EOCD_SPAN)
        finally:
            path.seek(here)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _EOCD_SPAN))
        return size, f.read(_EOCD_SPAN)


def _check_entry_count(tail, name):
    """Refuse an archive that declares more entries than save() writes, before zipfile
    builds a ZipInfo (about 500 bytes) for each of them: 20,000 empty members, a 1.9 MB
    file, took 13.7 MB that way (7 S, above the bound). Reads the end-of-central-directory
    record; a file without one is left to np.load (a .npy, or not a zip)."""
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 12:
        return
    declared = int.from_bytes(tail[at + 10:at + 12], "little")
    most = len(_META) + len(_OPTIONS) + len(_STATE_KEYS)
    if declared > most:    # 0xFFFF (zip64) included
        raise StateFileError(f"{name}: the archive declares {declared} entries; cybn.save() "
                             f"writes at most {most}")


def _name(path):
    if hasattr(path, "read"):
        named = getattr(path, "name", None)
        return repr(named) if isinstance(named, str) else "<file object>"
    return repr(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else repr(path)


def _read_entries(npz, name, size):
    """Every entry as an array, after checking it can be read within the memory bound."""
    # Every member is "<key>.npy", once: NumPy's npz.files would also list a member named
    # "<key>" without the suffix, which its reader then cannot find (found by the fuzzer).
    infos = npz.zip.infolist()
    counts = collections.Counter(info.filename for info in infos)
    files = [m[:-4] for m in counts if m.endswith(".npy")]
    if len(files) != len(infos):
        odd = sorted(m for m, n in counts.items() if not m.endswith(".npy") or n > 1)
        raise StateFileError(f"{name}: not a file written by cybn.save() (members {odd[:5]} "
                             "are not one '<key>.npy' each)")
    # Members that do not overlap fit in the file; overlapping ones would each re-read the
    # same bytes (found by an adversarial review: 18.7 S for nested members).
    total = sum(info.file_size for info in infos)
    if total > size:
        raise StateFileError(f"{name}: its members declare {total} bytes in a file of {size}: "
                             "they overlap, or the file is corrupt")
    if "__cybn_format__" not in files:
        raise StateFileError(f"{name} is not a file written by cybn.save()")
    unknown = sorted(set(files) - set(_META) - set(_OPTIONS) - set(_STATE_KEYS))
    if unknown:
        raise StateFileError(f"{name}: unexpected entries {unknown}; cybn.save() writes "
                             f"only {sorted(_META)}, {sorted(_OPTIONS)} and the state_dict "
                             "keys")
    entries = {}
    for key in files:
        info = npz.zip.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise StateFileError(
                f"{name}: entry {key!r} is compressed; cybn.save() writes uncompressed "
                ".npz files, and a compressed entry could expand without bound")
        _check_declared_size(npz.zip, info, key, name)
        try:
            entries[key] = npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                Warning) as exc:   # a warning is an error here (see load)
            raise StateFileError(f"{name}: entry {key!r} is corrupt ({exc})") from None
    return entries


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _check_declared_size(zf, info, key, name):
    """The header's shape x itemsize must be the bytes that follow it (before NumPy
    allocates an array of the declared shape; the member itself fits in the file, as
    _read_entries checked)."""
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            # The header must be a Python literal, as save() writes it. NumPy would retry a
            # header that is not with its Python 2 filter (tokenize), whose error path on
            # Python >= 3.12 opens a file named '<string>' (an 'open' audit event, found by
            # the cp312 wheel run of tools/check_wheels.py): refuse it before NumPy sees it.
            size = f.read(2 if version == (1, 0) else 4)
            length = int.from_bytes(size, "little")
            if length > 10000:  # NumPy's own limit (max_header_size); save() writes ~120
                raise ValueError(f"header of {length} bytes is too large")
            text = f.read(length)
            ast.literal_eval(text.decode("latin1"))
            shape, _, dtype = _HEADER_READERS[version](
                io.BytesIO(size + text))
            header = f.tell()
    except Exception as exc:  # noqa: BLE001 - NumPy's header parser (ast, tokenize) on
        # hostile text raises ValueError, SyntaxError, TokenError (found by the fuzzer),
        # MemoryError, RecursionError; zipfile its own errors
        raise StateFileError(f"{name}: entry {key!r} has a corrupt .npy header "
                             f"({type(exc).__name__}: {exc})") from None
    # cybn.save() writes bool, integer, float and str entries, never of size 0 per element:
    # a zero-size dtype ('V0', '<U0') of any shape holds no bytes, so its shape would pass
    # the size check below (found by an adversarial review: 1 GB from a 4 KB file).
    if dtype.kind not in "biufU" or dtype.itemsize == 0 or dtype.fields is not None:
        raise StateFileError(f"{name}: entry {key!r} has dtype {dtype}; cybn.save() writes "
                             "bool, integer, float and string entries only")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header:
        raise StateFileError(
            f"{name}: entry {key!r} declares shape {shape} of {dtype} ({declared} bytes) "
            f"but holds {info.file_size - header} bytes: truncated or corrupt")


def _scalar(entries, key, name):
    value = entries[key]
    kinds = _META[key] if key in _META else _OPTIONS[key]
    if value.shape != () or value.dtype.kind not in kinds:
        raise StateFileError(f"{name}: entry {key!r} must be a scalar of kind {kinds!r}, got "
                             f"shape {value.shape} of {value.dtype}")
    if value.dtype.kind == "U" and value.dtype.itemsize > 4 * _MAX_TEXT:
        raise StateFileError(f"{name}: entry {key!r} is a string of {value.dtype}, longer "
                             f"than any cybn.save() writes")
    return value[()]


def _build(entries, name):
    missing = sorted(set(_META) - set(entries))
    fmt = int(_scalar(entries, "__cybn_format__", name))
    if fmt > _FORMAT:
        raise StateFileError(f"{name} has format {fmt}; this cybn reads format {_FORMAT} and "
                             "older")
    if missing:
        raise StateFileError(f"{name}: entries {missing} are missing")
    meta = {key: _scalar(entries, key, name) for key in _META}
    options = {}
    if fmt >= 2:
        options = {key: _scalar(entries, key, name) for key in _OPTIONS if key in entries}
    elif set(_OPTIONS) & set(entries):
        raise StateFileError(f"{name}: format 1 has no entries "
                             f"{sorted(set(_OPTIONS) & set(entries))}")
    if "virtual_batch_size" in options:
        options["virtual_batch_size"] = int(options["virtual_batch_size"]) or None
    if "activation" in options:
        options["activation"] = str(options["activation"]) or None
    for key in ("renorm",):
        if key in options:
            options[key] = bool(options[key])
    for key in ("rmax", "dmax"):
        if key in options:
            options[key] = float(options[key])
    # rmax/dmax of a module without renorm (assigned before switching renorm on) are set
    # after construction, which refuses them without renorm
    later = {} if options.get("renorm") else {k: options.pop(k) for k in ("rmax", "dmax")
                                               if k in options}
    cls = str(meta["__class__"])
    if cls not in _CLASSES:
        raise StateFileError(f"{name} holds an unknown module class {cls!r}")
    momentum = float(meta["momentum"])
    # Check the state against num_features before the module allocates (num_features,)
    # arrays: a tiny file must not make it allocate a huge one.
    num_features = int(meta["num_features"])
    affine, track = bool(meta["affine"]), bool(meta["track_running_stats"])
    expected = {"weight": affine, "bias": affine and bool(meta["has_bias"]),
                "running_mean": track, "running_var": track, "num_batches_tracked": track}
    for key, wanted in expected.items():
        if wanted and key not in entries:
            raise StateFileError(f"{name}: entry {key!r} is missing")
        shape = () if key == "num_batches_tracked" else (num_features,)
        if wanted and entries[key].shape != shape:
            raise StateFileError(f"{name}: entry {key!r} has shape {entries[key].shape}, "
                                 f"expected {shape} (num_features={num_features})")
        # save() writes the module's own arrays: its dtype, int64 for the count. Another
        # dtype would be cast, with a warning for complex or out-of-range values.
        # (An unknown "dtype" entry is the constructor's to refuse, below.)
        dtype = "int64" if key == "num_batches_tracked" else str(meta["dtype"])
        if wanted and dtype in _DTYPES and entries[key].dtype != np.dtype(dtype):
            raise StateFileError(f"{name}: entry {key!r} has dtype {entries[key].dtype}, "
                                 f"expected {dtype}")
    try:     # a warning is an error here (see load): a cast that warns is not save()'s file
        module = _CLASSES[cls](
            num_features, eps=float(meta["eps"]),
            momentum=None if np.isnan(momentum) else momentum,
            affine=affine, track_running_stats=track,
            bias=bool(meta["has_bias"]), dtype=str(meta["dtype"]), axis=int(meta["axis"]),
            check_finite=bool(meta["check_finite"]), **options)
        if later:
            module.rmax, module.dmax = F._check_renorm(later.get("rmax", 1.0),
                                                       later.get("dmax", 0.0))
        module.load_state_dict({k: entries[k] for k in _STATE_KEYS if k in entries})
    except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError, Warning) as exc:
        raise StateFileError(f"{name}: the saved module cannot be rebuilt "
                             f"({type(exc).__name__}: {exc})") from None
    module.train(bool(meta["training"]))
    return module
