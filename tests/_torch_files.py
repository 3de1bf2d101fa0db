"""Torch-format checkpoint files assembled from raw pickle opcodes and ``zipfile``.

The writer behind the hand-made (and hostile) files of tests/test_torch_io.py,
tests/test_torch_io_limits.py and the fuzz corpus (tools/fuzz/corpus.py): no torch is
needed to build them. tests/test_torch_io.py checks, when torch is installed, that torch
reads the hand-made files the same way, so the builder is faithful to the format.
"""

import struct
import zipfile

import numpy as np

# -- a torch-format writer from raw pickle opcodes (protocol 2, as torch.save writes) --------

def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stack_global(module, name):          # protocol-4 STACK_GLOBAL
    return _str(module) + _str(name) + b"\x93"


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data     # LONG1


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _list(*items):
    return b"](" + b"".join(items) + b"e"


def _call(func, *args):
    return func + _tuple(*args) + b"R"


_FALSE = b"\x89"
_ORDERED_DICT = _global("collections", "OrderedDict")


def _storage(key, numel, storage_type="FloatStorage", location="cpu"):
    pid = _tuple(_str("storage"), _global("torch", storage_type), _str(key), _str(location),
                 _int(numel))
    return pid + b"Q"                      # BINPERSID


def _tensor(storage, offset, size, stride):
    return _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(offset),
                 _tuple(*map(_int, size)), _tuple(*map(_int, stride)), _FALSE,
                 _call(_ORDERED_DICT))


def _state_dict(entries):
    body = b"".join(_str(key) + value for key, value in entries)
    return b"\x80\x02" + _call(_ORDERED_DICT) + b"(" + body + b"u."


def _write(path, pickle_bytes, records=None, byteorder=b"little", prefix="archive"):
    """A zip laid out like torch.save's: data.pkl first, then byteorder and data/<key>."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle_bytes)
        if byteorder is not None:
            zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in (records or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", b"3\n")
    return path


# The storages of the hand-made files: 12 float32 values viewed six ways, one int64.
_BASE = np.arange(12, dtype=np.float32) * 0.5 - 2.0
_COUNT = np.array([42], dtype=np.int64)


def _handmade_entries():
    """(key, pickle opcodes, expected array) -- expectations by NumPy indexing of _BASE."""
    s = _storage("0", 12, location="cuda:0")   # location is ignored: loads to host memory
    v1 = _call(_global("torch._utils", "_rebuild_tensor"), _storage("0", 12), _int(4),
               _tuple(_int(2)), _tuple(_int(3)))
    return [
        ("matrix", _tensor(s, 0, (3, 4), (4, 1)), _BASE.reshape(3, 4)),
        ("transposed", _tensor(s, 0, (4, 3), (1, 4)), _BASE.reshape(3, 4).T),
        ("odd", _tensor(s, 1, (6,), (2,)), _BASE[1::2]),
        ("scalar", _tensor(s, 11, (), ()), _BASE[11]),
        ("expanded", _tensor(s, 2, (2, 3), (0, 1)), np.broadcast_to(_BASE[2:5], (2, 3))),
        ("empty", _tensor(s, 12, (0, 5), (5, 1)), np.empty((0, 5), np.float32)),
        ("v1", v1, _BASE[4:8:3]),
        ("num_batches_tracked", _tensor(_storage("1", 1, "LongStorage"), 0, (), ()),
         _COUNT[0]),
    ]


def _handmade_file(path, big_endian=False):
    entries = _handmade_entries()
    order = ">" if big_endian else "<"
    records = {"0": _BASE.astype(order + "f4").tobytes(),
               "1": _COUNT.astype(order + "i8").tobytes()}
    _write(path, _state_dict([(k, ops) for k, ops, _ in entries]), records,
           byteorder=b"big" if big_endian else b"little")
    return {k: expected for k, _, expected in entries}
