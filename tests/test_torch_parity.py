"""Parity with torch 2.13 (skipped as a whole when torch is not installed).

Data are kept well conditioned (|mean|/std <= ~1, N <= 64) because torch's
own float32 paths lose precision otherwise (docs/semantics.md §8).
Tolerances vs torch: float64 rtol 1e-10 / atol 1e-10*|max|;
float32 rtol 1e-5 / atol 1e-5*|max| (torch itself is ~1e-6 off);
float16 2e-3*|max|.  Never bitwise: torch depends on threads and layout."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _reference import (
    GOLD_ATOL,
    GOLD_RTOL,
    T1_EVAL_Y,
    T1_RM,
    T1_RV,
    T1_X,
    T1_Y64,
    T2_RM,
    T2_RV,
    T2_X,
    T2_Y_CH0,
    T5_B,
    T5_DX,
    T5_DY,
    T5_W,
    T6_DX,
    T6_Y,
    backward_batch,
)

import cybn
import cybn.functional as F

TDT = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16,
}
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}


def close(a, t, dtype, what=""):
    """Compare a cybn array with a torch tensor (or array)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().to(torch.float64).numpy()
    a = np.asarray(a, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    tol = TOL[np.dtype(dtype)]
    scale = max(1.0, float(np.abs(t[np.isfinite(t)]).max())) if t.size else 1.0
    np.testing.assert_allclose(a, t, rtol=tol, atol=tol * scale, err_msg=what)


def tt(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# --------------------------------------------------------------------------
# the golden vectors are what torch computes (checks the notes themselves)
# --------------------------------------------------------------------------


def test_torch_reproduces_golden_vectors():
    bn = torch.nn.BatchNorm1d(2, dtype=torch.float64)
    y = bn(tt(T1_X))
    np.testing.assert_allclose(y.detach().numpy(), T1_Y64, rtol=GOLD_RTOL, atol=GOLD_ATOL)
    np.testing.assert_allclose(bn.running_mean.numpy(), T1_RM, rtol=GOLD_RTOL)
    np.testing.assert_allclose(bn.running_var.numpy(), T1_RV, rtol=GOLD_RTOL)
    bn.eval()
    np.testing.assert_allclose(
        bn(tt(T1_X)).detach().numpy(), T1_EVAL_Y, rtol=GOLD_RTOL, atol=GOLD_ATOL
    )
    bn = torch.nn.BatchNorm1d(2, dtype=torch.float64)
    y = bn(tt(T2_X))
    np.testing.assert_allclose(
        y.detach().numpy()[:, 0, :].ravel(), T2_Y_CH0, rtol=GOLD_RTOL, atol=GOLD_ATOL
    )
    np.testing.assert_allclose(bn.running_mean.numpy(), T2_RM, rtol=GOLD_RTOL)
    np.testing.assert_allclose(bn.running_var.numpy(), T2_RV, rtol=GOLD_RTOL)
    bn = torch.nn.BatchNorm1d(2, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(tt(T5_W))
        bn.bias.copy_(tt(T5_B))
    x = tt(T1_X).clone().requires_grad_(True)
    bn(x).backward(tt(T5_DY))
    np.testing.assert_allclose(x.grad.numpy(), T5_DX, rtol=GOLD_RTOL, atol=GOLD_ATOL)
    bn.eval()
    x = tt(T1_X).clone().requires_grad_(True)
    y = bn(x)
    y.backward(tt(T5_DY))
    np.testing.assert_allclose(y.detach().numpy(), T6_Y, rtol=GOLD_RTOL, atol=GOLD_ATOL)
    np.testing.assert_allclose(x.grad.numpy(), T6_DX, rtol=GOLD_RTOL, atol=GOLD_ATOL)


# --------------------------------------------------------------------------
# module: a train/eval sequence with running stats, nbt and autograd grads
# --------------------------------------------------------------------------

MODULE_CASES = [
    {},
    {"momentum": None},
    {"momentum": 0.5, "eps": 1e-3},
    {"affine": False},
    {"bias": False},
    {"track_running_stats": False},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(32, 6), (8, 4, 11), (2, 3, 1)])
@pytest.mark.parametrize(
    "kw", MODULE_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default"
)
def test_module_sequence(rng, dtype, shape, kw):
    C = shape[1]
    m = cybn.BatchNorm1d(C, dtype=dtype, **kw)
    bn = torch.nn.BatchNorm1d(C, dtype=TDT[np.dtype(dtype)], **kw)
    if m.weight is not None:
        w = (rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)).astype(dtype)
        m.weight[...] = w
        with torch.no_grad():
            bn.weight.copy_(tt(w))
    if m.bias is not None:
        b = rng.standard_normal(C).astype(dtype)
        m.bias[...] = b
        with torch.no_grad():
            bn.bias.copy_(tt(b))
    schedule = [True, True, False, True, False, False, True, False]
    for step, training in enumerate(schedule):
        m.train(training)
        bn.train(training)
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 2) + rng.uniform(-1, 1)).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        xt = tt(x).clone().requires_grad_(True)
        for p in bn.parameters():
            p.grad = None
        yt = bn(xt)
        yt.backward(tt(g))
        y = m(x)
        gi = m.backward(g)
        what = f"step {step} ({'train' if training else 'eval'})"
        close(y, yt, dtype, what + " y")
        batch_stats_used = training or bn.running_mean is None
        if np.dtype(dtype) == np.float32 and batch_stats_used and np.prod(shape) // C == 2:
            # n == 2: dx is pure cancellation; torch float32 is ~2e-4 off there, so
            # check cybn against the float64 oracle instead (measured: cybn ~6e-8)
            w64 = None if m.weight is None else m.weight.astype(np.float64)
            close(gi, backward_batch(x, g, w64, m.eps)[0], dtype, what + " grad_input (oracle)")
        else:
            close(gi, xt.grad, dtype, what + " grad_input")
        if bn.weight is not None:
            close(m.grad_weight, bn.weight.grad, dtype, what + " grad_weight")
        if bn.bias is not None:
            close(m.grad_bias, bn.bias.grad, dtype, what + " grad_bias")
        if bn.running_mean is not None:
            close(m.running_mean, bn.running_mean, dtype, what + " running_mean")
            close(m.running_var, bn.running_var, dtype, what + " running_var")
            assert int(m.num_batches_tracked) == int(bn.num_batches_tracked), what
        else:
            assert m.running_mean is None
    sd_m, sd_t = m.state_dict(), bn.state_dict()
    assert list(sd_m.keys()) == list(sd_t.keys())
    for k in sd_t:
        assert sd_m[k].shape == tuple(sd_t[k].shape), k
        assert sd_m[k].dtype == np.dtype(str(sd_t[k].dtype).replace("torch.", "")), k


