"""cybn.BatchNorm1d: construction, forward (train/eval), running statistics,
flags, N == 0, state_dict, repr -- checked against the float64 oracle in
_reference.py and the golden vectors of docs/semantics.md.

Tolerances (see _reference.TOL): float64 rtol 1e-12 / atol 1e-12*|max|;
float32 rtol 1e-5 / atol 1e-5*|max|; float16 2e-3.  Golden vectors are printed
with ~10 digits: compared at 2e-9 (float64) and 1e-6 (float32)."""

import pickle

import numpy as np
import pytest
from _reference import (
    T1_EVAL_Y,
    T1_RM,
    T1_RV,
    T1_X,
    T1_Y32,
    T1_Y64,
    T2_RM,
    T2_RV,
    T2_X,
    T2_Y_CH0,
    T3_BATCHES,
    T3_RM,
    T3_RV,
    T4_RV_CH0,
    T4_X,
    RefBatchNorm1d,
    assert_close,
    batch_stats,
    forward_batch,
    forward_eval,
)
from _reference import (
    gold as _gold,
)

import cybn

DTYPES = [np.float32, np.float64]
SHAPES = [(16, 3), (8, 4, 5)]


gold = _gold


def pair(C, dtype=np.float32, **kw):
    """A cybn module and the reference model with identical settings."""
    m = cybn.BatchNorm1d(C, dtype=dtype, **kw)
    bias = kw.pop("bias", True)
    r = RefBatchNorm1d(C, dtype=dtype, bias=bias, **kw)
    return m, r


def set_affine(m, r, rng):
    C = m.num_features
    w = (rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)).astype(m.dtype)
    m.weight[...] = w
    r.set_weight(w)
    if m.bias is not None:
        b = rng.standard_normal(C).astype(m.dtype)
        m.bias[...] = b
        r.set_bias(b)


def check_state(m, r, dtype=None):
    dtype = m.dtype if dtype is None else dtype
    if r.running_mean is None:
        assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
        return
    assert m.running_mean.dtype == m.dtype and m.running_var.dtype == m.dtype
    assert_close(m.running_mean, r.running_mean, dtype, err_msg="running_mean")
    assert_close(m.running_var, r.running_var, dtype, err_msg="running_var")
    assert int(m.num_batches_tracked) == r.num_batches_tracked


def nbt(m):
    v = m.num_batches_tracked
    assert isinstance(v, np.ndarray) and v.shape == () and v.dtype == np.int64
    return int(v)


