"""cybn.functional: batch_norm, batch_norm_forward, batch_norm_backward
against the float64 oracle (torch comparisons live in test_torch_parity.py).

Tolerances: float64 rtol/atol 1e-12*|max| (outputs), 1e-10/1e-11 (grads);
float32 1e-5*|max|; float16 outputs 2e-3*|max|."""

import numpy as np
import pytest
from _reference import (
    assert_close,
    backward_batch,
    backward_eval,
    batch_stats,
    forward_batch,
    forward_eval,
    numerical_grad,
    update_running,
)

import cybn
import cybn.functional as F

SHAPES = [(12, 3), (5, 3, 7)]
IN_DTYPES = [np.float16, np.float32, np.float64]


def compute_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def data(rng, shape, dtype, scale=2.0, offset=0.5):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def vec(rng, C, dtype, kind):
    if kind == "w":
        return (rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)).astype(dtype)
    if kind == "rv":
        return rng.uniform(0.5, 2, C).astype(dtype)
    return rng.standard_normal(C).astype(dtype)


def grad_tol(dtype):
    return {
        np.dtype(np.float64): (1e-10, 1e-11),
        np.dtype(np.float32): (1e-5, 1e-5),
        np.dtype(np.float16): (2e-3, 2e-3),
    }[np.dtype(dtype)]


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 1, 0.75])
def test_batch_norm_training_updates_in_place(rng, dtype, shape, momentum):
    C = shape[1]
    sdt = compute_dtype(dtype)
    x = data(rng, shape, dtype)
    w, b = vec(rng, C, sdt, "w"), vec(rng, C, sdt, "b")
    rm, rv = vec(rng, C, sdt, "b"), vec(rng, C, sdt, "rv")
    rm0, rv0, x0 = rm.copy(), rv.copy(), x.copy()
    rm_id, rv_id = id(rm), id(rv)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=1e-5)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    assert_close(y, forward_batch(x, w, b, 1e-5)[0])
    mean, _, var_u = batch_stats(x)
    erm, erv = update_running(rm0, rv0, mean, var_u, float(momentum))
    assert id(rm) == rm_id and id(rv) == rv_id and rm.dtype == sdt
    assert_close(rm, erm, sdt)
    assert_close(rv, erv, sdt)
    assert np.array_equal(x, x0)


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_training_without_running_stats(rng, dtype, shape):
    x = data(rng, shape, dtype)
    y = F.batch_norm(x, None, None, training=True)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, forward_batch(x)[0])


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(1, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_eval(rng, dtype, shape, affine):
    C = shape[1]
    sdt = compute_dtype(dtype)
    x = data(rng, shape, dtype)
    rm, rv = vec(rng, C, sdt, "b"), vec(rng, C, sdt, "rv")
    w, b = (vec(rng, C, sdt, "w"), vec(rng, C, sdt, "b")) if affine else (None, None)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, forward_eval(x, rm, rv, w, b, 1e-3))
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


def test_batch_norm_weight_only_and_bias_only(rng):
    x = data(rng, (9, 4), np.float64)
    w = vec(rng, 4, np.float64, "w")
    b = vec(rng, 4, np.float64, "b")
    assert_close(F.batch_norm(x, None, None, w, None, training=True), forward_batch(x, w, None)[0])
    assert_close(F.batch_norm(x, None, None, None, b, training=True), forward_batch(x, None, b)[0])


def test_batch_norm_default_is_eval(rng):
    x = data(rng, (9, 4), np.float64)
    rm, rv = vec(rng, 4, np.float64, "b"), vec(rng, 4, np.float64, "rv")
    assert_close(F.batch_norm(x, rm, rv), forward_eval(x, rm, rv))


def test_batch_norm_n_threads_kwarg(rng):
    x = data(rng, (64, 8, 9), np.float64)
    ys = [F.batch_norm(x, None, None, training=True, n_threads=k) for k in (1, 2)]
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(ys[0], forward_batch(x)[0])


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2), (3, 3, 0)])
def test_batch_norm_empty(rng, shape):
    rm, rv = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    y = F.batch_norm(np.zeros(shape), rm, rv, training=True)
    assert y.shape == shape and y.dtype == np.float64
    assert np.array_equal(rm, [1.0, 2.0, 3.0]) and np.array_equal(rv, [4.0, 5.0, 6.0])


