"""Ghost (virtual) batches (virtual_batch_size=): each group of consecutive rows normalised
with its own statistics, against the float64 oracle (tests/_reference.py), torch applied
per chunk (TabNet's GBN does exactly that), finite differences, and the documented
running-statistics update (tf.keras 2's one-step average of the groups, torch's Bessel
correction per group).

Tolerances: tests/_reference.py's per-dtype ones; torch float64 1e-12; finite
differences 1e-6 relative.
"""

import numpy as np
import pytest
from _reference import (
    assert_close,
    batch_stats,
    ghost_backward,
    ghost_forward,
    numerical_grad,
)

import cybn

CASES = [((16, 5), 4), ((10, 3), 4), ((9, 3, 7), 2), ((7, 2, 3, 4), 3), ((12, 4), 12),
         ((12, 4), 50)]
CLASSES = {2: cybn.BatchNorm1d, 3: cybn.BatchNorm1d, 4: cybn.BatchNorm2d}


def _setup(rng, shape, v, dtype=np.float64, **kw):
    C = shape[1]
    m = CLASSES[len(shape)](C, dtype=dtype, virtual_batch_size=v, **kw)
    if m.weight is not None:
        m.weight[...] = rng.uniform(0.5, 2.0, C)
        m.bias[...] = rng.normal(size=C)
    m.running_mean[...] = rng.normal(size=C)
    m.running_var[...] = rng.uniform(0.5, 2.0, C)
    x = (rng.normal(size=shape) * 2.0 + 1.0).astype(dtype)
    # groups with visibly different statistics
    x += np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)).astype(dtype) * 0.3
    return m, x


def _expected_update(m0_mean, m0_var, groups, factor):
    n = np.array([g[0] for g in groups], dtype=np.float64)
    mean = sum(k * g[1] for k, g in zip(n, groups)) / n.sum()
    var = sum(k * g[2] for k, g in zip(n, groups)) / n.sum()
    return (1 - factor) * m0_mean + factor * mean, (1 - factor) * m0_var + factor * var


@pytest.mark.parametrize("shape, v", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_oracle(rng, shape, v, dtype):
    m, x = _setup(rng, shape, v, dtype)
    w, b = m.weight.astype(np.float64), m.bias.astype(np.float64)
    rm0, rv0 = m.running_mean.astype(np.float64), m.running_var.astype(np.float64)
    y_ref, groups = ghost_forward(x, v, w, b, m.eps)
    y = m(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, y_ref)
    rm_ref, rv_ref = _expected_update(rm0, rv0, groups, m.momentum)
    assert_close(m.running_mean, rm_ref)
    assert_close(m.running_var, rv_ref)
    assert int(m.num_batches_tracked) == 1
    dy = rng.normal(size=shape).astype(dtype)
    gi_ref, gw_ref, gb_ref = ghost_backward(x, dy, v, w, m.eps)
    assert_close(m.backward(dy), gi_ref)
    assert_close(m.grad_weight, gw_ref)
    assert_close(m.grad_bias, gb_ref)


def test_one_group_is_bitwise_plain_batch_norm(rng):
    m, x = _setup(rng, (12, 4), 12)
    plain = cybn.BatchNorm1d(4, dtype=np.float64)
    plain.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m(x), plain(x))
    np.testing.assert_array_equal(m.running_mean, plain.running_mean)
    np.testing.assert_array_equal(m.running_var, plain.running_var)
    dy = rng.normal(size=x.shape)
    np.testing.assert_array_equal(m.backward(dy), plain.backward(dy))
    np.testing.assert_array_equal(m.grad_weight, plain.grad_weight)


def test_groups_differ_from_whole_batch(rng):
    # the cases above would prove little if the groups' statistics were the batch's
    m, x = _setup(rng, (16, 5), 4)
    plain = cybn.BatchNorm1d(5, dtype=np.float64)
    plain.load_state_dict(m.state_dict())
    assert np.max(np.abs(m(x) - plain(x))) > 0.1


def test_evaluation_is_unaffected(rng):
    # tf#23050 applied the groups at inference; cybn does not
    m, x = _setup(rng, (16, 5), 4)
    m(x)
    m.eval()
    plain = cybn.BatchNorm1d(5, dtype=np.float64).eval()
    plain.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m(x), plain(x))
    np.testing.assert_array_equal(m.backward(x), plain.backward(x))


