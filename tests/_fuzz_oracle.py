"""What cybn's file readers may do with any input: the oracle of the fuzz harness
(tools/fuzz/fuzz.py) and of the regression tests (tests/test_fuzz_regressions.py).

For every input, :func:`check` runs one reader on it and allows exactly:

* a result: ``load_torch_state_dict`` -> a ``collections.OrderedDict`` whose arrays own
  their memory; ``cybn.load`` -> a ``BatchNorm1d/2d/3d``;
* or the reader's documented exception, naming the file: ``TorchCheckpointError`` (and its
  subclass ``UnsafeCheckpointError``) or ``StateFileError``, both ``ValueError``.

Anything else fails: another exception type, a message without the file's name, memory
beyond the stated bound (tracemalloc's peak over the call, docs/security.md), or an audit
event of code execution, a subprocess, a file opened or a module imported while the reader
runs (:func:`sys.addaudithook`: the reader gets an in-memory file, so it has no reason to
open one). A hang is the caller's to catch (libFuzzer's ``-timeout``; the tests' own).
"""

import collections
import io
import sys
import tracemalloc
import zipfile

import numpy as np

import cybn
from cybn._torch_io import ARRAY_FACTOR, MEMORY_CONSTANT, PICKLE_FACTOR

NAME = "fuzz-input.bin"   # the file name every error message must carry

# The bounds of docs/security.md, in bytes, for an input of S bytes.
BOUNDS = {
    "torch": lambda s: (1 + PICKLE_FACTOR + ARRAY_FACTOR) * s + 2 * MEMORY_CONSTANT,
    "npz": lambda s: 4 * s + 2**20,
}

# Audit events (https://docs.python.org/3/library/audit_events.html) no reader may raise.
_FORBIDDEN_PREFIXES = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                       "os.startfile", "subprocess.", "exec", "ctypes.", "socket.", "open",
                       "import", "os.remove", "os.rename", "os.unlink", "shutil.",
                       "webbrowser.", "pickle.find_class", "builtins.input")

_watch = {"on": False, "events": []}


def _hook(event, args):
    if _watch["on"] and event.startswith(_FORBIDDEN_PREFIXES):
        _watch["events"].append((event, repr(args)[:200]))


_hook_installed = False


def _warm_up():
    """Import what the readers import lazily (zipfile's cp437 codec for names without the
    UTF-8 flag; pickle's codecs for its text opcodes, found by the fuzzer; unicodedata for
    identifiers in a .npy header, which ast parses), so that the watch sees only the input's doing:
    read one valid file of each kind."""
    for codec in ("cp437", "raw_unicode_escape", "unicode_escape", "latin-1", "ascii"):
        b"x".decode(codec)      # zipfile's names; pickle's UNICODE, STRING, BINSTRING
    import unicodedata  # noqa: F401 - .npy headers are parsed by ast, which may need it
    buf = io.BytesIO()
    cybn.save(cybn.BatchNorm1d(2), buf)
    cybn.load(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:   # the smallest state_dict: {} (protocol 2)
        zf.writestr("archive/data.pkl", b"\x80\x02ccollections\nOrderedDict\n)R.")
    cybn.load_torch_state_dict(io.BytesIO(buf.getvalue()))


def _install():
    global _hook_installed
    if not _hook_installed:
        _warm_up()
        sys.addaudithook(_hook)        # cannot be removed: harmless while _watch is off
        _hook_installed = True


class NamedBytesIO(io.BytesIO):
    """An in-memory file with a name, as ``open()`` gives one."""

    name = NAME


def _readers():
    return {
        "torch": (cybn.load_torch_state_dict, cybn.TorchCheckpointError),
        "npz": (cybn.load, cybn.StateFileError),
    }


def _owned_arrays(value):
    """Every ndarray inside ``value`` (dicts, lists, tuples, at any depth) owns its memory;
    walked with a stack, not recursion, so a deep result cannot overflow the check."""
    todo, seen = [value], set()
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            assert item.base is None or item.size == 0 or item.flags.owndata, \
                "the result holds an array that does not own its memory"
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)


def check(target, data):
    """Run reader ``target`` ("torch" or "npz") on ``data``; AssertionError if not allowed.

    Returns the result, or the documented exception it raised (for the caller's counts).
    """
    _install()
    reader, documented = _readers()[target]
    file = NamedBytesIO(data)
    # Trace for this call only, unless the caller traces already (the fuzz harness keeps it
    # on): a test process must not go on tracing every allocation after it.
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    _watch["events"] = []
    _watch["on"] = True
    try:
        result = reader(file)
    except documented as exc:
        result = exc
        assert NAME in str(exc), f"{type(exc).__name__} does not name the file: {exc}"
    except Exception as exc:
        raise AssertionError(f"{target}: undocumented {type(exc).__name__}: {exc}") from exc
    finally:
        _watch["on"] = False
        peak = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()
    assert not _watch["events"], f"{target}: forbidden audit events {_watch['events'][:5]}"
    bound = BOUNDS[target](len(data))
    assert peak <= bound, (f"{target}: {peak} bytes allocated for a {len(data)}-byte file, "
                           f"over the bound {bound}")
    if isinstance(result, Exception):
        return result
    if target == "torch":
        assert isinstance(result, collections.OrderedDict), type(result)
        _owned_arrays(result)
    else:
        assert isinstance(result, (cybn.BatchNorm1d, cybn.BatchNorm2d, cybn.BatchNorm3d))
        repr(result)
    return result
