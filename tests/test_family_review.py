"""Regressions from an adversarial review of lazy modules, batch renormalization, ghost
batches and population statistics (each test names the finding it pins down)."""

import copy
import io
import pickle

import numpy as np
import pytest
from _reference import assert_close, batch_stats

import cybn


@pytest.fixture
def x(rng):
    return rng.normal(size=(8, 3)).astype(np.float32)


def _state(m):
    return {k: np.array(v, copy=True) for k, v in m.state_dict().items()}


def _same_state(m, before):
    after = m.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_ghost_empty_batch_backward_is_plain():
    m = cybn.BatchNorm1d(3, virtual_batch_size=2)
    assert m(np.zeros((0, 3), np.float32)).shape == (0, 3)
    gi = m.backward(np.zeros((0, 3), np.float32))
    assert gi.shape == (0, 3)
    np.testing.assert_array_equal(m.grad_weight, 0)
    assert int(m.num_batches_tracked) == 0


def test_ghost_zero_values_per_channel_leaves_running_stats():
    m = cybn.BatchNorm1d(3, virtual_batch_size=2)
    with np.errstate(all="raise"):
        y = m(np.zeros((4, 3, 0), np.float32))
    assert y.shape == (4, 3, 0)
    np.testing.assert_array_equal(m.running_mean, 0)
    np.testing.assert_array_equal(m.running_var, 1)
    assert int(m.num_batches_tracked) == 0
    assert m.backward(np.zeros((4, 3, 0), np.float32)).shape == (4, 3, 0)


@pytest.mark.parametrize("kw", [{"virtual_batch_size": 4}, {"renorm": True}, {}])
@pytest.mark.parametrize("bad", ["False", 1, None])
def test_training_attribute_type_is_checked_on_every_path(x, kw, bad):
    m = cybn.BatchNorm1d(3, **kw)
    before = _state(m)
    m.training = bad
    with pytest.raises(TypeError, match="training must be a bool, got"):
        m(x)
    _same_state(m, before)


def test_numpy_bool_training_and_renorm_are_accepted(x):
    m = cybn.BatchNorm1d(3, renorm=np.True_, rmax=2.0)
    m.training = np.True_
    m(x)
    assert int(m.num_batches_tracked) == 1


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_made_inside_a_block_are_not_in_it(x, how):
    m = cybn.BatchNorm1d(3)
    with pytest.warns(RuntimeWarning, match="saw no values"), cybn.population_stats(m):
        c = copy.deepcopy(m) if how == "deepcopy" else pickle.loads(pickle.dumps(m))
    c(x)
    assert int(c.num_batches_tracked) == 1
    assert np.any(c.running_mean != 0)
    with cybn.population_stats(c):
        c(x)


def test_read_only_running_stats_are_refused_before_any_module_changes(x):
    a, b = cybn.BatchNorm1d(3), cybn.BatchNorm1d(3)
    b.running_mean.flags.writeable = False
    with pytest.raises(ValueError, match=r"\.running_mean is updated in place and must be "
                                         "writeable"):
        cybn.population_stats(a, b).__enter__()
    assert a._population is None and b._population is None
    b.running_mean.flags.writeable = True
    before_a, before_b = _state(a), _state(b)
    with pytest.raises(ValueError, match=r"\.running_var is updated in place"):
        with cybn.population_stats(a, b):
            a(x)
            b(x)
            b.running_var.flags.writeable = False
    _same_state(a, before_a)
    _same_state(b, before_b)


def test_ghost_backward_out_may_not_overlap_the_original_input(rng):
    xf = np.asfortranarray(rng.random((8, 3, 4)))
    m = cybn.BatchNorm1d(3, dtype=np.float64, virtual_batch_size=4)
    m(xf)
    keep = xf.copy()
    with pytest.raises(ValueError, match="out must not overlap the input arrays"):
        m.backward(np.ones_like(xf), out=xf)
    np.testing.assert_array_equal(xf, keep)


def test_ghost_check_finite_writes_out_only_after_every_group(x):
    xb = x.copy()
    xb[7, 0] = np.inf
    o = np.zeros_like(x)
    m = cybn.BatchNorm1d(3, virtual_batch_size=3, check_finite=True)
    with pytest.raises(ValueError, match=r"channel\(s\) \[0\]"):
        m(xb, out=o)
    assert np.count_nonzero(o) == 0
    assert m(x, out=o) is o
    assert np.count_nonzero(o) == o.size


def test_renorm_without_running_mean_says_so(x):
    m = cybn.BatchNorm1d(3, renorm=True)
    m.running_mean = None
    with pytest.raises(ValueError, match="renorm=True needs the running statistics, but "
                                         r"self\.running_mean is None"):
        m(x)


