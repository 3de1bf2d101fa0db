"""Module outputs into caller-owned buffers: ``forward(x, out=...)`` and
``backward(grad_output, out=...)`` on BatchNorm1d/2d/3d (and SyncBatchNorm, which takes
the same path; its MPI runs are in tests/mpi).

With ``out`` the result is bitwise the array the module returns without it, written into
the buffer; state changes exactly as without it. A bad ``out`` raises before anything
changes (the functional API's messages, docs/errors.md). Values are also checked against
the float64 reference (tests/_reference.py) with the suite's tolerances (tol_for)."""

import numpy as np
import pytest
from _reference import assert_close, backward_batch, forward_batch

import cybn


def _state(m):
    return {k: np.array(v) for k, v in m.state_dict().items()}


def _pair(cls, C, dtype, **kw):
    """Two modules in the same state, with a weight other than ones."""
    a, b = cls(C, dtype=dtype, **kw), cls(C, dtype=dtype, **kw)
    w = np.random.default_rng(1).uniform(0.5, 2, C).astype(dtype)
    a.weight[...] = w
    b.weight[...] = w
    return a, b


@pytest.mark.parametrize("cls,shape,axis", [
    (cybn.BatchNorm1d, (32, 6), 1),
    (cybn.BatchNorm1d, (8, 6, 20), 1),
    (cybn.BatchNorm2d, (4, 6, 5, 5), 1),
    (cybn.BatchNorm2d, (4, 5, 5, 6), -1),   # channels last: out in the input's layout
    (cybn.BatchNorm3d, (2, 6, 3, 3, 3), 1),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_equals_returned_arrays_over_a_training_loop(cls, shape, axis, dtype):
    rng = np.random.default_rng(0)
    C = shape[axis]
    into, plain = _pair(cls, C, np.float32 if dtype == np.float16 else dtype, axis=axis)
    y_buf = np.empty(shape, dtype)
    g_buf = np.empty(shape, dtype)
    for step in range(3):  # the buffers are reused, as a training loop would
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        into.train(step < 2)
        plain.train(step < 2)
        y = into(x, out=y_buf)
        gi = into.backward(g, out=g_buf)
        assert y is y_buf and gi is g_buf
        assert y.tobytes() == plain(x).tobytes()
        assert gi.tobytes() == plain.backward(g).tobytes()
        assert into.grad_weight.tobytes() == plain.grad_weight.tobytes()
        assert all(v.tobytes() == _state(plain)[k].tobytes() for k, v in _state(into).items())


def test_out_against_the_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 5, 7))
    g = rng.standard_normal((64, 5, 7))
    m = cybn.BatchNorm1d(5, dtype=np.float64)
    y = m(x, out=np.empty_like(x))
    gi = m.backward(g, out=np.empty_like(x))
    assert_close(y, forward_batch(x)[0], np.float64)
    assert_close(gi, backward_batch(x, g)[0], np.float64)


@pytest.mark.parametrize("bad,exc,message", [
    (lambda x: np.empty(x.shape, np.float64), TypeError,
     "out must have dtype float32, got float64"),
    (lambda x: np.empty((x.shape[0] + 1, x.shape[1]), np.float32), ValueError,
     "out must have shape (8, 3), got (9, 3)"),
    (lambda x: x, ValueError, "out must not overlap the input arrays"),
    (lambda x: np.asfortranarray(np.empty_like(x)), ValueError,
     "out must have the same memory layout as the input"),
    (lambda x: [], TypeError, "out must be a NumPy array or None, got list"),
])
def test_bad_out_changes_nothing(bad, exc, message):
    rng = np.random.default_rng(3)
    m = cybn.BatchNorm1d(3)
    m(rng.standard_normal((8, 3)).astype(np.float32))
    m.backward(rng.standard_normal((8, 3)).astype(np.float32))
    before, cache, gw = _state(m), m._cache, m.grad_weight.copy()
    x = rng.standard_normal((8, 3)).astype(np.float32)
    with pytest.raises(exc) as info:
        m(x, out=bad(x))
    assert message in str(info.value)
    assert all(v.tobytes() == before[k].tobytes() for k, v in _state(m).items())
    assert m._cache is cache
    g = rng.standard_normal((8, 3)).astype(np.float32)
    m(x)
    out = bad(x)
    with pytest.raises(exc) as info:
        m.backward(g, out=g if out is x else out)  # (the alias case: grad_output itself)
    assert message in str(info.value)
    assert m.grad_weight.tobytes() == gw.tobytes()  # the earlier backward's, untouched


def test_out_is_keyword_only():
    # the second positional argument of forward is the residual of a fused ReLU, which a
    # module without an activation refuses: a buffer meant as out= is never written
    m = cybn.BatchNorm1d(3)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="residual is added before the activation"):
        m(x, np.empty_like(x))
    with pytest.raises(ValueError, match="residual is added before the activation"):
        m.forward(x, np.empty_like(x))
    with pytest.raises(TypeError):
        m.forward(x, None, np.empty_like(x))
