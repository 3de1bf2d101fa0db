"""Property-based tests (hypothesis) of cybn against the float64 oracle (_reference.py).

Random shapes, chosen around the blocking of cybn/_kernels_impl.pxi (the kernels see a
C-contiguous (N, C, L); 2-D and channels-last input arrive with L = 1) -- N = 0, N = 1
(evaluation), C = 0 and 1, L = 0 and 1; N from 1 to 40 with C and L up to 17 (and C of
31-33, 63-65), i.e. every remainder of the GROUP = 4 rows combined at a time and column
vectors (C * L) around the SIMD widths, on the short-run path (L < COLUMNS_MAX_L = 64);
C in the thousands (several channel tiles of TILE_CHANNELS // L channels, TILE_CHANNELS =
1024); N * C * L around one tile (TILE_ELEMS = 65536 elements: serial vs parallel); L
above one tile (65535-70001, C <= 2), the contiguous-runs path, with run remainders of 0,
1, 49 and 63 elements against its GROUP * LANES = 4 * 16 blocks. Not reached here: L from
18 to 65534 (the switch at COLUMNS_MAX_L, runs shorter than a tile), the runs path with
more than CHANNEL_GROUP = 16 channels, and the channel-slab path (test_kernel_builds.py
runs those, for equality of the two builds only) -- random dtypes of
the input and of the parameters, memory layouts (C, Fortran, channels-last, strided,
negative strides, transposed views, read-only), momentum (None, 0, 1, in between and
outside [0, 1]), eps, affine, bias, track_running_stats, n_threads, the channel axis and the
2d/3d modules. Checked: output, grad_input, grad_weight, grad_bias, save_mean/save_invstd,
running statistics, num_batches_tracked, that the input is never modified and that the
output follows the input's memory layout.

Error bounds (elementwise, float64 reference ``r`` computed from the same inputs):

    |cybn - r| <= 2 u(out) |r| + 1e-12 S + tiny(out)

where u(out) is the unit roundoff of the result's dtype (2^-11, 2^-24, 2^-53 for float16,
32, 64: cybn rounds once, from double), tiny the smallest subnormal, and S the magnitude
of the terms that cancel in the computation (for y = (x - mean) * w * invstd + b:
S = (max|x| + |mean|) |w| invstd + |b| with max|x| over the channel; analogous sums of
absolute values for the gradients). The 1e-12 S term is double-precision accumulation
error; it dominates only for float64 results.

Example counts (profile "ci", see _hardening.py; derandomized, so every CI run tests the
same examples): functional training 600, functional evaluation 400, modules 400 (each
1-3 forward/backward steps), thread counts 150 (each 5 thread counts) -- 1550 in total.
"""

import numpy as np
import pytest
from _hardening import (
    COMPUTE,
    F16,
    F32,
    F64,
    LAYOUTS,
    PRESENTATIONS,
    PROFILE,
    TOL64,
    TOLC,
    UNIT,
    as_layout,
    check_bound,
    check_eval_grads,
    check_running,
    check_train_grads,
    hsettings,
    present,
    same_layout,
    split_L,
    spread,
    unpresent,
    y_bound,
)
from _reference import (
    RefBatchNorm1d,
    batch_stats,
    forward_batch,
    forward_eval,
)
from hypothesis import event, given
from hypothesis import strategies as st

import cybn
import cybn.functional as F

pytestmark = pytest.mark.slow

DTYPES = [F16, F32, F64]
THREADS = [None, 1, 2, 3, -1]

# ---------------------------------------------------------------------------------------
# strategies


