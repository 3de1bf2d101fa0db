"""Read ``torch.save(model.state_dict(), path)`` files without importing torch.

A PyTorch (>= 1.6) checkpoint is a zip archive::

    <archive>/data.pkl      pickle of the state_dict; tensors appear as calls to
                            torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
                            and storages as persistent ids
                            ('storage', torch.FloatStorage, key, location, numel)
    <archive>/data/<key>    raw bytes of each storage (uncompressed)
    <archive>/byteorder     'little' or 'big' (absent in old files: little)

Unpickling runs whatever a pickle names, so :func:`load_torch_state_dict` uses an
unpickler whose ``find_class`` knows only the handful of globals a plain state_dict
refers to (see ``_Unpickler._GLOBALS``) and maps each to a function or marker object
defined *here*; nothing is ever imported by name and any other global raises
:class:`UnsafeCheckpointError`. Every size, stride and offset is checked against the
storage record before a view is taken, and every tensor is copied out of its storage,
so the arrays own their memory and never alias each other or the file.

Notes
-----
Pickle opcodes other than globals need no allowlist: without a global a pickle can
only build str/bytes/numbers/tuples/lists/dicts/sets. The objects it can reach
through the allowed globals are ``collections.OrderedDict`` (calling it or setting
instance attributes -- which is how ``state_dict._metadata`` arrives -- runs no code
of the file's choosing), the rebuild callables below (slotted instances: ``BUILD``
cannot give them attributes; they are read-only) and NumPy arrays (``ndarray.__setstate__``
requires a real ``np.dtype``, which no allowed global produces, and NumPy's attribute
setters are memory-safe for any caller: shape/strides are checked against the buffer,
changes to or from object dtype are refused).
"""

import collections
import io
import math
import os
import pickle
import pickletools
import warnings
import zipfile
import zlib

import numpy as np

__all__ = ["TorchCheckpointError", "UnsafeCheckpointError", "load_torch_state_dict"]


class TorchCheckpointError(ValueError):
    """The file is not a readable ``torch.save`` state_dict (bad zip, missing record, ...)."""


class UnsafeCheckpointError(TorchCheckpointError, pickle.UnpicklingError):
    """The pickle refers to a global outside the allowlist (possibly a malicious file)."""


class _Frozen:
    """Slotted and read-only: pickle's BUILD (``__dict__`` update or ``setattr``) must not
    alter the markers and storages the allowed globals hand to the file."""

    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is read-only")


# -- dtypes --------------------------------------------------------------------------------

class _DType(_Frozen):
    """A torch element type: its NumPy storage dtype (little-endian) and the result dtype."""

    __slots__ = ("name", "result", "storage")
    name: str
    result: np.dtype
    storage: np.dtype

    def __init__(self, name, storage, result=None):
        # torch's name ('float32'), how the bytes are laid out, the returned dtype
        super().__init__(name=name, storage=np.dtype(storage),
                         result=np.dtype(result or storage))

    def __repr__(self):
        return f"torch.{self.name}"


_F32 = _DType("float32", "<f4")
_F64 = _DType("float64", "<f8")
_F16 = _DType("float16", "<f2")
_BF16 = _DType("bfloat16", "<u2", np.float32)  # NumPy has no bfloat16: widened, exactly
_I64 = _DType("int64", "<i8")
_I32 = _DType("int32", "<i4")
_I16 = _DType("int16", "<i2")
_I8 = _DType("int8", "i1")
_U8 = _DType("uint8", "u1")
_BOOL = _DType("bool", "u1", np.bool_)        # any non-zero byte is True
_C64 = _DType("complex64", "<c8")
_C128 = _DType("complex128", "<c16")
_U16 = _DType("uint16", "<u2")
_U32 = _DType("uint32", "<u4")
_U64 = _DType("uint64", "<u8")

# torch dtypes that can appear in a state_dict but have no NumPy equivalent.
_UNSUPPORTED_DTYPES = frozenset(
    ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
     "float8_e8m0fnu", "float4_e2m1fn_x2", "complex32", "quint8", "qint8", "qint32",
     "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"]
    + [f"uint{i}" for i in range(1, 8)] + [f"int{i}" for i in range(1, 8)])


