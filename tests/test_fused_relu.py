"""Batch norm fused with ReLU, and with a residual add before it (issue 14, item 5).

``activation="relu"``: y = relu(bn(x)), or relu(bn(x) + residual). Checked against an
independent float64 NumPy oracle, against torch (F.batch_norm + F.relu, autograd backward),
by finite differences, over layouts, dtypes, schedules and thread counts, and at the
threshold: the backward's mask, recomputed from the input and the saved statistics, must
be the forward's decision bit for bit (grad_residual == where(y > 0, grad_output, 0)
exactly; torch's relu backward passes the gradient only where the output is > 0).
"""

import numpy as np
import pytest
from _reference import backward_batch, backward_eval, bcast, forward_batch, forward_eval

import cybn
from cybn import _kernels
from cybn import functional as F

TOL = {np.float16: {"rtol": 2e-2, "atol": 2e-2}, np.float32: {"rtol": 1e-4, "atol": 1e-4},
       np.float64: {"rtol": 1e-10, "atol": 1e-10}}


def _data(shape, dt, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dt)
    r = rng.standard_normal(shape).astype(dt)
    g = rng.standard_normal(shape).astype(dt)
    w = rng.uniform(0.5, 2, C).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    return x, r, g, w, b


def _oracle(x, g, w, b, r, y, training=True, rm=None, rv=None):
    """float64 oracle: the forward's pre-activation and, with the mask of cybn's output y
    (the forward's decision), the gradients of the batch-norm part applied to dz."""
    if training:
        z = forward_batch(x, w, b)[0]
    else:
        z = forward_eval(x, rm, rv, w, b)
    if r is not None:
        z = z + r.astype(np.float64)
    dz = np.where(np.asarray(y) <= 0, 0.0, g.astype(np.float64))
    if training:
        gi, gw, gb = backward_batch(x, dz, w)
    else:
        gi, gw, gb = backward_eval(x, dz, rm, rv, w)
    return np.maximum(z, 0), gi, gw, gb, dz


def _schedule(shape, itemsize):
    L = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return _kernels.plan_info(shape[0], shape[1], L, itemsize, True)["schedule"]


# one shape per walk: COLUMNS (L == 1, 1 < L < 64), RUNS, SLAB (float32 and float64)
SHAPES = [(64, 5), (33, 7, 9), (9, 3, 130), (3, 8, 9000)]


def test_shapes_take_every_schedule():
    assert {_schedule(s, 4) for s in SHAPES} == {"columns", "runs", "slab"}
    assert _schedule((3, 8, 9000), 8) == "slab"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_against_float64_oracle(shape, dt, residual, training):
    x, r, g, w, b = _data(shape, dt)
    r = r if residual else None
    rm = (0.1 * x.mean(axis=0).mean(axis=-1) if x.ndim > 2 else 0.1 * x.mean(axis=0))
    rm = rm.astype(dt)
    rv = np.full(shape[1], 1.3, dt)
    y, sm, si = F.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training, 0.1, 1e-5,
                                     activation="relu", residual=r)
    if training:
        grads = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r, bias=b)
    else:
        grads = F.batch_norm_backward(g, x, w, None, None, training=False, running_mean=rm,
                                      running_var=rv, activation="relu", residual=r, bias=b)
    ry, rgi, rgw, rgb, _ = _oracle(x, g, w, b, r, y, training, rm, rv)
    scale = 1 + np.abs(ry).max()
    np.testing.assert_allclose(y, ry, atol=TOL[dt]["atol"] * scale, rtol=0)
    assert len(grads) == (4 if residual else 3)
    np.testing.assert_allclose(grads[0], rgi, **TOL[dt])
    np.testing.assert_allclose(grads[1], rgw, rtol=TOL[dt]["rtol"],
                               atol=TOL[dt]["atol"] * np.sqrt(x.size))
    np.testing.assert_allclose(grads[2], rgb, rtol=TOL[dt]["rtol"],
                               atol=TOL[dt]["atol"] * np.sqrt(x.size))
    if residual:
        # grad_residual is dz itself, and the mask is exactly the forward's decision
        assert np.array_equal(grads[3], np.where(y <= 0, 0, g).astype(dt))
    assert y.min() >= 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_mask_is_the_forwards_decision(shape, dt):
    """The backward's recomputed mask is bit for bit the forward's: grad_residual is
    grad_output where y > 0 and 0 elsewhere, and without a residual grad_input is that of
    a residual of zeros (relu(bn + 0) is relu(bn))."""
    x, r, g, w, b = _data(shape, dt, seed=3)
    b[::2] = 0
    x[:, 0] = 0.25  # a constant channel: bn(x) is exactly bias there (0: on the threshold)
    y, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                     activation="relu", residual=r)
    gr = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r, bias=b)[3]
    assert np.array_equal(gr, np.where(y <= 0, 0, g).astype(dt))
    zero = np.zeros_like(x)
    y0, sm0, si0 = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                        activation="relu")
    y0r, _, _ = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                     activation="relu", residual=zero)
    assert np.array_equal(y0, y0r)
    assert np.all(y0[:, 0] == 0)
    g0 = F.batch_norm_backward(g, x, w, sm0, si0, activation="relu", bias=b, residual=None)
    g0r = F.batch_norm_backward(g, x, w, sm0, si0, activation="relu", bias=b, residual=zero)
    for a, c in zip(g0, g0r):
        assert np.array_equal(a, c)
    assert np.array_equal(g0r[3], np.where(y0 <= 0, 0, g).astype(dt))


