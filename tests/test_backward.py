"""BatchNorm1d.backward: golden vectors T4-T6, the float64 oracle (docs/semantics.md §5
formulas written independently in _reference.py) and central finite
differences of the scalar loss sum(y * g) with a random g.

Tolerances: float64 vs oracle rtol 1e-10 / atol 1e-11*|max| (dx involves
cancellation); float32 1e-5*|max|; float16 grad_input 2e-3*|max|.
Finite differences (h = 1e-6, float64): rtol 1e-6, atol 1e-7*|max|."""

import numpy as np
import pytest
from _reference import (
    T1_RM,
    T1_RV,
    T4_DBETA_CH0,
    T4_DGAMMA_CH0,
    T4_DX_CH0,
    T4_DY,
    T4_X,
    T5_B,
    T5_DBETA,
    T5_DGAMMA,
    T5_DX,
    T5_DY,
    T5_W,
    T5_X,
    T5_Y,
    T6_DBETA,
    T6_DGAMMA,
    T6_DX,
    T6_Y,
    RefBatchNorm1d,
    assert_close,
    backward_batch,
    backward_eval,
    numerical_grad,
)
from _reference import (
    gold as _gold,
)

import cybn

DTYPES = [np.float32, np.float64]
SHAPES = [(16, 3), (8, 4, 5)]


def gold(actual, expected, dtype):
    _gold(actual, expected, dtype, f32_tol=2e-6)  # backward sums cancel more in float32


def grad_tol(dtype):
    return (1e-10, 1e-11) if np.dtype(dtype) == np.float64 else (1e-5, 1e-5)


def check_grads(m, gi, ref_grads, in_dtype):
    dx, dw, db = ref_grads
    r, a = grad_tol(in_dtype if np.dtype(in_dtype) != np.float16 else np.float32)
    if np.dtype(in_dtype) == np.float16:
        assert_close(gi, dx, np.float16)
    else:
        assert_close(gi, dx, rtol=r, atol=a, err_msg="grad_input")
    r, a = grad_tol(m.dtype)
    if m.weight is not None:
        assert m.grad_weight.dtype == m.dtype and m.grad_weight.shape == (m.num_features,)
        assert_close(m.grad_weight, dw, rtol=r, atol=a, err_msg="grad_weight")
    else:
        assert m.grad_weight is None
    if m.bias is not None:
        assert m.grad_bias.dtype == m.dtype and m.grad_bias.shape == (m.num_features,)
        assert_close(m.grad_bias, db, rtol=r, atol=a, err_msg="grad_bias")
    else:
        assert m.grad_bias is None


# --------------------------------------------------------------------------
# golden vectors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t5_t6(dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype)
    m.weight[...] = T5_W
    m.bias[...] = T5_B
    x = T5_X.astype(dtype)
    dy = T5_DY.astype(dtype)
    gold(m(x), T5_Y, dtype)
    gi = m.backward(dy)
    assert gi.dtype == np.dtype(dtype) and gi.shape == (3, 2)
    gold(gi, T5_DX, dtype)
    gold(m.grad_weight, T5_DGAMMA, dtype)
    gold(m.grad_bias, T5_DBETA, dtype)
    gold(m.running_mean, T1_RM, dtype)
    gold(m.running_var, T1_RV, dtype)
    m.eval()
    gold(m(x), T6_Y, dtype)
    gi = m.backward(dy)
    gold(gi, T6_DX, dtype)
    gold(m.grad_weight, T6_DGAMMA, dtype)
    gold(m.grad_bias, T6_DBETA, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t4_zero_variance_backward(dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype)
    m(T4_X.astype(dtype))
    gi = m.backward(T4_DY.astype(dtype))
    assert np.all(np.isfinite(gi))
    np.testing.assert_allclose(gi[:, 0], T4_DX_CH0, atol=1e-4, rtol=1e-6)
    np.testing.assert_allclose(
        gi[:, 0],
        np.array([-1.0, 0.0, 1.0]) / np.sqrt(1e-5),
        rtol=1e-9 if dtype is np.float64 else 1e-6,
    )
    assert m.grad_weight[0] == T4_DGAMMA_CH0
    assert m.grad_bias[0] == T4_DBETA_CH0
    assert np.all(gi[:, 1] == 0) and m.grad_weight[1] == 0 and m.grad_bias[1] == 0


# --------------------------------------------------------------------------
# against the oracle
# --------------------------------------------------------------------------


def make(C, dtype, rng, **kw):
    m = cybn.BatchNorm1d(C, dtype=dtype, **kw)
    r = RefBatchNorm1d(C, dtype=dtype, **kw)
    if m.weight is not None:
        w = (rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)).astype(dtype)
        m.weight[...] = w
        r.set_weight(w)
    if m.bias is not None:
        b = rng.standard_normal(C).astype(dtype)
        m.bias[...] = b
        r.set_bias(b)
    return m, r


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "kw", [{}, {"affine": False}, {"bias": False}, {"track_running_stats": False}]
)
@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_reference(rng, dtype, shape, kw, training):
    C = shape[1]
    m, r = make(C, dtype, rng, **kw)
    warm = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    m(warm)
    r.forward(warm)
    m.train(training)
    r.training = training
    x = (rng.standard_normal(shape) * 1.5 - 0.5).astype(dtype)
    m(x)
    r.forward(x)
    g = rng.standard_normal(shape).astype(dtype)
    g_copy, x_copy = g.copy(), x.copy()
    state = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    gi = m.backward(g)
    assert gi.shape == shape and gi.dtype == np.dtype(dtype)
    check_grads(m, gi, r.backward(g), dtype)
    assert np.array_equal(g, g_copy) and np.array_equal(x, x_copy)
    for k, v in m.state_dict().items():
        assert np.array_equal(v, state[k]), k


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_float16_input(rng, shape):
    m, r = make(shape[1], np.float32, rng)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float16)
    m(x)
    r.forward(x)
    g = rng.standard_normal(shape).astype(np.float16)
    gi = m.backward(g)
    assert gi.dtype == np.float16
    check_grads(m, gi, r.backward(g), np.float16)