class _StorageType(_Frozen):
    """Marker for ``torch.<Name>Storage`` (``dtype`` None for ``torch.storage.UntypedStorage``)."""

    __slots__ = ("dtype", "name")
    dtype: "_DType | None"
    name: str

    def __init__(self, name, dtype):
        super().__init__(name=name, dtype=dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_Frozen):
    """One loaded storage record: read-only little/big-endian bytes plus its torch type."""

    __slots__ = ("data", "key", "type")
    data: np.ndarray
    key: str
    type: _StorageType

    def __init__(self, key, storage_type, data):
        # data: 1-D read-only uint8 array over the record's bytes
        super().__init__(key=key, type=storage_type, data=data)


class _Rebuilder(_Frozen):
    """A callable the pickle may REDUCE (a bound method would expose its function's
    ``__dict__`` to BUILD)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name):
        super().__init__(_fn=fn, _name=name)

    def __call__(self, *args):
        return self._fn(*args)

    def __repr__(self):
        return self._name


_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# -- the memory bound ------------------------------------------------------------------------
# A file of S bytes makes the reader allocate at most
#     S                                   the records it reads (STORED only: never more than
#                                         their size in the file)
#   + PICKLE_FACTOR * len(data.pkl)       the Python objects the pickle builds, estimated
#     + MEMORY_CONSTANT                   from its opcodes before anything is built
#   + ARRAY_FACTOR * S + MEMORY_CONSTANT  the arrays returned
# so at most (1 + PICKLE_FACTOR + ARRAY_FACTOR) * S + 2 * MEMORY_CONSTANT = 101 S + 64 MiB.
# docs/security.md states the bound; tests/test_torch_io_limits.py and tools/fuzz/ check it
# with tracemalloc (tests/_fuzz_oracle.py).
#
# ARRAY_FACTOR: every tensor is copied out of its storage, so views of one storage cost once
# per view, and bfloat16 widens to float32 (2x). 4 admits a state_dict that slices a storage
# into views (fused qkv weights: 1x) and refuses a file that declares many views, or a
# broadcast (stride 0), far larger than its data.
ARRAY_FACTOR = 4
# PICKLE_FACTOR: _pickle_cost charges each opcode the most CPython's unpickler allocates for
# it, and each call a slot per entry its arguments reach; torch.save pickles of state_dicts
# estimate at 32-44x their size (the fuzz corpus: python tools/fuzz/corpus.py prints it), so
# 96 leaves twice that, while a pickle of nothing but empty dicts (136x by the estimate),
# OrderedDict() calls or copies of one dict is refused.
PICKLE_FACTOR = 96
MEMORY_CONSTANT = 32 * 2**20


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


_STORAGE_TYPES = {
    "FloatStorage": _F32, "DoubleStorage": _F64, "HalfStorage": _F16,
    "BFloat16Storage": _BF16, "LongStorage": _I64, "IntStorage": _I32,
    "ShortStorage": _I16, "CharStorage": _I8, "ByteStorage": _U8, "BoolStorage": _BOOL,
    "ComplexFloatStorage": _C64, "ComplexDoubleStorage": _C128,
}
# _rebuild_tensor_v3 (used by torch >= 2.3 for dtypes without a legacy storage class,
# e.g. uint16) names the element dtype as a global such as torch.uint16.
_TORCH_DTYPES = {d.name: d for d in (_F32, _F64, _F16, _BF16, _I64, _I32, _I16, _I8,
                                     _U8, _BOOL, _C64, _C128, _U16, _U32, _U64)}


# What zipfile raises for a corrupt archive: BadZipFile, zlib.error and EOFError for bad
# contents, OSError from the file, ValueError for a negative seek (a member offset before
# the archive's start: found by the fuzzer), RuntimeError/NotImplementedError for an
# encrypted member or an unknown compression method.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
               NotImplementedError)


def _check_stored(info, path, size):
    """torch.save writes every record uncompressed; a compressed one could expand to any
    size (a zip bomb), so the reader refuses it rather than budget for it. A stored record
    must also fit in the file: reading it allocates its declared size up front."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise TorchCheckpointError(
            f"{path}: record {info.filename!r} is compressed (zip method "
            f"{info.compress_type}); torch.save stores records uncompressed, and a "
            "compressed record could expand without bound, so the file is refused")
    if info.file_size != info.compress_size or info.compress_size > size:
        raise TorchCheckpointError(
            f"{path}: record {info.filename!r} declares {info.file_size} bytes "
            f"({info.compress_size} stored) in a file of {size} bytes: truncated or corrupt")


