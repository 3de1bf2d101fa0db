#!/usr/bin/env python3
"""Write the fuzz harness's seed files: ``python tools/fuzz/corpus.py DIR``.

``DIR/torch/`` gets checkpoints written by torch itself, when it is installed (every dtype
cybn maps, 0-d and empty tensors, shared storages, non-contiguous views, parameters, nested
dicts, state_dicts of real modules, a large one), the hand-made files of the tests
(tests/_torch_files.py: views six ways, both byte orders) and hostile ones (globals that
would run code, views past their storage, a broadcast bomb, a memo bomb, compressed
records). ``DIR/npz/`` gets ``cybn.save`` files of every module kind and option, and
hostile ones (compressed, an object array, a declared shape larger than its data, a
foreign entry).

Prints the pickle-cost factor (tests/_fuzz_oracle.py's estimate ÷ data.pkl's size) of the
torch-written files: docs/security.md and cybn/_torch_io.py's PICKLE_FACTOR cite it.
"""

import io
import os
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))

import _torch_files as T

import cybn
from cybn._torch_io import _pickle_cost


def torch_seeds(torch):
    """(name, object to torch.save)."""
    nn = torch.nn
    torch.manual_seed(0)
    dtypes = {f"dtype_{d}": torch.arange(6).to(getattr(torch, d)).reshape(2, 3)
              for d in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                        "int16", "int8", "uint8", "bool", "complex64", "complex128")}
    base = torch.arange(24.0)
    seeds = [
        ("dtypes", dtypes),
        ("zero_dim_and_empty", {"n": torch.tensor(7), "e": torch.empty(0, 3),
                                "e2": torch.empty(2, 0, dtype=torch.int64)}),
        ("shared_storage", {"a": base, "b": base[3:9], "c": base.view(4, 6)[:, 1:3],
                            "same": base}),
        ("non_contiguous", {"t": torch.arange(12.0).reshape(3, 4).t(),
                            "s": torch.arange(20.0)[::3],
                            "x": torch.arange(4.0).expand(3, 4)}),
        ("parameters", {"w": nn.Parameter(torch.randn(3, 2))}),
        ("nested", {"epoch": 3, "model": nn.Linear(3, 2).state_dict(),
                    "optim": {"lr": 0.1, "state": [torch.ones(2)]}}),
        ("bn1d", nn.BatchNorm1d(8).state_dict()),
        ("sequential", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(4, 2)).state_dict()),
        ("lstm_embedding", {**nn.LSTM(4, 3).state_dict(),
                            **{f"emb.{k}": v for k, v in nn.Embedding(10, 4)
                               .state_dict().items()}}),
        ("large", nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
                                  for _ in range(24)]).state_dict()),
    ]
    return seeds


def handmade_torch_seeds(tmp):
    """Files from the tests' writer: valid, and each kind of hostile file."""
    out = []
    for big in (False, True):
        path = os.path.join(tmp, f"handmade_{'big' if big else 'little'}.pt")
        T._handmade_file(path, big_endian=big)
        out.append(path)
    records = {"0": T._BASE.tobytes()}
    hostile = {
        "code_exec": T._call(T._global("os", "system"), T._str("true")),
        "past_storage": T._tensor(T._storage("0", 12), 10, (3,), (1,)),
        "broadcast_bomb": T._tensor(T._storage("0", 12), 0, (2**20, 2**10), (0, 0)),
        "memo_bomb": b"]r\xff\xff\xff\x7f",                  # LONG_BINPUT 2**31 - 1
    }
    for name, ops in hostile.items():
        path = os.path.join(tmp, f"hostile_{name}.pt")
        T._write(path, T._state_dict([("w", ops)]), records)
        out.append(path)
    path = os.path.join(tmp, "hostile_compressed.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", T._state_dict([("w", T._tensor(
            T._storage("0", 12), 0, (12,), (1,)))]))
        zf.writestr("archive/data/0", T._BASE.tobytes())
    out.append(path)
    return out


def npz_seeds(tmp):
    out = []
    modules = {
        "bn1d": cybn.BatchNorm1d(4),
        "bn2d_f64": cybn.BatchNorm2d(3, dtype=np.float64, momentum=None),
        "bn3d_f16": cybn.BatchNorm3d(2, dtype=np.float16, axis=-1, check_finite=True),
        "no_affine": cybn.BatchNorm1d(5, affine=False),
        "no_stats": cybn.BatchNorm1d(5, track_running_stats=False).eval(),
        "no_bias": cybn.BatchNorm1d(3, bias=False),
        # format 2: the optional entries of batch renormalization and ghost batches
        "renorm": cybn.BatchNorm1d(3, renorm=True, rmax=3.0, dmax=float("inf")),
        "ghost": cybn.BatchNorm2d(2, virtual_batch_size=16),
    }
    for name, module in modules.items():
        path = os.path.join(tmp, f"{name}.npz")
        cybn.save(module, path)
        out.append(path)
    good = dict(np.load(out[0]))
    path = os.path.join(tmp, "hostile_compressed.npz")
    np.savez_compressed(path, **good)
    out.append(path)
    path = os.path.join(tmp, "hostile_foreign_entry.npz")
    np.savez(path, **good, extra=np.arange(3))
    out.append(path)
    # a header declaring 2**40 elements in front of 16 bytes
    path = os.path.join(tmp, "hostile_declared_shape.npz")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(4, np.float32))
    blob = buf.getvalue().replace(b"(4,)", b"(1099511627776,)".ljust(4))
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in good.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, value)
            zf.writestr(f"{key}.npy", blob if key == "weight" else b.getvalue())
    out.append(path)
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1]
    for sub in ("torch", "npz"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    try:
        import torch
    except ImportError:
        torch = None
        print("corpus: torch is not installed: only the hand-made torch files",
              file=sys.stderr)
    factors = []
    if torch is not None:
        for name, obj in torch_seeds(torch):
            path = os.path.join(root, "torch", f"{name}.pt")
            torch.save(obj, path)
            with zipfile.ZipFile(path) as zf:
                pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                data = zf.read(pkl)
            factors.append((_pickle_cost(data, path) / len(data), name))
    handmade_torch_seeds(os.path.join(root, "torch"))
    npz_seeds(os.path.join(root, "npz"))
    n_torch = len(os.listdir(os.path.join(root, "torch")))
    n_npz = len(os.listdir(os.path.join(root, "npz")))
    print(f"corpus: {n_torch} torch files, {n_npz} npz files in {root}")
    if factors:
        lo, hi = min(factors), max(factors)
        print(f"corpus: pickle cost estimate / data.pkl size: {lo[0]:.1f} ({lo[1]}) to "
              f"{hi[0]:.1f} ({hi[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
