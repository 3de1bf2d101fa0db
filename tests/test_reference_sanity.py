"""Check the oracle itself (tests/_reference.py) against the golden vectors
T1-T6 of docs/semantics.md (§3 and §5) and against finite differences, and
check that the vectors printed in docs/semantics.md are the ones the tests use.
No cybn here: if these fail, every other verdict of the suite is void."""

import ast
import os
import re

import _reference
import numpy as np
import pytest
from _reference import (
    T1_EVAL_Y,
    T1_RM,
    T1_RV,
    T1_VAR_U,
    T1_X,
    T1_Y64,
    T2_MEAN,
    T2_RM,
    T2_RV,
    T2_VAR_B,
    T2_VAR_U,
    T2_WRONG_MEANS,
    T2_X,
    T2_Y_CH0,
    T3_BATCHES,
    T3_RM,
    T3_RV,
    T4_DBETA_CH0,
    T4_DGAMMA_CH0,
    T4_DX_CH0,
    T4_DY,
    T4_RV_CH0,
    T4_X,
    T5_B,
    T5_DBETA,
    T5_DGAMMA,
    T5_DX,
    T5_DY,
    T5_W,
    T5_X,
    T5_Y,
    T6_DBETA,
    T6_DGAMMA,
    T6_DX,
    T6_Y,
    RefBatchNorm1d,
    backward_batch,
    backward_eval,
    batch_stats,
    channel_matrix,
    cs231n_batchnorm_backward,
    cs231n_batchnorm_forward,
    cs231n_spatial_backward,
    cs231n_spatial_forward,
    forward_batch,
    forward_eval,
    fsum_stats,
    iter_arrays,
    numerical_grad,
)
from _reference import (
    gold as _gold,
)


def gold(actual, expected):
    _gold(actual, expected)  # the oracle is float64


def test_t1_train_and_eval():
    ref = RefBatchNorm1d(2, dtype=np.float64)
    y = ref.forward(T1_X)
    gold(y, T1_Y64)
    gold(ref.running_mean, T1_RM)
    gold(ref.running_var, T1_RV)
    assert ref.num_batches_tracked == 1
    _, _, var_u = batch_stats(T1_X)
    gold(var_u, T1_VAR_U)
    ref.training = False
    gold(ref.forward(T1_X), T1_EVAL_Y)


def test_t2_reduces_over_n_and_l():
    mean, var_b, var_u = batch_stats(T2_X)
    gold(mean, T2_MEAN)
    np.testing.assert_allclose(var_b, T2_VAR_B, rtol=1e-4)
    gold(var_u, T2_VAR_U)
    ref = RefBatchNorm1d(2, dtype=np.float64)
    y = ref.forward(T2_X)
    gold(y[:, 0, :].ravel(), T2_Y_CH0)
    gold(ref.running_mean, T2_RM)
    gold(ref.running_var, T2_RV)
    # the reference must not compute the per-position means of the classic bug
    assert not np.allclose(np.broadcast_to(mean[:, None], (2, 3)), T2_WRONG_MEANS)


def test_channel_matrix_layout():
    xc = channel_matrix(T2_X)
    assert sorted(xc[0]) == [0, 1, 2, 6, 7, 8]
    assert sorted(xc[1]) == [3, 4, 5, 9, 10, 11]


def test_t3_cumulative_moving_average():
    ref = RefBatchNorm1d(1, momentum=None, dtype=np.float64)
    for batch, rm, rv in zip(T3_BATCHES, T3_RM, T3_RV):
        ref.forward(batch)
        np.testing.assert_allclose(ref.running_mean, [rm], rtol=1e-4)
        np.testing.assert_allclose(ref.running_var, [rv], rtol=1e-4)
    np.testing.assert_allclose(ref.running_mean, [17.0 / 3.0], rtol=1e-15)
    np.testing.assert_allclose(ref.running_var, [10.0 / 3.0], rtol=1e-15)
    assert ref.num_batches_tracked == 3


def test_t4_zero_variance_channel():
    y, _, _invstd, _ = forward_batch(T4_X)
    assert np.all(y[:, 0] == 0.0)
    dx, dg, db = backward_batch(T4_X, T4_DY)
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx[:, 0], T4_DX_CH0, atol=1e-4)
    np.testing.assert_allclose(dx[:, 0], np.array([-1.0, 0.0, 1.0]) / np.sqrt(1e-5), rtol=1e-9)
    assert dg[0] == T4_DGAMMA_CH0
    assert db[0] == T4_DBETA_CH0
    ref = RefBatchNorm1d(2, dtype=np.float64)
    ref.forward(T4_X)
    np.testing.assert_allclose(ref.running_var[0], T4_RV_CH0, rtol=1e-15)