@st.composite
def ncl_shapes(draw):
    """A logical (N, C, L) shape from one of several families of interesting sizes."""
    kind = draw(st.sampled_from(["small", "vector", "threshold", "channels", "long", "edge"]))
    event(f"shape family: {kind}")
    if kind == "small":
        return draw(st.integers(0, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    if kind == "vector":  # remainders of the GROUP = 4 row blocks, columns around SIMD widths
        widths = list(range(1, 18)) + [31, 32, 33, 63, 64, 65]
        return (draw(st.integers(1, 40)), draw(st.sampled_from(widths)),
                draw(st.sampled_from(list(range(1, 10)) + [15, 16, 17])))
    if kind == "threshold":  # around one tile (65536 elements): serial vs parallel
        C = draw(st.sampled_from([1, 2, 3, 5, 8, 64, 1024]))
        L = draw(st.sampled_from([1, 3, 16]))
        N = max(1, 65536 // (C * L) + draw(st.integers(-2, 2)))
        return N, C, L
    if kind == "channels":  # C in the thousands: several channel tiles of <= 1024
        C = draw(st.sampled_from([1000, 1023, 1024, 1025, 2048, 2049, 3000, 4097]))
        return draw(st.sampled_from([1, 2, 3, 17])), C, draw(st.sampled_from([1, 2, 3]))
    if kind == "long":  # one channel run longer than a tile
        return (draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2])),
                draw(st.sampled_from([65535, 65536, 65537, 70001])))
    return draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.integers(0, 2))


DISTS = ["normal", "ties", "constant_channels", "heavy"]


def gen_data(rng, shape, dist, dtype, offset, scale):
    """Input data of a distribution; values representable in float16 when dtype is f16."""
    if dist == "ties":
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif dist == "heavy":
        x = np.clip(rng.standard_cauchy(shape), -1e3, 1e3) * scale
    else:
        x = offset + scale * rng.standard_normal(shape)
        if dist == "constant_channels" and shape[1] > 0:
            const = rng.random(shape[1]) < 0.5
            x[:, const] = offset + rng.standard_normal(int(const.sum()))[:, None]
    return x.astype(dtype)


@st.composite
def data_params(draw, limit):
    """(distribution, offset, scale). ``limit``: "f64" any; "f16in": values representable
    in float16; "f16state": also variances representable in float16 (a float16 module
    stores running_var in float16, where larger values overflow to inf, like torch)."""
    dist = draw(st.sampled_from(DISTS))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0] + ([1e3, -2.5e4] if limit == "f64" else [])))
    scales = {"f64": [1e-3, 0.1, 1.0, 30.0, 1e3], "f16in": [1e-3, 0.1, 1.0, 30.0],
              "f16state": [1e-3, 0.1, 1.0]}[limit]
    scale = draw(st.sampled_from(scales))
    if limit == "f16state" and dist == "heavy":
        dist = "normal"
    return dist, offset, scale


def to_ncl(a, nd, axis):
    """Presented array (channels on ``axis``) -> float64 (N, C, L)."""
    a = np.asarray(a, dtype=np.float64)
    if axis != 1:
        a = np.moveaxis(a, axis, 1)
    return a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:])))


# ---------------------------------------------------------------------------------------
# functional API


@st.composite
def functional_cases(draw, training):
    N, C, L = draw(ncl_shapes())
    if training and N * L == 1:  # one value per channel: an error (test_error_table)
        N = 2
    ndim = draw(st.sampled_from([2, 3, 4] if L == 1 else [3, 4]))
    dtype = draw(st.sampled_from(DTYPES))
    pdtypes = [draw(st.sampled_from(DTYPES)) for _ in range(4)]  # w, b, rm, rv
    has_rs = draw(st.booleans()) if training else True
    # a float16 running_var overflows to inf above 65504 (as in torch): keep it finite
    limit = ("f16state" if has_rs and F16 in pdtypes[2:] else
             "f16in" if dtype == F16 else "f64")
    return {
        "shape": (N, C, L), "ndim": ndim, "axis": draw(st.sampled_from([1, -1])),
        "dtype": dtype, "pdtypes": pdtypes, "data": draw(data_params(limit)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "layout": draw(st.sampled_from(LAYOUTS)), "readonly": draw(st.booleans()),
        "has_w": draw(st.booleans()), "has_b": draw(st.booleans()), "has_rs": has_rs,
        "momentum": draw(st.sampled_from([0.0, 1.0, 0.1, 0.5, 0.999, 1.5, -0.25])),
        # (float16 output: 1e-12 with a constant channel would overflow grad_input to inf)
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5] + ([1e-12] if dtype != F16 else [])
                                 + ([] if training else [0.0]))),
        "n_threads": draw(st.sampled_from(THREADS)),
    }


