"""Batch renormalization (renorm=True): the float64 oracle of the paper's Algorithm 1
(tests/_reference.py), finite differences with r and d held constant, the running-statistics
update, SyncBatchNorm-free state handling and the option checks.

Tolerances: tests/_reference.py's per-dtype ones (float64 1e-12, float32 1e-5 relative to
the quantity's magnitude); finite differences 1e-6 relative (central differences, h=1e-6,
float64).
"""

import numpy as np
import pytest
from _reference import (
    assert_close,
    batch_stats,
    numerical_grad,
    renorm_apply,
    renorm_backward,
    renorm_forward,
    update_running,
)

import cybn

SHAPES = [(16, 5), (8, 3, 7), (4, 3, 2, 5)]
MODULES = {2: cybn.BatchNorm1d, 3: cybn.BatchNorm1d, 4: cybn.BatchNorm2d}


def _module(shape, dtype, **kw):
    m = MODULES[len(shape)](shape[1], dtype=dtype, renorm=True, **kw)
    return m


def _setup(rng, shape, dtype, rmax, dmax):
    C = shape[1]
    m = _module(shape, dtype, rmax=rmax, dmax=dmax)
    m.weight[...] = rng.uniform(0.5, 2.0, C)
    m.bias[...] = rng.normal(size=C)
    m.running_mean[...] = rng.normal(size=C)
    m.running_var[...] = rng.uniform(0.2, 4.0, C)
    x = (rng.normal(size=shape) * 1.7 + 0.4).astype(dtype)
    return m, x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rmax, dmax", [(1.0, 0.0), (1.5, 0.3), (3.0, 5.0),
                                        (np.inf, np.inf)])
def test_forward_backward_update_match_algorithm_1(rng, shape, dtype, rmax, dmax):
    m, x = _setup(rng, shape, dtype, rmax, dmax)
    w, b = m.weight.astype(np.float64), m.bias.astype(np.float64)
    rm0, rv0 = m.running_mean.astype(np.float64), m.running_var.astype(np.float64)
    y_ref, r, d, mean, _, var_u = renorm_forward(x, rm0, rv0, w, b, m.eps, rmax, dmax)
    y = m(x)
    assert y.dtype == x.dtype
    assert_close(y, y_ref)
    # the running statistics: torch's update with the unbiased batch variance
    rm_ref, rv_ref = update_running(rm0, rv0, mean, var_u, m.momentum)
    assert_close(m.running_mean, rm_ref)
    assert_close(m.running_var, rv_ref)
    assert int(m.num_batches_tracked) == 1
    dy = rng.normal(size=shape).astype(dtype)
    gi = m.backward(dy)
    gi_ref, gw_ref, gb_ref = renorm_backward(x, dy, w, m.eps, r, d)
    assert_close(gi, gi_ref)
    assert_close(m.grad_weight, gw_ref)
    assert_close(m.grad_bias, gb_ref)


def test_clipping_is_active_in_these_cases(rng):
    # the cases above would prove little if r and d were never clipped, or always 1 and 0
    _, x = _setup(rng, (16, 5), np.float64, 1.5, 0.3)
    rm = rng.normal(size=5)
    rv = rng.uniform(0.2, 4.0, 5)
    _, r, d, *_ = renorm_forward(x, rm, rv, np.ones(5), np.zeros(5), 1e-5, 1.5, 0.3)
    assert np.any(r == 1.5) or np.any(r == 1 / 1.5)
    assert np.any(np.abs(d) == 0.3)
    _, r, d, *_ = renorm_forward(x, rm, rv, np.ones(5), np.zeros(5), 1e-5, np.inf, np.inf)
    assert np.all((r != 1) & (d != 0))