# --------------------------------------------------------------------------
# golden vectors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t1_train_then_eval(dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype) if dtype is np.float64 else cybn.BatchNorm1d(2)
    x = T1_X.astype(dtype)
    y = m(x)
    assert y.dtype == np.dtype(dtype) and y.shape == (3, 2)
    gold(y, T1_Y64 if dtype is np.float64 else T1_Y32, dtype)
    gold(m.running_mean, T1_RM, dtype)
    gold(m.running_var, T1_RV, dtype)
    assert nbt(m) == 1
    assert m.eval() is m
    gold(m(x), T1_EVAL_Y, dtype)
    assert nbt(m) == 1
    gold(m.running_mean, T1_RM, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t2_3d(dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype)
    y = m(T2_X.astype(dtype))
    gold(y[:, 0, :].ravel(), T2_Y_CH0, dtype)
    # channel 1 is channel 0 shifted by 3: identical normalised values
    gold(y[:, 1, :].ravel(), T2_Y_CH0, dtype)
    gold(m.running_mean, T2_RM, dtype)
    gold(m.running_var, T2_RV, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t3_momentum_none(dtype):
    m = cybn.BatchNorm1d(1, momentum=None, dtype=dtype)
    assert m.momentum is None
    for i, (batch, rm, rv) in enumerate(zip(T3_BATCHES, T3_RM, T3_RV)):
        m(batch.astype(dtype))
        np.testing.assert_allclose(m.running_mean, [rm], rtol=1e-4)
        np.testing.assert_allclose(m.running_var, [rv], rtol=1e-4)
        assert nbt(m) == i + 1
    tol = 1e-14 if dtype is np.float64 else 1e-6
    np.testing.assert_allclose(m.running_mean, [17.0 / 3.0], rtol=tol)
    np.testing.assert_allclose(m.running_var, [10.0 / 3.0], rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_golden_t4_zero_variance_channel_forward(dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype)
    y = m(T4_X.astype(dtype))
    assert np.all(y[:, 0] == 0.0)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(m.running_var[0], T4_RV_CH0, rtol=1e-7)


# --------------------------------------------------------------------------
# construction and attributes
# --------------------------------------------------------------------------


def test_defaults():
    m = cybn.BatchNorm1d(4)
    assert m.num_features == 4
    assert m.eps == 1e-5 and m.momentum == 0.1
    assert m.affine is True and m.track_running_stats is True
    assert m.training is True
    assert m.dtype == np.dtype(np.float32) and isinstance(m.dtype, np.dtype)
    assert m.n_threads is None
    for name, val in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
        a = getattr(m, name)
        assert isinstance(a, np.ndarray) and a.shape == (4,) and a.dtype == np.float32, name
        assert np.all(a == val), name
    assert nbt(m) == 0
    assert m.grad_weight is None and m.grad_bias is None


def test_dtype_float64_module():
    m = cybn.BatchNorm1d(3, dtype=np.float64)
    assert m.dtype == np.dtype(np.float64)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(m, name).dtype == np.float64
    assert m.num_batches_tracked.dtype == np.int64
    m2 = cybn.BatchNorm1d(3, dtype="float64")
    assert m2.dtype == np.dtype(np.float64)


def test_affine_false():
    m = cybn.BatchNorm1d(3, affine=False)
    assert m.weight is None and m.bias is None
    assert m.parameters() == []
    assert list(m.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_bias_false(rng):
    m, r = pair(3, dtype=np.float64, bias=False)
    assert m.bias is None and m.weight is not None
    ps = m.parameters()
    assert len(ps) == 1 and ps[0] is m.weight
    set_affine(m, r, rng)
    x = rng.standard_normal((10, 3))
    assert_close(m(x), r.forward(x))
    g = rng.standard_normal((10, 3))
    m.backward(g)
    assert m.grad_bias is None and m.grad_weight is not None
    assert list(m.state_dict()) == ["weight", "running_mean", "running_var", "num_batches_tracked"]


def test_public_api():
    assert cybn.__version__ == "0.1.0"
    for name in (
        "BatchNorm1d",
        "functional",
        "compat",
        "openmp_enabled",
        "get_num_threads",
        "set_num_threads",
    ):
        assert hasattr(cybn, name), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_length_one_3d_equals_2d(rng, dtype, training):
    x = (rng.standard_normal((9, 4)) * 2 + 1).astype(dtype)
    g = rng.standard_normal((9, 4)).astype(dtype)
    a = cybn.BatchNorm1d(4, dtype=dtype).train(training)
    b = cybn.BatchNorm1d(4, dtype=dtype).train(training)
    ya, yb = a(x), b(x[:, :, None])
    assert yb.shape == (9, 4, 1)
    np.testing.assert_allclose(
        yb[:, :, 0], ya, rtol=1e-6 if dtype is np.float32 else 1e-14, atol=1e-6
    )
    np.testing.assert_allclose(
        b.backward(g[:, :, None])[:, :, 0],
        a.backward(g),
        rtol=1e-5 if dtype is np.float32 else 1e-12,
        atol=1e-6,
    )
    np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-6)


def test_parameters_are_the_arrays():
    m = cybn.BatchNorm1d(3)
    ps = m.parameters()
    assert isinstance(ps, list) and len(ps) == 2
    assert ps[0] is m.weight and ps[1] is m.bias


def test_train_eval_return_self():
    m = cybn.BatchNorm1d(3)
    assert m.eval() is m and m.training is False
    assert m.train() is m and m.training is True
    assert m.train(False) is m and m.training is False
    assert m.train(True) is m and m.training is True


# --------------------------------------------------------------------------
# repr (docs/semantics.md §1, verbatim)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (
            {},
            "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)",
        ),
        (
            {"eps": 0.001, "momentum": None, "affine": False, "track_running_stats": False},
            "BatchNorm1d(3, eps=0.001, momentum=None, affine=False, bias=False, track_running_stats=False)",
        ),
        (
            {"momentum": 1},
            "BatchNorm1d(3, eps=1e-05, momentum=1, affine=True, bias=True, track_running_stats=True)",
        ),
        (
            {"bias": False},
            "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=False, track_running_stats=True)",
        ),
        (
            {"affine": False, "bias": True},
            "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=True)",
        ),
        (
            {"dtype": np.float64},
            "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)",
        ),
    ],
)
def test_repr(kwargs, text):
    assert repr(cybn.BatchNorm1d(3, **kwargs)) == text