def build_functional(case):
    """Inputs of one functional call: (x as presented, x as float64 (N, C, L), the
    per-channel arrays, dy as presented)."""
    rng = np.random.default_rng(case["seed"])
    N, C, L = case["shape"]
    nd = case["ndim"]
    dist, offset, scale = case["data"]
    x_ncl = gen_data(rng, (N, C, L), dist, case["dtype"], offset, scale)
    x = x_ncl.reshape((N, C) + split_L(L, nd))
    if case["axis"] == -1:
        x = np.moveaxis(x, 1, -1)
    x = as_layout(x, case["layout"], case["readonly"])
    wdt, bdt, rmdt, rvdt = case["pdtypes"]
    p = {}
    p["weight"] = rng.uniform(-2, 2, C).astype(wdt) if case["has_w"] else None
    p["bias"] = rng.uniform(-3, 3, C).astype(bdt) if case["has_b"] else None
    if case["has_rs"]:
        p["running_mean"] = rng.uniform(-1, 1, C).astype(rmdt)
        p["running_var"] = rng.uniform(0.5, 2, C).astype(rvdt)
    else:
        p["running_mean"] = p["running_var"] = None
    dy = rng.standard_normal(x.shape).astype(case["dtype"])
    return x, x_ncl.astype(np.float64), p, dy


def param_dtype(p):
    """cybn computes every per-channel array in the compute dtype of the first one given
    of running_mean, running_var, weight, bias (functional._per_channel): a float64 weight
    next to float32 running statistics is used rounded to float32."""
    for k in ("running_mean", "running_var", "weight", "bias"):
        if p[k] is not None:
            return COMPUTE[p[k].dtype]
    return None


def as_used(a, pdt, default, C):
    """A per-channel array as the kernels see it, in float64."""
    if a is None:
        return np.full(C, default, dtype=np.float64)
    return a.astype(pdt).astype(np.float64)


def coarser(*dtypes):
    return max((np.dtype(d) for d in dtypes), key=lambda d: UNIT[d])


@hsettings(600)
@given(functional_cases(training=True))
def test_functional_training_matches_oracle(case):
    x, x64, p, dy = build_functional(case)
    axis, nd, dtype, eps = case["axis"], x.ndim, case["dtype"], case["eps"]
    comp = COMPUTE[dtype]
    C = case["shape"][1]
    pdt = param_dtype(p)
    w, b, rm, rv = p["weight"], p["bias"], p["running_mean"], p["running_var"]
    w64, b64 = as_used(w, pdt, 1.0, C), as_used(b, pdt, 0.0, C)
    rm_old = None if rm is None else as_used(rm, pdt, 0, C)
    rv_old = None if rv is None else as_used(rv, pdt, 0, C)
    rm_before = None if rm is None else rm.copy()
    rv_before = None if rv is None else rv.copy()
    before = x.copy()
    y, save_mean, save_invstd = F.batch_norm_forward(
        x, w, b, rm, rv, True, case["momentum"], eps, axis=axis, n_threads=case["n_threads"])
    assert np.array_equal(x, before, equal_nan=True), "input modified"
    assert y.shape == x.shape and y.dtype == x.dtype
    assert same_layout(y, x), (y.strides, x.strides)
    assert save_mean.dtype == save_invstd.dtype == F64
    assert save_mean.shape == save_invstd.shape == (C,)
    n = x64.shape[0] * x64.shape[2]
    if n == 0:
        assert y.size == 0
        if rm is not None:  # docs/semantics.md §10: an empty batch changes no state
            assert np.array_equal(rm, rm_before) and np.array_equal(rv, rv_before)
    else:
        y_ref, mean, invstd, var_u = forward_batch(x64, w64, b64, eps)
        check_bound(to_ncl(y, nd, axis), y_ref,
                    y_bound(y_ref, x64, mean, w64 * invstd, b64, dtype, comp), "y")
        xmax = np.abs(x64).max(axis=(0, 2), initial=0)
        dev = spread(x64, mean).reshape(-1)
        check_bound(save_mean, mean, TOLC[comp] * dev + TOL64 * xmax + 1e-300, "save_mean")
        check_bound(save_invstd, invstd, (10 * TOLC[comp] + 1e-11) * invstd, "save_invstd")
        if rm is not None:
            check_running(rm, rv, rm_old, rv_old, mean, var_u, case["momentum"],
                          coarser(pdt, rm.dtype, rv.dtype), "functional", x64, comp)

    gi, gw, gb = F.batch_norm_backward(dy, x, w, save_mean, save_invstd, axis=axis,
                                       n_threads=case["n_threads"])
    assert gi.shape == x.shape and gi.dtype == x.dtype
    # documented: weight's dtype, else the input's compute dtype
    gdt = w.dtype if w is not None else COMPUTE[dtype]
    assert gw.dtype == gb.dtype == gdt
    if n == 0:
        assert gi.size == 0
        assert not gw.any() and not gb.any()
        return
    # backward uses the weight in its own compute dtype, not pdt
    wb = None if w is None else w.astype(np.float64)
    check_train_grads(to_ncl(gi, nd, axis), gw, gb, x64, to_ncl(dy, nd, axis), wb, eps,
                      dtype, gdt, "train", comp)