@pytest.mark.parametrize("shape", [(64, 5), (3, 8, 9000)])
def test_threshold_exact_zero_with_residual(shape):
    """Residual = -bn(x) exactly: every pre-activation is 0, the output 0, no gradient."""
    x, _, g, w, b = _data(shape, np.float32, seed=5)
    z, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    r = -z
    y, sm2, si2 = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                       activation="relu", residual=r)
    assert np.array_equal(sm, sm2) and np.array_equal(si, si2)
    assert not y.any()
    gi, gw, gb, gr = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r,
                                           bias=b)
    assert not gr.any() and not gi.any() and not gw.any() and not gb.any()


def test_double_constants_fallback_keeps_the_mask():
    """float32 data with a float64 weight whose scale overflows float32: the constants of
    every channel are then formed in double (both schedules), and the backward forms them
    the same way."""
    for shape in [(64, 9), (3, 8, 9000)]:
        x, r, g, _, _ = _data(shape, np.float32, seed=7)
        C = shape[1]
        w = np.ones(C)
        w[1] = 1e37
        b = np.zeros(C)
        b[2] = 1e-3
        y, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                         activation="relu", residual=r)
        _, _, _, gr = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r,
                                            bias=b)
        assert np.array_equal(gr, np.where(y <= 0, 0, g))
        # the plain forward (same constants) followed by the add and ReLU in float32
        z = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, n_threads=1)[0]
        yy = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, n_threads=1,
                                  activation="relu")[0]
        ref = np.maximum(z, 0)
        ref[ref == 0] = 0  # relu(-0.0) is +0.0
        assert np.array_equal(yy, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_same_as_plain_forward_then_relu(shape, dt):
    """relu(y) and relu(y + r) bit for bit as cybn's plain forward followed by NumPy."""
    x, r, _, w, b = _data(shape, dt, seed=11)
    z = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)[0]
    y = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, activation="relu")[0]
    yr = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, activation="relu",
                              residual=r)[0]
    assert np.array_equal(y, np.where(z <= 0, 0, z).astype(dt))
    zr = z + r
    assert np.array_equal(yr, np.where(zr <= 0, 0, zr).astype(dt))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("residual", [False, True])
def test_threads_bitwise(shape, residual):
    x, r, g, w, b = _data(shape, np.float32, seed=2)
    r = r if residual else None
    res = []
    for nt in (1, 2):
        y, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                         activation="relu", residual=r, n_threads=nt)
        grads = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r,
                                      bias=b, n_threads=nt)
        res.append((y, sm, si) + tuple(grads))
    for a, c in zip(*res):
        assert np.array_equal(a, c)


