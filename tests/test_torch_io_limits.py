"""Untrusted files: memory bounded by the file, file objects, and the fuzzer's findings.

Every crafted file here goes through tests/_fuzz_oracle.py's ``check``, the fuzz harness's
oracle: the reader must return a result or raise its documented ``ValueError`` subclass
naming the file, raise no audit event of code execution, subprocesses, files or imports,
and allocate (tracemalloc's peak) at most the bound of docs/security.md:
``101 S + 64 MiB`` for ``load_torch_state_dict`` and ``4 S + 1 MiB`` for ``cybn.load``, for
a file of S bytes. The bombs are large enough (hundreds of KiB) that the constant does not
hide a factor.
"""

import io
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from _fuzz_oracle import BOUNDS, NAME, NamedBytesIO, check
from _torch_files import (
    _BASE,
    _ORDERED_DICT,
    _call,
    _global,
    _handmade_file,
    _int,
    _state_dict,
    _storage,
    _str,
    _tensor,
    _tuple,
    _write,
)

import cybn
from cybn._torch_io import PICKLE_FACTOR, _pickle_cost

N = 200_000   # opcodes per pickle bomb: files of 200 KB to 2 MB


def _zip_bytes(pickle_bytes, records=None, compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        for key, data in (records or {}).items():
            zf.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def _in_list(body):
    """A protocol-4 pickle of [<body's values>] inside a state_dict {"x": [...]}."""
    return b"\x80\x04" + _call(_ORDERED_DICT) + b"(" + _str("x") + b"](" + body + b"eu."


# Pickles that build many Python objects from few bytes: (name, pickle bytes).
def _bombs():
    od = _global("collections", "OrderedDict")
    return {
        "empty_dicts": _in_list(b"}" * N),
        "empty_lists": _in_list(b"]" * N),
        "empty_sets": _in_list(b"\x8f" * N),                      # EMPTY_SET (protocol 4)
        "empty_tuples_in_tuples": _in_list(b")\x85" * N),          # EMPTY_TUPLE, TUPLE1
        "references": _in_list(b"N\x94" + b"h\x00" * N),           # MEMOIZE once, BINGET
        "short_strings": _in_list(b"".join(
            b"\x8c\x04" + f"{i:04x}".encode() for i in range(N // 4))),
        "long_ints": _in_list(b"".join(
            b"\x8a\x08" + struct.pack("<q", 2**40 + i) for i in range(N // 4))),
        "ordered_dict_calls": _in_list(od + b"\x94" + b"h\x00)R" * (N // 4)),
        "memo_index": _in_list(b"N" + b"r" + struct.pack("<I", 2**31 - 1)),
        "nested_lists": _in_list(b"](" * 50 + b"e" * 50),
    }


@pytest.mark.parametrize("kind", sorted(_bombs()))
def test_pickle_bombs_stay_within_the_bound(kind):
    data = _zip_bytes(_bombs()[kind])
    result = check("torch", data)
    pkl = _bombs()[kind]
    if _pickle_cost(pkl, "x") > PICKLE_FACTOR * len(pkl) + 32 * 2**20:
        assert isinstance(result, cybn.TorchCheckpointError)
        assert "memory bomb" in str(result)
    else:
        assert isinstance(result, (dict, cybn.TorchCheckpointError)), result


@pytest.mark.parametrize("kind", ["empty_dicts", "empty_lists", "empty_sets",
                                  "empty_tuples_in_tuples", "references", "short_strings",
                                  "long_ints", "nested_lists"])
def test_pickle_cost_estimate_is_an_upper_bound(kind):
    # The estimate the reader refuses by must not be below what unpickling really takes:
    # measured with plain pickle.loads (these pickles name no global but OrderedDict).
    import pickle
    pkl = _bombs()[kind]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        obj = pickle.loads(pkl)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del obj
    assert peak <= _pickle_cost(pkl, "x"), (kind, peak, _pickle_cost(pkl, "x"))


def test_legitimate_files_are_far_below_the_pickle_factor(tmp_path):
    # tools/fuzz/corpus.py measures torch-written pickles at 32-44x; the hand-made ones:
    expected = _handmade_file(tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as zf:
        pkl = zf.read("archive/data.pkl")
    assert _pickle_cost(pkl, "x") < PICKLE_FACTOR / 1.5 * len(pkl)
    assert set(cybn.load_torch_state_dict(tmp_path / "m.pt")) == set(expected)


def _views(n_views, numel=2**18):
    """One float32 storage of numel elements, read n_views times in full."""
    entries = [(f"v{i}", _tensor(_storage("0", numel), 0, (numel,), (1,)))
               for i in range(n_views)]
    records = {"0": np.zeros(numel, np.float32).tobytes()}
    return _zip_bytes(_state_dict(entries), records)


def test_a_few_views_of_one_storage_are_accepted():
    result = check("torch", _views(3))
    assert isinstance(result, dict) and len(result) == 3


def test_many_views_of_one_storage_are_refused():
    data = _views(200)                          # 1 MiB of data read 200 times: 200 MiB
    result = check("torch", data)
    assert isinstance(result, cybn.TorchCheckpointError)
    assert "memory bomb" in str(result) and NAME in str(result)


@pytest.mark.parametrize("size, stride", [((2**20, 2**10), (0, 0)), ((2**31,), (0,)),
                                          ((64, 2**22), (1, 0))])
def test_broadcast_views_larger_than_the_file_are_refused(size, stride):
    ops = _tensor(_storage("0", 12), 0, size, stride)
    result = check("torch", _zip_bytes(_state_dict([("w", ops)]), {"0": _BASE.tobytes()}))
    assert isinstance(result, cybn.TorchCheckpointError)
    assert "memory bomb" in str(result)


def test_compressed_records_are_refused():
    pkl = _state_dict([("w", _tensor(_storage("0", 12), 0, (12,), (1,)))])
    data = _zip_bytes(pkl, {"0": _BASE.tobytes()}, compress=zipfile.ZIP_DEFLATED)
    result = check("torch", data)
    assert isinstance(result, cybn.TorchCheckpointError)
    assert "is compressed" in str(result)


def test_a_record_larger_than_the_file_is_refused():
    pkl = _state_dict([("w", _tensor(_storage("0", 12), 0, (12,), (1,)))])
    data = bytearray(_zip_bytes(pkl, {"0": _BASE.tobytes()}))
    # Central directory entry of archive/data/0: make its sizes claim 1 GiB.
    at = data.rfind(b"PK\x01\x02")
    data[at + 20:at + 28] = struct.pack("<II", 2**30, 2**30)
    result = check("torch", bytes(data))
    assert isinstance(result, cybn.TorchCheckpointError)


def _shift_central_directory(data, by):
    """Claim the central directory starts `by` bytes later than it does: zipfile then puts
    every member before the archive's start (found by the fuzzer: a negative seek)."""
    data = bytearray(data)
    end = data.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", data, end + 16)[0]
    struct.pack_into("<I", data, end + 16, offset + by)
    return bytes(data)


def test_fuzz_finding_negative_member_offset(tmp_path):
    # Found by tools/fuzz/fuzz.py torch on 2026-12-07: ValueError("negative seek value")
    # escaped from zipfile (now a TorchCheckpointError / StateFileError naming the file).
    _handmade_file(tmp_path / "m.pt")
    data = _shift_central_directory((tmp_path / "m.pt").read_bytes(), 20_000)
    result = check("torch", data)
    assert isinstance(result, cybn.TorchCheckpointError), result
    buf = io.BytesIO()
    cybn.save(cybn.BatchNorm1d(3), buf)
    result = check("npz", _shift_central_directory(buf.getvalue(), 20_000))
    assert isinstance(result, cybn.StateFileError), result


# -- cybn.load (.npz) -------------------------------------------------------------------------

def _saved(module=None):
    buf = io.BytesIO()
    cybn.save(module or cybn.BatchNorm1d(4), buf)
    return buf.getvalue()


def _npz(entries, compress=False):
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **entries)
    return buf.getvalue()


def _entries(**changes):
    entries = dict(np.load(io.BytesIO(_saved())))
    entries.update(changes)
    return {k: v for k, v in entries.items() if v is not None}


def test_npz_round_trip_through_the_oracle():
    module = cybn.BatchNorm2d(3, dtype=np.float64, momentum=None)
    module.running_mean[:] = [1, 2, 3]
    result = check("npz", _saved(module))
    assert isinstance(result, cybn.BatchNorm2d)
    np.testing.assert_array_equal(result.running_mean, [1, 2, 3])


@pytest.mark.parametrize("what, entries, message", [
    ("compressed", "compressed", "is compressed"),
    ("foreign entry", {"extra": np.arange(3), "training": None}, "unexpected entries"),
    ("object array", {"extra": np.array([None], dtype=object), "training": None},
     "unexpected entries"),
    ("one entry too many", {"extra": np.arange(3), "__cybn_format__": np.array(2),
                            "renorm": np.array(True), "rmax": np.array(2.0),
                            "dmax": np.array(0.0), "virtual_batch_size": np.array(0),
                            "activation": np.array("relu")},
     "declares 23 entries"),
    ("format 1 with format 2's options", {"renorm": np.array(True)},
     "format 1 has no entries ['renorm']"),
    ("rmax as a string", {"__cybn_format__": np.array(2), "renorm": np.array(True),
                          "rmax": np.array("2")}, "'rmax' must be a scalar of kind 'f'"),
    ("rmax below 1", {"__cybn_format__": np.array(2), "renorm": np.array(True),
                      "rmax": np.array(0.5)}, "rmax must be >= 1"),
    ("negative virtual batch", {"__cybn_format__": np.array(2),
                                "virtual_batch_size": np.array(-3)},
     "virtual_batch_size must be >= 1"),
    ("num_features against weight", {"num_features": np.array(2**28)}, "has shape"),
    ("missing weight", {"weight": None}, "'weight' is missing"),
    ("class not cybn's", {"__class__": np.array("Conv2d")}, "unknown module class"),
    ("class as a number", {"__class__": np.array(3)}, "must be a scalar"),
    ("eps as an array", {"eps": np.ones(2)}, "must be a scalar"),
    ("newer format", {"__cybn_format__": np.array(99)}, "format 99"),
    ("bad dtype name", {"dtype": np.array("int32")}, "cannot be rebuilt"),
])
def test_npz_bad_files(what, entries, message):
    data = _npz(_entries(), compress=True) if entries == "compressed" else _npz(
        _entries(**entries))
    result = check("npz", data)
    assert isinstance(result, cybn.StateFileError), (what, result)
    assert message in str(result), (what, str(result))


def _npz_with_edited(key, edit=bytes, member=None):
    """A saved file whose entry `key` has its .npy bytes replaced by edit(bytes) and is
    stored as `member` (default "<key>.npy"); a valid zip (CRCs of the edited bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, value in _entries().items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, value)
            raw = npy.getvalue()
            if name == key:
                zf.writestr(member or f"{name}.npy", edit(raw))
            else:
                zf.writestr(f"{name}.npy", raw)
    return buf.getvalue()


def test_npz_declared_shape_larger_than_the_data():
    # 36 bytes declared, 16 present
    data = _npz_with_edited("weight", lambda raw: raw.replace(b"'shape': (4,)",
                                                              b"'shape': (9,)"))
    result = check("npz", data)
    assert isinstance(result, cybn.StateFileError)
    assert "truncated or corrupt" in str(result)


def test_npz_huge_num_features_without_arrays_allocates_nothing():
    # affine=False, track_running_stats=False: no (num_features,) array exists, so a huge
    # count is accepted and costs nothing (the oracle checks the memory).
    module = cybn.BatchNorm1d(3, affine=False, track_running_stats=False)
    entries = dict(np.load(io.BytesIO(_saved(module))))
    entries["num_features"] = np.array(2**40)
    result = check("npz", _npz(entries))
    assert isinstance(result, cybn.BatchNorm1d) and result.num_features == 2**40


def test_npz_bound_holds_for_a_real_file():
    big = cybn.BatchNorm1d(2**16, dtype=np.float64)
    data = _saved(big)
    assert len(data) > 2**21
    assert isinstance(check("npz", data), cybn.BatchNorm1d)
    assert BOUNDS["npz"](len(data)) < 5 * len(data)


# -- file objects -----------------------------------------------------------------------------

def test_file_objects(tmp_path):
    expected = _handmade_file(tmp_path / "m.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    from_bytes = cybn.load_torch_state_dict(io.BytesIO(raw))
    with open(tmp_path / "m.pt", "rb") as f:
        f.read(5)                                  # read from the start whatever the position
        from_file = cybn.load_torch_state_dict(f)
        assert not f.closed                        # the caller's file stays open
    assert list(from_bytes) == list(from_file) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(from_bytes[key], from_file[key])


def test_file_object_errors_name_the_file(tmp_path):
    with pytest.raises(cybn.TorchCheckpointError, match="<file object>: the file is empty"):
        cybn.load_torch_state_dict(io.BytesIO(b""))
    with pytest.raises(cybn.TorchCheckpointError, match=NAME):
        cybn.load_torch_state_dict(NamedBytesIO(b"not a zip"))
    (tmp_path / "t.txt").write_text("text")
    with open(tmp_path / "t.txt") as f, pytest.raises(TypeError, match="binary mode"):
        cybn.load_torch_state_dict(f)

    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(TypeError, match="seekable"):
        cybn.load_torch_state_dict(Pipe())


def test_written_files_round_trip_through_the_oracle(tmp_path):
    _write(tmp_path / "w.pt", _state_dict([("w", _tensor(_storage("0", 12), 1, (3, 2),
                                                          (4, 1)))]), {"0": _BASE.tobytes()})
    result = check("torch", (tmp_path / "w.pt").read_bytes())
    np.testing.assert_array_equal(result["w"], _BASE[1:].reshape(-1)[: 12 - 1][
        np.add.outer(np.arange(3) * 4, np.arange(2))])


def test_int_helper_matches_pickle():
    # _int (the test writer) against pickle's own encoding of the boundary values
    import pickle
    for value in (0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**62):
        assert pickle.loads(b"\x80\x02" + _int(value) + b".") == value
    assert pickle.loads(b"\x80\x02" + _tuple(_int(1), _int(2)) + b".") == (1, 2)


def test_fuzz_finding_unterminated_npy_header():
    # Found by tools/fuzz/fuzz.py npz on 2026-12-07: a header cut after "'fortran_order'"
    # (an unclosed brace) made NumPy's legacy-header filter raise tokenize.TokenError.
    def unterminated(raw):
        end, cut = raw.index(b"\n"), raw.index(b", 'shape'")
        return raw[:cut] + b" " * (end - cut) + raw[end:]

    result = check("npz", _npz_with_edited("__class__", unterminated))
    assert isinstance(result, cybn.StateFileError), result
    assert "corrupt .npy header" in str(result)


def test_hash_flooding_keys_are_refused():
    # 5,000 ints that all hash alike (multiples of 2**61 - 1) as keys of one dict: building
    # it is quadratic (40,000 keys took 8.4 s). Refused before unpickling.
    modulus = 2**61 - 1
    body = b"".join(_int(i * modulus) + b"N" for i in range(1, 5001))
    data = _zip_bytes(b"\x80\x02" + _call(_ORDERED_DICT) + b"(" + _str("x") + b"}(" + body
                      + b"uu.")
    result = check("torch", data)
    assert isinstance(result, cybn.TorchCheckpointError)
    assert "hash flooding" in str(result)
    # A thousand of them (a checkpoint holding large ints in some other role) still loads.
    body = b"".join(_int(i * modulus) + b"N" for i in range(1, 1001))
    data = _zip_bytes(b"\x80\x02" + _call(_ORDERED_DICT) + b"(" + _str("x") + b"}(" + body
                      + b"uu.")
    assert len(check("torch", data)["x"]) == 1000


def test_fuzz_finding_python2_npy_header():
    # Found by tools/fuzz/fuzz.py npz on 2026-12-07: a header NumPy can read only after its
    # Python 2 rewrite ("4L") made NumPy warn, and the warning's display opened a source
    # file. No cybn.save() file has such a header: refused, without a warning.
    def python2(raw):
        newline = raw.index(b"\n")              # keep the header's length: one pad space less
        raw = raw[:newline - 1] + raw[newline:]
        return raw.replace(b"'shape': (4,)", b"'shape': (4L,)")

    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = check("npz", _npz_with_edited("weight", python2))
    # NumPy >= 2 warns on such a header (refused); NumPy 1.x reads it silently as (4,)
    assert isinstance(result, (cybn.StateFileError, cybn.BatchNorm1d)), result
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert isinstance(result, cybn.StateFileError), result
    assert not caught, [str(w.message) for w in caught]


def test_fuzz_finding_member_without_npy_suffix():
    # Found by tools/fuzz/fuzz.py npz on 2026-12-07: a member named "__cybn_format__" (no
    # ".npy") is listed by NumPy's NpzFile.files, whose reader then raised KeyError.
    result = check("npz", _npz_with_edited("__cybn_format__", member="__cybn_format__"))
    assert isinstance(result, cybn.StateFileError), result
    assert "not one '<key>.npy' each" in str(result)


# -- findings of the adversarial review of 2026-12-07 ----------------------------------------
# Each failed on the code before its fix (a crash, a bound broken by 2-1000x, or a file
# taking 33-43 s); each is now refused quickly.

def _local_header(name, data):
    return struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), len(data),
                       len(data), len(name), 0) + name


def _nested_zip(names, core, wrap):
    """A zip whose members nest: member i's data is wrap(name_i, the local header and data of
    member i + 1), the last one's wrap(name, core). zipfile reads each one whole, so n
    members re-read the same bytes n times; the CRCs are valid."""
    rest, members = core, []
    for name in reversed(names):
        data = wrap(name, rest)
        members.insert(0, (name, data))
        rest = _local_header(name, data) + data
    central, offset = b"", 0
    for name, data in members:
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0,
                               zlib.crc32(data), len(data), len(data), len(name), 0, 0, 0, 0,
                               0, offset) + name
        offset += 30 + len(name) + len(wrap(name, b""))
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(rest), 0)
    return rest + central + end


def test_review_overlapping_storage_records_are_refused():
    n, payload = 200, 20_000
    names = [f"a/data/{i}".encode() for i in range(n)]
    pkl = b"\x80\x02" + _call(_ORDERED_DICT) + _str("storage") + b"q\x00" + _global(
        "torch", "ByteStorage") + b"q\x010"
    # the storages' sizes: each nests the local headers and data of those after it
    sizes, size = [], payload
    for name in reversed(names):
        sizes.insert(0, size)
        size += 30 + len(name)
    for i, numel in enumerate(sizes):
        pkl += b"(h\x00h\x01" + _str(str(i)) + _str("cpu") + _int(numel) + b"tQ0"
    # data.pkl is not nested: build the storages' zip and put data.pkl first
    storages = _nested_zip(names, b"\0" * payload, lambda name, rest: rest)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("a/data.pkl", pkl + b".")
    head = zipped.getvalue()
    head = head[:head.index(b"PK\x01\x02")]                  # its local header and data
    cd_pkl = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0,
                         zlib.crc32(pkl + b"."), len(pkl) + 1, len(pkl) + 1, 10, 0, 0, 0, 0,
                         0, 0) + b"a/data.pkl"
    body_end = storages.index(b"PK\x01\x02")
    central = b""
    for entry in storages[body_end:storages.index(b"PK\x05\x06")].split(b"PK\x01\x02")[1:]:
        offset = struct.unpack_from("<I", entry, 38)[0] + len(head)
        central += b"PK\x01\x02" + entry[:38] + struct.pack("<I", offset) + entry[42:]
    central = cd_pkl + central
    out = head + storages[:body_end]
    out += central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, n + 1, n + 1, len(central),
                                 len(out), 0)
    result = check("torch", out)
    assert isinstance(result, cybn.TorchCheckpointError), result
    # cybn's own check ("overlaps others"), or, first, zipfile's on Pythons that have one
    # (3.13, and 3.12 patch releases with gh-109858's fix: "Overlapped entries ... (possible
    # zip bomb)"; seen in the cp313 wheel run of tools/check_wheels.py, issue 13).
    assert "overlaps" in str(result) or "Overlapped entries" in str(result), result


def test_review_overlapping_npz_members_are_refused():
    keys = [k + ".npy" for k in ("__cybn_format__", "__class__", "num_features", "eps")]

    def npy(name, rest):
        header = repr({"descr": "|u1", "fortran_order": False, "shape": (len(rest),)}).encode()
        header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + rest

    data = _nested_zip([k.encode() for k in keys], b"\0" * 300_000, npy)
    result = check("npz", data)
    assert isinstance(result, cybn.StateFileError), result
    assert "overlap" in str(result)


def test_review_deeply_nested_key_is_refused_not_a_crash(tmp_path):
    # 150,000 nested 1-tuples as a dict key: hashing it overflowed the C stack (SIGSEGV).
    # Run in a child: if it still crashed, only the child would die.
    code = (
        "import io, zipfile, sys; sys.path.insert(0, sys.argv[1]); import cybn\n"
        "from _torch_files import _call, _ORDERED_DICT\n"
        "pkl = b'\\x80\\x02' + _call(_ORDERED_DICT) + b'N' + b'\\x85' * 150_000 + b'Ns.'\n"
        "buf = io.BytesIO()\n"
        "with zipfile.ZipFile(buf, 'w') as zf: zf.writestr('a/data.pkl', pkl)\n"
        "try: cybn.load_torch_state_dict(io.BytesIO(buf.getvalue()))\n"
        "except cybn.TorchCheckpointError as exc: print('refused:', exc)\n")
    # cwd: away from a checkout, whose cybn/ (no compiled modules) would shadow the install
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "refused:" in proc.stdout and "deep" in proc.stdout


def test_review_ordered_dict_copies_are_charged():
    # OrderedDict(d) copies d: 100 copies of a 20,000-entry dict cost 152 MB for 121 KB.
    n, copies = 20_000, 100
    items = b"".join(b"J" + struct.pack("<i", 1000 + i) + b"N" for i in range(n))
    pkl = (b"\x80\x02" + _call(_ORDERED_DICT) + b"(" + _str("d") + b"}q\x00(" + items + b"u"
           + _str("x") + _global("collections", "OrderedDict") + b"q\x010("
           + b"h\x01h\x00\x85R" * copies + b"lu.")
    result = check("torch", _zip_bytes(pkl))
    assert isinstance(result, cybn.TorchCheckpointError), result
    assert "memory bomb" in str(result)


def test_review_colliding_tuple_keys_are_refused():
    # hash(-1) == hash(-2): every tuple of them shares one hash; 32,000 such keys took 33 s.
    keys = [b"J\xff\xff\xff\xff" if i & (1 << j) else b"J\xfe\xff\xff\xff" for i in range(64)
            for j in range(6)]
    body = b"".join(b"(" + b"".join(keys[6 * i:6 * i + 6]) + b"tN" for i in range(64))
    pkl = b"\x80\x02" + _call(_ORDERED_DICT) + _str("s") + b"}(" + body + b"uu."
    result = check("torch", _zip_bytes(pkl))
    assert isinstance(result, cybn.TorchCheckpointError), result
    assert "dict key" in str(result)


def test_review_zero_size_dtypes_are_refused():
    # 'V0' arrays of shape (50,000,000,) hold no bytes: the module allocated 1 GB for 4 KB.
    def v0(raw):
        header = repr({"descr": "|V0", "fortran_order": False, "shape": (50_000_000,)})
        header = header.encode()
        header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header

    result = check("npz", _npz_with_edited("weight", v0))
    assert isinstance(result, cybn.StateFileError), result
    assert "dtype" in str(result)


def test_review_many_members_are_refused_quickly():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(20_000):
            zf.writestr(f"{i}.npy", b"")
        zf.writestr("x", b"")
    import time
    start = time.perf_counter()
    result = check("npz", buf.getvalue())
    assert isinstance(result, cybn.StateFileError), result
    assert time.perf_counter() - start < 5     # was quadratic: 3.9 s for 1 MB before


@pytest.mark.parametrize("value", [np.full(4, 1 + 2j), np.full(4, 1e300)])
def test_review_state_of_another_dtype_is_refused_without_warnings(value):
    # complex128 and float64 weights were cast into the float32 module with a ComplexWarning
    # or an overflow RuntimeWarning (which -W error turned into undocumented exceptions).
    data = _npz(_entries(weight=value))
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = check("npz", data)
    assert isinstance(result, cybn.StateFileError), result
    assert not caught, [str(w.message) for w in caught]


def test_review_pickle_warnings_are_errors_of_the_file():
    # A protocol-0 string with an invalid escape: genops warned (DeprecationWarning), which
    # -W error turned into an undocumented exception.
    import warnings
    pkl = b"\x80\x02" + _call(_ORDERED_DICT) + _str("k") + b"S'\\q'\ns."
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = check("torch", _zip_bytes(pkl))
    assert isinstance(result, (dict, cybn.TorchCheckpointError)), result


def test_fuzz_finding_python2_header_of_a_lone_npy():
    # Found by the npz long run on 2026-12-07 (278,481 inputs in): not a zip but one .npy
    # whose header only NumPy's Python 2 rewrite reads: np.load itself warned.
    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.zeros(4, np.float32))
    raw = npy.getvalue()
    newline = raw.index(b"\n")
    raw = (raw[:newline - 1] + raw[newline:]).replace(b"'shape': (4,)", b"'shape': (4L,)")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = check("npz", raw)
    assert isinstance(result, cybn.StateFileError), result
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("header", [
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (4L,), }",  # Python 2's long suffix
    b"{'descr': '<f4', 'fortran_order': False",                     # unterminated
])
def test_npy_header_that_is_not_a_literal_never_reaches_numpys_tokenize_filter(monkeypatch,
                                                                               header):
    # Found by the cp312 wheel run of tools/check_wheels.py (issue 13): NumPy retries a
    # header that is not a Python literal with its Python 2 filter (tokenize), and on
    # Python >= 3.12 tokenize's error path opens a file named '<string>' (the 'open' audit
    # event test_fuzz_finding_unterminated_npy_header saw there, not on 3.10/3.11). cybn.load
    # refuses such a header itself: NumPy's filter must never see it, on any Python. (NumPy
    # < 1.24 passes every header through the filter, valid ones too: those may go on.)
    import ast

    data = _npz_with_edited("weight", lambda raw: raw[:raw.index(b"{")] + header + b" " * (
        raw.index(b"\n") - raw.index(b"{") - len(header)) + raw[raw.index(b"\n"):])
    # the namespace the header readers look it up in (numpy.lib._format_impl in NumPy 2)
    namespace = np.lib.format.read_array_header_1_0.__globals__
    original = namespace["_filter_header"]

    def guarded(text):
        try:
            ast.literal_eval(text)
        except SyntaxError:
            raise AssertionError("NumPy's tokenize-based header filter got a header that is "
                                 "not a literal") from None
        return original(text)

    monkeypatch.setitem(namespace, "_filter_header", guarded)
    result = check("npz", data)
    assert isinstance(result, cybn.StateFileError), result
    assert "corrupt .npy header" in str(result) and "SyntaxError" in str(result), result
