"""BatchNorm2d/3d, any channel axis, inference folding, .npz save/load: the beyond-torch
features (docs/semantics.md §10, README "Beyond torch for NumPy users").

Every numeric check is against the float64 oracle in _reference.py (applied to an
(N, C, rest) reshape of the input) and, where torch has the feature, against torch.
"""

import numpy as np
import pytest
from _reference import assert_close, backward_batch, forward_batch

import cybn
from cybn import functional as F

F64 = np.float64


def ncl(x):
    """(N, C, *rest) -> (N, C, prod(rest)) copy, float64: the oracle's input."""
    return np.asarray(x, F64).reshape(x.shape[0], x.shape[1], -1)


# ---------------------------------------------------------------- BatchNorm2d / 3d


@pytest.mark.parametrize("cls,shape", [(cybn.BatchNorm2d, (4, 3, 5, 6)),
                                       (cybn.BatchNorm3d, (2, 3, 4, 5, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spatial_train_backward_eval_against_reference(rng, cls, shape, dtype):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    m = cls(C, dtype=dtype)
    m.weight[:] = rng.uniform(0.5, 2, C)
    m.bias[:] = rng.standard_normal(C)
    w, b = m.weight.astype(F64), m.bias.astype(F64)
    y = m(x)
    y_ref, mean, _, var_u = forward_batch(ncl(x), w, b)
    assert y.shape == shape and y.dtype == dtype
    assert_close(y.reshape(y_ref.shape), y_ref)
    assert_close(m.running_mean, 0.1 * mean, dtype=dtype)
    assert_close(m.running_var, 0.9 + 0.1 * var_u, dtype=dtype)
    gx = m.backward(dy)
    gx_ref, gw_ref, gb_ref = backward_batch(ncl(x), ncl(dy), w)
    assert_close(gx.reshape(gx_ref.shape), gx_ref)
    assert_close(m.grad_weight, gw_ref, dtype=dtype)
    assert_close(m.grad_bias, gb_ref, dtype=dtype)


@pytest.mark.parametrize("cls,good,bad", [(cybn.BatchNorm2d, 4, 3), (cybn.BatchNorm3d, 5, 4)])
def test_spatial_ndim_error_is_torchs(cls, good, bad):
    m = cls(2)
    with pytest.raises(ValueError, match=rf"expected {good}D input \(got {bad}D input\)"):
        m(np.zeros((2,) * bad, np.float32))
    assert int(m.num_batches_tracked) == 0


@pytest.mark.parametrize("name,shape", [("BatchNorm2d", (3, 4, 5, 2)),
                                        ("BatchNorm3d", (2, 4, 3, 2, 3))])
def test_spatial_matches_torch(rng, name, shape):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    C = shape[1]
    m = getattr(cybn, name)(C, dtype=F64)
    t = getattr(torch.nn, name)(C, dtype=torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.tensor(dy))
    y = m(x)
    gx = m.backward(dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.grad_weight, t.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.running_var, t.running_var.numpy(), rtol=1e-12)
    m.eval()
    t.eval()
    np.testing.assert_allclose(m(x), t(torch.tensor(x)).detach().numpy(), rtol=1e-12,
                               atol=1e-12)


def test_compat_spatial_equals_batchnorm2d_statistics(rng):
    x = rng.standard_normal((3, 4, 5, 5))
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    out, _ = cybn.compat.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    m = cybn.BatchNorm2d(4, dtype=F64)
    m.weight[:], m.bias[:] = gamma, beta
    np.testing.assert_allclose(out, m(x), rtol=0, atol=0)


# ---------------------------------------------------------------- any channel axis

AXIS_CASES = [
    # (shape, axis): channels-last sequences, channels-last images, odd axes
    ((8, 5, 3), -1),
    ((8, 5, 3), 2),
    ((4, 6, 7, 3), -1),
    ((6, 4, 5), 0),
    ((3, 5, 4, 2), 2),
]


@pytest.mark.parametrize("shape,axis", AXIS_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axis_equals_transpose_normalise_transpose_back(rng, shape, axis, dtype):
    x = (rng.standard_normal(shape) + 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ax = axis % len(shape)
    C = shape[ax]
    perm = (0, ax) + tuple(i for i in range(1, len(shape)) if i != ax) if ax else \
        (0,) + tuple(range(1, len(shape)))
    if ax == 0:  # channel on axis 0: move it to 1
        perm = (1, 0) + tuple(range(2, len(shape)))
    inv = np.argsort(perm)
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    y, sm, si = F.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, axis=axis)
    xt = np.ascontiguousarray(x.transpose(perm))
    yt, sm_t, _ = F.batch_norm_forward(xt, w, b, rm2, rv2, True, 0.1, 1e-5)
    np.testing.assert_allclose(y, yt.transpose(inv), rtol=1e-6 if dtype == np.float32 else 1e-13,
                               atol=1e-6 if dtype == np.float32 else 1e-13)
    # the two layouts take different kernel paths: the means agree to the accuracy of the
    # statistics (float64 accumulation of deviations formed in the input's precision)
    np.testing.assert_allclose(sm, sm_t, rtol=0, atol=1e-7 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(rm, rm2, rtol=1e-6)
    y_ref, _, _, _ = forward_batch(ncl(xt), w, b)
    assert_close(yt.reshape(y_ref.shape), y_ref)
    gx, gw, gb = F.batch_norm_backward(dy, x, w, sm, si, axis=axis)
    gx_ref, gw_ref, gb_ref = backward_batch(ncl(xt), ncl(np.ascontiguousarray(dy.transpose(perm))),
                                            w.astype(F64))
    assert_close(np.ascontiguousarray(gx.transpose(perm)).reshape(gx_ref.shape), gx_ref)
    assert_close(gw, gw_ref, dtype=dtype)
    assert_close(gb, gb_ref, dtype=dtype)


def test_axis_module_channels_last_keeps_layout_and_backward(rng):
    x = rng.standard_normal((16, 10, 6)).astype(np.float32)  # (N, L, C)
    m = cybn.BatchNorm1d(6, axis=-1)
    y = m(x)
    assert y.shape == x.shape and y.flags.c_contiguous
    ref = cybn.BatchNorm1d(6)
    y_ref = ref(np.ascontiguousarray(x.transpose(0, 2, 1))).transpose(0, 2, 1)
    # the (rows, C) and (N, C, L) layouts take different kernel paths
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gx = m.backward(dy)
    gx_ref = ref.backward(np.ascontiguousarray(dy.transpose(0, 2, 1))).transpose(0, 2, 1)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.grad_weight, ref.grad_weight, rtol=1e-5)
    np.testing.assert_allclose(m.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)


def test_axis_fortran_order_output_keeps_fortran_layout(rng):
    x = np.asfortranarray(rng.standard_normal((50, 4)).astype(np.float32))
    y = cybn.BatchNorm1d(4)(x)
    assert y.flags.f_contiguous
    y_ref, *_ = forward_batch(ncl(x))
    assert_close(y.reshape(y_ref.shape), y_ref)


def test_axis_no_copy_peak_memory(rng):
    """Channels-last input is normalised without a transpose copy (peak memory)."""
    tracemalloc = pytest.importorskip("tracemalloc")
    x = rng.standard_normal((4096, 64, 16)).astype(np.float32)  # 16 MiB, channels last
    m = cybn.BatchNorm1d(16, axis=-1)
    m(x)
    tracemalloc.start()
    m(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the output (x.nbytes) plus per-channel scratch; a transpose copy would add x.nbytes
    assert peak < 1.2 * x.nbytes, (peak, x.nbytes)


@pytest.mark.parametrize("axis", [3, -4, 1.0, True])
def test_axis_errors(axis):
    x = np.zeros((4, 3, 2), np.float32)
    err = TypeError if isinstance(axis, (float, bool)) else ValueError
    with pytest.raises(err, match="axis"):
        F.batch_norm(x, None, None, training=True, axis=axis)


def test_axis_wrong_channel_count_names_axis():
    m = cybn.BatchNorm1d(5, axis=-1)
    with pytest.raises(ValueError, match=r"running_mean should contain 3 elements not 5.*axis 2"):
        m(np.zeros((4, 2, 3), np.float32))


# ---------------------------------------------------------------- folding


def _trained_eval_bn(rng, cls, C, dtype=np.float32):
    bn = cls(C, dtype=dtype)
    bn.weight[:] = rng.uniform(0.5, 2, C)
    bn.bias[:] = rng.standard_normal(C)
    bn.running_mean[:] = rng.standard_normal(C) * 3
    bn.running_var[:] = rng.uniform(0.1, 4, C)
    return bn.eval()


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_linear_identity(rng, with_bias, dtype):
    W = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype) if with_bias else None
    bn = _trained_eval_bn(rng, cybn.BatchNorm1d, 7, dtype)
    x = rng.standard_normal((32, 5)).astype(F64)
    z = x @ W.astype(F64).T + (0 if b is None else b.astype(F64))
    expected = ((z - bn.running_mean) / np.sqrt(bn.running_var.astype(F64) + bn.eps)
                * bn.weight + bn.bias)
    W2, b2 = cybn.fold_linear(W, b, bn)
    assert W2.dtype == dtype and W2.shape == W.shape and b2.shape == (7,)
    got = x @ W2.astype(F64).T + b2.astype(F64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
    # and the module agrees with the oracle on the same pre-activations
    np.testing.assert_allclose(bn(z.astype(dtype)), expected, rtol=10 * tol,
                               atol=10 * tol * np.abs(expected).max())


def test_fold_linear_matches_torch(rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_linear_bn_eval
    lin = torch.nn.Linear(5, 4).double().eval()
    tbn = torch.nn.BatchNorm1d(4).double().eval()
    with torch.no_grad():
        tbn.running_mean.copy_(torch.tensor(rng.standard_normal(4)))
        tbn.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, 4)))
        tbn.weight.copy_(torch.tensor(rng.uniform(0.5, 2, 4)))
        tbn.bias.copy_(torch.tensor(rng.standard_normal(4)))
    fused = fuse_linear_bn_eval(lin, tbn)
    bn = cybn.BatchNorm1d(4, dtype=F64)
    bn.load_state_dict(tbn.state_dict())
    W2, b2 = cybn.fold_linear(lin.weight.detach().numpy(), lin.bias.detach().numpy(), bn.eval())
    np.testing.assert_allclose(W2, fused.weight.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(b2, fused.bias.detach().numpy(), rtol=1e-13, atol=1e-13)


def test_fold_conv_identity(rng):
    W = rng.standard_normal((6, 3, 3, 3))
    b = rng.standard_normal(6)
    bn = _trained_eval_bn(rng, cybn.BatchNorm2d, 6, F64)
    x = rng.standard_normal((2, 3, 5, 5))

    def conv(x, W, b):  # valid 2-D convolution (cross-correlation), plain loops
        N, _, H, Wd = x.shape
        O, _, kh, kw = W.shape
        out = np.zeros((N, O, H - kh + 1, Wd - kw + 1))
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                patch = x[:, :, i:i + kh, j:j + kw]
                out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, W)
        return out + b[None, :, None, None]

    expected = bn(conv(x, W, b))
    W2, b2 = cybn.fold_conv(W, b, bn)
    np.testing.assert_allclose(conv(x, W2, b2), expected, rtol=1e-12, atol=1e-12)


def test_fold_errors(rng):
    W = rng.standard_normal((3, 2))
    bn = cybn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="training mode"):
        cybn.fold_linear(W, None, bn)
    with pytest.raises(ValueError, match="running statistics"):
        cybn.fold_linear(W, None, cybn.BatchNorm1d(3, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="num_features=4"):
        cybn.fold_linear(W, None, cybn.BatchNorm1d(4).eval())
    with pytest.raises(ValueError, match="out_features"):
        cybn.fold_linear(rng.standard_normal((3, 2, 2)), None, bn.eval())
    with pytest.raises(TypeError, match="weight"):
        cybn.fold_linear(W.astype(int), None, bn.eval())


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("kwargs", [
    {},
    {"momentum": None, "eps": 1e-3},
    {"affine": False},
    {"bias": False},
    {"track_running_stats": False},
    {"dtype": np.float64, "axis": -1, "check_finite": True},
    {"dtype": np.float16},
])
@pytest.mark.parametrize("cls", [cybn.BatchNorm1d, cybn.BatchNorm2d, cybn.BatchNorm3d])
def test_save_load_round_trip(tmp_path, rng, cls, kwargs):
    m = cls(4, **kwargs)
    shape = {cybn.BatchNorm1d: (6, 4, 3), cybn.BatchNorm2d: (3, 4, 2, 3),
             cybn.BatchNorm3d: (2, 4, 2, 2, 3)}[cls]
    if kwargs.get("axis") == -1:
        shape = shape[:1] + shape[2:] + (4,)
    for _ in range(3):
        m(rng.standard_normal(shape).astype(np.float32))
    if m.weight is not None:
        m.weight[:] = rng.uniform(0.5, 2, 4)
    m.eval()
    path = tmp_path / "bn.npz"
    cybn.save(m, path)
    m2 = cybn.load(path)
    assert type(m2) is cls and repr(m2) == repr(m)
    assert m2.training is False and m2.dtype == m.dtype and m2.momentum == m.momentum
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(sd2[k], sd[k])
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(m2(x), m(x))


def test_load_rejects_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a file written by cybn.save"):
        cybn.load(path)