# --------------------------------------------------------------------------
# training sequences vs the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.3, 0.0, 1.0, 1, None])
def test_train_eval_sequence(rng, dtype, shape, momentum):
    C = shape[1]
    m, r = pair(C, dtype=dtype, momentum=momentum)
    set_affine(m, r, rng)
    for step in range(4):
        x = (
            rng.standard_normal(shape)
            * rng.uniform(0.5, 3, C).reshape((1, C) + (1,) * (len(shape) - 2))
            + rng.uniform(-2, 2)
        ).astype(dtype)
        y = m(x)
        assert y.dtype == np.dtype(dtype) and y.shape == shape
        assert_close(y, r.forward(x), err_msg=f"train step {step}")
        check_state(m, r)
    m.eval()
    r.training = False
    before = (m.running_mean.copy(), m.running_var.copy(), nbt(m))
    x = rng.standard_normal(shape).astype(dtype)
    assert_close(m(x), r.forward(x), err_msg="eval")
    assert np.array_equal(m.running_mean, before[0]) and np.array_equal(m.running_var, before[1])
    assert nbt(m) == before[2] == 4
    m.train()
    r.training = True
    x = rng.standard_normal(shape).astype(dtype)
    assert_close(m(x), r.forward(x), err_msg="train again")
    check_state(m, r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_zero_freezes_buffers_but_counts(rng, dtype):
    m = cybn.BatchNorm1d(3, momentum=0.0, dtype=dtype)
    for _ in range(3):
        m(rng.standard_normal((7, 3)).astype(dtype) + 5)
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1)
    assert nbt(m) == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_momentum_one_copies_unbiased_batch_stats(rng, dtype, shape):
    m = cybn.BatchNorm1d(shape[1], momentum=1.0, dtype=dtype)
    m(rng.standard_normal(shape).astype(dtype))
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    m(x)
    mean, var_b, var_u = batch_stats(x)
    assert_close(m.running_mean, mean, dtype)
    assert_close(m.running_var, var_u, dtype)
    # the unbiased (not biased) variance is what is tracked
    assert not np.allclose(m.running_var, var_b, rtol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_two_extrapolates(rng, dtype):
    m = cybn.BatchNorm1d(3, momentum=2.0, dtype=dtype)
    x = (rng.standard_normal((20, 3)) * 2 + 1).astype(dtype)
    m(x)
    mean, _, var_u = batch_stats(x)
    assert_close(m.running_mean, 2 * mean, dtype)
    assert_close(m.running_var, -1 + 2 * var_u, dtype)


def test_momentum_none_continues_from_loaded_nbt(rng):
    m = cybn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    m.load_state_dict(
        {
            "running_mean": np.array([1.0, 2.0]),
            "running_var": np.array([3.0, 4.0]),
            "num_batches_tracked": np.array(9),
        },
        strict=False,
    )
    x = rng.standard_normal((5, 2))
    m(x)
    mean, _, var_u = batch_stats(x)
    assert_close(m.running_mean, 0.9 * np.array([1.0, 2.0]) + 0.1 * mean)
    assert_close(m.running_var, 0.9 * np.array([3.0, 4.0]) + 0.1 * var_u)
    assert nbt(m) == 10


# --------------------------------------------------------------------------
# eval mode and track_running_stats
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 4), (5, 3)])
def test_eval_with_running_stats_any_n(rng, dtype, shape):
    m = cybn.BatchNorm1d(3, dtype=dtype)
    m(rng.standard_normal((6, 3)).astype(dtype) * 2 + 1)
    m.eval()
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    x = rng.standard_normal(shape).astype(dtype)
    y = m(x)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    assert_close(y, forward_eval(x, rm, rv, m.weight, m.bias, m.eps))
    assert np.array_equal(m.running_mean, rm) and np.array_equal(m.running_var, rv) and nbt(m) == 1


def test_eval_eps_zero_allowed(rng):
    m = cybn.BatchNorm1d(3, eps=0.0, dtype=np.float64)
    m.eval()
    x = rng.standard_normal((4, 3))
    assert_close(m(x), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_track_running_stats_false(rng, dtype, shape):
    m, r = pair(shape[1], dtype=dtype, track_running_stats=False)
    assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
    assert list(m.state_dict()) == ["weight", "bias"]
    set_affine(m, r, rng)
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    y_train = m(x)
    assert_close(y_train, r.forward(x))
    m.eval()
    r.training = False
    y_eval = m(x)
    assert_close(y_eval, r.forward(x))
    np.testing.assert_allclose(
        y_eval,
        y_train,
        rtol=1e-6 if dtype is np.float32 else 1e-14,
        atol=1e-6 if dtype is np.float32 else 1e-14,
    )
    assert m.running_mean is None and m.num_batches_tracked is None


@pytest.mark.parametrize("shape", [(2, 3), (1, 3, 2)])
def test_track_false_accepts_n_times_l_two(rng, shape):
    m = cybn.BatchNorm1d(3, track_running_stats=False).eval()
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(m(x), forward_batch(x)[0])


def test_attribute_track_running_stats_false_after_construction(rng):
    m = cybn.BatchNorm1d(3, dtype=np.float64)
    m.track_running_stats = False
    x = rng.standard_normal((8, 3)) * 2 + 1
    y = m(x)
    assert_close(y, forward_batch(x)[0])
    # buffers exist but are not updated, nbt not bumped
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1) and nbt(m) == 0
    m.eval()
    y = m(x)
    assert_close(y, x / np.sqrt(1 + 1e-5))
    # N=1 works in eval since the (old) buffers are used
    assert_close(m(x[:1]), x[:1] / np.sqrt(1 + 1e-5))
    assert np.all(m.running_mean == 0) and nbt(m) == 0


