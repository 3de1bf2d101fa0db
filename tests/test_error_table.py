"""docs/errors.md as tests: every bad input of tests/_error_cases.py raises exactly the
documented exception type and message (or matches the documented pattern where the text is
NumPy's), a failing call changes nothing, an accepted call behaves as documented, and the
committed docs/errors.md is exactly what tools/gen_errors.py writes from the same rows.

Rows marked ``bug`` are reported defects: the test still checks that cybn behaves as the
table says (so the table cannot drift) and then reports the row as XFAIL.
"""

import copy
import os
import re
import subprocess
import sys
import textwrap
import warnings

import _error_cases as E
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "errors.md")
GEN = os.path.join(ROOT, "tools", "gen_errors.py")

STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
         "grad_weight", "grad_bias")


def _snapshot(ns):
    m = ns["m"]
    snap = {k: copy.deepcopy(getattr(m, k)) for k in STATE}
    snap["training"] = m.training
    snap["hyper"] = (m.eps, m.momentum)
    snap["arrays"] = {k: ns[k].copy() for k in ("x", "w", "b", "rm", "rv", "g")}
    probe = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    snap["probe"] = (probe, copy.deepcopy(m).backward(probe))
    return snap


def _assert_unchanged(ns, snap, row):
    m = ns["m"]
    for k in STATE:
        a, b = snap[k], getattr(m, k)
        assert (a is None) == (b is None), (row.id, k)
        if a is not None:
            # np.asarray: a row's setup may have replaced an array with a Python value
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (row.id, k, "changed")
    assert m.training == snap["training"], row.id
    assert (m.eps, m.momentum) == snap["hyper"] or row.setup, row.id
    for k, v in snap["arrays"].items():
        assert ns[k].tobytes() == v.tobytes(), (row.id, k, "changed")
    probe, expected = snap["probe"]
    assert copy.deepcopy(m).backward(probe).tobytes() == expected.tobytes(), (
        row.id, "backward cache changed")


def run_row(row):
    """Run one row in a fresh namespace; return (exception or None, namespace)."""
    ns = E.namespace()
    if row.needs == "torch" and ns["torch"] is None:
        pytest.skip("needs torch")
    if row.needs == "little-endian" and sys.byteorder != "little":
        pytest.skip("needs a little-endian machine")
    if row.setup:
        exec(row.setup, ns)  # noqa: S102 - the table's own code
    snap = _snapshot(ns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. NumPy's ComplexWarning, documented per row
        try:
            exec(row.code, ns)  # noqa: S102
        except Exception as exc:  # noqa: BLE001 - compared with the table below
            _assert_unchanged(ns, snap, row)
            return exc, ns
    return None, ns


def _run_in_child(row):
    code = textwrap.dedent(f"""
        import numpy as np, cybn
        {row.code}
        print("survived")
    """)
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("row", E.ROWS, ids=[r.id for r in E.ROWS])
def test_row(row):
    if row.subprocess:  # a row that once crashed the interpreter: run it in a child
        r = _run_in_child(row)
        assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-500:])
    else:
        exc, ns = run_row(row)
        if row.exc is None:
            assert exc is None, f"{row.id}: documented as accepted, raised {exc!r}"
            if row.check:
                exec(row.check, ns)  # noqa: S102
        else:
            assert exc is not None, f"{row.id}: documented to raise {row.exc.__name__}"
            if row.match is None:
                assert type(exc) is row.exc, (row.id, type(exc), exc)
            else:  # NumPy's exceptions may be subclasses (numpy's _ArrayMemoryError)
                assert isinstance(exc, row.exc), (row.id, type(exc), exc)
            if row.message is not None:
                assert str(exc) == row.message, (row.id, str(exc))
            else:
                assert re.search(row.match, str(exc)), (row.id, str(exc))
    if row.bug:
        pytest.xfail("reported bug: " + row.bug)


def test_every_row_has_a_unique_id_and_a_known_group():
    ids = [r.id for r in E.ROWS]
    assert len(ids) == len(set(ids))
    assert {r.group for r in E.ROWS} == set(E.GROUPS)
    for r in E.ROWS:
        assert (r.exc is None) or (r.message is not None) != (r.match is not None) or \
            r.subprocess, r.id


def test_errors_doc_is_generated_from_the_rows():
    if not (os.path.exists(DOC) and os.path.exists(GEN)):
        pytest.skip("docs/ and tools/ are not next to the tests (installed test copy)")
    r = subprocess.run([sys.executable, GEN, "--stdout"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == r.stdout, "docs/errors.md is stale: rerun tools/gen_errors.py"
