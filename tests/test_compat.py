"""cybn.compat (cs231n convention) against a plain reimplementation of the
course code in _reference.py: momentum 0.9 weighting the OLD value, BIASED
running variance, running stats created as zeros and written back into
bn_param, 'test' mode using the running stats.  Backward and backward_alt
must agree with each other, with the reference and with finite differences.
The cache must not hold an x-sized array other than x itself (or a view of it).

Tolerances: float64 1e-12*|max| (forward), 1e-10 (grads); float32 1e-5."""

import numpy as np
import pytest
from _reference import (
    assert_close,
    cs231n_batchnorm_backward,
    cs231n_batchnorm_forward,
    cs231n_spatial_backward,
    cs231n_spatial_forward,
    iter_arrays,
    numerical_grad,
)

from cybn import compat

DTYPES = [np.float32, np.float64]


def gtol(dtype):
    return (
        {"rtol": 1e-10, "atol": 1e-11}
        if np.dtype(dtype) == np.float64
        else {"rtol": 1e-5, "atol": 1e-5}
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "params", [{}, {"momentum": 0.5}, {"eps": 1e-3}, {"momentum": 0.99, "eps": 1e-2}]
)
def test_forward_train_sequence(rng, dtype, params):
    D = 4
    gamma = rng.uniform(0.5, 2, D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    p = {"mode": "train", **params}
    q = {"mode": "train", **params}
    for step in range(3):
        x = (rng.standard_normal((10, D)) * 2 + step).astype(dtype)
        x0 = x.copy()
        out, _cache = compat.batchnorm_forward(x, gamma, beta, p)
        ref, _ = cs231n_batchnorm_forward(x, gamma, beta, q)
        assert out.dtype == np.dtype(dtype) and out.shape == x.shape
        assert_close(out, ref)
        assert isinstance(p["running_mean"], np.ndarray) and p["running_mean"].dtype == np.dtype(
            dtype
        )
        assert p["running_var"].dtype == np.dtype(dtype) and p["running_var"].shape == (D,)
        assert_close(p["running_mean"], q["running_mean"], err_msg=f"step {step}")
        assert_close(p["running_var"], q["running_var"], err_msg=f"step {step}")
        assert np.array_equal(x, x0)
    assert p["mode"] == "train"


def test_running_stats_created_as_zeros_then_weighted_old(rng):
    x = rng.standard_normal((8, 3)) * 3 + 2
    p = {"mode": "train"}
    compat.batchnorm_forward(x, np.ones(3), np.zeros(3), p)
    mean = x.mean(axis=0)
    var_b = x.var(axis=0)  # biased
    assert_close(p["running_mean"], 0.1 * mean)
    assert_close(p["running_var"], 0.1 * var_b)


def test_existing_running_stats_are_used(rng):
    x = rng.standard_normal((8, 3))
    p = {
        "mode": "train",
        "running_mean": np.array([1.0, 2.0, 3.0]),
        "running_var": np.array([4.0, 5.0, 6.0]),
        "momentum": 0.8,
    }
    compat.batchnorm_forward(x, np.ones(3), np.zeros(3), p)
    assert_close(p["running_mean"], 0.8 * np.array([1.0, 2.0, 3.0]) + 0.2 * x.mean(axis=0))
    assert_close(p["running_var"], 0.8 * np.array([4.0, 5.0, 6.0]) + 0.2 * x.var(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_test_mode_uses_running_stats(rng, dtype):
    D = 3
    rm = rng.standard_normal(D).astype(dtype)
    rv = rng.uniform(0.5, 2, D).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    p = {"mode": "test", "running_mean": rm.copy(), "running_var": rv.copy()}
    x = rng.standard_normal((5, D)).astype(dtype)
    out, _ = compat.batchnorm_forward(x, gamma, beta, p)
    ref, _ = cs231n_batchnorm_forward(
        x, gamma, beta, {"mode": "test", "running_mean": rm, "running_var": rv}
    )
    assert_close(out, ref)
    assert np.array_equal(p["running_mean"], rm) and np.array_equal(p["running_var"], rv)
    # N = 1 is fine in test mode
    out1, _ = compat.batchnorm_forward(x[:1], gamma, beta, p)
    assert_close(out1, ref[:1])


def test_test_mode_without_running_stats_uses_zeros():
    p = {"mode": "test"}
    x = np.array([[1.0, 2.0], [3.0, -4.0]])
    out, _ = compat.batchnorm_forward(x, np.ones(2), np.zeros(2), p)
    assert_close(out, x / np.sqrt(1e-5), rtol=1e-12)
    assert np.array_equal(p["running_mean"], np.zeros(2)) and np.array_equal(
        p["running_var"], np.zeros(2)
    )


@pytest.mark.parametrize("p", [{}, {"mode": "eval"}, {"mode": "training"}])
def test_bad_mode(p):
    x = np.ones((4, 2))
    with pytest.raises((KeyError, ValueError), match="mode"):
        compat.batchnorm_forward(x, np.ones(2), np.zeros(2), dict(p))


# --------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10, 4), (64, 7)])
def test_backward_and_alt_match_reference(rng, dtype, shape):
    D = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma = (rng.uniform(0.5, 2, D) * rng.choice([-1, 1], D)).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    d0 = dout.copy()
    _out, cache = compat.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    _, rcache = cs231n_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    r = cs231n_batchnorm_backward(dout, rcache)
    a = compat.batchnorm_backward(dout, cache)
    b = compat.batchnorm_backward_alt(dout, cache)
    for name, u, v, w in zip(("dx", "dgamma", "dbeta"), a, b, r):
        assert u.dtype == np.dtype(dtype) and v.dtype == np.dtype(dtype), name
        assert_close(u, w, **gtol(dtype), err_msg=name)
        np.testing.assert_allclose(
            u,
            v,
            rtol=1e-12 if dtype is np.float64 else 1e-6,
            atol=1e-12 if dtype is np.float64 else 1e-6,
            err_msg=name,
        )
    assert np.array_equal(dout, d0)
    # the cache is reusable
    a2 = compat.batchnorm_backward(dout, cache)
    for u, v in zip(a, a2):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("which", ["batchnorm_backward", "batchnorm_backward_alt"])
def test_backward_finite_differences(rng, which):
    x = rng.standard_normal((5, 3)) * 1.5 + 0.5
    gamma = rng.uniform(0.5, 2, 3)
    beta = rng.standard_normal(3)
    dout = rng.standard_normal((5, 3))

    def loss():
        return float(np.sum(compat.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0] * dout))

    _, cache = compat.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dg, db = getattr(compat, which)(dout, cache)
    for analytic, arr, name in [(dx, x, "dx"), (dg, gamma, "dgamma"), (db, beta, "dbeta")]:
        num = numerical_grad(loss, arr)
        np.testing.assert_allclose(
            analytic, num, rtol=1e-6, atol=1e-7 * max(1, np.abs(num).max()), err_msg=name
        )


def test_backward_after_test_mode_is_the_true_gradient(rng):
    x = rng.standard_normal((5, 3))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    p = {
        "mode": "test",
        "running_mean": rng.standard_normal(3),
        "running_var": rng.uniform(0.5, 2, 3),
    }
    dout = rng.standard_normal((5, 3))

    def loss():
        return float(np.sum(compat.batchnorm_forward(x, gamma, beta, dict(p))[0] * dout))

    _, cache = compat.batchnorm_forward(x, gamma, beta, dict(p))
    dx, dg, db = compat.batchnorm_backward(dout, cache)
    for analytic, arr in [(dx, x), (dg, gamma), (db, beta)]:
        num = numerical_grad(loss, arr)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * max(1, np.abs(num).max()))


# --------------------------------------------------------------------------
# spatial (N, C, H, W)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5, 1, 7)])
def test_spatial_forward_backward(rng, dtype, shape):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    p, q = {"mode": "train", "momentum": 0.7}, {"mode": "train", "momentum": 0.7}
    out, cache = compat.spatial_batchnorm_forward(x, gamma, beta, p)
    ref, rcache = cs231n_spatial_forward(x, gamma, beta, q)
    assert out.shape == shape and out.dtype == np.dtype(dtype)
    assert_close(out, ref)
    assert_close(p["running_mean"], q["running_mean"])
    assert_close(p["running_var"], q["running_var"])
    dx, dg, db = compat.spatial_batchnorm_backward(dout, cache)
    rdx, rdg, rdb = cs231n_spatial_backward(dout, rcache)
    assert dx.shape == shape
    assert_close(dx, rdx, **gtol(dtype))
    assert_close(dg, rdg, **gtol(dtype))
    assert_close(db, rdb, **gtol(dtype))
    p["mode"] = q["mode"] = "test"
    out, _ = compat.spatial_batchnorm_forward(x, gamma, beta, p)
    ref, _ = cs231n_spatial_forward(x, gamma, beta, q)
    assert_close(out, ref)


def test_spatial_finite_differences(rng):
    shape = (2, 3, 2, 3)
    x = rng.standard_normal(shape) + 0.3
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    dout = rng.standard_normal(shape)

    def loss():
        return float(
            np.sum(compat.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0] * dout)
        )

    _, cache = compat.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dg, db = compat.spatial_batchnorm_backward(dout, cache)
    for analytic, arr in [(dx, x), (dg, gamma), (db, beta)]:
        num = numerical_grad(loss, arr)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * max(1, np.abs(num).max()))