@hsettings(400)
@given(functional_cases(training=False))
def test_functional_evaluation_matches_oracle(case):
    x, x64, p, dy = build_functional(case)
    axis, nd, dtype, eps = case["axis"], x.ndim, case["dtype"], case["eps"]
    C = case["shape"][1]
    pdt = param_dtype(p)
    w, b, rm, rv = p["weight"], p["bias"], p["running_mean"], p["running_var"]
    w64, b64 = as_used(w, pdt, 1.0, C), as_used(b, pdt, 0.0, C)
    rm64, rv64 = as_used(rm, pdt, 0, C), as_used(rv, pdt, 0, C)
    before, rm_before, rv_before = x.copy(), rm.copy(), rv.copy()
    y, save_mean, save_invstd = F.batch_norm_forward(
        x, w, b, rm, rv, False, case["momentum"], eps, axis=axis, n_threads=case["n_threads"])
    assert np.array_equal(x, before, equal_nan=True), "input modified"
    assert np.array_equal(rm, rm_before) and np.array_equal(rv, rv_before)
    assert save_mean.shape == save_invstd.shape == (0,)  # like torch in evaluation
    assert y.shape == x.shape and y.dtype == x.dtype and same_layout(y, x)
    y_ref = forward_eval(x64, rm64, rv64, w64, b64, eps)
    invstd = 1.0 / np.sqrt(rv64 + eps)
    check_bound(to_ncl(y, nd, axis), y_ref,
                y_bound(y_ref, x64, rm64, w64 * invstd, b64, dtype, COMPUTE[dtype]), "eval y")
    gi, gw, gb = F.batch_norm_backward(dy, x, w, None, None, training=False, running_mean=rm,
                                       running_var=rv, eps=eps, axis=axis,
                                       n_threads=case["n_threads"])
    assert gi.shape == x.shape and gi.dtype == x.dtype
    gwdt = w.dtype if w is not None else COMPUTE[dtype]
    assert gw.dtype == gb.dtype == gwdt
    # backward takes the running statistics in float64 and the weight in its own dtype
    wb = None if w is None else w.astype(np.float64)
    check_eval_grads(to_ncl(gi, nd, axis), gw, gb, x64, to_ncl(dy, nd, axis),
                     rm.astype(np.float64), rv.astype(np.float64), wb, eps, dtype, gwdt,
                     "eval", COMPUTE[dtype])


# ---------------------------------------------------------------------------------------
# modules (BatchNorm1d/2d/3d, channel axis 1 or -1) against the stateful reference model