@pytest.mark.parametrize("shape", [(32, 6), (8, 4, 11)])
def test_module_float16_input(rng, shape):
    C = shape[1]
    m = cybn.BatchNorm1d(C)
    bn = torch.nn.BatchNorm1d(C)
    for training in (True, True, False):
        m.train(training)
        bn.train(training)
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float16)
        g = rng.standard_normal(shape).astype(np.float16)
        xt = tt(x).clone().requires_grad_(True)
        bn.weight.grad = bn.bias.grad = None
        yt = bn(xt)
        yt.backward(tt(g))
        y = m(x)
        gi = m.backward(g)
        assert y.dtype == np.float16 and gi.dtype == np.float16
        close(y, yt, np.float16)
        close(gi, xt.grad, np.float16)
        close(m.grad_weight, bn.weight.grad, np.float32)
        close(m.running_mean, bn.running_mean, np.float32)
        close(m.running_var, bn.running_var, np.float32)


def test_repr_matches_torch():
    for kw in [
        {},
        {"eps": 0.001, "momentum": None, "affine": False, "track_running_stats": False},
        {"momentum": 1},
        {"bias": False},
        {"eps": 1e-3, "momentum": 0.01},
    ]:
        assert repr(cybn.BatchNorm1d(7, **kw)) == repr(torch.nn.BatchNorm1d(7, **kw)), kw


# --------------------------------------------------------------------------
# state_dict interop
# --------------------------------------------------------------------------


def test_load_torch_state_dict(rng):
    bn = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    for _ in range(3):
        bn(torch.randn(5, 3, dtype=torch.float64))
    m = cybn.BatchNorm1d(3)  # float32 module: float64 tensors are copied in as float32
    res = m.load_state_dict(bn.state_dict())
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    assert m.weight.dtype == np.float32 and int(m.num_batches_tracked) == 3
    assert isinstance(m.num_batches_tracked, np.ndarray) and m.num_batches_tracked.dtype == np.int64
    np.testing.assert_array_equal(m.running_var, bn.running_var.numpy().astype(np.float32))
    np.testing.assert_array_equal(m.weight, np.float32([1.5, -2.0, 0.5]))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    m.eval()
    bn.eval()
    close(m(x), bn.float()(tt(x)), np.float32)


def test_cybn_state_dict_loads_into_torch(rng):
    m = cybn.BatchNorm1d(3)
    for _ in range(2):
        m(rng.standard_normal((6, 3)).astype(np.float32))
    bn = torch.nn.BatchNorm1d(3)
    bn.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in m.state_dict().items()})
    assert int(bn.num_batches_tracked) == 2
    np.testing.assert_array_equal(bn.running_mean.numpy(), m.running_mean)


def test_torch_tensor_input_rejected():
    m = cybn.BatchNorm1d(3)
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match="(?s)(?=.*input)(?=.*Tensor)"):
        m(torch.ones(4, 3))
    for k, v in m.state_dict().items():
        assert np.array_equal(v, before[k])


