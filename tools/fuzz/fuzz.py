#!/usr/bin/env python3
"""Coverage-guided fuzzing of cybn's file readers with atheris (docs/security.md).

    pip install ".[fuzz]"                                   # from the checkout's root
    python tools/fuzz/corpus.py fuzz-seeds                  # seed files (torch optional)
    python tools/fuzz/fuzz.py torch -max_total_time=120 fuzz-work/torch fuzz-seeds/torch
    python tools/fuzz/fuzz.py npz -max_total_time=120 fuzz-work/npz fuzz-seeds/npz

The first argument is the target: ``torch`` (``cybn.load_torch_state_dict``) or ``npz``
(``cybn.load``); the rest are libFuzzer's (``-max_total_time``, ``-timeout``,
``-rss_limit_mb``, ``-max_len``, corpus directories: the first is where new inputs go, and
is made if missing; the seeds stay as they are). The defaults added here: a 10-second limit
per input, 4 GiB RSS, inputs up to 256 KiB.

Every input goes through tests/_fuzz_oracle.py's ``check``: a result, or the reader's
documented ``ValueError`` subclass naming the file; anything else (another exception, a
missing name, memory over the bound, an audit event of code execution, a subprocess, an
opened file or an import) raises, and libFuzzer saves the input as ``crash-*``. Reproduce
one with ``python tools/fuzz/fuzz.py torch crash-...``.

The mutator knows the formats: most mutations open the zip and change one member --
the pickle by its opcodes (delete, duplicate, swap, insert one from the pickle protocol,
set an integer argument to a boundary value), a ``.npy`` header by its fields (shape,
dtype, order), any member by libFuzzer's byte mutations -- or the archive itself (drop,
duplicate or rename a member, compress one); the rest are libFuzzer's byte mutations of
the whole file, which exercise the zip parser.
"""

import io
import os
import pickletools
import random
import struct
import sys
import tracemalloc
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))   # the oracle is shared with the tests

import atheris

with atheris.instrument_imports(include=["cybn", "zipfile", "pickletools", "numpy.lib"]):
    import _fuzz_oracle

    import cybn  # noqa: F401

# Integer arguments worth trying in place of any other: sizes, strides, offsets and memo
# indices at the edges of the checks.
_BOUNDARY = [0, 1, 2, -1, 7, 8, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32,
             2**40, 2**62, 2**63 - 1, -(2**31)]
# Opcodes to insert: every protocol-2 opcode that takes no argument (those with arguments
# come from the input's own, duplicated).
_NO_ARG = [op.code.encode("latin-1") for op in pickletools.opcodes
           if op.arg is None and op.proto <= 4]