@st.composite
def module_cases(draw):
    N, C, L = draw(ncl_shapes())
    names = [k for k, (_c, nd, _l) in PRESENTATIONS.items() if nd != 2 or L == 1]
    dtype = draw(st.sampled_from(DTYPES))   # module dtype
    xdtype = draw(st.sampled_from([dtype, dtype, F16, F32, F64]))  # input dtype
    steps = draw(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 2**32 - 1)),
                          min_size=1, max_size=3))
    return {
        "shape": (N, C, L), "pres": draw(st.sampled_from(names)), "dtype": dtype, "xdtype": xdtype,
        "data": draw(data_params("f16state" if dtype == F16 else
                              "f16in" if xdtype == F16 else "f64")),
        "affine": draw(st.booleans()), "bias": draw(st.booleans()), "track": draw(st.booleans()),
        "momentum": draw(st.sampled_from([None, 0.0, 1.0, 0.1, 0.3])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.25])),
        "n_threads": draw(st.sampled_from(THREADS)),
        "layout": draw(st.sampled_from(LAYOUTS)), "readonly": draw(st.booleans()),
        "steps": steps, "seed": draw(st.integers(0, 2**32 - 1)),
    }


@hsettings(400)
@given(module_cases())
def test_module_matches_reference(case):
    N, C, L = case["shape"]
    cls_name = PRESENTATIONS[case["pres"]][0]
    dtype, xdtype = case["dtype"], case["xdtype"]
    rng = np.random.default_rng(case["seed"])
    axis = -1 if PRESENTATIONS[case["pres"]][2] else 1
    m = getattr(cybn, cls_name)(C, eps=case["eps"], momentum=case["momentum"],
                                affine=case["affine"], track_running_stats=case["track"],
                                bias=case["bias"], dtype=dtype, axis=axis,
                                n_threads=case["n_threads"])
    ref = RefBatchNorm1d(C, eps=case["eps"], momentum=case["momentum"], affine=case["affine"],
                         track_running_stats=case["track"], bias=case["bias"], dtype=dtype)
    if m.weight is not None:
        m.weight[...] = rng.uniform(-2, 2, C)
        ref.set_weight(m.weight)
    if m.bias is not None:
        m.bias[...] = rng.uniform(-2, 2, C)
        ref.set_bias(m.bias)
    comp = COMPUTE[np.dtype(xdtype)]
    for training, do_backward, seed in case["steps"]:
        use_batch = training or not case["track"]
        if use_batch and N * L == 1:
            continue  # one value per channel in training: an error (test_error_table)
        m.train(training)
        ref.training = training
        r = np.random.default_rng(seed)
        x_ncl = gen_data(r, (N, C, L), case["data"][0], xdtype, *case["data"][1:])
        xp, _ = present(x_ncl, case["pres"])
        xp = as_layout(xp, case["layout"], case["readonly"])
        before = xp.copy()
        rm_old = None if m.running_mean is None else m.running_mean.astype(np.float64)
        rv_old = None if m.running_var is None else m.running_var.astype(np.float64)
        nbt_old = None if m.num_batches_tracked is None else int(m.num_batches_tracked)
        y = m(xp)
        assert np.array_equal(xp, before, equal_nan=True), "input modified"
        assert y.shape == xp.shape and y.dtype == xp.dtype and same_layout(y, xp)
        x64 = x_ncl.astype(np.float64)
        y_ref = ref.forward(x64)
        w64 = np.ones(C) if ref.weight is None else ref.weight
        b64 = np.zeros(C) if ref.bias is None else ref.bias
        n = N * L
        if n > 0 and C > 0:
            if use_batch:
                mean, var_b, var_u = batch_stats(x64)
                a = w64 / np.sqrt(var_b + case["eps"])
                center = mean
            else:
                a = w64 / np.sqrt(rv_old + case["eps"])
                center = rm_old
            cdt = COMPUTE[np.dtype(xdtype)] if xdtype != F16 else F16
            check_bound(unpresent(y, case["pres"]), y_ref,
                        y_bound(y_ref, x64, center, a, b64, cdt, comp), f"{cls_name} y")
        if m.running_mean is not None:
            if training and n > 0:
                assert int(m.num_batches_tracked) == nbt_old + 1 == ref.num_batches_tracked
                f = 1.0 / (nbt_old + 1) if case["momentum"] is None else case["momentum"]
                if C > 0:
                    check_running(m.running_mean, m.running_var, rm_old, rv_old, mean, var_u,
                                  f, dtype, cls_name, x64, comp)
            else:  # evaluation or an empty batch: no change at all
                assert int(m.num_batches_tracked) == nbt_old
                assert np.array_equal(m.running_mean.astype(np.float64), rm_old)
                assert np.array_equal(m.running_var.astype(np.float64), rv_old)
            # resynchronise the model to the module (no drift between steps)
            ref.running_mean = m.running_mean.astype(np.float64)
            ref.running_var = m.running_var.astype(np.float64)
            ref.num_batches_tracked = int(m.num_batches_tracked)
        if not do_backward:
            continue
        dy_ncl = r.standard_normal((N, C, L)).astype(xdtype)
        dyp, _ = present(dy_ncl, case["pres"])
        gi = m.backward(dyp)
        assert gi.shape == xp.shape and gi.dtype == xp.dtype
        dy64 = dy_ncl.astype(np.float64)
        gi_dt = COMPUTE[np.dtype(xdtype)] if xdtype != F16 else F16
        for name, g in (("grad_weight", m.grad_weight), ("grad_bias", m.grad_bias)):
            has = m.weight is not None if name == "grad_weight" else m.bias is not None
            assert (g is None) == (not has), name
            if g is not None:
                assert g.dtype == dtype and g.shape == (C,), name
        gw = m.grad_weight if m.grad_weight is not None else np.zeros(C)
        gb = m.grad_bias if m.grad_bias is not None else np.zeros(C)
        if n == 0 or C == 0:
            assert gi.size == 0 or C == 0
            assert not np.any(gw) and not np.any(gb)
            continue
        if m.weight is None or m.bias is None:  # compare only what the module exposes
            _dx, gw_r, gb_r = ref.backward(dy64)
            gw = gw if m.weight is not None else gw_r
            gb = gb if m.bias is not None else gb_r
        if use_batch:
            check_train_grads(unpresent(gi, case["pres"]), gw, gb, x64, dy64, w64,
                              case["eps"], gi_dt, dtype, cls_name, comp)
        else:
            check_eval_grads(unpresent(gi, case["pres"]), gw, gb, x64, dy64, rm_old, rv_old,
                             w64, case["eps"], gi_dt, dtype, cls_name, comp)