def test_t5_t6():
    ref = RefBatchNorm1d(2, dtype=np.float64)
    ref.set_weight(T5_W)
    ref.set_bias(T5_B)
    gold(ref.forward(T5_X), T5_Y)
    dx, dg, db = ref.backward(T5_DY)
    gold(dx, T5_DX)
    gold(dg, T5_DGAMMA)
    gold(db, T5_DBETA)
    gold(ref.running_mean, T1_RM)
    gold(ref.running_var, T1_RV)
    ref.training = False
    gold(ref.forward(T5_X), T6_Y)
    dx, dg, db = ref.backward(T5_DY)
    gold(dx, T6_DX)
    gold(dg, T6_DGAMMA)
    gold(db, T6_DBETA)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
def test_stats_match_fsum(rng, shape):
    x = 1e3 + rng.standard_normal(shape)
    for a, b in zip(batch_stats(x), fsum_stats(x)):
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4)])
def test_reference_backward_batch_matches_finite_differences(rng, shape):
    x = rng.standard_normal(shape) * 2 + 0.5
    C = shape[1]
    w = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    b = rng.standard_normal(C)
    g = rng.standard_normal(shape)
    dx, dw, db = backward_batch(x, g, w, eps=1e-5)

    def loss():
        return float(np.sum(forward_batch(x, w, b)[0] * g))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4)])
def test_reference_backward_eval_matches_finite_differences(rng, shape):
    x = rng.standard_normal(shape)
    C = shape[1]
    rm = rng.standard_normal(C)
    rv = rng.uniform(0.5, 2.0, C)
    w = rng.standard_normal(C)
    b = rng.standard_normal(C)
    g = rng.standard_normal(shape)
    dx, dw, db = backward_eval(x, g, rm, rv, w)

    def loss():
        return float(np.sum(forward_eval(x, rm, rv, w, b) * g))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_cs231n_reference_consistent(rng):
    x = rng.standard_normal((6, 3)) * 3 + 1
    gamma = rng.standard_normal(3)
    beta = rng.standard_normal(3)
    p = {"mode": "train"}
    out, cache = cs231n_batchnorm_forward(x, gamma, beta, p)
    y, mean, _, _ = forward_batch(x, gamma, beta)
    np.testing.assert_allclose(out, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(p["running_mean"], 0.1 * mean, rtol=1e-13)
    np.testing.assert_allclose(p["running_var"], 0.1 * batch_stats(x)[1], rtol=1e-13)
    g = rng.standard_normal(x.shape)
    dx, dg, db = cs231n_batchnorm_backward(g, cache)
    rdx, rdg, rdb = backward_batch(x, g, gamma)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dg, rdg, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, rdb, rtol=1e-12, atol=1e-12)
    x4 = rng.standard_normal((2, 3, 2, 2))
    p = {"mode": "train"}
    out4, cache4 = cs231n_spatial_forward(x4, gamma, beta, p)
    y4, _, _, _ = forward_batch(x4.reshape(2, 3, 4), gamma, beta)
    np.testing.assert_allclose(out4.reshape(2, 3, 4), y4, rtol=1e-13, atol=1e-13)
    g4 = rng.standard_normal(x4.shape)
    dx4, _, _ = cs231n_spatial_backward(g4, cache4)
    np.testing.assert_allclose(
        dx4.reshape(2, 3, 4),
        backward_batch(x4.reshape(2, 3, 4), g4.reshape(2, 3, 4), gamma)[0],
        rtol=1e-10,
        atol=1e-12,
    )


def test_iter_arrays_walks_containers():
    a, b, c = np.zeros(2), np.ones(3), np.arange(4)

    class Holder:
        def __init__(self):
            self.arr = c

    found = list(iter_arrays(({"k": a}, [b], Holder(), 3, "s")))
    assert any(f is a for f in found) and any(f is b for f in found) and any(f is c for f in found)


# --------------------------------------------------------------------------
# docs/semantics.md prints the golden vectors the tests use
# --------------------------------------------------------------------------

SEMANTICS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "semantics.md"
)
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_ASSIGN = re.compile(r"^(T[1-6]_[A-Z0-9_]+) = (.+?)(?:\s+#.*)?$")


def doc_golden_vectors(text):
    """name -> value of every ``T<k>_NAME = <literal>`` line of the doc's python blocks."""
    found = {}
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            m = _ASSIGN.match(line)
            if m:
                assert m.group(1) not in found, f"{m.group(1)} printed twice"
                found[m.group(1)] = ast.literal_eval(m.group(2))
            else:
                assert not line.strip(), f"unparsed line in a golden-vector block: {line!r}"
    return found


def test_semantics_doc_golden_vectors_equal_the_tests():
    if not os.path.exists(SEMANTICS):
        pytest.skip("docs/semantics.md is not next to the tests (installed test copy)")
    with open(SEMANTICS, encoding="utf-8") as f:
        doc = doc_golden_vectors(f.read())
    ref = {k: getattr(_reference, k) for k in dir(_reference) if re.match(r"T[1-6]_", k)}
    assert sorted(doc) == sorted(ref), "golden vectors missing from the doc or the tests"
    for name, value in doc.items():
        expected = np.asarray(ref[name], dtype=np.float64)
        got = np.asarray(value, dtype=np.float64)
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)  # exact: same numbers
