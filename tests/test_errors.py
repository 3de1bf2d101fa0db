"""Every error of docs/errors.md and docs/semantics.md §2: type and
key phrases, and -- for every failing call -- that NO state changed:
weight, bias, running_mean, running_var, num_batches_tracked, grad_weight,
grad_bias are bit-identical to copies taken before, and a following
backward(g0) still reproduces the result of the last successful forward.
(Unlike torch, cybn must not bump num_batches_tracked on a failing call:
docs/semantics.md §10.)"""

import re

import numpy as np
import pytest

import cybn
import cybn.functional as F

ATTRS = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "grad_weight",
    "grad_bias",
]


def both(*phrases):
    """Regex that requires every phrase (escaped) somewhere in the message."""
    return "(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in phrases)


class Primed:
    """A module after one successful forward + backward, with a snapshot."""

    def __init__(self, C=5, shape=None, dtype=np.float64, training=True, **kw):
        rng = np.random.default_rng(1234)
        self.m = m = cybn.BatchNorm1d(C, dtype=dtype, **kw)
        if m.weight is not None:
            m.weight[...] = rng.uniform(0.5, 2, C)
        if m.bias is not None:
            m.bias[...] = rng.standard_normal(C)
        shape = shape or (6, C)
        m(rng.standard_normal(shape).astype(dtype) + 1)  # move the running stats off 0/1
        m.train(training)
        self.x0 = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        self.g0 = rng.standard_normal(shape).astype(dtype)
        m(self.x0)
        self.gi0 = m.backward(self.g0).copy()
        self.snap = {a: self._copy(getattr(m, a)) for a in ATTRS}

    @staticmethod
    def _copy(v):
        return None if v is None else np.array(v, copy=True)

    def check_unchanged(self):
        m = self.m
        for a in ATTRS:
            before, now = self.snap[a], getattr(m, a)
            if before is None:
                assert now is None, a
            else:
                assert now is not None and now.dtype == before.dtype, a
                assert np.array_equal(now, before, equal_nan=True), a
        gi = m.backward(self.g0)
        assert np.array_equal(gi, self.gi0), "backward cache was disturbed"
        assert (
            np.array_equal(m.grad_weight, self.snap["grad_weight"])
            if m.weight is not None
            else True
        )
        assert np.array_equal(m.grad_bias, self.snap["grad_bias"]) if m.bias is not None else True


# --------------------------------------------------------------------------
# BatchNorm1d forward
# --------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape, nd", [((5,), 1), ((), 0), ((2, 5, 2, 2), 4), ((2, 5, 2, 2, 1), 5)])
def test_wrong_ndim(training, shape, nd):
    p = Primed(training=training)
    with pytest.raises(ValueError, match=re.escape(f"expected 2D or 3D input (got {nd}D input)")):
        p.m(np.ones(shape))
    p.check_unchanged()


# torch's text is "<name> should contain <input C> elements not <parameter size>"
# (verified with torch 2.13: BatchNorm1d(5)(ones(4, 3)) -> "... contain 3 elements not 5").


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2), (4, 6)])
def test_wrong_channel_count_tracking(training, shape):
    p = Primed(C=5, training=training)
    with pytest.raises(
        ValueError, match=both(f"running_mean should contain {shape[1]} elements not 5", str(shape))
    ):
        p.m(np.ones(shape))
    p.check_unchanged()


@pytest.mark.parametrize("training", [True, False])
def test_wrong_channel_count_untracked_affine(training):
    p = Primed(C=5, training=training, track_running_stats=False)
    with pytest.raises(ValueError, match=re.escape("weight should contain 3 elements not 5")):
        p.m(np.ones((4, 3)))
    p.check_unchanged()


@pytest.mark.parametrize("shape, text", [((1, 5), "(1, 5)"), ((1, 5, 1), "(1, 5, 1)")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_value_per_channel_training(shape, text, dtype):
    p = Primed(C=5, dtype=dtype)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Expected more than 1 value per channel when training, got input size {text}"
        ),
    ):
        p.m(np.ones(shape, dtype=dtype))
    p.check_unchanged()