# What CPython's C unpickler can allocate per opcode, beyond the pickle's own bytes (64-bit
# CPython 3.10-3.13, from the objects' sizes; tests/test_torch_io_limits.py measures a bomb
# of each kind against this estimate with tracemalloc):
# * an opcode that pushes a value (pickletools' stack_after) adds a stack slot that may end
#   up in a container: _SLOT (a list slot is 8 B + over-allocation, a dict entry 24-40 B
#   with its index, a set entry 16 B at 60 % fill);
# * a new container: _CONTAINER (dict 64 B, list 56 B, tuple 40 + 8 n B: the n are slots);
#   a set, a call result or a storage marker: _OBJECT (set() is 216 B, OrderedDict() 104 B
#   plus its links);
# * a str/bytes argument of n bytes: _HEADER + 4 n (a decoded str may take 4 bytes per
#   character); an int argument that is not a small cached int: _HEADER + its bytes;
# * a memo index i: the memo table grows to at least 2 (i + 1) pointers.
_SLOT = 40
_CONTAINER = 96
_OBJECT = 256
_HEADER = 80
_CONTAINERS = frozenset(["EMPTY_DICT", "DICT", "EMPTY_LIST", "LIST", "EMPTY_TUPLE", "TUPLE",
                         "TUPLE1", "TUPLE2", "TUPLE3"])
_OBJECTS = frozenset(["EMPTY_SET", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ",
                      "INST", "BUILD", "BINPERSID", "PERSID", "GLOBAL", "STACK_GLOBAL"])
_MEMO_PUT = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
# Hash flooding: ints that differ by multiples of 2**61 - 1 share one hash, so a dict or
# set of n of them takes O(n**2) to build (measured: 40,000 such keys, a 0.5 MB file, 8.4 s;
# 5 MB would take minutes). Only ints of 61 bits or more can collide like that (str and
# bytes hashes are randomised; floats collide only in families of ~30). A state_dict holds
# sizes, strides and offsets far below 2**61, so a pickle with more than _HUGE_INTS of them
# is refused; 1,024 colliding keys cost about 0.5 M comparisons, nothing.
_HASH_MODULUS = 2**61 - 1
_HUGE_INTS = 1024


# Nesting: hashing a tuple recurses in C without a depth limit, so a key nested 150,000
# deep overflowed the C stack (found by an adversarial review); repr and user code recurse
# too. A state_dict nests less than 10 deep; 1,000 is Python's own recursion limit.
_MAX_DEPTH = 1000
# Dict keys and set members may be only these (what a checkpoint uses: str keys, int keys in
# an optimizer's state). Tuples of -1 and -2 all share one hash (hash(-1) == hash(-2)), so
# a dict keyed by them is quadratic to build (32,000 keys, 387 KB: 33 s): refused.
_KEY_KINDS = frozenset(["int", "int_or_bool", "bool", "None", "float", "str", "bytes",
                        "bytes_or_str"])
_GETS = frozenset(["GET", "BINGET", "LONG_BINGET"])
_SIZE_CAP = 1 << 40