def test_attribute_track_running_stats_false_uses_old_buffers(rng):
    m = cybn.BatchNorm1d(3, dtype=np.float64)
    m(rng.standard_normal((8, 3)) + 3)
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    m.track_running_stats = False
    m(rng.standard_normal((8, 3)))
    assert np.array_equal(m.running_mean, rm) and np.array_equal(m.running_var, rv) and nbt(m) == 1
    m.eval()
    x = rng.standard_normal((5, 3))
    assert_close(m(x), forward_eval(x, rm, rv))


def test_affine_false_track_false_accepts_any_channel_count(rng):
    m = cybn.BatchNorm1d(5, affine=False, track_running_stats=False)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = m(x)
    assert y.shape == (6, 3)
    assert_close(y, forward_batch(x)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_false_output(rng, dtype):
    m, r = pair(4, dtype=dtype, affine=False)
    x = rng.standard_normal((9, 4, 3)).astype(dtype)
    assert_close(m(x), r.forward(x))
    check_state(m, r)


# --------------------------------------------------------------------------
# reset_*
# --------------------------------------------------------------------------


def test_reset_running_stats_in_place(rng):
    m = cybn.BatchNorm1d(3)
    m.weight[...] = 2
    m.bias[...] = 3
    m(rng.standard_normal((5, 3)).astype(np.float32) + 4)
    rm, rv = m.running_mean, m.running_var
    assert nbt(m) == 1
    m.reset_running_stats()
    assert m.running_mean is rm and m.running_var is rv
    assert np.all(rm == 0) and np.all(rv == 1) and nbt(m) == 0
    assert np.all(m.weight == 2) and np.all(m.bias == 3)


def test_reset_parameters(rng):
    m = cybn.BatchNorm1d(3)
    w, b = m.weight, m.bias
    m.weight[...] = 2
    m.bias[...] = 3
    m(rng.standard_normal((5, 3)).astype(np.float32) + 4)
    m.reset_parameters()
    assert np.all(m.weight == 1) and np.all(m.bias == 0)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    assert np.all(m.running_mean == 0) and np.all(m.running_var == 1) and nbt(m) == 0
    assert m.weight is w and m.bias is b


def test_reset_running_stats_without_tracking_is_noop():
    m = cybn.BatchNorm1d(3, track_running_stats=False)
    m.reset_running_stats()
    m.reset_parameters()
    assert m.running_mean is None and np.all(m.weight == 1)


# --------------------------------------------------------------------------
# N == 0 / L == 0: empty output, no state change, zero grads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0)])
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch(rng, dtype, shape, training):
    m = cybn.BatchNorm1d(3, dtype=dtype)
    m.weight[...] = [1.5, -2, 0.5]
    m(rng.standard_normal((4, 3)).astype(dtype))
    m.train(training)
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    x = np.zeros(shape, dtype=dtype)
    y = m(x)
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == np.dtype(dtype)
    for k, v in m.state_dict().items():
        assert np.array_equal(v, before[k]), k
    assert nbt(m) == 1
    gi = m.backward(np.zeros(shape, dtype=dtype))
    assert gi.shape == shape and gi.dtype == np.dtype(dtype)
    assert m.grad_weight.shape == (3,) and m.grad_bias.shape == (3,)
    assert np.all(m.grad_weight == 0) and np.all(m.grad_bias == 0)
    assert m.grad_weight.dtype == np.dtype(dtype)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2)])
def test_empty_batch_without_running_stats(shape):
    m = cybn.BatchNorm1d(3, track_running_stats=False)
    for training in (True, False):
        m.train(training)
        y = m(np.zeros(shape, dtype=np.float32))
        assert y.shape == shape
        gi = m.backward(np.zeros(shape, dtype=np.float32))
        assert gi.shape == shape and np.all(m.grad_weight == 0) and np.all(m.grad_bias == 0)


@pytest.mark.parametrize("training", [True, False])
def test_output_is_a_new_array(rng, training):
    m = cybn.BatchNorm1d(3, dtype=np.float64).train(training)
    x = rng.standard_normal((5, 3))
    y = m(x)
    assert not np.shares_memory(y, x)
    assert not any(
        np.shares_memory(y, a) for a in (m.weight, m.bias, m.running_mean, m.running_var)
    )
    y2 = m(x)
    assert not np.shares_memory(y, y2)