@pytest.mark.parametrize("shape, text", [((1, 5), "(1, 5)"), ((1, 5, 1), "(1, 5, 1)")])
def test_one_value_per_channel_eval_without_running_stats(shape, text):
    p = Primed(C=5, training=False, track_running_stats=False)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Expected more than 1 value per channel when training, got input size {text}"
        ),
    ):
        p.m(np.ones(shape))
    p.check_unchanged()


@pytest.mark.parametrize("eps, text", [(0, "0"), (-1, "-1"), (0.0, "0"), (-1e-3, "-0.001")])
def test_eps_not_positive_in_training(eps, text):
    p = Primed(C=3, eps=1e-5)
    p.m.eps = eps
    with pytest.raises(
        ValueError,
        match=re.escape(f"batch_norm eps must be positive during training, but got {text}"),
    ):
        p.m(np.ones((4, 3)))
    # restore eps so the backward check uses the original computation
    p.m.eps = 1e-5
    p.check_unchanged()


@pytest.mark.parametrize("eps", [0, -1, 0.0])
def test_eps_not_positive_constructor_fails_at_forward(eps):
    m = cybn.BatchNorm1d(3, eps=eps)  # nothing validated at construction
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    with pytest.raises(
        ValueError, match="batch_norm eps must be positive during training, but got "
    ):
        m(np.ones((4, 3), dtype=np.float32) * np.arange(4, dtype=np.float32)[:, None])
    for k, v in m.state_dict().items():
        assert np.array_equal(v, before[k]), k


def test_eps_negative_in_eval():
    p = Primed(C=3, training=False)
    p.m.eps = -1.0
    with pytest.raises(
        ValueError, match=re.escape("batch_norm eps must be non-negative, but got -1")
    ):
        p.m(np.ones((4, 3)))
    p.m.eps = 1e-5
    p.check_unchanged()


@pytest.mark.parametrize(
    "dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.complex64, object]
)
@pytest.mark.parametrize("training", [True, False])
def test_non_float_dtype(dtype, training):
    p = Primed(C=3, training=training)
    x = np.ones((4, 3), dtype=dtype)
    with pytest.raises(TypeError, match=both("input", np.dtype(dtype).name)):
        p.m(x)
    p.check_unchanged()


@pytest.mark.parametrize(
    "value, tname",
    [
        ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "list"),
        (((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), "tuple"),
        (1.5, "float"),
        (3, "int"),
        (None, "None"),
    ],
)
def test_non_ndarray_input(value, tname):
    p = Primed(C=3)
    with pytest.raises(TypeError, match=both("input", tname)):
        p.m(value)
    p.check_unchanged()


def test_forward_method_same_checks():
    p = Primed(C=3)
    with pytest.raises(ValueError, match=re.escape("expected 2D or 3D input (got 1D input)")):
        p.m.forward(np.ones(3))
    p.check_unchanged()


# --------------------------------------------------------------------------
# BatchNorm1d backward
# --------------------------------------------------------------------------


def test_backward_before_forward():
    m = cybn.BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="forward"):
        m.backward(np.ones((4, 3), dtype=np.float32))
    assert m.grad_weight is None and m.grad_bias is None
    assert np.all(m.weight == 1) and np.all(m.bias == 0) and int(m.num_batches_tracked) == 0


def test_backward_before_forward_after_failed_forward():
    m = cybn.BatchNorm1d(3)
    with pytest.raises(ValueError):
        m(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        m.backward(np.ones((1, 3), dtype=np.float32))
    assert m.grad_weight is None and m.grad_bias is None


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("gshape", [(6, 4), (5, 5), (5, 6), (6, 5, 1), (30,), (1, 6, 5)])
def test_backward_wrong_shape(training, gshape):
    p = Primed(C=5, training=training)
    with pytest.raises(ValueError):
        p.m.backward(np.ones(gshape))
    p.check_unchanged()


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128, object])
def test_backward_non_float_grad_output(dtype):
    p = Primed(C=5)
    with pytest.raises(TypeError, match="grad_output"):
        p.m.backward(np.ones((6, 5), dtype=dtype))
    p.check_unchanged()


