"""Lazy modules (cybn.LazyBatchNorm1d/2d/3d): size from the first input or a loaded state,
then indistinguishable from the sized module; against torch's LazyBatchNorm where torch
agrees, and the documented differences where it does not."""

import pickle

import numpy as np
import pytest
from _reference import assert_close, forward_batch

import cybn

LAZY = [(cybn.LazyBatchNorm1d, cybn.BatchNorm1d, (6, 4)),
        (cybn.LazyBatchNorm1d, cybn.BatchNorm1d, (6, 4, 3)),
        (cybn.LazyBatchNorm2d, cybn.BatchNorm2d, (3, 4, 2, 5)),
        (cybn.LazyBatchNorm3d, cybn.BatchNorm3d, (2, 4, 2, 3, 2))]


@pytest.mark.parametrize("lazy_cls, sized_cls, shape", LAZY)
def test_first_forward_becomes_the_sized_module(rng, lazy_cls, sized_cls, shape):
    m = lazy_cls(momentum=0.2, dtype=np.float64)
    assert m.num_features == 0 and m.weight is None
    assert repr(m) == (f"{lazy_cls.__name__}(0, eps=1e-05, momentum=0.2, affine=True, "
                       "bias=True, track_running_stats=True)")
    x = rng.normal(size=shape)
    y = m(x)
    sized = sized_cls(4, momentum=0.2, dtype=np.float64)
    np.testing.assert_array_equal(y, sized(x))
    assert_close(y, forward_batch(x)[0])
    assert type(m) is sized_cls
    assert repr(m) == repr(sized)
    assert list(m.state_dict()) == list(sized.state_dict())
    for k, v in sized.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v)
        assert m.state_dict()[k].dtype == v.dtype
    np.testing.assert_array_equal(m.backward(x), sized.backward(x))
    assert sorted(vars(m)) == sorted(vars(sized))
    assert pickle.loads(pickle.dumps(m)).num_features == 4


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(8, 5, 3)).astype(np.float32)
    t = torch.nn.LazyBatchNorm1d()
    m = cybn.LazyBatchNorm1d()
    yt = t(torch.tensor(x))
    y = m(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert type(t).__name__ == type(m).__name__ == "BatchNorm1d"
    for k, v in t.state_dict().items():
        np.testing.assert_allclose(m.state_dict()[k], v.numpy(), rtol=1e-6, atol=1e-7)
    # a state loaded before the first forward materialises from its shapes (both)
    src = torch.nn.BatchNorm1d(5)
    src.running_mean += 1.5
    t2, m2 = torch.nn.LazyBatchNorm1d(), cybn.LazyBatchNorm1d()
    t2.load_state_dict(src.state_dict())
    m2.load_state_dict(src.state_dict())
    np.testing.assert_array_equal(m2.running_mean, t2.running_mean.numpy())
    # where cybn differs (documented): num_features and the class follow at once
    assert (m2.num_features, type(m2).__name__) == (5, "BatchNorm1d")
    assert (t2.num_features, type(t2).__name__) == (0, "LazyBatchNorm1d")
    np.testing.assert_allclose(m2.eval()(x), t2.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_options_channels_last_and_no_state(rng):
    x = rng.normal(size=(4, 3, 2, 7)).astype(np.float32)
    m = cybn.LazyBatchNorm2d(axis=-1, bias=False, renorm=True, rmax=2.0, dmax=1.0)
    m(x)
    assert m.num_features == 7 and m.bias is None and m.renorm
    assert repr(m) == repr(cybn.BatchNorm2d(7, axis=-1, bias=False, renorm=True, rmax=2.0,
                                            dmax=1.0))
    n = cybn.LazyBatchNorm1d(affine=False, track_running_stats=False)
    assert n.state_dict() == {} and n.parameters() == []
    n(np.ones((3, 5), dtype=np.float32) * np.arange(3)[:, None])
    assert type(n) is cybn.BatchNorm1d and n.num_features == 5
    n(np.ones((3, 2), dtype=np.float32) * np.arange(3)[:, None])  # any C, as the sized one


def test_before_materialisation(rng):
    m = cybn.LazyBatchNorm1d()
    assert list(m.state_dict()) == ["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="has no parameters yet"):
        m.parameters()
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
        m.backward(np.ones((2, 3), dtype=np.float32))
    # checked before SyncBatchNorm needs mpi4py
    with pytest.raises(ValueError, match="lazy module that has no arrays yet"):
        cybn.SyncBatchNorm.from_module(m)


@pytest.mark.parametrize("bad, exc, msg", [
    ([[1.0, 2.0]], TypeError, "input must be a NumPy array"),
    (np.ones((3, 4), dtype=np.int32), TypeError, "input must have dtype"),
    (np.ones(4, dtype=np.float32), ValueError, r"expected 2D or 3D input \(got 1D input\)"),
    (np.ones((1, 4), dtype=np.float32), ValueError, "Expected more than 1 value per channel"),
])
def test_failed_first_forward_stays_lazy(bad, exc, msg):
    # torch materialises on the batch-size failure; cybn changes nothing
    m = cybn.LazyBatchNorm1d()
    with pytest.raises(exc, match=msg):
        m(bad)
    assert type(m) is cybn.LazyBatchNorm1d and m.num_features == 0 and m.weight is None
    assert not hasattr(m, "_cache") or m._cache is None
    m(np.ones((2, 6), dtype=np.float32))
    assert m.num_features == 6


def test_load_state_dict_cases(rng):
    sized = cybn.BatchNorm1d(3, dtype=np.float64)
    sized.running_var[...] = [1, 2, 3]
    sized.num_batches_tracked[()] = 9
    m = cybn.LazyBatchNorm1d(dtype=np.float64)
    m.load_state_dict(sized.state_dict())
    assert type(m) is cybn.BatchNorm1d and int(m.num_batches_tracked) == 9
    np.testing.assert_array_equal(m.running_var, [1, 2, 3])
    # inconsistent shapes, wrong ndim, strict failures: stays lazy, unchanged
    for state, msg in [
        ({**sized.state_dict(), "running_var": np.ones(4)}, "of one length"),
        ({**sized.state_dict(), "weight": np.ones((3, 1))}, "of one length"),
        ({k: v for k, v in sized.state_dict().items() if k != "bias"}, "Missing key"),
        ({**sized.state_dict(), "extra": np.ones(3)}, "Unexpected key"),
        ({}, "Missing key"),
    ]:
        lazy = cybn.LazyBatchNorm1d()
        with pytest.raises(RuntimeError, match=msg):
            lazy.load_state_dict(state)
        assert type(lazy) is cybn.LazyBatchNorm1d and lazy.num_features == 0
    partial = cybn.LazyBatchNorm1d()
    result = partial.load_state_dict({"weight": np.full(3, 2.0)}, strict=False)
    # (num_batches_tracked: not missing in a state without version metadata, as torch)
    assert result.missing_keys == ["bias", "running_mean", "running_var"]
    np.testing.assert_array_equal(partial.weight, 2.0)
    np.testing.assert_array_equal(partial.running_var, 1.0)
    none = cybn.LazyBatchNorm1d()
    none.load_state_dict({"num_batches_tracked": np.array(4)}, strict=False)
    assert type(none) is cybn.LazyBatchNorm1d and int(none.num_batches_tracked) == 4
