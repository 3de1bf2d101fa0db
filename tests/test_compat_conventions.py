"""cybn.compat against independent reimplementations of each legacy convention (_legacy.py).

cs231n: every exported name, (D,)/(1, D) and spatial (C,)/(1, C)/(1, C, 1, 1) parameters
with gradients and running statistics in the caller's shape, bn_param semantics, NumPy's
dtype promotion, one-row batches, caches. Deep Learning from Scratch: the book's class,
parameters held by reference, 4-D input per activation, dtypes, intermediates.

Tolerances: float64 results agree with the float64 oracle to rtol 1e-12 (forward, running
statistics) and 1e-10 (gradients, which cancel in sums); float32 to 2e-5 relative to the
largest magnitude (cybn accumulates in float64, the oracle in float32, so the oracle is
the less accurate side); finite differences to 1e-6 relative.
"""

import numpy as np
import pytest
from _legacy import (
    BookBatchNormalization,
    cs231n_backward_alt,
    cs231n_backward_graph,
    cs231n_forward,
    cs231n_forward_keepdims,
    cs231n_spatial_backward,
    cs231n_spatial_forward,
)
from _reference import numerical_grad

import cybn.compat as CP

CS231N = ["batchnorm_forward", "batchnorm_forward_alt", "batchnorm_backward",
          "batchnorm_backward_alt", "spatial_batchnorm_forward", "spatial_batchnorm_backward"]