# --------------------------------------------------------------------------
# batch_norm_forward
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_stats", [True, False])
def test_forward_training_saves_float64_stats(rng, dtype, shape, with_stats):
    C = shape[1]
    sdt = compute_dtype(dtype)
    x = data(rng, shape, dtype, offset=3.0)
    w, b = vec(rng, C, sdt, "w"), vec(rng, C, sdt, "b")
    rm, rv = (np.zeros(C, sdt), np.ones(C, sdt)) if with_stats else (None, None)
    out, save_mean, save_invstd = F.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
    y, mean, invstd, var_u = forward_batch(x, w, b, 1e-5)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    assert_close(out, y)
    assert save_mean.dtype == np.float64 and save_mean.shape == (C,)
    assert save_invstd.dtype == np.float64 and save_invstd.shape == (C,)
    # statistics of the (rounded) input, accumulated in float64: tight
    r = 1e-12 if np.dtype(dtype) == np.float64 else 1e-7
    assert_close(save_mean, mean, np.float64, rtol=r, atol=r)
    r = 1e-12 if np.dtype(dtype) == np.float64 else 1e-6
    assert_close(save_invstd, invstd, np.float64, rtol=r, atol=r)
    if with_stats:
        assert_close(rm, 0.1 * mean, sdt)
        assert_close(rv, 0.9 + 0.1 * var_u, sdt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_eval_with_stats_saves_empty(rng, dtype):
    x = data(rng, (6, 3), dtype)
    rm, rv = vec(rng, 3, dtype, "b"), vec(rng, 3, dtype, "rv")
    out, sm, si = F.batch_norm_forward(x, None, None, rm, rv, False, 0.1, 1e-5)
    assert sm.shape == (0,) and si.shape == (0,)
    assert_close(out, forward_eval(x, rm, rv))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_forward_out_argument(rng, dtype, training):
    x = data(rng, (7, 3, 4), dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    res, _, _ = F.batch_norm_forward(x, None, None, rm, rv, training, 0.1, 1e-5, out=out)
    expected = forward_batch(x)[0] if training else forward_eval(x, np.zeros(3), np.ones(3))
    assert_close(out, expected)
    assert np.shares_memory(res, out)
    assert_close(res, expected)


# --------------------------------------------------------------------------
# batch_norm_backward
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_backward_training(rng, dtype, shape, with_weight):
    C = shape[1]
    sdt = compute_dtype(dtype)
    x = data(rng, shape, dtype)
    g = data(rng, shape, dtype, scale=1.0, offset=0.2)
    w = vec(rng, C, sdt, "w") if with_weight else None
    _, sm, si = F.batch_norm_forward(x, w, None, None, None, True, 0.1, 1e-5)
    x0, g0 = x.copy(), g.copy()
    gi, gw, gb = F.batch_norm_backward(g, x, w, sm, si, training=True, eps=1e-5)
    dx, dw, db = backward_batch(x, g, w, 1e-5)
    assert gi.dtype == np.dtype(dtype) and gi.shape == shape
    assert gw.dtype == sdt and gb.dtype == sdt and gw.shape == (C,) and gb.shape == (C,)
    r, a = grad_tol(dtype)
    assert_close(gi, dx, rtol=r, atol=a)
    r, a = grad_tol(sdt)
    assert_close(gw, dw, rtol=r, atol=a)
    assert_close(gb, db, rtol=r, atol=a)
    assert np.array_equal(x, x0) and np.array_equal(g, g0)


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_backward_eval(rng, dtype, shape, with_weight):
    C = shape[1]
    sdt = compute_dtype(dtype)
    x = data(rng, shape, dtype)
    g = data(rng, shape, dtype, scale=1.0, offset=0.2)
    w = vec(rng, C, sdt, "w") if with_weight else None
    rm, rv = vec(rng, C, sdt, "b"), vec(rng, C, sdt, "rv")
    _, sm, si = F.batch_norm_forward(x, w, None, rm, rv, False, 0.1, 1e-5)
    gi, gw, gb = F.batch_norm_backward(
        g, x, w, sm, si, training=False, running_mean=rm, running_var=rv, eps=1e-5
    )
    dx, dw, db = backward_eval(x, g, rm, rv, w, 1e-5)
    assert gi.dtype == np.dtype(dtype) and gw.dtype == sdt and gb.dtype == sdt
    r, a = grad_tol(dtype)
    assert_close(gi, dx, rtol=r, atol=a)
    r, a = grad_tol(sdt)
    assert_close(gw, dw, rtol=r, atol=a)
    assert_close(gb, db, rtol=r, atol=a)


def test_backward_weight_dtype_decides_grad_dtype(rng):
    x = data(rng, (8, 3), np.float64)
    g = data(rng, (8, 3), np.float64)
    w = vec(rng, 3, np.float32, "w")
    _, sm, si = F.batch_norm_forward(x, w, None, None, None, True, 0.1, 1e-5)
    gi, gw, gb = F.batch_norm_backward(g, x, w, sm, si)
    assert gi.dtype == np.float64 and gw.dtype == np.float32 and gb.dtype == np.float32
    dx, dw, _db = backward_batch(x, g, w)
    assert_close(gi, dx, rtol=1e-10, atol=1e-11)
    assert_close(gw, dw, np.float32)


def test_backward_out_argument(rng):
    x = data(rng, (8, 3, 2), np.float64)
    g = data(rng, (8, 3, 2), np.float64)
    _, sm, si = F.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    out = np.full(x.shape, np.nan)
    gi, _, _ = F.batch_norm_backward(g, x, None, sm, si, out=out)
    dx = backward_batch(x, g)[0]
    assert_close(out, dx, rtol=1e-10, atol=1e-11)
    assert np.shares_memory(gi, out)


def test_backward_empty(rng):
    x = np.zeros((0, 3))
    _, sm, si = F.batch_norm_forward(x, np.ones(3), np.zeros(3), None, None, True, 0.1, 1e-5)
    gi, gw, gb = F.batch_norm_backward(np.zeros((0, 3)), x, np.ones(3), sm, si)
    assert gi.shape == (0, 3)
    assert np.array_equal(gw, np.zeros(3)) and np.array_equal(gb, np.zeros(3))


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_backward_finite_differences(rng, shape, training):
    C = shape[1]
    x = rng.standard_normal(shape) * 1.3 + 0.4
    g = rng.standard_normal(shape)
    w = rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)
    b = rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)

    def loss():
        stats = (None, None) if training else (rm, rv)
        return float(np.sum(F.batch_norm(x, *stats, w, b, training=training) * g))

    stats = (None, None) if training else (rm, rv)
    _, sm, si = F.batch_norm_forward(x, w, b, *stats, training, 0.1, 1e-5)
    gi, gw, gb = F.batch_norm_backward(
        g, x, w, sm, si, training=training, running_mean=stats[0], running_var=stats[1]
    )
    for analytic, arr, name in [(gi, x, "input"), (gw, w, "weight"), (gb, b, "bias")]:
        num = numerical_grad(loss, arr)
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * scale, err_msg=name)