# --------------------------------------------------------------------------
# functional
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 5), (6, 5, 13)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_F_batch_norm(rng, dtype, shape, training, affine):
    C = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + 0.3).astype(dtype)
    w = rng.uniform(0.5, 2, C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm_t, rv_t = tt(rm).clone(), tt(rv).clone()
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.2, eps=1e-4)
    yt = torch.nn.functional.batch_norm(
        tt(x),
        rm_t,
        rv_t,
        None if w is None else tt(w),
        None if b is None else tt(b),
        training=training,
        momentum=0.2,
        eps=1e-4,
    )
    close(y, yt, dtype)
    close(rm, rm_t, dtype)
    close(rv, rv_t, dtype)


@pytest.mark.parametrize("momentum", [1.5, -0.5])
def test_F_batch_norm_momentum_is_not_range_checked(rng, momentum):
    """torch never range-checks momentum (docs/semantics.md §1): it extrapolates."""
    x = rng.standard_normal((10, 3)) * 2 + 1
    rm, rv = np.zeros(3), np.ones(3)
    rm_t, rv_t = tt(rm).clone(), tt(rv).clone()
    torch.nn.functional.batch_norm(tt(x), rm_t, rv_t, training=True, momentum=momentum)
    F.batch_norm(x, rm, rv, training=True, momentum=momentum)
    close(rm, rm_t, np.float64)
    close(rv, rv_t, np.float64)


def test_load_torch_state_dict_without_nbt_is_missing():
    """A version-2 (torch) state_dict with num_batches_tracked deleted fails
    (docs/semantics.md §6)."""
    sd = torch.nn.BatchNorm1d(2).state_dict()
    del sd["num_batches_tracked"]
    with pytest.raises(
        RuntimeError, match=r'Missing key\(s\) in state_dict: "num_batches_tracked"'
    ):
        cybn.BatchNorm1d(2).load_state_dict(sd)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 5), (6, 5, 13)])
@pytest.mark.parametrize("training, with_stats", [(True, True), (True, False), (False, True)])
def test_native_batch_norm_forward_backward(rng, dtype, shape, training, with_stats):
    C = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + 0.3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype) if with_stats else None
    rv = rng.uniform(0.5, 2, C).astype(dtype) if with_stats else None
    rm_t = None if rm is None else tt(rm).clone()
    rv_t = None if rv is None else tt(rv).clone()
    out_t, sm_t, si_t = torch.ops.aten.native_batch_norm(
        tt(x), tt(w), tt(b), rm_t, rv_t, training, 0.1, 1e-5
    )
    out, sm, si = F.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5)
    close(out, out_t, dtype, "output")
    assert sm.dtype == np.float64 and si.dtype == np.float64
    assert sm.shape == tuple(sm_t.shape) and si.shape == tuple(si_t.shape)
    close(sm, sm_t, dtype, "save_mean")
    close(si, si_t, dtype, "save_invstd")
    if with_stats:
        close(rm, rm_t, dtype, "running_mean")
        close(rv, rv_t, dtype, "running_var")
    gi_t, gw_t, gb_t = torch.ops.aten.native_batch_norm_backward(
        tt(g), tt(x), tt(w), rm_t, rv_t, sm_t, si_t, training, 1e-5, [True, True, True]
    )
    gi, gw, gb = F.batch_norm_backward(
        g, x, w, sm, si, training=training, running_mean=rm, running_var=rv, eps=1e-5
    )
    close(gi, gi_t, dtype, "grad_input")
    close(gw, gw_t, dtype, "grad_weight")
    close(gb, gb_t, dtype, "grad_bias")
    assert gi.dtype == np.dtype(dtype) and gw.dtype == np.dtype(dtype)


def test_native_backward_without_weight(rng):
    x = rng.standard_normal((9, 4))
    g = rng.standard_normal((9, 4))
    _, sm_t, si_t = torch.ops.aten.native_batch_norm(tt(x), None, None, None, None, True, 0.1, 1e-5)
    gi_t, gw_t, gb_t = torch.ops.aten.native_batch_norm_backward(
        tt(g), tt(x), None, None, None, sm_t, si_t, True, 1e-5, [True, True, True]
    )
    _, sm, si = F.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    gi, gw, gb = F.batch_norm_backward(g, x, None, sm, si)
    close(gi, gi_t, np.float64)
    close(gw, gw_t, np.float64)
    close(gb, gb_t, np.float64)


@pytest.mark.parametrize("layout", ["transposed", "strided", "negative"])
def test_non_contiguous_vs_torch(rng, layout):
    base = rng.standard_normal((20, 6)) + 0.5
    if layout == "transposed":
        x = np.ascontiguousarray(base.T).T
    elif layout == "strided":
        big = np.zeros((40, 6))
        big[::2] = base
        x = big[::2]
    else:
        x = np.ascontiguousarray(base[::-1])[::-1]
    y = cybn.BatchNorm1d(6, dtype=np.float64)(x)
    yt = torch.nn.BatchNorm1d(6, dtype=torch.float64)(tt(base))
    close(y, yt, np.float64)
