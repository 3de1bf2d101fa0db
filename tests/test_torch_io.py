"""cybn.load_torch_state_dict: torch.save files read without torch, and safely.

Two kinds of fixture:

* files written by torch itself (tests take the ``torch`` fixture, skipped when torch is
  not installed); expected values are torch's own tensors (``.numpy()``);
* torch-format files assembled here from raw pickle opcodes and ``zipfile`` (no torch
  needed, so the hostile-file tests always run); expected values are the NumPy arrays
  the test wrote. ``test_handmade_files_match_torch`` checks, when torch is installed,
  that torch reads these files the same way, so the builder is faithful to the format.
"""

import collections
import pickle
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from _torch_files import (  # tests/ is on sys.path (conftest.py)
    _BASE,
    _FALSE,
    _ORDERED_DICT,
    _call,
    _global,
    _handmade_file,
    _int,
    _list,
    _stack_global,
    _state_dict,
    _storage,
    _str,
    _tensor,
    _tuple,
    _write,
)

import cybn
from cybn._torch_io import TorchCheckpointError, UnsafeCheckpointError

load = cybn.load_torch_state_dict


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _assert_owned_equal(actual, expected):
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)
    assert actual.flags.owndata and actual.flags.writeable


# -- hand-made files that are valid (no torch needed) ----------------------------------------

@pytest.mark.parametrize("big_endian", [False, True])
def test_handmade_views_of_one_storage(tmp_path, big_endian):
    expected = _handmade_file(tmp_path / "m.pt", big_endian)
    out = load(tmp_path / "m.pt")
    assert type(out) is collections.OrderedDict
    assert list(out) == list(expected)
    for key, value in expected.items():
        _assert_owned_equal(out[key], value)
    out["matrix"][...] = 0                 # copies: no aliasing between entries
    assert out["transposed"].any()


def test_stride_of_a_length_one_axis_is_ignored(tmp_path):
    # torch does not check it either; a huge value must not overflow the view.
    entries = [("w", _tensor(_storage("0", 12), 3, (1, 4), (2**62, 2)))]
    path = _write(tmp_path / "m.pt", _state_dict(entries), {"0": _BASE.tobytes()})
    _assert_owned_equal(load(path)["w"], _BASE[3:11:2].reshape(1, 4))


def test_path_may_be_str_or_pathlike(tmp_path):
    expected = _handmade_file(tmp_path / "m.pt")
    for path in (tmp_path / "m.pt", str(tmp_path / "m.pt")):
        np.testing.assert_array_equal(load(path)["odd"], expected["odd"])


# -- files written by torch -------------------------------------------------------------------