# --------------------------------------------------------------------------
# the cache holds no x-sized array except x (or a view of x)
# --------------------------------------------------------------------------


def _x_sized_foreign_arrays(cache, x):
    bad = []
    for a in iter_arrays(cache):
        if a.size == x.size and a is not x and not np.shares_memory(a, x):
            bad.append((a.shape, a.dtype))
    return bad


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_holds_no_copy_of_x(rng, layout, dtype):
    base = rng.standard_normal((32, 6)).astype(dtype)
    if layout == "C":
        x = base
    elif layout == "F":
        x = np.asfortranarray(base)
    else:
        big = np.zeros((64, 6), dtype)
        big[::2] = base
        x = big[::2]
    _, cache = compat.batchnorm_forward(x, np.ones(6, dtype), np.zeros(6, dtype), {"mode": "train"})
    assert _x_sized_foreign_arrays(cache, x) == []
    # the cache must still give the right gradient afterwards
    g = rng.standard_normal(x.shape).astype(dtype)
    _, rcache = cs231n_batchnorm_forward(base, np.ones(6), np.zeros(6), {"mode": "train"})
    assert_close(
        compat.batchnorm_backward(g, cache)[0],
        cs231n_batchnorm_backward(g, rcache)[0],
        **gtol(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_spatial_cache_holds_no_copy_of_x(rng, dtype):
    x = rng.standard_normal((4, 3, 5, 6)).astype(dtype)
    _, cache = compat.spatial_batchnorm_forward(
        x, np.ones(3, dtype), np.zeros(3, dtype), {"mode": "train"}
    )
    assert _x_sized_foreign_arrays(cache, x) == []
    _, cache = compat.spatial_batchnorm_forward(
        x,
        np.ones(3, dtype),
        np.zeros(3, dtype),
        {"mode": "test", "running_mean": np.zeros(3, dtype), "running_var": np.ones(3, dtype)},
    )
    assert _x_sized_foreign_arrays(cache, x) == []


@pytest.mark.parametrize("layout", ["channels_last", "F"])
def test_spatial_permuted_layouts(rng, layout):
    """NHWC data viewed as NCHW (what image pipelines hand over) and Fortran order:
    right values, and still no x-sized copy in the cache (the data are contiguous)."""
    base = rng.standard_normal((4, 3, 5, 6)) * 2 + 1
    if layout == "channels_last":
        x = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    else:
        x = np.asfortranarray(base)
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    dout = rng.standard_normal(base.shape)
    out, cache = compat.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    ref, rcache = cs231n_spatial_forward(base, gamma, beta, {"mode": "train"})
    assert_close(out, ref)
    assert _x_sized_foreign_arrays(cache, x) == []
    dx, dg, db = compat.spatial_batchnorm_backward(dout, cache)
    rdx, rdg, rdb = cs231n_spatial_backward(dout, rcache)
    assert_close(dx, rdx, rtol=1e-10, atol=1e-11)
    assert_close(dg, rdg, rtol=1e-10, atol=1e-11)
    assert_close(db, rdb, rtol=1e-10, atol=1e-11)


def test_cache_walker_detects_a_copy(rng):
    # guard against a vacuous check: a cache with x-hat in it must be flagged
    x = rng.standard_normal((8, 3))
    assert _x_sized_foreign_arrays((x, x.T, x[::-1]), x) == []
    assert _x_sized_foreign_arrays({"xhat": x - 1}, x) == [((8, 3), np.dtype(np.float64))]
