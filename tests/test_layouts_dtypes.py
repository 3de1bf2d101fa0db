"""Memory layouts and dtypes.

Every layout (C, Fortran, strided views, negative strides, transposed views,
read-only, unaligned, zero-stride broadcast) must give the C-contiguous
result to tight tolerance (float64 1e-13*|max|, float32/float16 one or two
ulps: 1e-6 / 1e-3), match the float64 oracle, never modify the input, and
produce an output whose layout follows the input when the input is
(permuted-)contiguous and is C order otherwise (docs/semantics.md §9)."""

import numpy as np
import pytest
from _reference import RefBatchNorm1d, assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cybn

SAME_TOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-6, np.dtype(np.float16): 1e-3}


def _neg(base, axes):
    sl = tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(base.ndim))
    return np.ascontiguousarray(base[sl])[sl]


def _strided(base, axis):
    shape = list(base.shape)
    shape[axis] *= 2
    big = np.full(shape, 77.0, dtype=base.dtype)
    sl = tuple(slice(None, None, 2) if i == axis else slice(None) for i in range(base.ndim))
    big[sl] = base
    return big[sl]


def _permuted(base, perm):
    """A view equal to base whose memory order is ``perm`` (a transposed view)."""
    inv = np.argsort(perm)
    return np.ascontiguousarray(base.transpose(perm)).transpose(inv)


def _readonly(a):
    a = a.copy(order="K")
    a.flags.writeable = False
    return a


def _unaligned(base):
    raw = np.zeros(base.nbytes + 1, dtype=np.uint8)
    a = np.frombuffer(raw.data, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
    a[...] = base
    return a


def layouts(base):
    """name -> (array equal to base, expected output layout: 'C', 'follow' or None)."""
    out = {
        "C": (np.ascontiguousarray(base), "C"),
        "F": (np.asfortranarray(base), "follow"),
        "rows_step2": (_strided(base, 0), "C"),
        "channels_step2": (_strided(base, 1), "C"),
        "neg_rows": (_neg(base, {0}), "C"),
        "neg_channels": (_neg(base, {1}), "C"),
        "neg_all": (_neg(base, set(range(base.ndim))), "C"),
        "readonly": (_readonly(base), "C"),
        "readonly_F": (_readonly(np.asfortranarray(base)), "follow"),
        "unaligned": (_unaligned(base), None),
    }
    if base.ndim == 2:
        out["transposed"] = (_permuted(base, (1, 0)), "follow")
        out["neg_transposed"] = (_neg(np.asfortranarray(base), {0}), "C")
    else:
        out["L_step2"] = (_strided(base, 2), "C")
        out["neg_L"] = (_neg(base, {2}), "C")
        out["channels_last"] = (_permuted(base, (0, 2, 1)), "follow")
        out["LCN"] = (_permuted(base, (2, 1, 0)), "follow")
        out["CNL"] = (_permuted(base, (1, 0, 2)), "follow")
        out["F"] = (np.asfortranarray(base), "follow")
        out["strided_transposed"] = (_strided(_permuted(base, (0, 2, 1)), 0), "C")
    for name, (a, _) in out.items():
        assert np.array_equal(a, base), name
    return out


def check_layout(out, x, rule):
    if rule == "C":
        assert out.flags.c_contiguous, out.strides
    elif rule == "follow":
        order = np.argsort([-abs(s) for s in x.strides], kind="stable")
        assert out.transpose(order).flags.c_contiguous, (x.strides, out.strides)


def run_module(x, g, warm, module_dtype, training):
    m = cybn.BatchNorm1d(x.shape[1], dtype=module_dtype)
    m.weight[...] = np.linspace(0.5, 2.0, x.shape[1])
    m.bias[...] = np.linspace(-1.0, 1.0, x.shape[1])
    m(warm)
    m.train(training)
    y = m(x)
    gi = m.backward(g)
    return m, y, gi


MODULE_DTYPE = {np.float16: np.float32, np.float32: np.float32, np.float64: np.float64}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(24, 5), (6, 5, 9)])
@pytest.mark.parametrize("training", [True, False])
def test_every_layout_matches_c_order(rng, dtype, shape, training):
    base = (rng.standard_normal(shape) * 1.5 + 0.25).astype(dtype)
    gbase = rng.standard_normal(shape).astype(dtype)
    warm = (rng.standard_normal(shape) * 0.7 + 1.0).astype(dtype)
    mdt = MODULE_DTYPE[dtype]
    m_c, y_c, gi_c = run_module(base.copy(), gbase.copy(), warm, mdt, training)
    ref = RefBatchNorm1d(shape[1], dtype=mdt)
    ref.set_weight(np.linspace(0.5, 2.0, shape[1]))
    ref.set_bias(np.linspace(-1.0, 1.0, shape[1]))
    ref.forward(warm)
    ref.training = training
    assert_close(y_c, ref.forward(base))
    dx, _dw, _db = ref.backward(gbase)
    assert_close(
        gi_c,
        dx,
        rtol=1e-10 if dtype == np.float64 else None,
        atol=1e-11 if dtype == np.float64 else None,
    )
    tol = SAME_TOL[np.dtype(dtype)]
    for name, (x, rule) in layouts(base).items():
        for gname, g in [("gC", gbase.copy()), ("g_same_layout", layouts(gbase)[name][0])]:
            x_before = x.copy(order="K")
            g_before = g.copy(order="K")
            m, y, gi = run_module(x, g, warm, mdt, training)
            what = f"{name}/{gname}"
            assert y.dtype == np.dtype(dtype) and y.shape == shape, what
            np.testing.assert_allclose(
                y, y_c, rtol=tol, atol=tol * max(1, np.abs(y_c).max()), err_msg=what
            )
            np.testing.assert_allclose(
                gi, gi_c, rtol=tol, atol=tol * max(1, np.abs(gi_c).max()), err_msg=what
            )
            for a in ("running_mean", "running_var", "grad_weight", "grad_bias"):
                mt = SAME_TOL[np.dtype(mdt)]
                np.testing.assert_allclose(
                    getattr(m, a), getattr(m_c, a), rtol=mt, atol=mt, err_msg=f"{what} {a}"
                )
            assert np.array_equal(x, x_before) and np.array_equal(g, g_before), (
                f"{what}: input modified"
            )
            if gname == "gC":
                check_layout(y, x, rule)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_readonly_input_and_grad(rng, dtype):
    x = _readonly((rng.standard_normal((10, 4)) + 1).astype(dtype))
    g = _readonly(rng.standard_normal((10, 4)).astype(dtype))
    m = cybn.BatchNorm1d(4, dtype=dtype)
    y = m(x)
    gi = m.backward(g)
    assert y.flags.writeable and gi.flags.writeable
    ref = RefBatchNorm1d(4, dtype=dtype)
    assert_close(y, ref.forward(x))
    m.eval()
    m(x)