def _torch_value(tensor, torch):
    """torch's own values as NumPy (bfloat16 widened to float32, which is what cybn returns)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _saved(torch, tmp_path, state, name="sd.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int64",
                                   "int32", "int16", "int8", "uint8", "bool", "complex64",
                                   "complex128", "uint16"])
def test_dtypes(torch, tmp_path, dtype):
    gen = torch.Generator().manual_seed(0)
    t = (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 50)
    tdtype = getattr(torch, dtype)
    if dtype == "bool":
        t = t > 0
    elif tdtype.is_complex:
        t = torch.complex(t, -t).to(tdtype)
    elif tdtype.is_floating_point:
        t = t.to(tdtype)
    else:
        t = t.abs().to(tdtype) if dtype.startswith("uint") else t.to(tdtype)
    out = load(_saved(torch, tmp_path, collections.OrderedDict(x=t)))
    expected = _torch_value(t, torch)
    _assert_owned_equal(out["x"], expected)
    if dtype == "bfloat16":
        assert out["x"].dtype == np.float32


def test_non_contiguous_tensors(torch, tmp_path):
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    cube = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    state = collections.OrderedDict(
        transposed=base.t(),
        stepped=base[:, 1::2],
        offset_row=base[2],
        permuted=cube.permute(2, 0, 1),
        expanded=torch.arange(3.0).reshape(3, 1).expand(3, 5),
    )
    assert not any(v.is_contiguous() for k, v in state.items() if k != "offset_row")
    out = load(_saved(torch, tmp_path, state))
    assert list(out) == list(state)
    for key, tensor in state.items():
        _assert_owned_equal(out[key], _torch_value(tensor, torch))


def test_shared_storages(torch, tmp_path):
    base = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    state = collections.OrderedDict(a=base, b=base[1:3], c=base.t(), d=base)  # tied views
    path = _saved(torch, tmp_path, state)
    with zipfile.ZipFile(path) as zf:      # really one storage record in the file
        assert len([n for n in zf.namelist() if "/data/" in n]) == 1
    out = load(path)
    for key, tensor in state.items():
        _assert_owned_equal(out[key], _torch_value(tensor, torch))
    # Views of one storage are separate copies; the very same tensor object saved under
    # two keys (pickle's memo) stays one object, as torch.load returns it.
    theirs = torch.load(path, weights_only=True)
    assert theirs["a"] is theirs["d"] and out["a"] is out["d"]
    out["a"][...] = 0
    for key in "bc":
        _assert_owned_equal(out[key], _torch_value(state[key], torch))


def test_zero_dim_tensors(torch, tmp_path):
    state = collections.OrderedDict(n=torch.tensor(7, dtype=torch.long), f=torch.tensor(2.5))
    out = load(_saved(torch, tmp_path, state))
    for key, tensor in state.items():
        assert out[key].shape == ()
        _assert_owned_equal(out[key], tensor.numpy())


def test_parameters_with_keep_vars(torch, tmp_path):
    lin = torch.nn.Linear(3, 2)
    state = lin.state_dict(keep_vars=True)   # nn.Parameter objects: _rebuild_parameter
    assert isinstance(state["weight"], torch.nn.Parameter)
    out = load(_saved(torch, tmp_path, state))
    for key, tensor in state.items():
        _assert_owned_equal(out[key], _torch_value(tensor, torch))


def _trained_bn(torch, module, n_features, steps=3):
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(0.5, 1.5, generator=gen)
    module.train()
    for _ in range(steps):
        module(torch.randn(16, n_features, generator=gen) * 3 + 1)
    return module.eval()


def test_batchnorm1d_state_dict_into_cybn(torch, tmp_path):
    tbn = _trained_bn(torch, torch.nn.BatchNorm1d(5), 5)
    out = load(_saved(torch, tmp_path, tbn.state_dict()))
    bn = cybn.BatchNorm1d(5)
    result = bn.load_state_dict(out)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for key, tensor in tbn.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[key], tensor.numpy())
    x = np.random.default_rng(5).standard_normal((7, 5)).astype(np.float32) * 3 + 1
    with torch.no_grad():
        expected = tbn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bn.eval()(x), expected, rtol=1e-5, atol=1e-6)


def test_sequential_pick_batchnorm_by_prefix(torch, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 3),
                                torch.nn.BatchNorm1d(3))
    gen = torch.Generator().manual_seed(6)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 4, generator=gen))
    model.eval()
    state = model.state_dict()
    out = load(_saved(torch, tmp_path, state))
    assert list(out) == list(state)        # every tensor of the model, in file order
    for key, tensor in state.items():
        _assert_owned_equal(out[key], tensor.numpy())
    x = torch.randn(10, 8, generator=gen)
    for index, features in ((1, 8), (4, 3)):
        prefix = f"{index}."
        bn = cybn.BatchNorm1d(features)
        bn.load_state_dict({k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)})
        xi = x[:, :features]
        with torch.no_grad():
            expected = model[index](xi).numpy()
        np.testing.assert_allclose(bn.eval()(xi.numpy()), expected, rtol=1e-5, atol=1e-6)


def test_metadata_is_carried(torch, tmp_path):
    state = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).state_dict()
    out = load(_saved(torch, tmp_path, state))
    assert out._metadata == state._metadata
    assert out._metadata["1"] == {"version": 2}


@pytest.mark.parametrize("version", [1, 2])
def test_metadata_version_reaches_load_state_dict(torch, tmp_path, version):
    """Without num_batches_tracked, version 1 loads and version 2 is a missing key -- in
    torch and in cybn, which only knows the version through the loaded dict's _metadata."""
    state = torch.nn.BatchNorm1d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = version
    out = load(_saved(torch, tmp_path, state))
    assert out._metadata[""]["version"] == version
    try:
        torch.nn.BatchNorm1d(3).load_state_dict(state)
        torch_raised = False
    except RuntimeError:
        torch_raised = True
    if torch_raised:
        with pytest.raises(RuntimeError, match="Missing key.*num_batches_tracked"):
            cybn.BatchNorm1d(3).load_state_dict(out)
    else:
        cybn.BatchNorm1d(3).load_state_dict(out)
    assert torch_raised == (version == 2)