def close(actual, expected, rtol=1e-12, err_msg=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (err_msg, actual.shape, expected.shape)
    if np.dtype(actual.dtype) != np.float64 or np.dtype(expected.dtype) != np.float64:
        rtol = max(rtol, 2e-5)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


# ---------------------------------------------------------------------------------------
# names


def test_star_import_binds_every_pair():
    ns = {}
    exec("from cybn.compat import *", ns)  # noqa: S102
    names = sorted(k for k in ns if not k.startswith("__"))
    assert names == sorted(CS231N + ["BatchNormalization"])
    assert "patch" not in names and "unpatch" not in names
    for name in CS231N:
        assert ns[name] is getattr(CP, name) is getattr(CP.cs231n, name)


def test_public_names_documented():
    for name in CS231N + ["BatchNormalization", "patch", "unpatch", "PatchReport", "Cache"]:
        obj = getattr(CP, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name


# ---------------------------------------------------------------------------------------
# cs231n: values against the oracles, every parameter shape


FC_SHAPES = {"(D,)": lambda D: (D,), "(1, D)": lambda D: (1, D)}


@pytest.mark.parametrize("pshape", list(FC_SHAPES))
@pytest.mark.parametrize("fwd", ["batchnorm_forward", "batchnorm_forward_alt"])
@pytest.mark.parametrize("bwd", ["batchnorm_backward", "batchnorm_backward_alt"])
def test_fc_train_sequence_matches_oracle(rng, pshape, fwd, bwd):
    N, D = 16, 7
    shape = FC_SHAPES[pshape](D)
    gamma = rng.uniform(0.5, 2, shape)
    beta = rng.standard_normal(shape)
    oracle_fwd = cs231n_forward_keepdims if pshape == "(1, D)" else cs231n_forward
    p, q = {"mode": "train", "momentum": 0.8}, {"mode": "train", "momentum": 0.8}
    if pshape == "(1, D)":  # that year's code keeps (1, D) running statistics too
        p["running_mean"], p["running_var"] = np.zeros(shape), np.zeros(shape)
        q["running_mean"], q["running_var"] = np.zeros(shape), np.zeros(shape)
    for step in range(3):
        x = rng.standard_normal((N, D)) * (step + 1) + step
        dout = rng.standard_normal((N, D))
        out, cache = getattr(CP, fwd)(x, gamma, beta, p)
        ref, rcache = oracle_fwd(x, gamma, beta, q)
        close(out, ref, err_msg="out")
        for k in ("running_mean", "running_var"):
            assert p[k].shape == q[k].shape == shape
            close(p[k], q[k], err_msg=k)
        grads = getattr(CP, bwd)(dout, cache)
        refs = cs231n_backward_graph(dout, rcache)
        alts = cs231n_backward_alt(dout, rcache)
        for name, a, r, r2 in zip(("dx", "dgamma", "dbeta"), grads, refs, alts):
            close(a, r, rtol=1e-10, err_msg=name)
            close(a, r2, rtol=1e-10, err_msg=name)
        assert grads[1].shape == grads[2].shape == shape
    p["mode"] = q["mode"] = "test"
    x = rng.standard_normal((5, D))
    close(getattr(CP, fwd)(x, gamma, beta, p)[0], oracle_fwd(x, gamma, beta, q)[0])


SPATIAL_SHAPES = [(3,), (1, 3), (1, 3, 1, 1)]


@pytest.mark.parametrize("pshape", SPATIAL_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spatial_matches_oracle_in_caller_shape(rng, pshape, dtype):
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(dtype)
    gamma = rng.uniform(0.5, 2, pshape).astype(dtype)
    beta = rng.standard_normal(pshape).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    p = {"mode": "train"}
    out, cache = CP.spatial_batchnorm_forward(x, gamma, beta, p)
    # the oracle is the handout's transpose + batchnorm_forward, which needs (C,) params
    q = {"mode": "train"}
    ref, rcache = cs231n_spatial_forward(x, gamma.reshape(3), beta.reshape(3), q)
    assert out.dtype == np.dtype(dtype)
    close(out, ref)
    # missing running statistics are created in gamma's shape
    assert p["running_mean"].shape == pshape and p["running_mean"].dtype == np.dtype(dtype)
    close(p["running_var"].reshape(3), q["running_var"])
    dx, dgamma, dbeta = CP.spatial_batchnorm_backward(dout, cache)
    rdx, rdg, rdb = cs231n_spatial_backward(dout, rcache)
    close(dx, rdx, rtol=1e-10)
    assert dgamma.shape == dbeta.shape == pshape
    close(dgamma.reshape(3), rdg, rtol=1e-10)
    close(dbeta.reshape(3), rdb, rtol=1e-10)


@pytest.mark.parametrize("pshape", [(6,), (1, 6)])
def test_fc_finite_differences_in_caller_shape(rng, pshape):
    x = rng.standard_normal((5, 6)) * 1.5 + 0.5
    gamma = rng.uniform(0.5, 2, pshape)
    beta = rng.standard_normal(pshape)
    dout = rng.standard_normal((5, 6))

    def loss():
        return float(np.sum(CP.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0] * dout))

    _, cache = CP.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    for analytic, arr in zip(CP.batchnorm_backward_alt(dout, cache), (x, gamma, beta)):
        num = numerical_grad(loss, arr)
        assert analytic.shape == arr.shape
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * max(1, abs(num).max()))


def test_spatial_finite_differences_4d_params(rng):
    x = rng.standard_normal((2, 3, 2, 3)) + 0.3
    gamma = rng.uniform(0.5, 2, (1, 3, 1, 1))
    beta = rng.standard_normal((1, 3, 1, 1))
    dout = rng.standard_normal(x.shape)

    def loss():
        out, _ = CP.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
        return float(np.sum(out * dout))

    _, cache = CP.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    for analytic, arr in zip(CP.spatial_batchnorm_backward(dout, cache), (x, gamma, beta)):
        num = numerical_grad(loss, arr)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * max(1, abs(num).max()))


# ---------------------------------------------------------------------------------------
# cs231n: bn_param as the handouts define it


def test_running_stats_created_written_back_as_new_arrays(rng):
    x = rng.standard_normal((8, 3)).astype(np.float32)
    p = {"mode": "train"}
    CP.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), p)
    rm = p["running_mean"]
    assert rm.dtype == np.float32 and rm.shape == (3,)
    close(rm, 0.1 * x.astype(np.float64).mean(0))
    CP.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), p)
    assert p["running_mean"] is not rm  # new arrays, the caller's old ones untouched
    close(rm, 0.1 * x.astype(np.float64).mean(0))