def test_slab_and_tiles_agree():
    """check_finite forces the tiles in a training forward: the same output as the slab."""
    shape = (3, 8, 9000)
    x, r, g, _, _ = _data(shape, np.float32, seed=4)
    m1 = cybn.BatchNorm1d(8, activation="relu")
    m2 = cybn.BatchNorm1d(8, activation="relu", check_finite=True)
    y1 = m1(x, r)
    y2 = m2(x, r)
    np.testing.assert_allclose(y1, y2, atol=1e-5)
    np.testing.assert_allclose(m1.running_mean, m2.running_mean, rtol=1e-4, atol=1e-8)
    g1 = m1.backward(g)
    g2 = m2.backward(g)
    np.testing.assert_allclose(g1, g2, atol=1e-5)


@pytest.mark.parametrize("dt", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "channels_last", "F", "strided"])
def test_layouts_and_dtypes(dt, layout):
    x, r, g, w, b = _data((12, 4, 9), dt, seed=6)
    axis = 1
    if layout == "channels_last":
        x, r, g = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in (x, r, g))
        axis = -1
    elif layout == "F":
        x, r, g = (np.asfortranarray(a) for a in (x, r, g))
    elif layout == "strided":
        x, r, g = (np.repeat(a, 2, axis=2)[:, :, ::2] for a in (x, r, g))
        assert not x.flags.c_contiguous and not x.flags.f_contiguous
    m = cybn.BatchNorm1d(4, activation="relu", axis=axis, dtype=np.float64)
    m.weight[...] = w
    m.bias[...] = b
    y = m(x, r)
    assert y.dtype == dt and y.shape == x.shape
    gi = m.backward(g)
    gr = m.grad_residual
    assert gi.dtype == dt and gr.dtype == dt and gr.shape == x.shape
    # the oracle in the channels-on-axis-1 frame
    mv = (lambda a: np.moveaxis(a, -1, 1)) if axis == -1 else (lambda a: a)
    ry, rgi, rgw, _, _ = _oracle(mv(x), mv(g), w, b, mv(r), mv(y).astype(np.float64))
    scale = 1 + np.abs(ry).max()
    np.testing.assert_allclose(mv(y), ry, atol=TOL[dt]["atol"] * scale, rtol=0)
    if dt != np.float16:  # float16: the mask is decided in float32 (see the guide)
        np.testing.assert_allclose(mv(gi), rgi, **TOL[dt])
        np.testing.assert_allclose(m.grad_weight, rgw, rtol=1e-3, atol=1e-3)
        assert np.array_equal(gr, np.where(y <= 0, 0, g))


def test_out_and_inputs_untouched():
    x, r, g, w, b = _data((16, 3, 5), np.float32, seed=8)
    copies = [a.copy() for a in (x, r, g, w, b)]
    out = np.empty_like(x)
    y = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, activation="relu",
                             residual=r, out=out)[0]
    assert y is out
    y2 = F.batch_norm(x, None, None, w, b, True, activation="relu", residual=r)
    assert np.array_equal(out, y2)
    _, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    gout = np.empty_like(x)
    gi = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r, bias=b,
                               out=gout)[0]
    assert gi is gout
    m = cybn.BatchNorm1d(3, activation="relu")
    mo = np.empty_like(x)
    assert m(x, r, out=mo) is mo
    go = np.empty_like(x)
    assert m.backward(g, out=go) is go
    for a, c in zip((x, r, g, w, b), copies):
        assert np.array_equal(a, c)