def test_rmax_1_dmax_0_is_plain_batch_norm(rng):
    # the paper's starting point of its schedule: r = 1, d = 0
    m, x = _setup(rng, (8, 3, 7), np.float64, 1.0, 0.0)
    plain = cybn.BatchNorm1d(3, dtype=np.float64)
    plain.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m(x), plain(x), rtol=1e-13, atol=1e-13)
    dy = rng.normal(size=x.shape)
    np.testing.assert_allclose(m.backward(dy), plain.backward(dy), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m.grad_weight, plain.grad_weight, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(m.running_var, plain.running_var)


@pytest.mark.parametrize("shape", [(6, 3), (5, 2, 3)])
def test_gradients_by_finite_differences(rng, shape):
    m, x = _setup(rng, shape, np.float64, 1.3, 0.2)
    rm0, rv0 = m.running_mean.copy(), m.running_var.copy()
    w, b = m.weight.copy(), m.bias.copy()
    _, r, d, *_ = renorm_forward(x, rm0, rv0, w, b, m.eps, 1.3, 0.2)
    dy = rng.normal(size=shape)
    m(x)
    gi = m.backward(dy)
    xv, wv, bv = x.copy(), w.copy(), b.copy()

    def loss():
        # r and d are constants of the backward (the paper's stop-gradient)
        mean, var_b, _ = batch_stats(xv)
        return float(np.sum(dy * renorm_apply(xv, mean, np.sqrt(var_b + m.eps), r, d, wv,
                                              bv)))

    np.testing.assert_allclose(gi, numerical_grad(loss, xv), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.grad_weight, numerical_grad(loss, wv), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(m.grad_bias, numerical_grad(loss, bv), rtol=1e-6, atol=1e-7)


def test_schedule_changes_between_steps_and_eval_is_plain(rng):
    m, x = _setup(rng, (32, 4), np.float64, 1.0, 0.0)
    for step, (rmax, dmax) in enumerate([(1.0, 0.0), (2.0, 1.0), (3.0, 5.0)]):
        m.rmax, m.dmax = rmax, dmax
        rm0, rv0 = m.running_mean.copy(), m.running_var.copy()
        y_ref, *_ = renorm_forward(x + step, rm0, rv0, m.weight, m.bias, m.eps, rmax, dmax)
        assert_close(m(x + step), y_ref)
    m.eval()
    plain = cybn.BatchNorm1d(4, dtype=np.float64).eval()
    plain.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m(x), plain(x))
    np.testing.assert_array_equal(m.backward(x), plain.backward(x))


def test_state_dict_round_trip_continues_identically(rng, tmp_path):
    m, x = _setup(rng, (16, 5), np.float32, 2.0, 1.0)
    m(x)
    path = tmp_path / "bn.npz"
    cybn.save(m, path)
    m2 = cybn.load(path)
    assert (m2.renorm, m2.rmax, m2.dmax) == (True, 2.0, 1.0)
    assert repr(m2) == repr(m)
    np.testing.assert_array_equal(m(x + 1), m2(x + 1))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k])


def test_no_affine_float16_and_threads(rng):
    x = rng.normal(size=(64, 3, 5)).astype(np.float16)
    m = cybn.BatchNorm1d(3, affine=False, renorm=True, rmax=2.0, dmax=0.5, n_threads=2)
    m.running_var[...] = 3.0
    y_ref, r, d, *_ = renorm_forward(x, np.zeros(3), np.full(3, 3.0), np.ones(3), np.zeros(3),
                                     m.eps, 2.0, 0.5)
    y = m(x)
    assert y.dtype == np.float16
    assert_close(y, y_ref)
    dy = rng.normal(size=x.shape).astype(np.float16)
    gi_ref, _, _ = renorm_backward(x, dy, np.ones(3), m.eps, r, d)
    assert_close(m.backward(dy), gi_ref)
    assert m.grad_weight is None and m.grad_bias is None


def test_channels_last(rng):
    m, x = _setup(rng, (6, 3, 4, 5), np.float64, 1.5, 0.5)
    m.axis = -1
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    rm0, rv0 = m.running_mean.copy(), m.running_var.copy()
    y_ref, _r, _d, *_ = renorm_forward(x, rm0, rv0, m.weight, m.bias, m.eps, 1.5, 0.5)
    assert_close(np.moveaxis(m(xl), -1, 1), y_ref)


@pytest.mark.parametrize("kw, exc, msg", [
    ({"renorm": True, "track_running_stats": False}, ValueError,
     "renorm=True needs the running statistics"),
    ({"renorm": 1}, TypeError, "renorm must be a bool, got int"),
    ({"renorm": True, "rmax": 0.5}, ValueError, "rmax must be >= 1 (inf: no clipping), got 0.5"),
    ({"renorm": True, "rmax": float("nan")}, ValueError, "rmax must be >= 1"),
    ({"renorm": True, "dmax": -1.0}, ValueError, "dmax must be >= 0 (inf: no clipping), got -1.0"),
    ({"renorm": True, "dmax": "1"}, TypeError, "dmax must be a real number, got str"),
    ({"renorm": True, "virtual_batch_size": 4}, ValueError,
     "renorm=True and virtual_batch_size cannot be combined"),
])
def test_constructor_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cybn.BatchNorm1d(3, **kw)


def test_bad_attribute_raises_and_changes_nothing(rng):
    m, x = _setup(rng, (16, 5), np.float32, 2.0, 1.0)
    m(x)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    cache = m._cache
    m.rmax = 0.1
    with pytest.raises(ValueError, match=r"self\.rmax must be >= 1"):
        m(x)
    m.rmax, m.dmax = 2.0, float("nan")
    with pytest.raises(ValueError, match=r"self\.dmax must be >= 0"):
        m(x)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert m._cache is cache


def test_check_finite_raises_before_any_change(rng):
    m, x = _setup(rng, (16, 5), np.float64, 2.0, 1.0)
    m.check_finite = True
    x[3, 2] = np.nan
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\]"):
        m(x)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