@pytest.mark.parametrize("shape, v", [((6, 3), 4), ((5, 2, 3), 2)])
def test_gradients_by_finite_differences(rng, shape, v):
    m, x = _setup(rng, shape, v)
    dy = rng.normal(size=shape)
    m(x)
    gi = m.backward(dy)
    xv, wv, bv = x.copy(), m.weight.copy(), m.bias.copy()

    def loss():
        return float(np.sum(dy * ghost_forward(xv, v, wv, bv, m.eps)[0]))

    np.testing.assert_allclose(gi, numerical_grad(loss, xv), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.grad_weight, numerical_grad(loss, wv), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(m.grad_bias, numerical_grad(loss, bv), rtol=1e-6, atol=1e-7)


def test_torch_per_chunk(rng):
    torch = pytest.importorskip("torch")
    m, x = _setup(rng, (10, 3, 4), 4)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(m.weight, requires_grad=True)
    bt = torch.tensor(m.bias, requires_grad=True)
    yt = torch.cat([torch.nn.functional.batch_norm(c, None, None, wt, bt, training=True,
                                                   eps=m.eps) for c in xt.split(4)])
    dy = rng.normal(size=x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(m(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.grad_weight, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.grad_bias, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["channels_last", "fortran", "strided"])
def test_layouts_and_out(rng, layout):
    m, x = _setup(rng, (8, 3, 5), 3)
    state = {k: v.copy() for k, v in m.state_dict().items()}
    y_ref, _ = ghost_forward(x, 3, m.weight, m.bias, m.eps)
    dy = rng.normal(size=x.shape)
    gi_ref, gw_ref, _ = ghost_backward(x, dy, 3, m.weight, m.eps)
    if layout == "channels_last":
        m.axis = -1
        xin = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        back = lambda a: np.moveaxis(a, -1, 1)
        dyin = np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    elif layout == "fortran":
        xin, dyin, back = np.asfortranarray(x), np.asfortranarray(dy), lambda a: a
    else:
        big = np.zeros((8, 3, 10))
        big[:, :, ::2] = x
        xin, dyin, back = big[:, :, ::2], dy, lambda a: a
    out = np.full(xin.shape, np.nan)
    y = m(xin, out=out)
    assert y is out
    assert_close(back(y), y_ref)
    gout = np.empty_like(xin)
    gi = m.backward(dyin, out=gout)
    assert gi is gout
    assert_close(back(gi), gi_ref)
    assert_close(m.grad_weight, gw_ref)
    m2, _ = _setup(np.random.default_rng(1), (8, 3, 5), 3)
    m2.load_state_dict(state)
    m2(x)
    np.testing.assert_allclose(m.running_var, m2.running_var, rtol=1e-14)


def test_momentum_none_float16_no_affine_threads(rng):
    x = rng.normal(size=(20, 3, 6)).astype(np.float16)
    m = cybn.BatchNorm1d(3, momentum=None, affine=False, virtual_batch_size=8, n_threads=2)
    y_ref, groups = ghost_forward(x, 8, np.ones(3), np.zeros(3), m.eps)
    y = m(x)
    assert y.dtype == np.float16
    assert_close(y, y_ref)
    rm_ref, rv_ref = _expected_update(np.zeros(3), np.ones(3), groups, 1.0)
    assert_close(m.running_mean, rm_ref)
    assert_close(m.running_var, rv_ref)
    gi_ref, _, _ = ghost_backward(x, x, 8, np.ones(3), m.eps)
    assert_close(m.backward(x), gi_ref)
    assert m.grad_weight is None


def test_no_running_stats_and_empty_batch(rng):
    m = cybn.BatchNorm1d(3, track_running_stats=False, virtual_batch_size=2,
                         dtype=np.float64)
    x = rng.normal(size=(5, 3, 2))
    y_ref, _ = ghost_forward(x, 2, np.ones(3), np.zeros(3), m.eps)
    assert_close(m(x), y_ref)
    m2 = cybn.BatchNorm1d(3, virtual_batch_size=2)
    y = m2(np.empty((0, 3), dtype=np.float32))
    assert y.shape == (0, 3)
    assert int(m2.num_batches_tracked) == 0


@pytest.mark.parametrize("shape, v, exc, msg", [
    ((9, 3), 4, ValueError, r"rows 8:9 hold 1 value per channel"),
    ((4, 3), 1, ValueError, r"virtual_batch_size=1: rows 0:1 hold 1 value per channel"),
])
def test_group_with_one_value_raises_and_changes_nothing(rng, shape, v, exc, msg):
    m, x = _setup(rng, shape, v)
    before = {k: a.copy() for k, a in m.state_dict().items()}
    with pytest.raises(exc, match=msg):
        m(x)
    for k, a in m.state_dict().items():
        np.testing.assert_array_equal(a, before[k])
    assert m._cache is None


def test_remainder_group_of_two_rows_is_used(rng):
    m, x = _setup(rng, (10, 3), 4)
    y_ref, groups = ghost_forward(x, 4, m.weight, m.bias, m.eps)
    assert [g[0] for g in groups] == [4, 4, 2]
    assert_close(m(x), y_ref)


@pytest.mark.parametrize("kw, exc, msg", [
    ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size must be >= 1, got 0"),
    ({"virtual_batch_size": 2.0}, TypeError,
     "virtual_batch_size must be an int or None, got float"),
    ({"virtual_batch_size": True}, TypeError,
     "virtual_batch_size must be an int or None, got bool"),
])
def test_constructor_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        cybn.BatchNorm1d(3, **kw)


def test_bad_attribute_and_axis_0_raise_before_changes(rng):
    m, x = _setup(rng, (8, 3), 4)
    m(x)
    before = {k: a.copy() for k, a in m.state_dict().items()}
    m.virtual_batch_size = -1
    with pytest.raises(ValueError, match="virtual_batch_size must be >= 1, got -1"):
        m(x)
    m.virtual_batch_size = 4
    m.axis = 0
    with pytest.raises(ValueError, match="which is the channel axis here"):
        m(np.ascontiguousarray(x.T[:, :8]))
    m.axis = 1
    with pytest.raises(TypeError, match="grad_output must be a NumPy array"):
        m.backward([1.0])
    with pytest.raises(ValueError, match=r"grad_output must have the shape of the last "
                                         r"forward's input \(8, 3\), got \(8, 4\)"):
        m.backward(np.ones((8, 4)))
    for k, a in m.state_dict().items():
        np.testing.assert_array_equal(a, before[k])


def test_population_statistics_merge_every_group(rng):
    m, x = _setup(rng, (24, 3), 5)
    with cybn.population_stats(m):
        for part in np.array_split(x, 3):
            m(part)
    mean, _, var_u = batch_stats(x)
    np.testing.assert_allclose(m.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.running_var, var_u, rtol=1e-12)
    assert int(m.num_batches_tracked) == 3


def test_state_file_round_trip(rng, tmp_path):
    m, x = _setup(rng, (16, 5), 4, np.float32)
    m(x)
    cybn.save(m, tmp_path / "g.npz")
    m2 = cybn.load(tmp_path / "g.npz")
    assert m2.virtual_batch_size == 4 and repr(m2) == repr(m)
    np.testing.assert_array_equal(m(x), m2(x))


@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_relu_per_group(rng, with_residual):
    # ghost batches with activation='relu' (and a residual): per group, relu(bn(x) + r)
    m, x = _setup(rng, (10, 3, 4), 4, activation="relu")
    r = rng.normal(size=x.shape) if with_residual else None
    y_ref, _ = ghost_forward(x, 4, m.weight, m.bias, m.eps)
    z = y_ref + (r if with_residual else 0.0)
    dy = rng.normal(size=x.shape)
    dz = dy * (z > 0)
    gi_ref, gw_ref, gb_ref = ghost_backward(x, dz, 4, m.weight, m.eps)
    y = m(x, r) if with_residual else m(x)
    assert_close(y, np.maximum(z, 0))
    assert_close(m.backward(dy), gi_ref)
    assert_close(m.grad_weight, gw_ref)
    assert_close(m.grad_bias, gb_ref)
    if with_residual:
        assert_close(m.grad_residual, dz)
    else:
        assert m.grad_residual is None
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    rt = torch.tensor(r, requires_grad=True) if with_residual else None
    wt = torch.tensor(m.weight, requires_grad=True)
    bt = torch.tensor(m.bias, requires_grad=True)
    bn = torch.cat([torch.nn.functional.batch_norm(c, None, None, wt, bt, training=True,
                                                   eps=m.eps) for c in xt.split(4)])
    yt = torch.relu(bn + rt) if with_residual else torch.relu(bn)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.grad_weight, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    if with_residual:
        np.testing.assert_allclose(m.grad_residual, rt.grad.numpy(), rtol=1e-12, atol=0)