def test_module_modes_and_repr():
    x, r, g, w, b = _data((20, 3), np.float64, seed=9)
    m = cybn.BatchNorm1d(3, activation="relu", dtype=np.float64)
    assert repr(m) == ("BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                       "track_running_stats=True, activation='relu')")
    assert "activation" not in repr(cybn.BatchNorm1d(3))
    m.weight[...] = w
    m.bias[...] = b
    y = m(x)
    assert m.grad_residual is None
    m.backward(g)
    assert m.grad_residual is None
    assert int(m.num_batches_tracked) == 1
    m.eval()
    ye = m(x, r)
    ry, rgi, rgw, rgb, rdz = _oracle(x, g, w, b, r, ye, False, m.running_mean,
                                     m.running_var)
    np.testing.assert_allclose(ye, ry, atol=1e-12)
    gi = m.backward(g)
    np.testing.assert_allclose(gi, rgi, atol=1e-12)
    np.testing.assert_allclose(m.grad_weight, rgw, atol=1e-10)
    np.testing.assert_allclose(m.grad_bias, rgb, atol=1e-10)
    assert np.array_equal(m.grad_residual, rdz)
    assert int(m.num_batches_tracked) == 1
    # no running statistics: batch statistics in evaluation too
    m2 = cybn.BatchNorm1d(3, activation="relu", track_running_stats=False,
                          dtype=np.float64).eval()
    y2 = m2(x)
    np.testing.assert_allclose(y2, np.maximum(forward_batch(x)[0], 0), atol=1e-12)
    assert y.shape == y2.shape


def test_errors_leave_state_unchanged():
    x, r, g, _, _ = _data((8, 3), np.float32, seed=10)
    m = cybn.BatchNorm1d(3, activation="relu")
    m(x + 1, r)
    m.backward(g)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    grads = (m.grad_weight.copy(), m.grad_residual.copy())
    cache = m._cache
    for call in (lambda: m(x, r[:4]), lambda: m(x, r.astype(np.float64)),
                 lambda: m(x, r.tolist()), lambda: m(x, r, out=r),
                 lambda: m(x[:, :2], r[:, :2])):
        with pytest.raises((TypeError, ValueError)):
            call()
        for k, v in m.state_dict().items():
            assert np.array_equal(v, before[k]), k
        assert m._cache is cache
        assert np.array_equal(m.grad_weight, grads[0])
        assert np.array_equal(m.grad_residual, grads[1])
    with pytest.raises(ValueError, match="residual is added before the activation"):
        cybn.BatchNorm1d(3)(x, r)
    with pytest.raises(TypeError, match="activation must be None or 'relu', got int"):
        F.batch_norm(x, None, None, training=True, activation=1)
    with pytest.raises(ValueError, match="got 'Relu'"):
        cybn.BatchNorm1d(3, activation="Relu")


def test_finite_differences():
    """float64 central differences of L = sum(relu(bn(x) + r) * g) in x, w, b, r."""
    shape = (6, 3, 4)
    x, r, g, w, b = _data(shape, np.float64, seed=12)

    def loss(x, w, b, r):
        y = F.batch_norm(x, None, None, w, b, True, activation="relu", residual=r)
        return float((y * g).sum())

    _, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                     activation="relu", residual=r)
    pre = forward_batch(x, w, b)[0] + r
    assert np.abs(pre).min() > 1e-4  # away from the kink for the step below
    gi, gw, gb, gr = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r,
                                           bias=b)
    h = 1e-7
    for arr, grad in ((x, gi), (w, gw), (b, gb), (r, gr)):
        num = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            lp = loss(x, w, b, r)
            arr[i] = old - h
            lm = loss(x, w, b, r)
            arr[i] = old
            num[i] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(32, 5), (4, 3, 70), (3, 8, 9000)])