def test_functional_exported():
    assert cybn.functional is F
    for name in ("batch_norm", "batch_norm_forward", "batch_norm_backward"):
        assert callable(getattr(F, name))


# --- evaluation: every way of asking for it is the same call ------------------------------
# (there is no separate fast path: one validated path serves every entry point)

def _eval_args(rng, shape, dtype=np.float32, pdt=np.float32, affine=True):
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    rm = rng.standard_normal(C).astype(pdt)
    rv = rng.uniform(0.5, 2, C).astype(pdt)
    w = rng.uniform(0.5, 2, C).astype(pdt) if affine else None
    b = rng.standard_normal(C).astype(pdt) if affine else None
    return x, w, b, rm, rv


@pytest.mark.parametrize("shape", [(2, 3), (32, 64), (4, 5, 6), (300, 300)])
@pytest.mark.parametrize("dtype,pdt", [(np.float32, np.float32), (np.float64, np.float64),
                                       (np.float64, np.float32), (np.float32, np.float64)])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_entry_points_agree_bitwise(rng, shape, dtype, pdt, affine):
    x, w, b, rm, rv = _eval_args(rng, shape, dtype, pdt, affine)
    plain = F.batch_norm(x, rm, rv, w, b)
    into = F.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5, out=np.empty_like(x))[0]
    assert plain.dtype == x.dtype and plain.shape == x.shape
    assert plain.tobytes() == into.tobytes()
    xr, wr, br, rmr, rvr = (None if a is None else a.astype(np.float64) for a in (x, w, b, rm, rv))
    expect = forward_eval(xr, rmr, rvr, wr, br, 1e-5)
    assert_close(plain, expect, rtol=1e-5 if np.float32 in (dtype, pdt) else 1e-12,
                 atol=1e-5 if np.float32 in (dtype, pdt) else 1e-12)
    m = cybn.BatchNorm1d(shape[1], affine=affine, dtype=pdt).eval()
    m.running_mean[...], m.running_var[...] = rm, rv
    if affine:
        m.weight[...], m.bias[...] = w, b
    assert m(x).tobytes() == plain.tobytes()