# ---------------------------------------------------------------------------------------
# results do not depend on the thread count


@hsettings(150)
@given(functional_cases(training=True), st.sampled_from(LAYOUTS))
def test_bitwise_identical_for_every_thread_count(case, layout):
    case = dict(case, layout=layout, has_rs=True)
    results = []
    for nt in (1, 2, 3, -1, None):
        x, _x64, p, dy = build_functional(case)
        out = F.batch_norm_forward(x, p["weight"], p["bias"], p["running_mean"],
                                   p["running_var"], True, case["momentum"], case["eps"],
                                   axis=case["axis"], n_threads=nt)
        grads = F.batch_norm_backward(dy, x, p["weight"], out[1], out[2], axis=case["axis"],
                                      n_threads=nt)
        ev = F.batch_norm_forward(x, p["weight"], p["bias"], p["running_mean"],
                                  p["running_var"], False, 0.1, case["eps"],
                                  axis=case["axis"], n_threads=nt)[0]
        results.append([*out, *grads, ev, p["running_mean"], p["running_var"]])
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == np.ascontiguousarray(b).tobytes() or np.array_equal(
                a, b, equal_nan=True)


def test_grad_dtype_follows_float16_weight():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = np.ones(3, np.float16)
    _y, sm, si = F.batch_norm_forward(x, w, None, None, None, True, 0.1, 1e-5)
    _gi, gw, gb = F.batch_norm_backward(x, x, w, sm, si)
    assert gw.dtype == gb.dtype == np.float16


def test_example_counts_are_stated():
    """Keep the module docstring's example counts honest (they are the CI budget)."""
    import re

    if PROFILE != "ci":
        pytest.skip("the counts are stated for the ci profile")
    tests = [v for k, v in globals().items() if k.startswith("test_") and hasattr(v, "hypothesis")]
    counts = sorted(t._hypothesis_internal_use_settings.max_examples for t in tests)
    assert counts == [150, 400, 400, 600]
    assert int(re.search(r"(\d+) in total", __doc__).group(1)) == sum(counts)