def test_torch_parity(dt, residual, shape):
    torch = pytest.importorskip("torch", reason="torch is the oracle of this test")
    x, r, g, w, b = _data(shape, dt, seed=13)
    x[:, 0] = 0.5  # a constant channel with bias 0: outputs exactly 0 in both
    b[0] = 0
    tx, tw, tb, tr = (torch.tensor(a, requires_grad=True) for a in (x, w, b, r))
    z = torch.nn.functional.batch_norm(tx, None, None, tw, tb, True, 0.1, 1e-5)
    if residual:
        z = z + tr
    ty = torch.nn.functional.relu(z)
    ty.backward(torch.tensor(g))
    rr = r if residual else None
    y, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                     activation="relu", residual=rr)
    grads = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=rr, bias=b)
    tol = TOL[dt]
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    if not residual:
        assert np.all(y[:, 0] == 0) and np.all(ty.detach().numpy()[:, 0] == 0)
    np.testing.assert_allclose(grads[0], tx.grad.numpy(), **tol)
    np.testing.assert_allclose(grads[1], tw.grad.numpy(), rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * np.sqrt(x.size))
    np.testing.assert_allclose(grads[2], tb.grad.numpy(), rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * np.sqrt(x.size))
    if residual:
        # where both outputs agree on the sign, grad_residual is torch's exactly
        same = (y > 0) == (ty.detach().numpy() > 0)
        assert same.mean() > 0.999
        assert np.array_equal(grads[3][same], tr.grad.numpy()[same])


def test_nan_output_passes_gradient_like_torch():
    """torch's relu backward (threshold_backward) zeroes the gradient where the output
    is <= 0: a NaN output passes it; cybn's mask does the same."""
    x, r, g, w, b = _data((8, 3), np.float64, seed=14)
    r[2, 1] = np.nan
    y, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5,
                                     activation="relu", residual=r)
    assert np.isnan(y[2, 1])
    gr = F.batch_norm_backward(g, x, w, sm, si, activation="relu", residual=r, bias=b)[3]
    assert gr[2, 1] == g[2, 1]
    torch = pytest.importorskip("torch", reason="torch is the oracle of this check")
    tr = torch.tensor(r, requires_grad=True)
    z = torch.nn.functional.batch_norm(torch.tensor(x), None, None, torch.tensor(w),
                                       torch.tensor(b), True, 0.1, 1e-5) + tr
    torch.nn.functional.relu(z).backward(torch.tensor(g))
    assert tr.grad[2, 1].item() == g[2, 1]


def test_bcast_helper_is_the_references():
    # the oracle above uses tests/_reference.py's own broadcasting helper
    assert bcast(np.arange(3.0), 3).shape == (1, 3, 1)


def test_adapters_refuse_an_activation():
    """What cannot carry the activation refuses a module with one instead of dropping it
    (cybn.save records it: test_state_file_keeps_the_activation)."""
    m = cybn.BatchNorm1d(3, activation="relu").eval()
    with pytest.raises(ValueError, match="cannot fold a batch norm with activation='relu'"):
        cybn.fold_linear(np.ones((3, 2)), None, m)
    with pytest.raises(ValueError, match="SyncBatchNorm does not fuse an activation"):
        cybn.SyncBatchNorm.from_module(m)


def test_state_file_keeps_the_activation(rng):
    import io
    m = cybn.BatchNorm1d(3, activation="relu")
    x = rng.normal(size=(8, 3)).astype(np.float32)
    m(x)
    buf = io.BytesIO()
    cybn.save(m, buf)
    buf.seek(0)
    m2 = cybn.load(buf)
    assert m2.activation == "relu" and repr(m2) == repr(m)
    np.testing.assert_array_equal(m(x), m2(x))
    assert np.all(m2(x) >= 0)


def test_functional_backward_requires_bias_and_residual_with_an_activation(rng):
    # a forgotten bias= or residual= would silently change the recomputed mask
    x = rng.normal(size=(16, 3)).astype(np.float32)
    w, b = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
    _, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, activation="relu")
    with pytest.raises(TypeError, match="pass the forward's bias= and residual= "):
        F.batch_norm_backward(x, x, w, sm, si, activation="relu")
    with pytest.raises(TypeError, match="pass the forward's residual= "):
        F.batch_norm_backward(x, x, w, sm, si, activation="relu", bias=b)
    F.batch_norm_backward(x, x, w, sm, si, activation="relu", bias=b, residual=None)