def _ops(data):
    """The pickle's opcodes as (start, end, opcode, arg) spans, or None if unparsable."""
    spans = []
    try:
        ops = list(pickletools.genops(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - a mutated pickle may be anything
        return None
    for i, (opcode, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        spans.append((pos, end, opcode, arg))
    return spans


def _encode_int(opcode, value):
    """Re-encode an integer argument for its opcode, or None if it does not fit."""
    try:
        if opcode.name in ("BININT", "LONG_BINPUT", "LONG_BINGET"):
            fmt = "<i" if opcode.name == "BININT" else "<I"
            return opcode.code.encode("latin-1") + struct.pack(fmt, value)
        if opcode.name in ("BININT1", "BINPUT", "BINGET"):
            return opcode.code.encode("latin-1") + struct.pack("<B", value)
        if opcode.name == "BININT2":
            return opcode.code.encode("latin-1") + struct.pack("<H", value)
        if opcode.name == "LONG1":
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            return b"\x8a" + bytes([len(raw)]) + raw
    except (struct.error, OverflowError):
        return None
    return None


def mutate_pickle(data, rng):
    spans = _ops(data)
    if not spans:
        return atheris.Mutate(data, len(data) + 64)
    i = rng.randrange(len(spans))
    start, end, _opcode, _arg = spans[i]
    kind = rng.randrange(5)
    if kind == 0:                                        # delete one opcode
        return data[:start] + data[end:]
    if kind == 1:                                        # duplicate one
        return data[:end] + data[start:end] + data[end:]
    if kind == 2:                                        # swap two
        j = rng.randrange(len(spans))
        a, b = sorted((i, j))
        (s1, e1, _, _), (s2, e2, _, _) = spans[a], spans[b]
        return data[:s1] + data[s2:e2] + data[e1:s2] + data[s1:e1] + data[e2:]
    if kind == 3:                                        # insert an argument-free opcode
        return data[:start] + rng.choice(_NO_ARG) + data[start:]
    ints = [k for k, (_, _, op, a) in enumerate(spans) if isinstance(a, int)]
    if ints:                                             # an integer to a boundary value
        k = rng.choice(ints)
        s, e, op, _ = spans[k]
        new = _encode_int(op, rng.choice(_BOUNDARY))
        if new is not None:
            return data[:s] + new + data[e:]
    return atheris.Mutate(data, len(data) + 64)


def mutate_npy(data, rng):
    """Change one field of a .npy header (shape, dtype, order), or the bytes."""
    head_end = data.find(b"\n")
    if not data.startswith(b"\x93NUMPY") or head_end < 0 or rng.random() < 0.3:
        return atheris.Mutate(data, len(data) + 64)
    header = data[10:head_end].decode("latin-1", "replace")
    choice = rng.randrange(3)
    if choice == 0:
        dims = ", ".join(str(rng.choice(_BOUNDARY + [3, 4])) for _ in range(rng.randrange(4)))
        shape = f"({dims},)" if dims.count(",") == 0 and dims else f"({dims})"
        header = _replace_field(header, "shape", shape)
    elif choice == 1:
        header = _replace_field(header, "descr", repr(rng.choice(
            ["<f4", ">f8", "<f2", "|b1", "<U8", "|O", "<i8", "<c16", "|V4", "<M8[s]"])))
    else:
        header = _replace_field(header, "fortran_order", rng.choice(["True", "False", "1"]))
    body = header.encode("latin-1", "replace")
    return data[:8] + len(body).to_bytes(2, "little") + body + data[head_end:]


def _replace_field(header, field, value):
    key = f"'{field}': "
    at = header.find(key)
    if at < 0:
        return header
    end = at + len(key)
    depth, j = 0, end
    while j < len(header):
        c = header[j]
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0 or (depth == 0 and c == ","):
            break
        j += 1
    return header[:end] + value + header[j:]


def mutate_zip(data, rng):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [(info, zf.read(info)) for info in zf.infolist()]
    except Exception:  # noqa: BLE001 - not a readable zip: mutate the bytes
        return None
    if not members:
        return None
    k = rng.randrange(len(members))
    info, body = members[k]
    action = rng.randrange(10)
    compress = {}
    if action < 7:                                       # mutate one member's content
        if info.filename.endswith(".pkl"):
            body = mutate_pickle(body, rng)
        elif info.filename.endswith(".npy"):
            body = mutate_npy(body, rng)
        else:
            body = atheris.Mutate(body, len(body) + 64)
        members[k] = (info, body)
    elif action == 7:                                    # drop a member
        del members[k]
    elif action == 8:                                    # duplicate or rename one
        name = info.filename + rng.choice(["", "x", "/../data.pkl"])
        members.insert(rng.randrange(len(members) + 1), (zipfile.ZipInfo(name), body))
    else:                                                # compress one
        compress[k] = zipfile.ZIP_DEFLATED
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        warnings.simplefilter("ignore")            # "Duplicate name": wanted here
        for i, (old, content) in enumerate(members):
            new = zipfile.ZipInfo(old.filename, date_time=(1980, 1, 1, 0, 0, 0))
            new.compress_type = compress.get(i, zipfile.ZIP_STORED)
            zf.writestr(new, content)
    return out.getvalue()


def custom_mutator(data, max_size, seed):
    rng = random.Random(seed)
    out = None
    if rng.random() < 0.75:
        out = mutate_zip(data, rng)
    if out is None:
        out = atheris.Mutate(data, max_size)
    return out[:max_size]


def main(argv):
    if len(argv) < 2 or argv[1] not in _fuzz_oracle.BOUNDS:
        print(__doc__, file=sys.stderr)
        return 2
    target = argv[1]

    def one_input(data):
        _fuzz_oracle.check(target, data)

    tracemalloc.start()    # once for the whole run; check() measures each input's peak

    args = [argv[0], *argv[2:]]
    # libFuzzer wants its corpus directories to exist: make the missing ones (a file given
    # instead is an input to reproduce, and is left alone).
    for arg in args[1:]:
        if not arg.startswith("-") and not os.path.exists(arg):
            os.makedirs(arg)
    for flag, value in (("-timeout", "10"), ("-rss_limit_mb", "4096"), ("-max_len", "262144")):
        if not any(a.startswith(flag + "=") for a in args):
            args.insert(1, f"{flag}={value}")
    atheris.Setup(args, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