def test_test_mode_writes_back_the_same_objects(rng):
    rm, rv = rng.standard_normal(3), rng.uniform(1, 2, 3)
    p = {"mode": "test", "running_mean": rm, "running_var": rv}
    CP.batchnorm_forward(rng.standard_normal((4, 3)), np.ones(3), np.zeros(3), p)
    assert p["running_mean"] is rm and p["running_var"] is rv
    q = {"mode": "test"}  # missing: zeros of x's dtype, as the handout's default
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out, _ = CP.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), q)
    assert q["running_mean"].dtype == np.float32 and not q["running_var"].any()
    close(out, cs231n_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32),
                              {"mode": "test"})[0])


def test_lists_and_integers_as_numpy_arithmetic_accepts(rng):
    x = rng.integers(-5, 5, (6, 3))
    gamma, beta = [1.0, 2.0, 0.5], [0, 1, 2]
    p = {"mode": "train", "running_mean": [0.0, 0.0, 0.0], "running_var": [1, 1, 1]}
    q = {k: np.asarray(v) if isinstance(v, list) else v for k, v in p.items()}
    out, cache = CP.batchnorm_forward(x, gamma, beta, p)
    ref, rcache = cs231n_forward(x, np.asarray(gamma), np.asarray(beta), q)
    assert out.dtype == ref.dtype == np.float64
    close(out, ref)
    close(p["running_mean"], q["running_mean"])
    assert p["running_var"].dtype == q["running_var"].dtype == np.float64
    dout = rng.standard_normal((6, 3))
    for a, r in zip(CP.batchnorm_backward(dout, cache), cs231n_backward_graph(dout, rcache)):
        close(a, r, rtol=1e-10)
    # a scalar gamma broadcasts; its gradient has the reductions' shape (D,)
    out, cache = CP.batchnorm_forward(x.astype(float), 2.0, 0.0, {"mode": "train"})
    ref, rcache = cs231n_forward(x.astype(float), 2.0, 0.0, {"mode": "train"})
    close(out, ref)
    assert CP.batchnorm_backward(dout, cache)[1].shape == (3,)


@pytest.mark.parametrize("xdt, gdt", [(np.float32, np.float32), (np.float32, np.float64),
                                      (np.float64, np.float32), (np.float16, np.float16),
                                      (np.int64, np.float32), (np.float16, np.float32)])
def test_dtypes_follow_numpy_promotion(rng, xdt, gdt):
    x = (rng.standard_normal((8, 4)) * 3).astype(xdt)
    gamma = rng.uniform(0.5, 2, 4).astype(gdt)
    beta = rng.standard_normal(4).astype(gdt)
    dout = rng.standard_normal((8, 4)).astype(np.result_type(x.dtype if x.dtype.kind == "f"
                                                             else np.float64, gdt))
    p, q = {"mode": "train"}, {"mode": "train"}
    out, cache = CP.batchnorm_forward(x, gamma, beta, p)
    ref, rcache = cs231n_forward(x, gamma, beta, q)
    assert out.dtype == ref.dtype
    assert p["running_mean"].dtype == q["running_mean"].dtype
    assert p["running_var"].dtype == q["running_var"].dtype
    grads = CP.batchnorm_backward(dout, cache)
    refs = cs231n_backward_alt(dout, rcache)
    for a, r in zip(grads, refs):
        assert a.dtype == r.dtype
    # values: against the oracle in float64, to the precision of the narrowest operand
    exact, _ = cs231n_forward(x.astype(np.float64), gamma.astype(np.float64),
                              beta.astype(np.float64), {"mode": "train"})
    narrowest = min(np.finfo(x.dtype).eps if x.dtype.kind == "f" else 1e-16,
                    np.finfo(gdt).eps, np.finfo(out.dtype).eps, key=lambda e: -e)
    tol = {np.finfo(np.float16).eps: 2e-2, np.finfo(np.float32).eps: 2e-5}.get(narrowest, 1e-12)
    np.testing.assert_allclose(out.astype(np.float64), exact, rtol=0,
                               atol=tol * np.abs(exact).max())