@pytest.mark.parametrize("value", [[[1.0] * 5] * 6, None, 1.0])
def test_backward_non_ndarray_grad_output(value):
    p = Primed(C=5)
    with pytest.raises(TypeError, match="grad_output"):
        p.m.backward(value)
    p.check_unchanged()


def test_backward_wrong_shape_3d():
    p = Primed(C=5, shape=(3, 5, 4))
    with pytest.raises(ValueError):
        p.m.backward(np.ones((3, 5, 3)))
    with pytest.raises(ValueError):
        p.m.backward(np.ones((3, 4, 5)))
    p.check_unchanged()


# --------------------------------------------------------------------------
# functional
# --------------------------------------------------------------------------


def _stats(C=3):
    return np.zeros(C), np.ones(C)


def test_functional_momentum_none():
    rm, rv = _stats()
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(np.arange(12.0).reshape(4, 3), rm, rv, training=True, momentum=None)
    assert np.all(rm == 0) and np.all(rv == 1)


@pytest.mark.parametrize("which", ["mean", "var"])
def test_functional_only_one_running_stat(which):
    rm, rv = _stats()
    args = (rm, None) if which == "mean" else (None, rv)
    with pytest.raises(
        ValueError,
        match=re.escape("running_mean and running_var must either both be None or neither be None"),
    ):
        F.batch_norm(np.arange(12.0).reshape(4, 3), *args, training=True)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_functional_eval_without_running_stats():
    with pytest.raises(
        (RuntimeError, ValueError), match="running_mean.* must be defined in evaluation mode"
    ):
        F.batch_norm(np.arange(12.0).reshape(4, 3), None, None, training=False)
    with pytest.raises(
        (RuntimeError, ValueError), match="running_mean.* must be defined in evaluation mode"
    ):
        F.batch_norm_forward(
            np.arange(12.0).reshape(4, 3), None, None, None, None, False, 0.1, 1e-5
        )


@pytest.mark.parametrize("bad", ["weight", "bias", "running_mean", "running_var"])
@pytest.mark.parametrize("training", [True, False])
def test_functional_wrong_sized_vectors(bad, training):
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    vecs = {
        "weight": np.ones(3),
        "bias": np.zeros(3),
        "running_mean": np.zeros(3),
        "running_var": np.ones(3),
    }
    vecs[bad] = np.ones(2) if bad != "running_mean" else np.zeros(2)
    copies = {k: v.copy() for k, v in vecs.items()}
    with pytest.raises(ValueError, match=re.escape(f"{bad} should contain 3 elements not 2")):
        F.batch_norm(
            x,
            vecs["running_mean"],
            vecs["running_var"],
            vecs["weight"],
            vecs["bias"],
            training=training,
        )
    for k, v in vecs.items():
        assert np.array_equal(v, copies[k]), k


def test_functional_one_value_per_channel_leaves_stats():
    rm, rv = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Expected more than 1 value per channel when training, got input size (1, 3)"
        ),
    ):
        F.batch_norm(np.ones((1, 3)), rm, rv, training=True)
    assert np.array_equal(rm, [1.0, 2.0, 3.0]) and np.array_equal(rv, [4.0, 5.0, 6.0])


def test_functional_eps_zero_training():
    rm, rv = _stats()
    with pytest.raises(
        ValueError, match=re.escape("batch_norm eps must be positive during training, but got 0")
    ):
        F.batch_norm(np.arange(12.0).reshape(4, 3), rm, rv, training=True, eps=0.0)
    assert np.all(rm == 0) and np.all(rv == 1)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128])
def test_functional_non_float_input(dtype):
    rm, rv = _stats()
    with pytest.raises(TypeError, match=both("input", np.dtype(dtype).name)):
        F.batch_norm(np.ones((4, 3), dtype=dtype), rm, rv, training=True)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_functional_list_input():
    rm, rv = _stats()
    with pytest.raises(TypeError, match=both("input", "list")):
        F.batch_norm([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], rm, rv, training=True)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_functional_backward_wrong_grad_shape():
    x = np.random.default_rng(0).standard_normal((6, 3))
    _out, sm, si = F.batch_norm_forward(x, np.ones(3), np.zeros(3), None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError):
        F.batch_norm_backward(np.ones((6, 4)), x, np.ones(3), sm, si)
