"""Non-finite values (docs/semantics.md §7) and ``check_finite``.

By default NaN and Inf propagate exactly as in torch:

* training: a NaN anywhere in a channel makes the whole channel's output NaN and its
  running_mean and running_var NaN; an Inf makes the output NaN, running_mean +-Inf and
  running_var NaN; +Inf and -Inf together give a NaN running_mean; other channels are
  bitwise what they would be without the bad value;
* evaluation: only the element itself is NaN (or +-Inf);
* a NaN running statistic poisons every later evaluation output of its channel.

With ``check_finite=True`` a training forward whose batch holds NaN or Inf raises
ValueError naming the channels and changes nothing (parameters, running statistics,
num_batches_tracked, grad_*, backward cache).

Checked on one tile and across tiles (N large, C > 1024, L > 1), float16/32/64, and against
torch where it is installed (NaN/Inf pattern exactly; finite values to 1e-5 relative for
float32, 1e-10 for float64; for float16 the pattern only).
"""

import copy
import re

import numpy as np
import pytest

import cybn

TOL = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}
#: against torch. float16: only the NaN/Inf pattern -- torch's float16 gradients are off by
#: up to 5 % on (3, 1030) data (grad_input 0.29 from the float64 value, cybn 0.005)
TORCH_TOL = {np.float16: None, np.float32: 1e-4, np.float64: 1e-10}

SHAPES = [(6, 3), (5, 3, 4), (40000, 3), (3, 1030), (7, 3, 30000)]