def _pickle_cost(data, path):
    """An upper bound of the bytes unpickling ``data`` allocates, from its opcodes alone.

    Walks the opcodes with :func:`pickletools.genops`, which parses their arguments but
    builds nothing, and follows the unpickler's stack with a record per value (its kind,
    nesting depth and the number of entries it reaches), so that it can also refuse what
    would crash or stall the C unpickler: nesting deeper than _MAX_DEPTH, dict keys or set
    members other than _KEY_KINDS, more than _HUGE_INTS integers of 61 bits or more (hash
    flooding). A call (REDUCE, NEWOBJ, BUILD) is charged a slot per entry its arguments
    reach: ``OrderedDict(d)`` copies ``d``. Raises TorchCheckpointError for a pickle it
    cannot parse or refuses.
    """
    def fail(why):
        raise TorchCheckpointError(f"{path}: 'data.pkl' {why}")

    cost = 0
    huge_ints = 0
    stack, marks, memo = [], [], {}

    def pop(n):
        if len(stack) - (marks[-1] if marks else 0) < n:
            fail("is corrupt (stack underflow)")
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def pop_to_mark():
        if not marks:
            fail("is corrupt (no MARK)")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def record(kind, items):
        depth = 1 + max((item[1] for item in items), default=0)
        if depth > _MAX_DEPTH:
            fail(f"nests values more than {_MAX_DEPTH} deep; a state_dict needs a few levels, "
                 "and deeper ones can crash the unpickler, so the file is refused")
        return [kind, depth, min(_SIZE_CAP, len(items) + sum(item[2] for item in items))]

    def grow(container, items):
        grown = record(container[0], items)
        container[1] = max(container[1], grown[1])
        container[2] = min(_SIZE_CAP, container[2] + grown[2])

    def keys(items):
        for item in items:
            if item[0] not in _KEY_KINDS:
                fail(f"uses a {item[0]} as a dict key or set member; a state_dict uses "
                     "strings and integers, and other keys can be made to share one hash "
                     "(quadratic time), so the file is refused")

    try:
        with warnings.catch_warnings():
            # genops warns (DeprecationWarning) for a protocol-0 string with an invalid
            # escape; no torch.save pickle has one: an error, not a warning that -W error
            # would turn into an undocumented exception.
            warnings.simplefilter("error")
            for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
                name = opcode.name
                if opcode.stack_after:
                    cost += _SLOT
                if name in _CONTAINERS:
                    cost += _CONTAINER
                elif name in _OBJECTS:
                    cost += _OBJECT
                if isinstance(arg, (str, bytes, bytearray)):
                    cost += _HEADER + 4 * len(arg)
                elif (isinstance(arg, int) and not -5 <= arg <= 256
                      and name not in _MEMO_PUT and name not in _GETS):
                    cost += _HEADER + arg.bit_length() // 8
                    huge_ints += abs(arg) >= _HASH_MODULUS
                # -- the stack
                if name == "MARK":
                    marks.append(len(stack))
                elif name in _MEMO_PUT or name == "MEMOIZE":
                    if not stack:
                        fail("is corrupt (memoizes an empty stack)")
                    memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                elif name in _GETS:
                    if arg not in memo:
                        fail(f"is corrupt (memo entry {arg} read before it is written)")
                    stack.append(memo[arg])
                elif name == "DUP":
                    stack.append(pop(1)[0])
                    stack.append(stack[-1])
                elif name == "POP":
                    if marks and marks[-1] == len(stack):
                        marks.pop()
                    else:
                        pop(1)
                elif name == "POP_MARK":
                    pop_to_mark()
                elif name in ("APPEND", "SETITEM"):
                    items = pop(1 if name == "APPEND" else 2)
                    if name == "SETITEM":
                        keys(items[:1])
                    if not stack:
                        fail("is corrupt (no container)")
                    grow(stack[-1], items)
                elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                    items = pop_to_mark()
                    if name == "SETITEMS":
                        keys(items[0::2])
                    elif name == "ADDITEMS":
                        keys(items)
                    if not stack:
                        fail("is corrupt (no container)")
                    grow(stack[-1], items)
                elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
                    items = pop_to_mark()
                    if name == "DICT":
                        keys(items[0::2])
                    elif name == "FROZENSET":
                        keys(items)
                    stack.append(record(name.lower(), items))
                elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    stack.append(record("tuple", pop(int(name[-1]))))
                elif name in ("EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET"):
                    stack.append([name[6:].lower(), 1, 0])
                elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"):
                    items = pop(3 if name == "NEWOBJ_EX" else 2)
                    cost += _SLOT * sum(item[2] for item in items)   # a call may copy them
                    if name == "BUILD":           # the object stays, with the state in it
                        stack.append(items[0])
                        grow(items[0], items[1:])
                    else:
                        stack.append(record("call", items[1:]))
                elif name in ("OBJ", "INST"):
                    items = pop_to_mark()
                    cost += _SLOT * sum(item[2] for item in items)
                    stack.append(record("call", items))
                elif name in ("STACK_GLOBAL", "BINPERSID"):
                    pop(2 if name == "STACK_GLOBAL" else 1)
                    stack.append(["object", 1, 0])
                elif name in ("GLOBAL", "EXT1", "EXT2", "EXT4", "PERSID", "NEXT_BUFFER"):
                    stack.append(["object", 1, 0])
                elif name == "STOP":
                    break
                elif opcode.stack_after and not opcode.stack_before:    # a constant
                    stack.append([opcode.stack_after[0].name, 0, 0])
    except TorchCheckpointError:
        raise
    except (ValueError, EOFError, Warning) as exc:   # what genops raises for a bad pickle
        raise TorchCheckpointError(f"{path}: 'data.pkl' is corrupt ({exc})") from None
    if huge_ints > _HUGE_INTS:
        fail(f"holds {huge_ints} integers of 61 bits or more; as dict or set keys such "
             "integers can share one hash and make unpickling take quadratic time (hash "
             "flooding). A state_dict holds none, so the file is refused")
    return cost + 16 * (max(memo, default=-1) + 1)