# --------------------------------------------------------------------------
# mixed dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_float64_input_float32_module(rng, shape):
    m, r = pair(shape[1], dtype=np.float32)
    set_affine(m, r, rng)
    x = rng.standard_normal(shape) * 2 + 1
    y = m(x)
    assert y.dtype == np.float64
    assert_close(y, r.forward(x), np.float64, rtol=1e-12, atol=1e-12)
    assert m.running_mean.dtype == np.float32 and m.running_var.dtype == np.float32
    check_state(m, r, np.float32)
    g = rng.standard_normal(shape)
    gi = m.backward(g)
    dx, dw, db = r.backward(g)
    assert gi.dtype == np.float64
    assert_close(gi, dx, np.float64, rtol=1e-10, atol=1e-11)
    assert m.grad_weight.dtype == np.float32 and m.grad_bias.dtype == np.float32
    assert_close(m.grad_weight, dw, np.float32)
    assert_close(m.grad_bias, db, np.float32)
    m.eval()
    r.training = False
    x = rng.standard_normal(shape)
    y = m(x)
    assert y.dtype == np.float64
    assert_close(y, r.forward(x), np.float64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_float16_input_float32_module(rng, shape):
    m, r = pair(shape[1], dtype=np.float32)
    set_affine(m, r, rng)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float16)
    y = m(x)
    assert y.dtype == np.float16 and y.shape == shape
    assert_close(y, r.forward(x), np.float16)
    assert m.running_mean.dtype == np.float32
    check_state(m, r, np.float32)
    m.eval()
    r.training = False
    x = (rng.standard_normal(shape)).astype(np.float16)
    y = m(x)
    assert y.dtype == np.float16
    assert_close(y, r.forward(x), np.float16)