@pytest.mark.parametrize("training", [True, False])
def test_half_of_the_running_statistics(x, training):
    m = cybn.BatchNorm1d(3).train(training)
    m.running_var = None
    with pytest.raises(ValueError, match="self.running_mean and self.running_var must "
                                         "either both be None"):
        m(x)


@pytest.mark.parametrize("kw", [{"virtual_batch_size": 4}, {}])
def test_bad_running_mean_type_is_named(x, kw):
    m = cybn.BatchNorm1d(3, **kw)
    m.running_mean = [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="self.running_mean must be a NumPy array"):
        m(x)


@pytest.mark.parametrize("kw", [{"virtual_batch_size": 4}, {"renorm": True}, {}])
def test_int_num_batches_tracked_is_refused_before_any_update(x, kw):
    m = cybn.BatchNorm1d(3, **kw)
    m.num_batches_tracked = 0
    with pytest.raises(TypeError, match="self.num_batches_tracked must be a writeable 0-d "
                                        "integer array"):
        m(x)
    np.testing.assert_array_equal(m.running_mean, 0)


@pytest.mark.parametrize("change, exc, msg", [
    ({"rmax": 0.2}, ValueError, "rmax must be >= 1"),
    ({"renorm": 1}, TypeError, "renorm must be a bool, got int"),
    ({"virtual_batch_size": 2}, None, None),        # with renorm: refused at load before
    ({"virtual_batch_size": 2**70}, ValueError, "does not fit a 64-bit integer"),
])
def test_save_refuses_what_load_would_refuse(change, exc, msg):
    m = cybn.BatchNorm1d(3, renorm=True, rmax=2.0) if "virtual_batch_size" not in change \
        or change["virtual_batch_size"] > 2 else cybn.BatchNorm1d(3, virtual_batch_size=4)
    for k, v in change.items():
        setattr(m, k, v)
    buf = io.BytesIO()
    if exc is None:
        cybn.save(m, buf)
        buf.seek(0)
        assert cybn.load(buf).virtual_batch_size == 2
        return
    with pytest.raises(exc, match=msg):
        cybn.save(m, buf)
    assert buf.getvalue() == b""


def test_constructor_checks_rmax_dmax_always_and_save_keeps_them():
    with pytest.raises(ValueError, match="rmax must be >= 1"):
        cybn.BatchNorm1d(3, rmax=0.5)
    with pytest.raises(TypeError, match="dmax must be a real number, got str"):
        cybn.BatchNorm1d(3, dmax="x")
    with pytest.raises(ValueError, match="rmax and dmax take effect only with renorm=True"):
        cybn.BatchNorm1d(3, rmax=2.5)
    m = cybn.BatchNorm1d(3)
    m.rmax, m.dmax = 2.5, 1.0   # assigned before switching renorm on: kept by save/load
    buf = io.BytesIO()
    cybn.save(m, buf)
    buf.seek(0)
    m2 = cybn.load(buf)
    assert (m2.renorm, m2.rmax, m2.dmax) == (False, 2.5, 1.0)


def test_failed_lazy_load_names_the_lazy_class():
    sd = dict(cybn.BatchNorm1d(3).state_dict())
    sd["foo"] = 1
    lazy = cybn.LazyBatchNorm1d()
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict for "
                                           "LazyBatchNorm1d"):
        lazy.load_state_dict(sd)
    assert type(lazy) is cybn.LazyBatchNorm1d


def test_torch_lazy_state_dict():
    torch = pytest.importorskip("torch")
    lazy = cybn.LazyBatchNorm1d()
    result = lazy.load_state_dict(torch.nn.LazyBatchNorm1d().state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert type(lazy) is cybn.LazyBatchNorm1d     # as torch: still lazy
    with pytest.raises(TypeError, match="uninitialized parameter of a torch lazy module"):
        cybn.BatchNorm1d(3).load_state_dict(torch.nn.LazyBatchNorm1d().state_dict())


def test_population_exact_after_fixes(rng):
    data = rng.normal(size=(90, 3)) * 4 + 7
    m = cybn.BatchNorm1d(3, dtype=np.float64, virtual_batch_size=7)
    with cybn.population_stats(m):
        for part in np.array_split(data, 5):
            m(part)
    mean, _, var_u = batch_stats(data)
    assert_close(m.running_mean, mean)
    assert_close(m.running_var, var_u)


def test_population_warns_when_a_module_saw_nothing(x):
    m = cybn.BatchNorm1d(3).eval()
    with pytest.warns(RuntimeWarning, match="saw no values in the block"):
        with cybn.population_stats(m):
            m(x)
    np.testing.assert_array_equal(m.running_mean, 0)