# -- the unpickler --------------------------------------------------------------------------

class _Unpickler(pickle.Unpickler):
    """Restricted unpickler: allowlisted globals only, storages from the zip's records."""

    def __init__(self, file, zf, prefix, path, big_endian, size, records_read):
        super().__init__(file)
        self._size = size
        self._zf = zf
        self._prefix = prefix
        self._path = path
        self._big_endian = big_endian
        self._storages = {}
        self._records_read = records_read   # bytes of the records read, data.pkl's first
        # bytes the returned arrays may still take (see ARRAY_FACTOR)
        self._array_budget = ARRAY_FACTOR * size + MEMORY_CONSTANT
        rebuilders = {
            "_rebuild_tensor_v2": self._rebuild_tensor_v2,
            "_rebuild_tensor": self._rebuild_tensor,
            "_rebuild_tensor_v3": self._rebuild_tensor_v3,
            "_rebuild_parameter": self._rebuild_parameter,
        }
        self._globals = {("torch._utils", k): _Rebuilder(v, "torch._utils." + k)
                         for k, v in rebuilders.items()}
        self._globals[("collections", "OrderedDict")] = collections.OrderedDict
        for name, dtype in _STORAGE_TYPES.items():
            self._globals[("torch", name)] = _StorageType(name, dtype)
        self._globals[("torch.storage", "UntypedStorage")] = _StorageType(
            "storage.UntypedStorage", None)
        for name, dtype in _TORCH_DTYPES.items():
            self._globals[("torch", name)] = dtype

    def _error(self, message, cls=TorchCheckpointError):
        return cls(f"{self._path}: {message}")

    def find_class(self, module, name):
        obj = self._globals.get((module, name))
        if obj is not None:
            return obj
        if module == "torch" and name in _UNSUPPORTED_DTYPES:
            raise self._error(f"a tensor has dtype torch.{name}, which has no NumPy "
                              "equivalent; convert it in torch before saving")
        raise self._error(
            f"data.pkl refers to the global {module}.{name}, which is not allowed. Only "
            "tensor/storage rebuilders and collections.OrderedDict may appear in a plain "
            "state_dict; anything else could run code, so the file is rejected (it may be "
            "malicious, or hold more than tensors: save model.state_dict() instead)",
            UnsafeCheckpointError)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise self._error(f"unexpected persistent id {pid!r:.80} in data.pkl")
        typename, storage_type, key, _location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if typename != "storage" or not isinstance(storage_type, _StorageType) \
                or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise self._error(f"malformed storage reference {pid!r:.120} in data.pkl")
        cached = self._storages.get(key)
        if cached is not None:                 # shared storage: torch also reuses the first
            return cached
        itemsize = 1 if storage_type.dtype is None else storage_type.dtype.storage.itemsize
        name = f"{self._prefix}/data/{key}"
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise self._error(f"storage record {name!r} is missing from the archive") \
                from None
        _check_stored(info, self._path, self._size)
        # Records are read once each (storages are cached by key), and records that do not
        # overlap fit in the file: a sum past the file's size means members that overlap,
        # each re-reading the same bytes (found by an adversarial review: 1,000 nested
        # records of a 325 KB file took 221 MB).
        self._records_read += info.file_size
        if self._records_read > self._size:
            raise self._error(f"storage record {name!r} overlaps others: the records read "
                              f"so far total {self._records_read} bytes, more than the "
                              f"file's {self._size}")
        if info.file_size != numel * itemsize:
            raise self._error(
                f"storage record {name!r} holds {info.file_size} bytes, but data.pkl "
                f"declares {numel} elements of {itemsize} bytes")
        try:
            raw = self._zf.read(info)
        except _ZIP_ERRORS as exc:
            raise self._error(f"cannot read storage record {name!r}: {exc}") from None
        if len(raw) != info.file_size:
            raise self._error(f"storage record {name!r} is truncated")
        data = np.frombuffer(raw, dtype=np.uint8)  # read-only view of immutable bytes
        storage = _Storage(key, storage_type, data)
        self._storages[key] = storage
        return storage

    # -- rebuild functions (called by REDUCE with the file's arguments) --

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._tensor(storage, storage_offset, size, stride, None)

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._tensor(storage, storage_offset, size, stride, None)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                           backward_hooks, dtype, metadata=None):
        if not isinstance(dtype, _DType):
            raise self._error(f"_rebuild_tensor_v3 got dtype {dtype!r:.80}, not a torch dtype")
        return self._tensor(storage, storage_offset, size, stride, dtype)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if not isinstance(data, np.ndarray):
            raise self._error("_rebuild_parameter expects a tensor")
        return data

    def _tensor(self, storage, offset, size, stride, dtype):
        """Copy the (size, stride, offset) view of ``storage`` into a new array."""
        if not isinstance(storage, _Storage):
            raise self._error(f"a tensor's storage is {type(storage).__name__}, "
                              "not a storage record")
        if dtype is None:
            dtype = storage.type.dtype
            if dtype is None:
                raise self._error("_rebuild_tensor_v2 on an untyped storage")
        if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
                and all(map(_is_int, size)) and all(map(_is_int, stride))
                and _is_int(offset)):
            raise self._error(f"tensor on storage {storage.key!r} has a malformed "
                              f"size/stride/offset ({size!r:.60}, {stride!r:.60}, "
                              f"{offset!r:.20})")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or any(n < 0 for n in size) \
                or any(s < 0 for s in stride) or offset < 0 or len(size) > 64:
            raise self._error(f"tensor on storage {storage.key!r} has an invalid "
                              f"size {size}, stride {stride} or offset {offset}")
        nbytes = math.prod(size) * dtype.result.itemsize
        if nbytes > self._array_budget:
            raise self._error(
                f"tensor on storage {storage.key!r} has size {size} ({nbytes} bytes): the "
                "arrays read from a file of S bytes may take at most "
                f"{ARRAY_FACTOR} * S + {MEMORY_CONSTANT // 2**20} MiB (each view of a storage "
                "is a copy and counts), so the file is refused as a memory bomb")
        self._array_budget -= nbytes
        itemsize = dtype.storage.itemsize
        n_storage = storage.data.size // itemsize
        if 0 in size:
            if offset > n_storage:
                raise self._error(f"tensor on storage {storage.key!r}: offset {offset} "
                                  f"is past the storage's {n_storage} elements")
            return np.empty(size, dtype=dtype.result)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= n_storage:
            raise self._error(
                f"tensor on storage {storage.key!r} (size {size}, stride {stride}, offset "
                f"{offset}) reaches element {last}, past the storage's {n_storage} elements")
        elements = storage.data[:n_storage * itemsize].view(
            dtype.storage.newbyteorder(">" if self._big_endian else "<"))
        # A length-1 axis never steps, so its (unchecked) stride is irrelevant: use 0.
        strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True))
        view = np.lib.stride_tricks.as_strided(elements[offset:], shape=size, strides=strides,
                                               writeable=False)
        if dtype is _BOOL:
            return view != 0
        if dtype is _BF16:
            # bfloat16 is the top half of a float32: widening is exact.
            out = np.empty(size, dtype=np.float32)
            bits = out.view(np.uint32)
            bits[...] = view
            bits <<= 16
            return out
        return view.astype(dtype.result, order="C", copy=True)