def test_one_row_in_training_gives_beta(rng):
    x = rng.standard_normal((1, 4))
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    p, q = {"mode": "train"}, {"mode": "train"}
    out, cache = CP.batchnorm_forward(x, gamma, beta, p)
    ref, rcache = cs231n_forward(x, gamma, beta, q)
    np.testing.assert_array_equal(out, np.broadcast_to(beta, (1, 4)))
    np.testing.assert_array_equal(ref, out)
    close(p["running_var"], q["running_var"])
    dout = rng.standard_normal((1, 4))
    dx, dgamma, dbeta = CP.batchnorm_backward(dout, cache)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dgamma, 0)
    np.testing.assert_array_equal(dbeta, dout[0])
    for a, r in zip((dx, dgamma, dbeta), cs231n_backward_graph(dout, rcache)):
        close(a, r)


def test_2016_handout_quirk_key_is_plain_batch_norm(rng):
    x = rng.standard_normal((6, 3))
    plain, _ = CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    for extra in ({"train": "train"}, {"test": "test"}, {"layernorm": 0}, {"axis": 0}):
        out, _ = CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", **extra})
        np.testing.assert_array_equal(out, plain)
    for extra in ({"layernorm": 1}, {"axis": 1}, {"use": True}, {"shape": (6, 3)}):
        with pytest.raises(ValueError, match="that the cs231n handouts do not define"):
            CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", **extra})


@pytest.mark.parametrize("bad", ["nan", "eps0", "empty"])
def test_failures_leave_bn_param_unchanged(rng, bad):
    x = rng.standard_normal((6, 3))
    rm, rv = rng.standard_normal(3), rng.uniform(1, 2, 3)
    p = {"mode": "train", "running_mean": rm, "running_var": rv}
    if bad == "nan":
        x[2, 1] = np.nan
    elif bad == "eps0":
        x[:, 2] = 3.0
        p["eps"] = 0.0
    else:
        x = x[:0]
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
    with pytest.raises(ValueError):
        CP.batchnorm_forward(x, np.ones(3), np.zeros(3), p)
    assert p.keys() == before.keys() and p["running_mean"] is rm and p["running_var"] is rv
    np.testing.assert_array_equal(rm, before["running_mean"])
    np.testing.assert_array_equal(rv, before["running_var"])


def test_eps_zero_is_the_formula_when_defined(rng):
    x = rng.standard_normal((6, 3))
    out, _ = CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "eps": 0.0})
    close(out, cs231n_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "eps": 0.0})[0])


# ---------------------------------------------------------------------------------------
# caches: cybn's and legacy ones never mix silently


def test_caches_refuse_to_mix(rng):
    x = rng.standard_normal((6, 3))
    _, cache = CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="switched together"):
        cs231n_backward_graph(np.ones((6, 3)), cache)  # a legacy backward unpacks it
    with pytest.raises(TypeError, match="switched together"):
        cache["x"]  # a dict-style legacy cache
    _, legacy = cs231n_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    for name in ("batchnorm_backward", "batchnorm_backward_alt"):
        with pytest.raises(TypeError, match="cache must come from cybn.compat"):
            getattr(CP, name)(np.ones((6, 3)), legacy)
    with pytest.raises(TypeError, match="cache must come from cybn.compat"):
        CP.spatial_batchnorm_backward(np.ones((6, 3)), {"x": x})
    assert "train mode" in repr(cache)


def test_test_mode_backward_is_the_true_gradient(rng):
    x = rng.standard_normal((5, 3))
    gamma, beta = rng.uniform(0.5, 2, (1, 3)), rng.standard_normal((1, 3))
    p = {"mode": "test", "running_mean": rng.standard_normal(3),
         "running_var": rng.uniform(0.5, 2, 3)}
    dout = rng.standard_normal((5, 3))

    def loss():
        return float(np.sum(CP.batchnorm_forward(x, gamma, beta, dict(p))[0] * dout))

    _, cache = CP.batchnorm_forward(x, gamma, beta, dict(p))
    for analytic, arr in zip(CP.batchnorm_backward(dout, cache), (x, gamma, beta)):
        num = numerical_grad(loss, arr)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7 * max(1, abs(num).max()))