def test_eval_checks_unusual_calls(rng):
    x, w, b, rm, rv = _eval_args(rng, (6, 4))
    with pytest.raises(ValueError, match="should contain 4 elements not 3"):
        F.batch_norm(x, rm, rv, w[:3], b)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        F.batch_norm(x, rm, rv, w, b, eps=-1.0)
    with pytest.raises(TypeError, match="axis must be an int"):
        F.batch_norm(x, rm, rv, w, b, axis=True)
    with pytest.raises(ValueError, match="n_threads"):
        F.batch_norm(x, rm, rv, w, b, n_threads=0)
    with pytest.raises(TypeError, match="training must be a bool"):
        F.batch_norm(x, rm, rv, w, b, training="False")
    # conversions the common case does not need still give the same bits
    ref = F.batch_norm(x, rm, rv, w, b)
    for why, (xx, ww) in {"Fortran order": (np.asfortranarray(x), w),
                          "strided weight": (x, np.repeat(w, 2)[::2]),
                          "big-endian": (x.astype(">f4"), w)}.items():
        got = F.batch_norm(xx, rm, rv, ww, b)
        assert got.dtype == xx.dtype, why  # the input's dtype, byte order included
        assert got.astype(np.float32).tobytes() == ref.tobytes(), why


# --- tile shapes: short runs walked as columns, several channel tiles ----------------------
# _make_plan: L < 64 is walked as rows of columns with tc * L <= 1024 columns per tile, so
# these shapes span several channel tiles and several row tiles, with row counts that are
# not multiples of the 4-row groups; L >= 64 is walked run by run.

TILE_SHAPES = [(37, 300, 5), (70, 2000, 3), (5, 40, 63), (131, 17, 2), (9, 1100, 1),
               (300, 5, 15), (33, 3, 64), (7, 70, 65)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", TILE_SHAPES)
def test_tile_shapes_against_reference(rng, dtype, shape):
    C = shape[1]
    x = data(rng, shape, dtype, offset=3.0)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = vec(rng, C, dtype, "w"), vec(rng, C, dtype, "b")
    rm, rv = vec(rng, C, dtype, "b"), vec(rng, C, dtype, "rv")
    y, mean, invstd, _ = forward_batch(x, w, b, 1e-5)
    for nt in (1, 2):
        out, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, n_threads=nt)
        assert_close(out, y)
        r = 1e-12 if np.dtype(dtype) == np.float64 else 1e-7
        assert_close(sm, mean, np.float64, rtol=r, atol=r)
        r = 1e-12 if np.dtype(dtype) == np.float64 else 1e-6
        assert_close(si, invstd, np.float64, rtol=r, atol=r)
        gi, gw, gb = F.batch_norm_backward(g, x, w, sm, si, n_threads=nt)
        egi, egw, egb = backward_batch(x, g, w, 1e-5)
        tol = 1e-10 if np.dtype(dtype) == np.float64 else 1e-4
        for got, want in ((gi, egi), (gw, egw), (gb, egb)):
            scale = max(1.0, float(np.abs(want).max()))
            assert np.allclose(got, want, rtol=tol, atol=tol * scale)
        ye = F.batch_norm(x, rm, rv, w, b, training=False, n_threads=nt)
        assert_close(ye, forward_eval(x, rm, rv, w, b, 1e-5))
        ge, _, _ = F.batch_norm_backward(g, x, w, None, None, training=False,
                                         running_mean=rm, running_var=rv, n_threads=nt)
        escale = (w.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5))
        want = g.astype(np.float64) * escale.reshape((1, C) + (1,) * (len(shape) - 2))
        assert np.allclose(ge, want, rtol=tol, atol=tol * float(np.abs(want).max()))


def test_training_flag_accepts_bools_only(rng):
    # like torch's argument parser: Python and NumPy bools; a truthy str must not train
    x, w, b, rm, rv = _eval_args(rng, (6, 4))
    ref = F.batch_norm(x, rm, rv, w, b, training=False)
    assert F.batch_norm(x, rm, rv, w, b, training=np.False_).tobytes() == ref.tobytes()
    rm0, rv0 = rm.copy(), rv.copy()
    F.batch_norm(x, rm, rv, w, b, training=np.True_)
    assert not np.array_equal(rm, rm0) and not np.array_equal(rv, rv0)
    rm1, rv1 = rm.copy(), rv.copy()
    for bad in ("False", None, 1, 0.0):
        with pytest.raises(TypeError, match="training must be a bool"):
            F.batch_norm(x, rm, rv, w, b, training=bad)
    assert np.array_equal(rm, rm1) and np.array_equal(rv, rv1)
    # an int momentum is fine (a real number) and takes the general path in evaluation
    assert F.batch_norm(x, rm, rv, w, b, momentum=1).tobytes() == F.batch_norm(
        x, rm, rv, w, b).tobytes()