def test_nested_checkpoint_dict(torch, tmp_path):
    bn = torch.nn.BatchNorm1d(2)
    out = load(_saved(torch, tmp_path, {"model": bn.state_dict(), "epoch": 3}))
    assert out["epoch"] == 3
    assert out["model"]._metadata == bn.state_dict()._metadata
    for key, tensor in bn.state_dict().items():
        _assert_owned_equal(out["model"][key], tensor.numpy())


def test_handmade_files_match_torch(torch, tmp_path):
    for big_endian in (False, True):
        path = tmp_path / f"m{int(big_endian)}.pt"
        _handmade_file(path, big_endian)
        theirs = torch.load(path, weights_only=True, map_location="cpu")
        ours = load(path)
        assert list(ours) == list(theirs)
        for key, tensor in theirs.items():
            _assert_owned_equal(ours[key], tensor.numpy())


def test_does_not_import_torch(torch, tmp_path):
    path = _saved(torch, tmp_path, torch.nn.BatchNorm1d(3).state_dict())
    code = ("import sys, cybn; sd = cybn.load_torch_state_dict(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(sd))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"


def test_legacy_torch_file(torch, tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(torch.nn.BatchNorm1d(2).state_dict(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchCheckpointError, match=r"legacy.*not supported.*torch\.save"):
        load(path)


def test_float8_is_a_clear_error(torch, tmp_path):
    path = _saved(torch, tmp_path, {"x": torch.zeros(2, dtype=torch.float8_e4m3fn)})
    with pytest.raises(TorchCheckpointError, match="float8_e4m3fn.*NumPy"):
        load(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive(torch, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.BatchNorm1d(2)), path)
    with pytest.raises(TorchCheckpointError, match="TorchScript"):
        load(path)


# -- hostile files (no torch needed) ---------------------------------------------------------

def _code_runner(marker):
    """(module, name, argument opcodes) triples that each create ``marker`` when called."""
    code = f"open({str(marker)!r}, 'w').close()"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    argv = _list(_str(sys.executable), _str("-c"), _str(code))
    return {
        "os.system": ("os", "system", _str(command)),
        "posix.system": ("posix", "system", _str(command)),
        "builtins.eval": ("builtins", "eval", _str(code)),
        "builtins.exec": ("builtins", "exec", _str(code)),
        "subprocess.call": ("subprocess", "call", argv),
        "subprocess.check_output": ("subprocess", "check_output", argv),
    }


_ATTACKS = sorted(_code_runner("x"))


def _valid_records():
    return {"0": _BASE.tobytes()}


def _payloads(module, name, arg):
    """The same call smuggled in four ways: top level, inside a tensor's arguments,
    by STACK_GLOBAL (protocol 4) and by INST (protocol 0)."""
    good = _tensor(_storage("0", 12), 0, (12,), (1,))
    evil = _call(_global(module, name), arg)
    return {
        "toplevel": b"\x80\x02" + evil + b".",
        "in_state_dict": _state_dict([("w", good), ("x", evil)]),
        "in_tensor_args": _state_dict([("w", _call(
            _global("torch._utils", "_rebuild_tensor_v2"), _storage("0", 12), _int(0),
            _tuple(_int(12)), _tuple(_int(1)), _FALSE, evil))]),
        "stack_global": b"\x80\x04" + _stack_global(module, name) + _tuple(arg) + b"R.",
        "inst": b"(" + arg + b"i" + module.encode() + b"\n" + name.encode() + b"\n.",
    }


@pytest.mark.parametrize("attack", _ATTACKS)
def test_code_execution_is_refused(tmp_path, attack):
    marker = tmp_path / "pwned"
    module, name, arg = _code_runner(marker)[attack]
    for how, payload in _payloads(module, name, arg).items():
        if how == "toplevel":
            # The fixture is live: plain pickle really runs it (harmless: it creates marker).
            pickle.loads(payload)
            assert marker.exists(), (attack, how)
            marker.unlink()
        path = _write(tmp_path / f"{how}.pt", payload, _valid_records())
        with pytest.raises(UnsafeCheckpointError, match=rf"{module}\.{name}.*not allowed"):
            load(path)
        assert not marker.exists(), (attack, how)


def test_unsafe_error_types(tmp_path):
    path = _write(tmp_path / "e.pt", b"\x80\x02" + _call(_global("os", "system"), _str("true"))
                  + b".")
    with pytest.raises(ValueError):
        load(path)
    with pytest.raises(pickle.UnpicklingError):
        load(path)
    with pytest.raises(UnsafeCheckpointError, match=str(path).replace("\\", "\\\\")):
        load(path)


@pytest.mark.parametrize("module, name", [
    ("collections", "OrderedDict.__init__"),           # attribute lookups are not allowed
    ("torch._utils", "_rebuild_tensor_v2.__globals__"),
    ("torch", "load"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("copyreg", "_reconstructor"),
    ("builtins", "getattr"),
])
def test_only_exact_allowlisted_names(tmp_path, module, name):
    for payload in (b"\x80\x02" + _global(module, name) + b".",
                    b"\x80\x04" + _stack_global(module, name) + b"."):
        path = _write(tmp_path / "g.pt", payload)
        with pytest.raises(UnsafeCheckpointError, match="not allowed"):
            load(path)


def _misuses():
    """Allowed globals used wrongly: (pickle, expected message). The BUILD cases would
    return a non-dict if BUILD succeeded; they must fail in BUILD itself ("corrupt")."""
    good = _tensor(_storage("0", 12), 0, (12,), (1,))
    rebuild = _global("torch._utils", "_rebuild_tensor_v2")
    return {
        "call_storage_type": (_call(_global("torch", "FloatStorage"), _int(3)), "corrupt"),
        "build_on_array": (good + _tuple(_int(1), _tuple(), _str("f4"), _FALSE, _str(""))
                           + b"b", "corrupt"),
        "build_on_rebuilder": (rebuild + b"}" + _str("_fn") + _ORDERED_DICT + b"sb",
                               "corrupt"),
        "slotstate_on_rebuilder": (rebuild + _tuple(b"N", b"}" + _str("_fn") + _ORDERED_DICT
                                                    + b"s") + b"b", "corrupt"),
        "slotstate_on_dtype": (_global("torch", "float32") + _tuple(
            b"N", b"}" + _str("storage") + _global("torch", "float64") + b"s") + b"b",
            "corrupt"),
        "dict_on_storage_type": (_global("torch", "FloatStorage") + b"}" + _str("dtype")
                                 + b"Ns" + b"b", "corrupt"),
        "rebuild_on_string": (_call(rebuild, _str("0"), _int(0), _tuple(), _tuple(), _FALSE,
                                    _call(_ORDERED_DICT)), "storage is str"),
        "bad_persistent_id": (_str("0") + b"Q", "persistent id"),
        "unknown_storage_type": (_tensor(_storage("0", 12, "QInt8Storage"), 0, (12,), (1,)),
                                 "torch.QInt8Storage.*not allowed"),
    }


@pytest.mark.parametrize("how", sorted(_misuses()))
def test_misusing_allowed_globals(tmp_path, how):
    ops, message = _misuses()[how]
    path = _write(tmp_path / "m.pt", b"\x80\x02" + ops + b".", _valid_records())
    with pytest.raises(TorchCheckpointError, match=message):
        load(path)


@pytest.mark.parametrize("offset, size, stride", [
    (10, (3,), (1,)),            # offset + size past the end
    (0, (13,), (1,)),            # size past the end
    (0, (3, 4), (4, 2)),         # stride past the end
    (12, (1,), (1,)),            # offset at the end
    (2**40, (1,), (1,)),         # huge offset
    (0, (2,), (2**62,)),         # huge stride
    (0, (3,), (-1,)),            # negative stride
    (-1, (1,), (1,)),            # negative offset
    (0, (-1,), (1,)),            # negative size
    (0, (3, 4), (1,)),           # size and stride of different lengths
    (0, (2, 2**62), (1, 0)),     # a broadcast too large to allocate
    (13, (0,), (1,)),            # empty tensor, but offset beyond the storage
])
def test_views_past_the_storage(tmp_path, offset, size, stride):
    entries = [("w", _tensor(_storage("0", 12), offset, size, stride))]
    path = _write(tmp_path / "m.pt", _state_dict(entries), _valid_records())
    with pytest.raises(TorchCheckpointError, match="storage|size|stride|offset"):
        load(path)


def test_declared_numel_must_match_record(tmp_path):
    entries = [("w", _tensor(_storage("0", 100), 0, (100,), (1,)))]
    path = _write(tmp_path / "m.pt", _state_dict(entries), _valid_records())
    with pytest.raises(TorchCheckpointError, match=r"archive/data/0.*48 bytes.*100 elements"):
        load(path)


def test_missing_storage_record(tmp_path):
    entries = [("w", _tensor(_storage("7", 12), 0, (12,), (1,)))]
    path = _write(tmp_path / "m.pt", _state_dict(entries), _valid_records())
    with pytest.raises(TorchCheckpointError, match="archive/data/7.*missing"):
        load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(TorchCheckpointError, match="empty"):
        load(path)


@pytest.mark.parametrize("content", [b"hello, this is not a checkpoint",
                                     b"\x89PNG\r\n\x1a\n0000",
                                     np.arange(4.0).tobytes()])
def test_wrong_magic(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(TorchCheckpointError, match=r"junk\.pt.*not a torch\.save checkpoint"):
        load(path)


def test_legacy_magic_without_torch(tmp_path):
    path = tmp_path / "legacy.pt"
    magic = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
    path.write_bytes(b"\x80\x02\x8a\x0a" + magic + b".")
    with pytest.raises(TorchCheckpointError, match="legacy.*not supported"):
        load(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_zip(tmp_path, keep):
    _handmade_file(tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[:int(len(whole) * keep)])
    with pytest.raises(TorchCheckpointError, match=r"cut\.pt.*(truncated|corrupt)"):
        load(path)


def test_corrupt_storage_record(tmp_path):
    _handmade_file(tmp_path / "m.pt")
    data = bytearray((tmp_path / "m.pt").read_bytes())
    at = bytes(data).find(_BASE.tobytes())
    data[at + 5] ^= 0xFF                   # the CRC no longer matches
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(TorchCheckpointError, match="archive/data/0"):
        load(tmp_path / "bad.pt")


def test_missing_data_pkl(tmp_path):
    path = tmp_path / "arrays.npz"         # a zip, but not torch's
    np.savez(path, a=np.arange(3))
    with pytest.raises(TorchCheckpointError, match=r"arrays\.npz.*data\.pkl"):
        load(path)
    path = tmp_path / "nopkl.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data/0", _BASE.tobytes())
    with pytest.raises(TorchCheckpointError, match="archive/data.pkl"):
        load(path)


def test_not_a_state_dict(tmp_path):
    path = _write(tmp_path / "t.pt", b"\x80\x02" + _tensor(_storage("0", 12), 0, (12,), (1,))
                  + b".", _valid_records())
    with pytest.raises(TorchCheckpointError, match="tensor, not a state_dict"):
        load(path)


def test_corrupt_pickle(tmp_path):
    path = _write(tmp_path / "p.pt", b"\x80\x02(((")
    with pytest.raises(TorchCheckpointError, match="corrupt"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.pt")