# ---------------------------------------------------------------------------------------
# Deep Learning from Scratch


def _pair(rng, D, gdt=np.float64):
    gamma = rng.uniform(0.5, 2, D).astype(gdt)
    beta = rng.standard_normal(D).astype(gdt)
    return gamma, beta


@pytest.mark.parametrize("xshape", [(16, 10), (8, 2, 3, 4)])
@pytest.mark.parametrize("xdt", [np.float64, np.float32])
def test_book_layer_matches_oracle(rng, xshape, xdt):
    D = int(np.prod(xshape[1:]))
    # float32 data: the book computes its statistics in float32 (then promotes to float64
    # with gamma), cybn in float64, so they agree to float32 precision
    rt, rg = (1e-12, 1e-10) if xdt is np.float64 else (2e-5, 2e-5)
    gamma, beta = _pair(rng, D)
    ours = CP.BatchNormalization(gamma, beta)
    book = BookBatchNormalization(gamma.copy(), beta.copy())
    assert ours.running_mean is None and ours.dgamma is None
    for step in range(3):
        x = (rng.standard_normal(xshape) * (step + 1) + step).astype(xdt)
        dout = rng.standard_normal(xshape).astype(xdt)
        out, ref = ours.forward(x), book.forward(x)
        assert out.dtype == ref.dtype == np.float64  # float64 gamma promotes, as in the book
        assert out.shape == xshape and ours.input_shape == xshape
        close(out, ref, rt)
        close(ours.running_mean, book.running_mean, rt)
        close(ours.running_var, book.running_var, rt)
        assert ours.running_mean.dtype == book.running_mean.dtype == np.float64
        dx, rdx = ours.backward(dout), book.backward(dout)
        assert dx.shape == xshape and dx.dtype == rdx.dtype
        close(dx, rdx, rtol=rg)
        close(ours.dgamma, book.dgamma, rtol=rg)
        close(ours.dbeta, book.dbeta, rtol=rg)
        assert ours.batch_size == book.batch_size
        close(ours.xc, book.xc, rtol=rg)
        close(ours.xn, book.xn, rtol=rg)
        close(ours.std, book.std, rtol=rg)
    x = rng.standard_normal(xshape).astype(xdt)
    close(ours.forward(x, train_flg=False), book.forward(x, train_flg=False), rt)


def test_book_layer_sees_in_place_parameter_updates(rng):
    D = 5
    gamma, beta = _pair(rng, D)
    layer = CP.BatchNormalization(gamma, beta)
    assert layer.gamma is gamma and layer.beta is beta
    x = rng.standard_normal((7, D))
    y0 = layer.forward(x)
    layer.backward(np.ones_like(y0))
    gamma -= 0.1 * layer.dgamma  # the book's SGD: params[key] -= lr * grads[key]
    beta -= 0.1 * layer.dbeta
    y1 = layer.forward(x)
    book = BookBatchNormalization(gamma.copy(), beta.copy())
    close(y1, book.forward(x))
    assert not np.allclose(y0, y1)