# --------------------------------------------------------------------------
# NaN / Inf propagation (docs/semantics.md §7)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_poisons_only_its_channel_in_train(rng, dtype):
    m = cybn.BatchNorm1d(3, dtype=dtype)
    x = rng.standard_normal((6, 3)).astype(dtype)
    x[2, 1] = np.nan
    y = m(x)
    assert np.all(np.isnan(y[:, 1]))
    assert np.all(np.isfinite(y[:, [0, 2]]))
    assert np.isnan(m.running_mean[1]) and np.isnan(m.running_var[1])
    assert np.all(np.isfinite(m.running_mean[[0, 2]])) and np.all(
        np.isfinite(m.running_var[[0, 2]])
    )
    m.eval()
    y = m(rng.standard_normal((4, 3)).astype(dtype))
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isfinite(y[:, [0, 2]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_eval_only_that_element(rng, dtype):
    m = cybn.BatchNorm1d(3, dtype=dtype).eval()
    x = rng.standard_normal((4, 3)).astype(dtype)
    x[1, 2] = np.nan
    y = m(x)
    assert np.isnan(y[1, 2]) and np.sum(np.isnan(y)) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_inf_in_train(rng, dtype):
    m = cybn.BatchNorm1d(2, dtype=dtype)
    x = rng.standard_normal((5, 2)).astype(dtype)
    x[0, 0] = np.inf
    y = m(x)
    assert np.all(np.isnan(y[:, 0])) and np.all(np.isfinite(y[:, 1]))
    assert np.isposinf(m.running_mean[0]) and np.isnan(m.running_var[0])
    m2 = cybn.BatchNorm1d(2, dtype=dtype).eval()
    y = m2(x)
    assert np.isposinf(y[0, 0]) and np.all(np.isfinite(np.delete(y.ravel(), 0)))


@pytest.mark.parametrize(
    "shape, where",
    [
        ((100000, 2), "first"),
        ((100000, 2), "last"),
        ((4, 2, 70000), "first"),
        ((4, 2, 70000), "last"),
        ((2000, 2), "first"),
    ],
)
@pytest.mark.parametrize("sign", [1, -1])
def test_inf_in_train_large_batches(shape, where, sign):
    """Section 7: an inf makes the channel's output NaN, running_mean +-inf, running_var NaN,
    wherever the inf sits in the batch (large batches are reduced in several blocks)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    idx = (
        (0, 0) + (0,) * (len(shape) - 2) if where == "first" else (-1, 0) + (-1,) * (len(shape) - 2)
    )
    x[idx] = sign * np.inf
    m = cybn.BatchNorm1d(2)
    y = m(x)
    assert np.all(np.isnan(y[:, 0]))
    assert np.all(np.isfinite(y[:, 1]))
    assert m.running_mean[0] == sign * np.inf, m.running_mean
    assert np.isnan(m.running_var[0])
    assert np.isfinite(m.running_mean[1]) and np.isfinite(m.running_var[1])


# --------------------------------------------------------------------------
# large / oddly shaped batches (several reduction blocks, remainders) vs the oracle
# --------------------------------------------------------------------------

TILING_SHAPES = [
    (64, 2500),
    (70001, 3),
    (3, 2, 70000),
    (300, 5, 301),
    (7, 1500, 9),
    (1, 4, 70001),
    (131073, 1),
]


@pytest.mark.parametrize("shape", TILING_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_shapes_match_reference(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    C = shape[1]
    bshape = (1, C) + (1,) * (len(shape) - 2)
    x = (
        rng.standard_normal(shape) * rng.uniform(0.5, 3, C).reshape(bshape)
        + rng.uniform(-3, 3, C).reshape(bshape)
    ).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    m, r = pair(C, dtype=dtype)
    set_affine(m, r, rng)
    assert_close(m(x), r.forward(x), err_msg="train y")
    check_state(m, r)
    gi = m.backward(g)
    dx, dw, db = r.backward(g)
    tol = (1e-9, 1e-10) if dtype is np.float64 else (1e-5, 1e-5)
    assert_close(gi, dx, rtol=tol[0], atol=tol[1], err_msg="grad_input")
    assert_close(m.grad_weight, dw, rtol=tol[0], atol=tol[1], err_msg="grad_weight")
    assert_close(m.grad_bias, db, rtol=tol[0], atol=tol[1], err_msg="grad_bias")
    m.eval()
    r.training = False
    assert_close(m(x), r.forward(x), err_msg="eval y")
    gi = m.backward(g)
    dx, dw, db = r.backward(g)
    assert_close(gi, dx, rtol=tol[0], atol=tol[1], err_msg="eval grad_input")
    assert_close(m.grad_weight, dw, rtol=tol[0], atol=tol[1], err_msg="eval grad_weight")


@pytest.mark.parametrize("shape", [(200000, 3), (4, 3, 70000), (64, 3, 2500)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_channel_exact_over_many_blocks(shape, dtype):
    m = cybn.BatchNorm1d(3, dtype=dtype)
    m.bias[...] = [0.5, -0.25, 3.0]
    m.weight[...] = [3.0, 0.5, -2.0]
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    x[:, 0] = 1e7
    x[:, 2] = -1e3
    y = m(x)
    assert np.all(y[:, 0] == m.bias[0]) and np.all(y[:, 2] == m.bias[2])
    g = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    gi = m.backward(g)
    assert np.all(np.isfinite(gi))
    assert m.grad_weight[0] == 0 and m.grad_weight[2] == 0


# --------------------------------------------------------------------------
# accuracy beyond torch (docs/semantics.md §8)
# --------------------------------------------------------------------------


def test_large_offset_large_n_float32_accuracy():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((100000, 8))).astype(np.float32)
    m = cybn.BatchNorm1d(8, momentum=1.0)
    y = m(x)
    mean, var_b, var_u = batch_stats(x)
    np.testing.assert_allclose(m.running_mean, mean, rtol=1e-6)
    rel = np.abs(m.running_var.astype(np.float64) - var_u) / var_u
    assert rel.max() < 1e-3, rel.max()
    std = y.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(std, np.sqrt(var_b / (var_b + 1e-5)), atol=1e-3)
    ref = forward_batch(x)[0]
    assert np.max(np.abs(y - ref)) < 5e-3


def test_large_offset_3d_float32_accuracy():
    rng = np.random.default_rng(1)
    x = (1e4 + rng.standard_normal((1000, 8, 100))).astype(np.float32)
    m = cybn.BatchNorm1d(8, momentum=1.0)
    y = m(x)
    _mean, _var_b, var_u = batch_stats(x)
    rel = np.abs(m.running_var.astype(np.float64) - var_u) / var_u
    assert rel.max() < 1e-4, rel.max()
    assert np.max(np.abs(y - forward_batch(x)[0])) < 2e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [1e3, 1e7])
@pytest.mark.parametrize("shape", [(1000, 3), (50, 3, 20)])
def test_constant_channel_gives_bias_exactly(rng, dtype, value, shape):
    m = cybn.BatchNorm1d(3, dtype=dtype)
    m.weight[...] = [2.0, -0.5, 1.25]
    m.bias[...] = [0.25, -3.0, 7.5]
    x = rng.standard_normal(shape).astype(dtype)
    x[:, 1] = value
    y = m(x)
    assert np.all(y[:, 1] == m.bias[1]), np.unique(y[:, 1])
    assert_close(m.running_mean[1], 0.1 * value, dtype)
    assert_close(m.running_var[1], 0.9, dtype)
    m.eval()
    m.running_mean[1] = value
    y = m(x)
    assert np.all(y[:, 1] == m.bias[1])


# --------------------------------------------------------------------------
# state_dict / load_state_dict
# --------------------------------------------------------------------------


def test_state_dict_keys_order_and_dtypes(rng):
    for dtype in DTYPES:
        m = cybn.BatchNorm1d(3, dtype=dtype)
        m(rng.standard_normal((4, 3)).astype(dtype))
        sd = m.state_dict()
        assert list(sd.keys()) == [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
        for k in ["weight", "bias", "running_mean", "running_var"]:
            assert (
                isinstance(sd[k], np.ndarray)
                and sd[k].dtype == np.dtype(dtype)
                and sd[k].shape == (3,)
            )
        n = sd["num_batches_tracked"]
        assert isinstance(n, np.ndarray) and n.shape == () and n.dtype == np.int64 and int(n) == 1
        np.testing.assert_array_equal(sd["running_mean"], m.running_mean)


def test_state_dict_is_ordered_dict():
    from collections import OrderedDict

    assert isinstance(cybn.BatchNorm1d(2).state_dict(), OrderedDict)


def test_state_dict_round_trip(rng):
    a = cybn.BatchNorm1d(4, dtype=np.float64)
    a.weight[...] = rng.standard_normal(4)
    a.bias[...] = rng.standard_normal(4)
    for _ in range(3):
        a(rng.standard_normal((6, 4)))
    sd = pickle.loads(pickle.dumps(a.state_dict()))
    b = cybn.BatchNorm1d(4, dtype=np.float64)
    res = b.load_state_dict(sd)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    missing, unexpected = res
    assert list(missing) == [] and list(unexpected) == []
    for k in sd:
        np.testing.assert_array_equal(getattr(b, k), getattr(a, k))
    assert nbt(b) == 3
    x = rng.standard_normal((5, 4))
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_copies_into_existing_arrays_with_module_dtype():
    m = cybn.BatchNorm1d(2)
    objs = [m.weight, m.bias, m.running_mean, m.running_var]
    sd = {
        "weight": np.array([1.5, 2.5], dtype=np.float64),
        "bias": [0.5, -1.0],
        "running_mean": np.array([0.1, 0.2]),
        "running_var": (3.0, 4.0),
        "num_batches_tracked": np.array(5.0),
    }
    m.load_state_dict(sd)
    for a, b in zip([m.weight, m.bias, m.running_mean, m.running_var], objs):
        assert a is b
        assert a.dtype == np.float32
    np.testing.assert_array_equal(m.weight, np.float32([1.5, 2.5]))
    np.testing.assert_array_equal(m.bias, np.float32([0.5, -1.0]))
    np.testing.assert_array_equal(m.running_mean, np.float32([0.1, 0.2]))
    np.testing.assert_array_equal(m.running_var, np.float32([3.0, 4.0]))
    assert nbt(m) == 5
    # the checkpoint arrays are copied, not aliased
    sd["weight"][0] = 99
    assert m.weight[0] == np.float32(1.5)


def test_load_lists_and_int_nbt():
    m = cybn.BatchNorm1d(2, dtype=np.float64)
    m.load_state_dict(
        {
            "weight": [2, 3],
            "bias": [0, 1],
            "running_mean": [1, 1],
            "running_var": [2, 2],
            "num_batches_tracked": 4,
        }
    )
    np.testing.assert_array_equal(m.weight, [2.0, 3.0])
    assert m.weight.dtype == np.float64
    assert nbt(m) == 4


@pytest.mark.parametrize("start", [0, 7])
def test_load_old_checkpoint_without_nbt_keeps_nbt(rng, start):
    m = cybn.BatchNorm1d(2, dtype=np.float64)
    for _ in range(start):
        m(rng.standard_normal((3, 2)))
    assert nbt(m) == start
    sd = {
        "weight": np.array([2.0, 3.0]),
        "bias": np.zeros(2),
        "running_mean": np.array([1.0, -1.0]),
        "running_var": np.array([2.0, 0.5]),
    }
    res = m.load_state_dict(sd)
    assert list(res.missing_keys) == []
    assert nbt(m) == start
    np.testing.assert_array_equal(m.running_var, [2.0, 0.5])


def test_load_missing_keys_raises_with_torch_text():
    m = cybn.BatchNorm1d(2)
    sd = m.state_dict()
    sd = {k: np.array(v, copy=True) for k, v in sd.items() if k != "running_mean"}
    with pytest.raises(
        RuntimeError,
        match=r'Error\(s\) in loading state_dict for BatchNorm1d:\n\tMissing key\(s\) in state_dict: "running_mean"\.',
    ):
        m.load_state_dict(sd)
    sd.pop("running_var")
    with pytest.raises(
        RuntimeError, match=r'Missing key\(s\) in state_dict: "running_mean", "running_var"\.'
    ):
        m.load_state_dict(sd)


def test_load_unexpected_key_raises():
    m = cybn.BatchNorm1d(2)
    sd = dict(m.state_dict())
    sd["foo"] = np.zeros(2)
    with pytest.raises(
        RuntimeError,
        match=r'Error\(s\) in loading state_dict for BatchNorm1d:\n\tUnexpected key\(s\) in state_dict: "foo"\.',
    ):
        m.load_state_dict(sd)


def test_load_tracking_checkpoint_into_non_tracking_module():
    src = cybn.BatchNorm1d(2).state_dict()
    dst = cybn.BatchNorm1d(2, track_running_stats=False)
    with pytest.raises(
        RuntimeError,
        match=r'Unexpected key\(s\) in state_dict: "running_mean", "running_var", "num_batches_tracked"\.',
    ):
        dst.load_state_dict(src)
    res = dst.load_state_dict(src, strict=False)
    assert list(res.unexpected_keys) == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(res.missing_keys) == []


def test_load_nontracking_checkpoint_into_tracking_module():
    src = cybn.BatchNorm1d(2, track_running_stats=False).state_dict()
    dst = cybn.BatchNorm1d(2)
    with pytest.raises(
        RuntimeError, match=r'Missing key\(s\) in state_dict: "running_mean", "running_var"'
    ):
        dst.load_state_dict(src)


def test_load_size_mismatch():
    m = cybn.BatchNorm1d(2)
    sd = {k: np.array(v, copy=True) for k, v in cybn.BatchNorm1d(3).state_dict().items()}
    with pytest.raises(
        RuntimeError,
        match=r"size mismatch for weight: copying a param with shape \(3,\) from "
        r"checkpoint, the shape in current model is \(2,\)\.",
    ):
        m.load_state_dict(sd)


def test_load_strict_false_returns_missing_and_unexpected():
    m = cybn.BatchNorm1d(2, dtype=np.float64)
    sd = {
        "weight": np.array([4.0, 5.0]),
        "bias": np.array([1.0, 2.0]),
        "running_var": np.array([9.0, 9.0]),
        "num_batches_tracked": np.array(3),
        "extra": np.zeros(1),
    }
    res = m.load_state_dict(sd, strict=False)
    assert list(res.missing_keys) == ["running_mean"]
    assert list(res.unexpected_keys) == ["extra"]
    np.testing.assert_array_equal(m.weight, [4.0, 5.0])
    np.testing.assert_array_equal(m.running_var, [9.0, 9.0])
    np.testing.assert_array_equal(m.running_mean, [0.0, 0.0])
    assert nbt(m) == 3


def test_load_size_mismatch_raises_even_when_not_strict():
    m = cybn.BatchNorm1d(2)
    sd = {k: np.array(v, copy=True) for k, v in cybn.BatchNorm1d(3).state_dict().items()}
    with pytest.raises(RuntimeError, match=r"size mismatch for running_mean"):
        m.load_state_dict(sd, strict=False)
    assert np.all(m.weight == 1) and np.all(m.running_var == 1)


def test_load_version2_metadata_without_nbt_is_missing():
    from collections import OrderedDict

    m = cybn.BatchNorm1d(2, dtype=np.float64)
    sd = OrderedDict(
        [
            ("weight", np.ones(2)),
            ("bias", np.zeros(2)),
            ("running_mean", np.zeros(2)),
            ("running_var", np.ones(2)),
        ]
    )
    sd._metadata = {"": {"version": 2}}
    with pytest.raises(
        RuntimeError, match=r'Missing key\(s\) in state_dict: "num_batches_tracked"\.'
    ):
        m.load_state_dict(sd)
    res = m.load_state_dict(sd, strict=False)
    assert list(res.missing_keys) == ["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    assert list(m.load_state_dict(sd).missing_keys) == []


def test_state_dict_values_track_the_module(rng):
    """docs/semantics.md §6: a fetched state_dict sees later forwards."""
    m = cybn.BatchNorm1d(3, dtype=np.float64)
    sd = m.state_dict()
    m(rng.standard_normal((5, 3)) + 2)
    np.testing.assert_array_equal(sd["running_mean"], m.running_mean)
    assert int(sd["num_batches_tracked"]) == 1


def test_failed_load_changes_nothing():
    m = cybn.BatchNorm1d(2, dtype=np.float64)
    m.weight[...] = [3.0, 4.0]
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    # weight is fine, bias has the wrong size -> must raise and leave weight alone
    bad = {
        "weight": np.array([7.0, 8.0]),
        "bias": np.zeros(3),
        "running_mean": np.ones(2),
        "running_var": np.ones(2) * 2,
        "num_batches_tracked": np.array(6),
    }
    with pytest.raises(RuntimeError, match=r"size mismatch for bias"):
        m.load_state_dict(bad)
    bad2 = dict(bad, bias=np.zeros(2), surprise=np.zeros(2))
    with pytest.raises(RuntimeError, match=r"Unexpected key"):
        m.load_state_dict(bad2)
    for k, v in m.state_dict().items():
        assert np.array_equal(v, before[k]), k