def test_backward_uses_last_forward(rng):
    m, _r = make(3, np.float64, rng)
    x1 = rng.standard_normal((6, 3))
    x2 = rng.standard_normal((9, 3)) * 3
    m(x1)
    m(x2)
    g = rng.standard_normal((9, 3))
    gi = m.backward(g)
    w = m.weight.astype(np.float64)
    check_grads(m, gi, backward_batch(x2, g, w), np.float64)


def test_backward_uses_mode_of_last_forward(rng):
    m, _ = make(3, np.float64, rng)
    x = rng.standard_normal((6, 3))
    m(x)
    m.eval()  # switching mode after the forward must not change the backward
    g = rng.standard_normal((6, 3))
    gi = m.backward(g)
    check_grads(m, gi, backward_batch(x, g, m.weight), np.float64)
    m(x)  # eval forward
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    m.train()
    gi = m.backward(g)
    check_grads(m, gi, backward_eval(x, g, rm, rv, m.weight), np.float64)


def test_grads_are_overwritten_not_accumulated(rng):
    m, r = make(3, np.float64, rng)
    x = rng.standard_normal((6, 3))
    m(x)
    r.forward(x)
    g = rng.standard_normal((6, 3))
    gi1 = m.backward(g).copy()
    gw1, gb1 = m.grad_weight.copy(), m.grad_bias.copy()
    gi2 = m.backward(g)
    np.testing.assert_array_equal(gi1, gi2)
    np.testing.assert_array_equal(m.grad_weight, gw1)
    np.testing.assert_array_equal(m.grad_bias, gb1)
    g2 = rng.standard_normal((6, 3))
    gi3 = m.backward(g2)
    check_grads(m, gi3, r.backward(g2), np.float64)


def test_backward_does_not_alias_inputs(rng):
    m, _ = make(3, np.float64, rng)
    x = rng.standard_normal((6, 3))
    y = m(x)
    g = rng.standard_normal((6, 3))
    gi = m.backward(g)
    assert not np.shares_memory(gi, g) and not np.shares_memory(gi, x)
    assert not np.shares_memory(gi, y)
    assert not np.shares_memory(m.grad_weight, m.weight)


# --------------------------------------------------------------------------
# finite differences (float64)
# --------------------------------------------------------------------------

FD_RTOL, FD_ATOL = 1e-6, 1e-7


def fd_close(analytic, numeric, what):
    scale = max(1.0, float(np.max(np.abs(numeric))))
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL * scale, err_msg=what)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 1)])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_stats", "eval_attr_untracked"])
def test_finite_differences(rng, shape, mode):
    C = shape[1]
    kw = {"track_running_stats": False} if mode == "eval_no_stats" else {}
    m = cybn.BatchNorm1d(C, dtype=np.float64, **kw)
    m.weight[...] = rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)
    m.bias[...] = rng.standard_normal(C)
    if mode != "eval_no_stats":
        for _ in range(2):
            m(rng.standard_normal(shape) * 2 + 1)
    if mode == "eval_attr_untracked":
        m.track_running_stats = False
    if mode != "train":
        m.eval()
    x = rng.standard_normal(shape) * 1.7 + 0.3
    g = rng.standard_normal(shape)

    def loss():
        return float(np.sum(m(x) * g))

    loss()
    gi = m.backward(g).copy()
    gw, gb = m.grad_weight.copy(), m.grad_bias.copy()
    fd_close(gi, numerical_grad(loss, x), "grad_input")
    fd_close(gw, numerical_grad(loss, m.weight), "grad_weight")
    fd_close(gb, numerical_grad(loss, m.bias), "grad_bias")
    # g is non-uniform, so dx is not trivially zero (except n == 2 with batch stats,
    # where y = +-1 whatever x is and dx is ~eps-small)
    if mode in ("eval", "eval_attr_untracked") or np.prod(shape) // C > 2:
        assert np.max(np.abs(gi)) > 1e-3


def test_finite_differences_float64_input_float32_module(rng):
    m = cybn.BatchNorm1d(3)
    x = rng.standard_normal((6, 3)) * 2 + 1
    g = rng.standard_normal((6, 3))

    def loss():
        return float(np.sum(m(x) * g))

    loss()
    gi = m.backward(g)
    assert gi.dtype == np.float64
    fd_close(gi, numerical_grad(loss, x), "grad_input")