def _data(shape, dtype, seed=0, offset=0.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


def _grad(shape, dtype, seed):
    """grad_output with mean 0 (float16 sums of 2e5 values must stay below 65504)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _put(x, channel, value, where=-1, axis=1):
    """Write ``value`` into ``channel`` (on ``axis``) at flat position ``where`` of it."""
    sl = [slice(None)] * x.ndim
    sl[axis] = channel
    sub = x[tuple(sl)]  # a view
    sub[np.unravel_index(where % sub.size, sub.shape)] = value
    return x


def _module(C, dtype, **kw):
    m = cybn.BatchNorm1d(C, dtype=dtype, **kw)
    rng = np.random.default_rng(1)
    m.weight[...] = rng.uniform(0.5, 2, C)
    m.bias[...] = rng.uniform(-1, 1, C)
    return m


def _same(a, b, dtype, what, tol=TOL):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN pattern"
    assert np.array_equal(np.isposinf(a), np.isposinf(b)), f"{what}: +Inf pattern"
    assert np.array_equal(np.isneginf(a), np.isneginf(b)), f"{what}: -Inf pattern"
    fin = np.isfinite(a)
    if tol[dtype] is None:
        return
    np.testing.assert_allclose(a[fin], b[fin], rtol=tol[dtype], atol=tol[dtype], err_msg=what)


# ---------------------------------------------------------------------------------------
# default: propagation (docs/semantics.md §7), without torch


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bad", ["nan", "+inf", "-inf", "+-inf"])
def test_training_propagation(shape, dtype, bad):
    C = shape[1]
    clean = _data(shape, dtype)
    x = clean.copy()
    c = C - 1
    if bad == "nan":
        _put(x, c, np.nan, where=len(x) // 2)
    elif bad == "+-inf":
        _put(x, c, np.inf, where=0)
        _put(x, c, -np.inf, where=-1)
    else:
        _put(x, c, float(bad), where=-1)  # the last element: the last tile
    m, m0 = _module(C, dtype), _module(C, dtype)
    y, y0 = m(x), m0(clean)
    ych = np.moveaxis(y, 1, 0)
    assert np.isnan(ych[c]).all(), "the whole channel is NaN"
    others = [k for k in range(C) if k != c]
    assert np.moveaxis(y0, 1, 0)[others].tobytes() == ych[others].tobytes(), \
        "other channels unaffected, bit for bit"
    assert m.running_mean[others].tobytes() == m0.running_mean[others].tobytes()
    assert m.running_var[others].tobytes() == m0.running_var[others].tobytes()
    expected_rm = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "+-inf": np.nan}[bad]
    rm = float(m.running_mean[c])
    assert (np.isnan(rm) and np.isnan(expected_rm)) or rm == expected_rm, rm
    assert np.isnan(m.running_var[c])
    assert int(m.num_batches_tracked) == 1
    # backward stays finite in the other channels
    g = _grad(shape, dtype, seed=3)
    gi = m.backward(g)
    gi0 = m0.backward(g)
    assert np.moveaxis(gi, 1, 0)[others].tobytes() == np.moveaxis(gi0, 1, 0)[others].tobytes()
    assert np.isnan(np.moveaxis(gi, 1, 0)[c]).all()
    assert np.isnan(m.grad_weight[c]) and m.grad_weight[others].tobytes() == \
        m0.grad_weight[others].tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_evaluation_propagation_is_elementwise(shape, dtype):
    C = shape[1]
    clean = _data(shape, dtype)
    x = clean.copy()
    flat_nan, flat_pinf, flat_ninf = 1, x.size // 2, x.size - 1
    x.reshape(-1)[[flat_nan, flat_pinf, flat_ninf]] = [np.nan, np.inf, -np.inf]
    m = _module(C, dtype).eval()
    y, y0 = m(x), m(clean)
    bad = np.zeros(x.size, bool)
    bad[[flat_nan, flat_pinf, flat_ninf]] = True
    yf, y0f = y.reshape(-1), y0.reshape(-1)
    assert yf[~bad].tobytes() == y0f[~bad].tobytes()
    assert np.isnan(yf[flat_nan])
    # weights are positive: +inf stays +inf, -inf stays -inf
    assert yf[flat_pinf] == np.inf and yf[flat_ninf] == -np.inf
    assert int(m.num_batches_tracked) == 0


def test_nan_running_statistic_poisons_later_evaluation():
    m = _module(3, np.float32)
    x = _data((8, 3), np.float32)
    x[2, 1] = np.nan
    m(x)
    m.eval()
    y = m(_data((5, 3), np.float32, seed=9))
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


def test_nan_in_parameters_propagates_to_the_channel():
    m = _module(3, np.float64)
    m.weight[0] = np.nan
    m.bias[2] = np.inf
    y = m(_data((6, 3), np.float64))
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all() and np.isinf(y[:, 2]).all()
    # the running statistics do not depend on the parameters
    assert np.isfinite(m.running_mean).all() and np.isfinite(m.running_var).all()


def test_nan_in_grad_output_propagates_to_the_channel():
    m = _module(3, np.float32)
    x = _data((6, 3), np.float32)
    m(x)
    g = _grad((6, 3), np.float32, seed=4)
    g[0, 1] = np.nan
    gi = m.backward(g)
    assert np.isnan(gi[:, 1]).all() and np.isfinite(gi[:, [0, 2]]).all()
    assert np.isnan(m.grad_weight[1]) and np.isnan(m.grad_bias[1])
    assert np.isfinite(m.grad_weight[[0, 2]]).all()


# ---------------------------------------------------------------------------------------
# against torch


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch(shape, dtype, training):
    torch = pytest.importorskip("torch")
    C = shape[1]
    x = _data(shape, dtype)
    _put(x, 0, np.nan, where=len(x) // 2)
    _put(x, 1, np.inf, where=-1)
    _put(x, C - 1, -np.inf, where=0)
    if C > 3:
        _put(x, 2, np.inf, where=0)
        _put(x, 2, -np.inf, where=-1)
    m = _module(C, dtype)
    tdt = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}
    t = torch.nn.BatchNorm1d(C, dtype=tdt[dtype])
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight))
        t.bias.copy_(torch.from_numpy(m.bias))
    if not training:  # move the running statistics off 0/1 first, identically
        warm = _data(shape, dtype, seed=5)
        m(warm)
        t(torch.from_numpy(warm))
        m.eval()
        t.eval()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = t(xt)
    y = m(x)
    _same(y, yt.detach().numpy(), dtype, "output", TORCH_TOL)
    _same(m.running_mean, t.running_mean.numpy(), dtype, "running_mean", TORCH_TOL)
    _same(m.running_var, t.running_var.numpy(), dtype, "running_var", TORCH_TOL)
    g = _grad(shape, dtype, seed=6)
    yt.backward(torch.from_numpy(g))
    gi = m.backward(g)
    # gradients: the NaN/Inf pattern must agree (values where finite as well)
    _same(gi, xt.grad.numpy(), dtype, "grad_input", TORCH_TOL)
    _same(m.grad_weight, t.weight.grad.numpy(), dtype, "grad_weight", TORCH_TOL)
    _same(m.grad_bias, t.bias.grad.numpy(), dtype, "grad_bias", TORCH_TOL)


# ---------------------------------------------------------------------------------------
# check_finite=True


STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
         "grad_weight", "grad_bias", "training")


def _snapshot(m):
    return {k: copy.deepcopy(getattr(m, k)) for k in STATE}


def _assert_unchanged(m, snap, probe=None):
    for k in STATE:
        a, b = snap[k], getattr(m, k)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), k
        else:
            assert a == b, k
    if probe is not None:
        g, expected = probe
        c = copy.deepcopy(m)
        assert c.backward(g).tobytes() == expected.tobytes(), "backward cache changed"


@pytest.mark.parametrize("cls, shape, axis", [
    (cybn.BatchNorm1d, (40000, 5), 1),
    (cybn.BatchNorm1d, (4, 5, 3), 1),
    (cybn.BatchNorm1d, (4, 3, 5), -1),
    (cybn.BatchNorm1d, (3, 1030, 2), 1),
    (cybn.BatchNorm2d, (2, 5, 3, 3), 1),
    (cybn.BatchNorm2d, (2, 3, 3, 5), -1),
    (cybn.BatchNorm3d, (2, 5, 2, 2, 2), 1),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("track", [True, False])
def test_check_finite_raises_naming_channels_and_changes_nothing(cls, shape, axis, dtype,
                                                                 track):
    C = shape[axis]
    m = cls(C, dtype=dtype, axis=axis, check_finite=True, track_running_stats=track)
    good = _data(shape, dtype)
    m(good)  # a successful forward/backward first: state and cache to protect
    g = _grad(shape, dtype, seed=2)
    m.backward(g)
    probe = (g, copy.deepcopy(m).backward(g))
    snap = _snapshot(m)
    x = good.copy()
    bad_channels = [1, C - 1]
    _put(x, 1, np.nan, where=-1, axis=axis)
    _put(x, C - 1, np.inf, where=0, axis=axis)
    with pytest.raises(ValueError) as info:
        m(x)
    msg = str(info.value)
    assert re.search(r"NaN or Inf", msg), msg
    assert str(bad_channels) in msg, msg
    assert f"axis {axis % len(shape)}" in msg or f"axis {axis}" in msg, msg
    _assert_unchanged(m, snap, probe)


def test_check_finite_message_exact():
    m = cybn.BatchNorm1d(4, check_finite=True)
    x = np.ones((3, 4), np.float32)
    x[0, 2] = np.nan
    x[1, 0] = -np.inf
    with pytest.raises(ValueError, match=re.escape(
            "input holds NaN or Inf in channel(s) [0, 2] (axis 1) and check_finite is on: "
            "nothing was updated")):
        m(x)


def test_check_finite_is_off_in_evaluation_and_for_finite_extremes():
    m = cybn.BatchNorm1d(3, check_finite=True)
    x = _data((6, 3), np.float32)
    x[0, 0] = np.nan
    m.eval()
    y = m(x)  # evaluation never updates state: NaN propagates elementwise, no error
    assert np.isnan(y[0, 0]) and np.isfinite(np.delete(y.ravel(), 0)).all()
    m.train()
    huge = (np.random.default_rng(0).standard_normal((50, 3)) * 1e30).astype(np.float32)
    assert np.isfinite(m(huge)).all()  # finite data: no false positive
    tiny = (np.random.default_rng(0).standard_normal((50, 3)) * 1e-40).astype(np.float32)
    assert np.isfinite(m(tiny)).all()
    m(np.zeros((0, 3), np.float32))  # an empty batch is fine


def test_check_finite_default_off_and_in_repr():
    assert cybn.BatchNorm1d(3).check_finite is False
    assert "check_finite" not in repr(cybn.BatchNorm1d(3))
    assert repr(cybn.BatchNorm1d(3, check_finite=True)).endswith("check_finite=True)")