def test_book_numerical_gradient_perturbs_in_place(rng):
    D = 4
    gamma, beta = _pair(rng, D)
    layer = CP.BatchNormalization(gamma, beta)
    x = rng.standard_normal((6, D))
    dout = rng.standard_normal((6, D))

    def loss():
        return float(np.sum(layer.forward(x) * dout))

    ng = numerical_grad(loss, gamma, h=1e-5)  # perturbs gamma in place, as the book does
    nb = numerical_grad(loss, beta, h=1e-5)
    layer.forward(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.dgamma, ng, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(layer.dbeta, nb, rtol=1e-6, atol=1e-8)


def test_book_layer_details(rng):
    gamma, beta = _pair(rng, 3)
    layer = CP.BatchNormalization(gamma, beta, momentum=0.5)
    x = rng.standard_normal((4, 3))
    layer.forward(x, train_flg=False)  # the book creates zero statistics even in test mode
    assert layer.running_mean.dtype == np.float64 and not layer.running_var.any()
    with pytest.raises(RuntimeError, match="test mode"):
        layer.backward(np.ones((4, 3)))
    layer.momentum = 0.25  # read at every forward
    book = BookBatchNormalization(gamma, beta, momentum=0.25)
    layer.forward(x)
    book.forward(x)
    close(layer.running_var, book.running_var)
    with pytest.raises(RuntimeError, match="never ran"):
        CP.BatchNormalization(gamma, beta).backward(np.ones((4, 3)))
    # a (1, D) gamma broadcasts in the book; its gradient is (D,), as the book's sum gives
    layer = CP.BatchNormalization(gamma[None], beta[None])
    layer.forward(x)
    layer.backward(np.ones((4, 3)))
    assert layer.dgamma.shape == (3,)
    # one row: the book's formula gives beta
    np.testing.assert_array_equal(CP.BatchNormalization(gamma, beta).forward(x[:1]), beta[None])


def test_book_layer_failure_changes_nothing(rng):
    gamma, beta = _pair(rng, 3)
    layer = CP.BatchNormalization(gamma, beta)
    x = rng.standard_normal((4, 3))
    layer.forward(x)
    layer.backward(np.ones((4, 3)))
    state = (layer.running_mean.copy(), layer.running_var.copy(), layer.dgamma.copy())
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.forward(bad)
    with pytest.raises(ValueError, match="shape of the forward's input"):
        layer.backward(np.ones((5, 3)))
    np.testing.assert_array_equal(layer.running_mean, state[0])
    np.testing.assert_array_equal(layer.running_var, state[1])
    np.testing.assert_array_equal(layer.dgamma, state[2])
    dx = layer.backward(np.ones((4, 3)))  # the last good forward is still differentiable
    assert np.isfinite(dx).all()


def test_float16_running_variance_overflow_is_refused():
    x = np.array([[6e4], [-6e4]], np.float16)
    p = {"mode": "train", "running_var": np.ones(1, np.float16)}
    before = p["running_var"]
    with pytest.raises(ValueError, match=r"running_var'\] overflows float16"):
        CP.batchnorm_forward(x, np.ones(1, np.float16), np.zeros(1, np.float16), p)
    assert p["running_var"] is before and before[0] == 1 and "running_mean" not in p
    layer = CP.BatchNormalization(np.ones(1, np.float16), np.zeros(1, np.float16),
                                  running_mean=np.zeros(1, np.float16),
                                  running_var=np.ones(1, np.float16))
    with pytest.raises(ValueError, match="running_var overflows float16"):
        layer.forward(x)
    assert layer.running_var[0] == 1


def test_integer_axis_zero_of_any_int_type_is_plain_batch_norm(rng):
    x = rng.standard_normal((6, 3))
    plain, _ = CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    out, _ = CP.batchnorm_forward(x, np.ones(3), np.zeros(3),
                                  {"mode": "train", "axis": np.int64(0)})
    np.testing.assert_array_equal(out, plain)
    with pytest.raises(ValueError, match="do not define"):
        CP.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "axis": False})


def test_book_layer_keeps_a_row_shaped_running_statistic(rng):
    D = 4
    gamma, beta = _pair(rng, D)
    rm, rv = np.zeros((1, D)), np.ones((1, D))
    ours = CP.BatchNormalization(gamma, beta, running_mean=rm.copy(), running_var=rv.copy())
    book = BookBatchNormalization(gamma, beta, running_mean=rm.copy(), running_var=rv.copy())
    x = rng.standard_normal((5, D))
    ours.forward(x)
    book.forward(x)
    assert ours.running_mean.shape == book.running_mean.shape == (1, D)
    close(ours.running_var, book.running_var)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
def test_x_that_is_not_an_array_names_what_is_accepted():
    with pytest.raises(TypeError, match="x must be a NumPy array of floats or integers, got "
                                        "builtins.list"):
        CP.batchnorm_forward([[1.0, 2.0]], np.ones(2), np.zeros(2), {"mode": "train"})
    with pytest.raises(TypeError, match="plain ndarray, got numpy.matrix"):
        CP.BatchNormalization(np.ones(2), np.zeros(2)).forward(np.matrix([[1.0, 2.0]]))
