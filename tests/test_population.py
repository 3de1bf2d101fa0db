"""Exact population statistics (cybn.population_stats): the running statistics after the
block equal one batch-norm pass over the concatenated data (float64, 1e-12 relative),
whatever the batch sizes; outputs and gradients inside the block are an ordinary training
forward's; failures change nothing. SyncBatchNorm: tests/mpi/test_sync_mpi.py."""

import numpy as np
import pytest
from _reference import batch_stats

import cybn


def _data(rng, shape):
    return rng.normal(size=shape) * rng.uniform(0.1, 10.0) + rng.uniform(-100, 100)


@pytest.mark.parametrize("shape, splits", [
    ((1000, 4), [2, 3, 5, 500, 490]),          # wildly different batch sizes
    ((37, 3, 11), [2, 35]),
    ((20, 2, 3, 4), [5, 5, 5, 5]),
])
def test_equals_one_pass_over_all_rows(rng, shape, splits):
    x = _data(rng, shape)
    cls = {2: cybn.BatchNorm1d, 3: cybn.BatchNorm1d, 4: cybn.BatchNorm2d}[len(shape)]
    m = cls(shape[1], dtype=np.float64)
    m.running_mean[...] = 5.0   # whatever was there before is replaced
    one_pass = cls(shape[1], dtype=np.float64, momentum=1.0)
    one_pass(x)
    with cybn.population_stats(m) as block:
        for part in np.split(x, np.cumsum(splits)[:-1]):
            m(part)
    assert block.counts[m] == x.size // shape[1]
    np.testing.assert_allclose(m.running_mean, one_pass.running_mean, rtol=1e-12)
    np.testing.assert_allclose(m.running_var, one_pass.running_var, rtol=1e-12)
    mean, _, var_u = batch_stats(x)
    np.testing.assert_allclose(m.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.running_var, var_u, rtol=1e-12)
    assert int(m.num_batches_tracked) == len(splits)


def test_momentum_average_would_be_wrong(rng):
    # what update_bn's cumulative average of per-batch statistics gives is not the
    # population variance when batch means differ: the test above is not vacuous
    parts = [rng.normal(size=(50, 2)) + shift for shift in (0.0, 3.0, -2.0)]
    m = cybn.BatchNorm1d(2, dtype=np.float64, momentum=None)
    for p in parts:
        m(p)
    var_u = np.concatenate(parts).var(axis=0, ddof=1)
    assert np.all(np.abs(m.running_var - var_u) / var_u > 0.1)


def test_outputs_and_gradients_are_ordinary_and_nothing_updates_inside(rng):
    x = _data(rng, (64, 5))
    m = cybn.BatchNorm1d(5, dtype=np.float64)
    m.weight[...] = rng.uniform(0.5, 2, 5)
    ref = cybn.BatchNorm1d(5, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with cybn.population_stats(m):
        y = m(x)
        gi = m.backward(x)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
        m.eval()
        np.testing.assert_array_equal(m(x), ref.eval()(x))   # evaluation: ordinary, ignored
        m.train()
        ref.train()
    np.testing.assert_array_equal(y, ref(x))
    np.testing.assert_array_equal(gi, ref.backward(x))
    np.testing.assert_array_equal(m.grad_weight, ref.grad_weight)
    assert int(m.num_batches_tracked) == 1


def test_float32_module_several_modules_and_lazy(rng):
    x = _data(rng, (300, 3)).astype(np.float32)
    a = cybn.BatchNorm1d(3)
    b = cybn.LazyBatchNorm1d(dtype=np.float64)
    with cybn.population_stats(a, b):
        for part in np.array_split(x, 4):
            a(part)
            b(part.astype(np.float64))
    mean, _, var_u = batch_stats(x)
    np.testing.assert_allclose(a.running_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(a.running_var, var_u, rtol=1e-6)
    np.testing.assert_allclose(b.running_mean, mean, rtol=1e-12)
    assert type(b) is cybn.BatchNorm1d


def test_exception_in_block_changes_nothing(rng):
    m = cybn.BatchNorm1d(3)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(KeyError), cybn.population_stats(m):
        m(rng.normal(size=(8, 3)).astype(np.float32))
        raise KeyError("stop")
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    m(rng.normal(size=(8, 3)).astype(np.float32))   # the module is usable afterwards
    assert int(m.num_batches_tracked) == 1


def test_no_batches_changes_nothing():
    m = cybn.BatchNorm1d(3)
    m.running_var[...] = 7
    with pytest.warns(RuntimeWarning, match="saw no values"), cybn.population_stats(m):
        m(np.empty((0, 3), dtype=np.float32))
    np.testing.assert_array_equal(m.running_var, 7)
    assert int(m.num_batches_tracked) == 0


@pytest.mark.parametrize("args, exc, msg", [
    ((), ValueError, "needs at least one batch-norm module"),
    (("bn",), TypeError, "takes cybn batch-norm modules .*, got str"),
    ((cybn.BatchNorm1d(2, track_running_stats=False),), ValueError,
     "does not track running statistics"),
])
def test_bad_arguments(args, exc, msg):
    with pytest.raises(exc, match=msg):
        cybn.population_stats(*args)


def test_same_module_twice_and_nested_blocks():
    m = cybn.BatchNorm1d(2)
    with pytest.raises(ValueError, match="the same module twice"):
        cybn.population_stats(m, m)
    with cybn.population_stats(m):
        with pytest.raises(RuntimeError, match="already in an open population_stats block"):
            with cybn.population_stats(m):
                pass
        m(np.ones((3, 2), dtype=np.float32))
    assert int(m.num_batches_tracked) == 1