def test_zero_stride_broadcast_input(rng):
    row = np.array([[0.5, -3.0, 1000.0, 7.25]])  # sums of copies are exact
    x = np.broadcast_to(row, (6, 4))  # read-only, stride 0 along N: zero variance
    m = cybn.BatchNorm1d(4, dtype=np.float64)
    m.bias[...] = [1, 2, 3, 4]
    y = m(x)
    np.testing.assert_array_equal(y, np.broadcast_to([1.0, 2.0, 3.0, 4.0], (6, 4)))
    x3 = np.broadcast_to(row.astype(np.float32)[:, :, None], (3, 4, 5))
    y3 = cybn.BatchNorm1d(4)(x3)
    assert np.all(y3 == 0)


@pytest.mark.parametrize("shape", [(24, 5), (6, 5, 9)])
def test_float64_input_into_float32_module_layouts(rng, shape):
    base = rng.standard_normal(shape) * 2 + 1
    y_c = cybn.BatchNorm1d(shape[1])(base)
    for name, (x, _) in layouts(base).items():
        y = cybn.BatchNorm1d(shape[1])(x)
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, y_c, rtol=1e-13, atol=1e-13 * np.abs(y_c).max(), err_msg=name)


# --------------------------------------------------------------------------
# property-based: random shape x layout x dtype x mode vs the oracle
# --------------------------------------------------------------------------


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3]))
    N = draw(st.integers(2, 9))
    C = draw(st.integers(1, 5))
    shape = (N, C) if ndim == 2 else (N, C, draw(st.integers(1, 6)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(sorted(layouts(np.zeros(shape)).keys())))
    training = draw(st.booleans())
    momentum = draw(st.sampled_from([0.1, 0.5, None]))
    return shape, dtype, seed, layout, training, momentum


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases())
def test_property_random_layouts(case):
    shape, dtype, seed, layout, training, momentum = case
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    x = layouts(base)[layout][0]
    m = cybn.BatchNorm1d(shape[1], momentum=momentum, dtype=dtype)
    ref = RefBatchNorm1d(shape[1], momentum=momentum, dtype=dtype)
    w = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    m.weight[...] = w
    ref.set_weight(w)
    warm = (rng.standard_normal(shape) + 2).astype(dtype)
    m(warm)
    ref.forward(warm)
    m.train(training)
    ref.training = training
    y = m(x)
    assert_close(y, ref.forward(base))
    gi = m.backward(g)
    dx, _dw, _db = ref.backward(g)
    if dtype == np.float64:
        assert_close(gi, dx, rtol=1e-9, atol=1e-10)
    else:
        assert_close(gi, dx, rtol=1e-4, atol=1e-4)
    assert_close(m.running_mean, ref.running_mean)
    assert_close(m.running_var, ref.running_var)
    assert np.array_equal(x, base)