# -- the public function ---------------------------------------------------------------------

def load_torch_state_dict(path):
    """Read a ``torch.save(model.state_dict(), path)`` file into NumPy arrays, without torch.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A file written by ``torch.save`` in the zip format (the default since torch 1.6),
        on any device (``location`` is ignored: everything loads to host memory). A file
        object (``open(p, "rb")``, ``io.BytesIO(data)``) must be readable and seekable; it
        is read from its start and left open, and errors name it by its ``name``
        attribute, else ``<file object>``.

    Returns
    -------
    collections.OrderedDict
        The saved dict in file order, each tensor replaced by a NumPy array that owns
        its memory: views of one storage become separate copies (but one tensor object
        saved under two keys stays one array under both, as with ``torch.load``).
        dtypes map one to one (float16/32/64, int8/16/32/64, uint8/16/32/64, bool,
        complex64/128), except **bfloat16, which becomes float32** (exactly: NumPy
        has no bfloat16). 0-d tensors such as ``num_batches_tracked`` become 0-d arrays.
        The dict carries torch's ``_metadata`` attribute when the file has one, so
        :meth:`cybn.BatchNorm1d.load_state_dict` sees the version of old checkpoints.
        Non-tensor values (e.g. ``"epoch": 3`` in a hand-made checkpoint dict, or a
        nested state_dict) are returned as they are.

    Raises
    ------
    UnsafeCheckpointError
        (a ``ValueError`` and ``pickle.UnpicklingError``) when the pickle refers to any
        global beyond tensor rebuilding, storage types and ``collections.OrderedDict``:
        nothing named by the file is ever imported or called.
    TorchCheckpointError
        (a ``ValueError``) for an empty, truncated or non-zip file, a legacy (torch < 1.6)
        or TorchScript file, a missing ``data.pkl`` or storage record, a compressed
        record, a tensor that would read past its storage, a dtype NumPy lacks (float8,
        quantized), or a file that would need more memory than the bound below.
    OSError
        When the file cannot be opened or read.
    TypeError
        When ``path`` is neither a path nor a readable, seekable binary file object.

    Notes
    -----
    Safe on untrusted files in the sense of ``torch.load(weights_only=True)``: no code
    runs and no byte outside the file is read. Memory is bounded by the file's size S:
    at most 101 S + 64 MiB (docs/security.md): records must be stored uncompressed, the
    pickle's opcodes are costed before it is unpickled, and the returned arrays may take
    at most 4 S + 32 MiB (every tensor is a copy, so views of one storage count once
    each; a file declaring more is refused).

    Examples
    --------
    >>> sd = cybn.load_torch_state_dict("model.pt")            # doctest: +SKIP
    >>> bn = cybn.BatchNorm1d(64)                               # doctest: +SKIP
    >>> bn.load_state_dict({k[len("1."):]: v for k, v in sd.items()
    ...                     if k.startswith("1.")})             # doctest: +SKIP
    """
    if hasattr(path, "read"):
        return _load_file_object(path)
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _load_file(f, path)


def _load_file_object(f):
    name = getattr(f, "name", None)
    name = name if isinstance(name, str) else "<file object>"
    try:
        seekable = f.seekable()
    except (AttributeError, ValueError, OSError):
        seekable = False
    if not seekable:
        raise TypeError(f"path must be a path or a seekable binary file object, got a "
                        f"non-seekable {type(f).__name__}")
    f.seek(0)
    head = f.read(0)
    if not isinstance(head, bytes):
        raise TypeError(f"path must be opened in binary mode ('rb'), got {type(f).__name__} "
                        f"reading {type(head).__name__}")
    return _load_file(f, name)


def _load_file(f, path):
    """Read the checkpoint in the seekable binary file ``f`` (named ``path`` in errors)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    head = f.read(16)
    f.seek(0)
    if not head:
        raise TorchCheckpointError(f"{path}: the file is empty, not a torch.save checkpoint")
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        if head[:1] == b"\x80" and _LEGACY_MAGIC in head:
            raise TorchCheckpointError(
                f"{path}: this is a legacy (torch < 1.6, or _use_new_zipfile_serialization="
                "False) checkpoint, which is not supported. Convert it once with torch: "
                "torch.save(torch.load(path, weights_only=True), new_path)")
        raise TorchCheckpointError(
            f"{path}: not a torch.save checkpoint (a zip archive starting with b'PK\\x03\\x04'); "
            f"the file starts with {head[:8]!r}")
    try:
        zf = zipfile.ZipFile(f)
    except _ZIP_ERRORS as exc:
        raise TorchCheckpointError(f"{path}: truncated or corrupt zip archive ({exc})") \
            from None
    with zf:
        return _load_from_zip(zf, path, size)


def _load_from_zip(zf, path, size):
    names = zf.namelist()
    if not names or "/" not in names[0]:
        raise TorchCheckpointError(f"{path}: the zip archive has no <archive>/data.pkl record; "
                                   "it was not written by torch.save")
    prefix = names[0].split("/", 1)[0]     # torch takes the archive name from the first record
    pkl = f"{prefix}/data.pkl"
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/")
                                                 for n in names):
        raise TorchCheckpointError(
            f"{path}: this is a TorchScript archive (torch.jit.save), which is not supported; "
            "convert it with torch.save(torch.jit.load(path).state_dict(), new_path)")
    if pkl not in names:
        raise TorchCheckpointError(f"{path}: the zip archive has no {pkl!r} record; "
                                   "it was not written by torch.save")
    big_endian = False
    if f"{prefix}/byteorder" in names:
        _check_stored(zf.getinfo(f"{prefix}/byteorder"), path, size)
        order = _read(zf, f"{prefix}/byteorder", path, limit=16)
        if order not in (b"little", b"big"):
            raise TorchCheckpointError(f"{path}: unknown byteorder record {order[:16]!r}")
        big_endian = order == b"big"
    info = zf.getinfo(pkl)
    _check_stored(info, path, size)
    data = _read(zf, pkl, path, limit=info.file_size)
    cost = _pickle_cost(data, path)
    if cost > PICKLE_FACTOR * len(data) + MEMORY_CONSTANT:
        raise TorchCheckpointError(
            f"{path}: {pkl!r} ({len(data)} bytes) could build about {cost} bytes of Python "
            f"objects, more than {PICKLE_FACTOR} times its size + "
            f"{MEMORY_CONSTANT // 2**20} MiB; a state_dict pickle needs far less, so the file "
            "is refused as a memory bomb")
    with io.BytesIO(data) as f:
        unpickler = _Unpickler(f, zf, prefix, path, big_endian, size, records_read=len(data))
        try:
            obj = unpickler.load()
        except TorchCheckpointError:
            raise
        except RecursionError:
            raise TorchCheckpointError(f"{path}: {pkl!r} is nested too deeply") from None
        except Exception as exc:  # noqa: BLE001 -- a corrupt or hand-made pickle
            raise TorchCheckpointError(
                f"{path}: {pkl!r} is corrupt or not a state_dict pickle "
                f"({type(exc).__name__}: {exc})") from None
    if isinstance(obj, collections.OrderedDict):
        return obj
    if isinstance(obj, dict):
        return collections.OrderedDict(obj)
    what = "tensor" if isinstance(obj, np.ndarray) else type(obj).__name__
    raise TorchCheckpointError(
        f"{path}: the file holds a {what}, not a state_dict (a dict of tensors)")


def _open(zf, name, path):
    try:
        return zf.open(name)
    except _ZIP_ERRORS as exc:
        raise TorchCheckpointError(f"{path}: cannot read {name!r}: {exc}") from None


def _read(zf, name, path, limit):
    with _open(zf, name, path) as f:
        try:
            return f.read(limit)
        except _ZIP_ERRORS as exc:
            raise TorchCheckpointError(f"{path}: cannot read {name!r}: {exc}") from None

