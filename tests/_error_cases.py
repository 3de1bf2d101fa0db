"""The bad-input table: every row is one call, the exception type cybn raises and its exact
message (or a regex where the text is NumPy's and varies between NumPy versions).

Used by tests/test_error_table.py (each row is a test) and tools/gen_errors.py (which writes
docs/errors.md from these rows; the test checks the committed file is what the generator
gives). To change a row: edit it here, run the tests, rerun tools/gen_errors.py.

Each row's ``code`` runs in a fresh namespace (see :func:`namespace`):

* ``m``: a ``cybn.BatchNorm1d(3)`` (float32) after one training forward and backward, so
  it has running statistics, grads and a backward cache worth protecting;
* ``x`` (4, 3), ``x3`` (4, 3, 2), ``x5`` (4, 5), ``g`` (4, 3): float32 arrays;
* ``w``, ``b``, ``rm``, ``rv``: float32 per-channel arrays of 3; ``sm``, ``si``: the
  save_mean/save_invstd of ``F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)``;
* ``np``, ``cybn``, ``F`` (cybn.functional), ``CP`` (cybn.compat), ``huge(shape)`` (a
  zero-strided float32 array of any size), ``torch`` when installed.

For a row that raises, the test also checks that nothing changed: ``m``'s parameters,
running statistics, num_batches_tracked, grads, training flag, its backward cache (a
backward on a copy gives the same bits), and ``w``, ``b``, ``rm``, ``rv``, ``x``.

``bug`` marks behaviour reported as a defect: the row documents what cybn does today (so
the table cannot drift) and the test reports it as an expected failure (XFAIL).
"""

import numpy as np

import cybn
import cybn.compat as CP
import cybn.functional as F

ALLOC = r"Unable to allocate .* for an array with shape \(281474976710656, 3\)"


class Row:
    __slots__ = (
        "bug",
        "check",
        "code",
        "exc",
        "group",
        "id",
        "match",
        "message",
        "needs",
        "note",
        "setup",
        "subprocess",
        "what",
    )

    def __init__(self, id, group, what, code, exc=None, message=None, *, match=None,
                 setup="", check="", bug="", note="", needs="", subprocess=False):
        self.id = id
        self.group = group
        self.what = what
        self.setup = setup
        self.code = code
        self.exc = exc          # exception class, or None: the call is accepted
        self.message = message  # exact str(exception)
        self.match = match      # regex for str(exception) when the text is NumPy's
        self.check = check      # for accepted calls: statements that must hold after
        self.bug = bug
        self.note = note
        self.needs = needs      # "torch" / "little-endian": skipped without it
        self.subprocess = subprocess  # run in a child interpreter (it may crash)


def huge(shape):
    """A float32 array of any shape without memory: every stride 0."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape,
                                           strides=(0,) * len(shape))


def namespace():
    rng = np.random.default_rng(0)
    ns = {"np": np, "cybn": cybn, "F": F, "CP": CP, "huge": huge}
    ns["x"] = rng.standard_normal((4, 3)).astype(np.float32)
    ns["x3"] = rng.standard_normal((4, 3, 2)).astype(np.float32)
    ns["x5"] = rng.standard_normal((4, 5)).astype(np.float32)
    ns["g"] = rng.standard_normal((4, 3)).astype(np.float32)
    ns["w"] = rng.uniform(0.5, 2, 3).astype(np.float32)
    ns["b"] = rng.standard_normal(3).astype(np.float32)
    ns["rm"] = rng.standard_normal(3).astype(np.float32)
    ns["rv"] = rng.uniform(0.5, 2, 3).astype(np.float32)
    m = cybn.BatchNorm1d(3)
    m.weight[...] = ns["w"]
    m.bias[...] = ns["b"]
    m(rng.standard_normal((6, 3)).astype(np.float32) + 1)
    m.backward(rng.standard_normal((6, 3)).astype(np.float32))
    ns["m"] = m
    _y, ns["sm"], ns["si"] = F.batch_norm_forward(ns["x"], ns["w"], ns["b"], None, None, True,
                                                  0.1, 1e-5)
    try:
        import torch
    except ImportError:
        torch = None
    ns["torch"] = torch
    return ns


C, MF, BW, SD, FF, FB, CO, FAM = (
    "Constructing a module", "Module forward", "Module backward", "load_state_dict",
    "functional.batch_norm_forward / batch_norm", "functional.batch_norm_backward",
    "compat (cs231n)",
    "Renormalization, ghost batches, population statistics, lazy modules")
AD = "fold, save, SyncBatchNorm.from_module"

T, V, R = TypeError, ValueError, RuntimeError
ARR = "input must be a NumPy array of float16, float32 or float64, got "
DT = "input must have dtype float16, float32 or float64, got "
WRONG_C = ("running_mean should contain 5 elements not 3: input of shape {} has 5 channels "
           "along axis 1, but this module has num_features=3")
SDERR = "Error(s) in loading state_dict for BatchNorm1d:\n\t"

ROWS = [
    # ---- constructing --------------------------------------------------------------------
    Row("ctor-nf-negative", C, "num_features < 0", "cybn.BatchNorm1d(-1)", V,
        "num_features must be >= 0, got -1"),
    Row("ctor-nf-float", C, "num_features not an int", "cybn.BatchNorm1d(2.0)", T,
        "num_features must be an int, got float"),
    Row("ctor-nf-str", C, "num_features a string", "cybn.BatchNorm1d('3')", T,
        "num_features must be an int, got str"),
    Row("ctor-nf-bool", C, "num_features a bool", "cybn.BatchNorm1d(True)", T,
        "num_features must be an int, got bool"),
    Row("ctor-nf-huge", C, "num_features beyond memory (2**62)", "cybn.BatchNorm1d(2**62)", V,
        match=r"array is too big", note="NumPy's message"),
    Row("ctor-eps-str", C, "eps not a number", "cybn.BatchNorm1d(3, eps='1e-5')", T,
        "eps must be a real number, got str"),
    Row("ctor-eps-none", C, "eps None", "cybn.BatchNorm1d(3, eps=None)", T,
        "eps must be a real number, got NoneType"),
    Row("ctor-eps-negative", C, "eps <= 0", "cybn.BatchNorm1d(3, eps=-1.0)",
        check="", note="accepted like torch; a training forward raises (see below)"),
    Row("ctor-mom-str", C, "momentum not a number", "cybn.BatchNorm1d(3, momentum='0.1')", T,
        "momentum must be a real number, got str"),
    Row("ctor-mom-bool", C, "momentum a bool", "cybn.BatchNorm1d(3, momentum=True)", T,
        "momentum must be a real number, got bool"),
    Row("ctor-mom-nan", C, "momentum NaN", "cybn.BatchNorm1d(3, momentum=float('nan'))", V,
        "momentum must be finite, got nan"),
    Row("ctor-mom-inf", C, "momentum Inf", "cybn.BatchNorm1d(3, momentum=float('inf'))", V,
        "momentum must be finite, got inf"),
    Row("ctor-mom-above-1", C, "momentum > 1", "cybn.BatchNorm1d(3, momentum=1.5)",
        note="accepted like torch: the update extrapolates"),
    Row("ctor-mom-below-0", C, "momentum < 0", "cybn.BatchNorm1d(3, momentum=-0.1)",
        note="accepted like torch: the update extrapolates"),
    Row("ctor-dtype-int", C, "dtype not a float", "cybn.BatchNorm1d(3, dtype=np.int32)", T,
        "dtype must be float16, float32 or float64, got int32"),
    Row("ctor-dtype-name", C, "dtype not a dtype", "cybn.BatchNorm1d(3, dtype='foo')", T,
        "dtype must be float16, float32 or float64, got 'foo'"),
    Row("ctor-threads-0", C, "n_threads = 0", "cybn.BatchNorm1d(3, n_threads=0)", V,
        "n_threads must be a positive or negative int, got 0"),
    Row("ctor-threads-float", C, "n_threads not an int", "cybn.BatchNorm1d(3, n_threads=1.5)",
        T, "n_threads must be an int or None, got float"),
    Row("ctor-threads-bool", C, "n_threads a bool", "cybn.BatchNorm1d(3, n_threads=True)", T,
        "n_threads must be an int or None, got bool"),
    Row("ctor-axis-str", C, "axis not an int", "cybn.BatchNorm1d(3, axis='1')", T,
        "axis must be an int, got str"),
    Row("ctor-axis-range", C, "axis out of range", "cybn.BatchNorm1d(3, axis=5)",
        note="accepted: checked against the input's ndim in forward (see below)"),

    # ---- module forward ------------------------------------------------------------------
    Row("fwd-ndim-1", MF, "wrong ndim (1-D)", "m(np.zeros(3, np.float32))", V,
        "expected 2D or 3D input (got 1D input)"),
    Row("fwd-ndim-0", MF, "wrong ndim (0-D array)", "m(np.array(1.0, np.float32))", V,
        "expected 2D or 3D input (got 0D input)"),
    Row("fwd-ndim-4", MF, "wrong ndim (4-D)", "m(np.zeros((2, 3, 2, 2), np.float32))", V,
        "expected 2D or 3D input (got 4D input)"),
    Row("fwd-2d-ndim", MF, "BatchNorm2d with 3-D input",
        "cybn.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32))", V,
        "expected 4D input (got 3D input)"),
    Row("fwd-3d-ndim", MF, "BatchNorm3d with 4-D input",
        "cybn.BatchNorm3d(3)(np.zeros((2, 3, 4, 4), np.float32))", V,
        "expected 5D input (got 4D input)"),
    Row("fwd-channels", MF, "wrong number of channels", "m(x5)", V, WRONG_C.format("(4, 5)")),
    Row("fwd-channels-3d", MF, "wrong number of channels (3-D)",
        "m(np.zeros((4, 5, 2), np.float32))", V, WRONG_C.format("(4, 5, 2)")),
    Row("fwd-channels-affine", MF, "wrong channels, module without running stats",
        "cybn.BatchNorm1d(3, track_running_stats=False)(x5)", V,
        "weight should contain 5 elements not 3: input of shape (4, 5) has 5 channels along "
        "axis 1, but this module has num_features=3"),
    Row("fwd-channels-stateless", MF, "wrong channels, no per-channel state at all",
        "cybn.BatchNorm1d(3, affine=False, track_running_stats=False)(x5)",
        note="accepted like torch: nothing depends on num_features"),
    Row("fwd-dtype-int", MF, "wrong dtype (int64)", "m(x.astype(np.int64))", T, DT + "int64"),
    Row("fwd-dtype-bool", MF, "wrong dtype (bool)", "m(x > 0)", T, DT + "bool"),
    Row("fwd-dtype-complex", MF, "wrong dtype (complex)", "m(x.astype(complex))", T,
        DT + "complex128"),
    Row("fwd-dtype-object", MF, "wrong dtype (object)", "m(x.astype(object))", T,
        DT + "object"),
    Row("fwd-dtype-str", MF, "wrong dtype (strings)", "m(np.full((4, 3), 'a'))", T, DT + "<U1"),
    Row("fwd-dtype-struct", MF, "wrong dtype (structured)",
        "m(np.zeros((4, 3), dtype=[('a', 'f4')]))", T, DT + "[('a', '<f4')]"),
    Row("fwd-dtype-bigendian", MF, "float32 in big-endian byte order",
        "out = m(x.astype('>f4'))", needs="little-endian",
        check="assert out.dtype == np.dtype('>f4') and "
              "np.array_equal(out, F.batch_norm(x, None, None, w, b, training=True))",
        note="accepted since 9e9c457: converted, the output keeps the byte order"),
    Row("fwd-list", MF, "non-array (list)", "m(x.tolist())", T, ARR + "builtins.list"),
    Row("fwd-tuple", MF, "non-array (tuple)", "m(tuple(map(tuple, x)))", T,
        ARR + "builtins.tuple"),
    Row("fwd-none", MF, "non-array (None)", "m(None)", T, ARR + "builtins.NoneType"),
    Row("fwd-float", MF, "non-array (Python float)", "m(1.0)", T, ARR + "builtins.float"),
    Row("fwd-npscalar", MF, "non-array (NumPy scalar)", "m(np.float32(1.0))", T,
        ARR + "numpy.float32"),
    Row("fwd-memoryview", MF, "non-array (buffer)", "m(memoryview(x))", T,
        ARR + "builtins.memoryview"),
    Row("fwd-torch", MF, "non-array (torch tensor)", "m(torch.zeros(4, 3))", T,
        ARR + "torch.Tensor", needs="torch"),
    Row("fwd-matrix", MF, "np.matrix (an ndarray subclass)", "m(np.asmatrix(x))", T,
        "input must be a plain ndarray, got numpy.matrix: pass np.asarray(x) (or "
        "fill/compress a masked array first)"),
    Row("fwd-masked", MF, "a masked array (the mask would be ignored)",
        "m(np.ma.masked_array(x, mask=x > 0.5))", T,
        "input must be a plain ndarray, got numpy.ma.MaskedArray: pass np.asarray(x) (or "
        "fill/compress a masked array first)"),
    Row("fwd-one-value", MF, "N * L = 1 in training (2-D)", "m(x[:1])", V,
        "Expected more than 1 value per channel when training, got input size (1, 3)"),
    Row("fwd-one-value-3d", MF, "N * L = 1 in training (3-D)", "m(x3[:1, :, :1])", V,
        "Expected more than 1 value per channel when training, got input size (1, 3, 1)"),
    Row("fwd-one-value-2d", MF, "N * H * W = 1 in training (BatchNorm2d)",
        "cybn.BatchNorm2d(3)(np.zeros((1, 3, 1, 1), np.float32))", V,
        "Expected more than 1 value per channel when training, got input size (1, 3, 1, 1)"),
    Row("fwd-eps-0", MF, "eps = 0 in training", "m(x)", V,
        "batch_norm eps must be positive during training, but got 0.0", setup="m.eps = 0.0"),
    Row("fwd-eps-negative", MF, "eps < 0 in training", "m(x)", V,
        "batch_norm eps must be positive during training, but got -1.0", setup="m.eps = -1.0"),
    Row("fwd-eps-nan", MF, "eps NaN in training", "m(x)", V,
        "batch_norm eps must be positive during training, but got nan",
        setup="m.eps = float('nan')"),
    Row("fwd-eps-negative-eval", MF, "eps < 0 in evaluation", "m(x)", V,
        "batch_norm eps must be non-negative, but got -1.0", setup="m.eps = -1.0; m.eval()"),
    Row("fwd-mom-nan", MF, "momentum set to NaN after construction", "m(x)", V,
        "momentum must be finite, got nan", setup="m.momentum = float('nan')"),
    Row("fwd-mom-str", MF, "momentum set to a string after construction", "m(x)", T,
        "momentum must be a real number, got str", setup="m.momentum = '0.1'"),
    Row("fwd-axis", MF, "channel axis out of range for the input",
        "cybn.BatchNorm1d(3, axis=5)(x)", V, "axis 5 is out of bounds for a 2D input"),
    Row("fwd-nan-weight", MF, "NaN in a parameter", "out = m(x)", setup="m.weight[0] = np.nan",
        check="assert np.isnan(out[:, 0]).all() and np.isfinite(out[:, 1:]).all()",
        note="accepted like torch: that channel's output is NaN"),
    Row("fwd-nan-running-var", MF, "NaN in a running statistic (evaluation)", "out = m(x)",
        setup="m.eval(); m.running_var[1] = np.nan",
        check="assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, [0, 2]]).all()",
        note="accepted like torch: that channel's output is NaN"),
    Row("fwd-nan-check-finite", MF, "NaN/Inf in the batch with check_finite=True",
        "mc(xb)", V, "input holds NaN or Inf in channel(s) [0, 2] (axis 1) and check_finite "
        "is on: nothing was updated",
        setup="mc = cybn.BatchNorm1d(3, check_finite=True); xb = x.copy(); "
              "xb[1, 0] = np.nan; xb[2, 2] = np.inf"),
    Row("fwd-nan-default", MF, "NaN in the batch (default)", "out = m(xb)",
        setup="xb = x.copy(); xb[1, 0] = np.nan",
        check="assert np.isnan(out[:, 0]).all() and np.isnan(m.running_mean[0])",
        note="propagates exactly like torch (docs/accuracy.md, Non-finite values)"),
    Row("fwd-huge", MF, "size overflowing memory (2**48 rows, zero strides)",
        "m(huge((2**48, 3)))", MemoryError, match=ALLOC,
        note="NumPy's message: the copy to a contiguous block cannot be allocated"),
    Row("fwd-huge-eval", MF, "size overflowing memory, evaluation", "m(huge((2**48, 3)))",
        MemoryError, match=ALLOC, setup="m.eval()", note="NumPy's message"),
    Row("fwd-threads-overflow", MF, "n_threads beyond a C int",
        "cybn.BatchNorm1d(3, n_threads=2**40)", V,
        "n_threads must be between -4096 and 4096, got 1099511627776"),
    Row("fwd-threads-100000", MF, "n_threads far above any CPU count",
        "cybn.BatchNorm1d(3, n_threads=100000)", V,
        "n_threads must be between -4096 and 4096, got 100000"),
    Row("fwd-threads-4096", MF, "n_threads far above the CPU count on a multi-tile input",
        "cybn.BatchNorm1d(3, n_threads=4096)(np.ones((200000, 3), np.float32))",
        subprocess=True,
        note="accepted: the thread team is capped at the number of tiles (an uncapped "
             "request crashed with SIGSEGV before 9571ec9, so the row runs in a child "
             "interpreter)"),
    Row("fwd-train-mode", MF, "train() with a non-bool", "m.train('yes')", T,
        "training mode is expected to be boolean, got str"),

    # ---- module backward -----------------------------------------------------------------
    Row("fwd-out-dtype", MF, "out of the wrong dtype", "m(x, out=np.empty((4, 3)))", T,
        "out must have dtype float32, got float64"),
    Row("fwd-out-alias", MF, "out is the input", "m(x, out=x)", V,
        "out must not overlap the input arrays"),
    Row("bwd-before-forward", BW, "backward before any forward",
        "cybn.BatchNorm1d(3).backward(g)", R,
        "backward() called before forward(): there is no batch to differentiate"),
    Row("bwd-out-shape", BW, "out of the wrong shape", "m.backward(np.zeros((6, 3), "
        "np.float32), out=np.empty((3, 6), np.float32))", V,
        "out must have shape (6, 3), got (3, 6)"),
    Row("bwd-shape", BW, "grad_output of the wrong shape", "m.backward(np.zeros((5, 3), "
        "np.float32))", V,
        "grad_output must have the shape of the last forward's input (6, 3), got (5, 3)"),
    Row("bwd-dtype", BW, "grad_output of the wrong dtype", "m.backward(np.zeros((6, 3), int))",
        T, "grad_output must have dtype float16, float32 or float64, got int64"),
    Row("bwd-list", BW, "grad_output not an array", "m.backward(np.zeros((6, 3)).tolist())", T,
        "grad_output must be a NumPy array of float16, float32 or float64, got builtins.list"),
    Row("bwd-none", BW, "grad_output None", "m.backward(None)", T,
        "grad_output must be a NumPy array of float16, float32 or float64, got "
        "builtins.NoneType"),

    # ---- load_state_dict -----------------------------------------------------------------
    Row("sd-missing", SD, "a key missing", "m.load_state_dict(sd)", R,
        SDERR + 'Missing key(s) in state_dict: "running_mean". ',
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; del sd['running_mean']"),
    Row("sd-unexpected", SD, "an unexpected key", "m.load_state_dict(sd)", R,
        SDERR + 'Unexpected key(s) in state_dict: "extra". ',
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; sd['extra'] = 1"),
    Row("sd-shape", SD, "a value of the wrong shape", "m.load_state_dict(sd)", R,
        SDERR + "size mismatch for weight: copying a param with shape (4,) from checkpoint, "
        "the shape in current model is (3,).",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; sd['weight'] = np.ones(4)"),
    Row("sd-nbt-shape", SD, "num_batches_tracked of the wrong shape", "m.load_state_dict(sd)", R,
        SDERR + "size mismatch for num_batches_tracked: copying a param with shape (1,) from "
        "checkpoint, the shape in current model is ().",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['num_batches_tracked'] = np.array([3])"),
    Row("sd-text", SD, "a value of the wrong dtype (text)", "m.load_state_dict(sd)", R,
        match=r'^Error\(s\) in loading state_dict for BatchNorm1d:\n\tWhile copying the '
              r'parameter named "weight": could not convert string to float: ',
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['weight'] = np.array(['a', 'b', 'c'])", note="ends with NumPy's message"),
    Row("sd-none-value", SD, "a value that is not array-like (None)", "m.load_state_dict(sd)",
        R, SDERR + "size mismatch for weight: copying a param with shape () from checkpoint, "
        "the shape in current model is (3,).",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; sd['weight'] = None"),
    Row("sd-ragged", SD, "a ragged list", "m.load_state_dict(sd)", T,
        match=r"^state_dict\['weight'\] is not array-like: ",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['weight'] = [[1.0], [1.0, 2.0]]", note="ends with NumPy's message"),
    Row("sd-complex", SD, "complex values", "m.load_state_dict(sd)",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['weight'] = np.ones(3, complex)",
        note="accepted with NumPy's ComplexWarning (imaginary part dropped), like torch"),
    Row("sd-nonstrict", SD, "a key missing, strict=False", "r = m.load_state_dict(sd, "
        "strict=False)",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; del sd['bias']",
        check="assert list(r.missing_keys) == ['bias']",
        note="accepted: returns the missing keys"),
    Row("sd-none", SD, "state_dict None", "m.load_state_dict(None)", T,
        "Expected state_dict to be dict-like, got NoneType."),
    Row("sd-list", SD, "state_dict a list of keys", "m.load_state_dict(['weight', 'bias'])",
        T, "Expected state_dict to be dict-like, got list."),
    Row("sd-nbt-nan", SD, "num_batches_tracked NaN", "m.load_state_dict(sd)", R,
        "Error(s) in loading state_dict for BatchNorm1d:\n\tWhile copying the parameter "
        "named \"num_batches_tracked\": num_batches_tracked must be finite, got nan",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['num_batches_tracked'] = float('nan')"),
    Row("sd-nbt-huge", SD, "num_batches_tracked beyond int64", "m.load_state_dict(sd)", R,
        "Error(s) in loading state_dict for BatchNorm1d:\n\tWhile copying the parameter "
        "named \"num_batches_tracked\": num_batches_tracked is out of range for int64: "
        "1180591620717411303424",
        setup="sd = {k: v.copy() for k, v in m.state_dict().items()}; "
              "sd['num_batches_tracked'] = 2**70"),

    # ---- functional forward --------------------------------------------------------------
    Row("F-ndim", FF, "wrong ndim (1-D)", "F.batch_norm(x[0], rm, rv)", V,
        "expected at least 2D input (got 1D input): shape (N, C) or (N, C, L) with channels "
        "on axis 1"),
    Row("F-input-list", FF, "non-array input", "F.batch_norm(x.tolist(), rm, rv)", T,
        ARR + "builtins.list"),
    Row("F-input-int", FF, "wrong input dtype", "F.batch_norm(x.astype(int), rm, rv)", T,
        DT + "int64"),
    Row("F-weight-int", FF, "weight of the wrong dtype",
        "F.batch_norm(x, rm, rv, weight=np.ones(3, int))", T,
        "weight must have dtype float16, float32 or float64, got int64"),
    Row("F-weight-list", FF, "weight not an array", "F.batch_norm(x, rm, rv, weight=[1, 1, 1])",
        T, "weight must be a NumPy array of float16, float32 or float64, got builtins.list"),
    Row("F-weight-shape", FF, "weight of the wrong length",
        "F.batch_norm(x, rm, rv, weight=np.ones(4, np.float32))", V,
        "weight should contain 3 elements not 4 (the input has 3 channels along axis 1; "
        "weight has shape (4,))"),
    Row("F-weight-2d", FF, "weight 2-D with C elements",
        "F.batch_norm(x, rm, rv, weight=np.ones((3, 1), np.float32))", V,
        "weight must be a 1-D array of shape (3,) (the input has 3 channels along axis 1), "
        "got shape (3, 1)"),
    Row("mod-weight-replaced", MF, "a module parameter replaced by a shorter array",
        "m2(x)", V,
        "self.weight should contain 3 elements not 2 (the input has 3 channels along axis 1; "
        "self.weight has shape (2,))",
        setup="m2 = cybn.BatchNorm1d(3); m2.weight = np.ones(2, np.float32)",
        note="the kernels read C elements: a replaced attribute is checked on every call"),
    Row("mod-running-var-replaced", MF, "a running statistic replaced by a shorter array",
        "m2(x)", V,
        "self.running_var should contain 3 elements not 2 (the input has 3 channels along "
        "axis 1; self.running_var has shape (2,))",
        setup="m2 = cybn.BatchNorm1d(3); m2.running_var = np.ones(2, np.float32)"),
    Row("F-bias-shape", FF, "bias of the wrong length",
        "F.batch_norm(x, rm, rv, bias=np.ones(2, np.float32))", V,
        "bias should contain 3 elements not 2 (the input has 3 channels along axis 1; "
        "bias has shape (2,))"),
    Row("F-rm-dtype", FF, "running_mean of the wrong dtype",
        "F.batch_norm(x, np.zeros(3, int), rv)", T,
        "running_mean must have dtype float16, float32 or float64, got int64"),
    Row("F-rv-shape", FF, "running_var of the wrong length",
        "F.batch_norm(x, rm, np.ones(2, np.float32))", V,
        "running_var should contain 3 elements not 2 (the input has 3 channels along axis 1; "
        "running_var has shape (2,))"),
    Row("F-rs-one", FF, "only one running statistic in training",
        "F.batch_norm(x, rm, None, training=True)", V,
        "running_mean and running_var must either both be None or neither be None"),
    Row("F-rs-readonly", FF, "read-only running statistic in training",
        "F.batch_norm(x, rm, rv, training=True)", V,
        "running_mean is updated in place and must be writeable, got a read-only array",
        setup="rm.flags.writeable = False"),
    Row("F-rs-missing-eval", FF, "no running statistics in evaluation",
        "F.batch_norm(x, None, None)", V,
        "running_mean and running_var must be defined in evaluation mode (training=False)"),
    Row("F-training-str", FF, "training not a bool (a truthy str)",
        "F.batch_norm(x, rm, rv, training='False')", T, "training must be a bool, got str"),
    Row("F-training-none", FF, "training None",
        "F.batch_norm(x, rm, rv, training=None)", T, "training must be a bool, got NoneType"),
    Row("F-training-int", FF, "training an int (torch takes bool only)",
        "F.batch_norm_forward(x, w, b, rm, rv, 1, 0.1, 1e-5)", T,
        "training must be a bool, got int"),
    Row("F-bwd-training-str", FF, "backward: training not a bool",
        "F.batch_norm_backward(g, x, w, sm, si, training='yes')", T,
        "training must be a bool, got str"),
    Row("F-mom-str-eval", FF, "momentum not a number, in evaluation (unused, still checked)",
        "F.batch_norm(x, rm, rv, momentum='0.1')", T,
        "momentum must be a real number, got str"),
    Row("F-mom-str-no-stats", FF, "momentum not a number, training without running statistics",
        "F.batch_norm(x, None, None, training=True, momentum=[0.1])", T,
        "momentum must be a real number, got list"),
    Row("F-mom-str", FF, "momentum not a number",
        "F.batch_norm(x, rm, rv, training=True, momentum='0.1')", T,
        "momentum must be a real number, got str"),
    Row("F-mom-none", FF, "momentum None (the module's cumulative average)",
        "F.batch_norm(x, rm, rv, training=True, momentum=None)", T,
        "momentum must be a real number, got NoneType"),
    Row("F-mom-nan", FF, "momentum NaN", "F.batch_norm(x, rm, rv, training=True, "
        "momentum=float('nan'))", V, "momentum must be finite, got nan"),
    Row("F-mom-outside", FF, "momentum outside [0, 1]",
        "F.batch_norm(x, rm, rv, training=True, momentum=1.5)",
        note="accepted like torch: the update extrapolates"),
    Row("F-eps-0", FF, "eps = 0 in training", "F.batch_norm(x, None, None, training=True, "
        "eps=0)", V, "batch_norm eps must be positive during training, but got 0"),
    Row("F-eps-negative-eval", FF, "eps < 0 in evaluation", "F.batch_norm(x, rm, rv, eps=-1.0)",
        V, "batch_norm eps must be non-negative, but got -1.0"),
    Row("F-eps-str", FF, "eps not a number", "F.batch_norm(x, rm, rv, eps='1e-5')", T,
        "eps must be a real number, got str"),
    Row("F-one-value", FF, "N * L = 1 in training", "F.batch_norm(x[:1], None, None, "
        "training=True)", V,
        "Expected more than 1 value per channel when training, got input size (1, 3)"),
    Row("F-axis", FF, "axis out of range", "F.batch_norm(x, rm, rv, axis=2)", V,
        "axis 2 is out of bounds for a 2D input"),
    Row("F-axis-str", FF, "axis not an int", "F.batch_norm(x, rm, rv, axis='1')", T,
        "axis must be an int, got str"),
    Row("F-threads-0", FF, "n_threads = 0", "F.batch_norm(x, rm, rv, n_threads=0)", V,
        "n_threads must be a positive or negative int, got 0"),
    Row("F-threads-str", FF, "n_threads not an int", "F.batch_norm(x, rm, rv, n_threads='2')", T,
        "n_threads must be an int or None, got str"),
    Row("F-out-dtype", FF, "out of the wrong dtype", "F.batch_norm_forward(x, w, b, rm, rv, "
        "False, 0.1, 1e-5, out=np.empty((4, 3)))", T, "out must have dtype float32, got float64"),
    Row("F-out-shape", FF, "out of the wrong shape", "F.batch_norm_forward(x, w, b, rm, rv, "
        "False, 0.1, 1e-5, out=np.empty((3, 4), np.float32))", V,
        "out must have shape (4, 3), got (3, 4)"),
    Row("F-out-layout", FF, "out in another memory layout (Fortran for a C input)",
        "F.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5, "
        "out=np.empty((4, 3), np.float32, order='F'))", V,
        "out must have the same memory layout as the input (contiguous in the same axis "
        "order); pass out=None to get a new array in the input's layout"),
    Row("F-out-list", FF, "out not an array", "F.batch_norm_forward(x, w, b, rm, rv, False, "
        "0.1, 1e-5, out=[])", T, "out must be a NumPy array or None, got list"),
    Row("F-out-readonly", FF, "out read-only", "F.batch_norm_forward(x, w, b, rm, rv, False, "
        "0.1, 1e-5, out=o)", V,
        "out is updated in place and must be writeable, got a read-only array",
        setup="o = np.empty((4, 3), np.float32); o.flags.writeable = False"),
    Row("F-out-alias", FF, "out is the input", "F.batch_norm_forward(x, w, b, rm, rv, False, "
        "0.1, 1e-5, out=x)", V, "out must not overlap the input arrays"),
    Row("F-out-overlap", FF, "out overlaps the input partly",
        "F.batch_norm_forward(big[:4], w, b, rm, rv, False, 0.1, 1e-5, out=big[2:6])", V,
        "out must not overlap the input arrays",
        setup="big = np.zeros((8, 3), np.float32)"),
    Row("F-huge", FF, "size overflowing memory", "F.batch_norm(huge((2**48, 3)), None, None, "
        "training=True)", MemoryError, match=ALLOC, note="NumPy's message"),

    # ---- functional backward -------------------------------------------------------------
    Row("FB-shape", FB, "grad_output of the wrong shape",
        "F.batch_norm_backward(g[:3], x, w, sm, si)", V,
        "grad_output must have the input's shape (4, 3), got (3, 3)"),
    Row("FB-dtype", FB, "grad_output of the wrong dtype",
        "F.batch_norm_backward(g.astype(int), x, w, sm, si)", T,
        "grad_output must have dtype float16, float32 or float64, got int64"),
    Row("FB-save-missing", FB, "save_mean missing in training",
        "F.batch_norm_backward(g, x, w, None, si)", V,
        "save_mean and save_invstd are required when training=True"),
    Row("FB-save-shape", FB, "save_mean of the wrong length",
        "F.batch_norm_backward(g, x, w, sm[:2], si)", V,
        "save_mean should contain 3 elements not 2 (the input has 3 channels along axis 1; "
        "save_mean has shape (2,))"),
    Row("FB-save-dtype", FB, "save_mean of the wrong dtype",
        "F.batch_norm_backward(g, x, w, sm.astype(int), si)", T,
        "save_mean must have dtype float16, float32 or float64, got int64"),
    Row("FB-eval-rs", FB, "no running statistics in evaluation",
        "F.batch_norm_backward(g, x, w, None, None, training=False)", V,
        "running_mean and running_var are required when training=False"),
    Row("FB-out-alias-grad", FB, "out is grad_output",
        "F.batch_norm_backward(g, x, w, sm, si, out=g)", V,
        "out must not overlap the input arrays"),
    Row("FB-out-alias-input", FB, "out is the forward's input",
        "F.batch_norm_backward(g, x, w, sm, si, out=x)", V,
        "out must not overlap the input arrays"),
    Row("FB-out-overlap-input", FB, "out overlaps the forward's input partly",
        "F.batch_norm_backward(g, big[:4], w, sm, si, out=big[2:6])", V,
        "out must not overlap the input arrays",
        setup="big = np.zeros((8, 3), np.float32); big[:4] = x",
        note="accepted with a silently wrong grad_input before 304dd41"),

    # ---- compat --------------------------------------------------------------------------
    Row("CP-mode", CO, "bn_param without mode",
        "CP.batchnorm_forward(x, w, b, {})", V,
        "batchnorm_forward: bn_param['mode'] must be 'train' or 'test', got None"),
    Row("CP-mode-bad", CO, "unknown mode",
        "CP.batchnorm_forward(x, w, b, {'mode': 'foo'})", V,
        "batchnorm_forward: bn_param['mode'] must be 'train' or 'test', got 'foo'"),
    Row("CP-bn-param-type", CO, "bn_param not a dict",
        "CP.batchnorm_forward(x, w, b, 'train')", T,
        "batchnorm_forward: bn_param must be a dict, got str"),
    Row("CP-bn-param-key", CO, "a key the handouts do not define (layer norm reusing batch norm)",
        "CP.batchnorm_forward(x, w, b, {'mode': 'train', 'layernorm': 1})", V,
        "batchnorm_forward: bn_param has key(s) 'layernorm' that the cs231n handouts do not "
        "define (cybn knows 'mode', 'eps', 'momentum', 'running_mean', 'running_var'). Code "
        "that adds keys gives batchnorm_forward another meaning (e.g. layer norm), which cybn "
        "would silently ignore: keep your own function for such calls, e.g. patch the network "
        "and helper modules ('cs231n.classifiers.fc_net', 'cs231n.layer_utils') but not the "
        "module whose functions reuse batchnorm_forward"),
    Row("CP-bn-param-2016", CO, "the 2016 handout's stray bn_param['train'] key",
        "out, _ = CP.batchnorm_forward(x, w, b, {'mode': 'train', 'train': 'train'})",
        check="assert np.array_equal(out, CP.batchnorm_forward(x, w, b, {'mode': 'train'})[0])",
        note="plain batch norm, as the 2016 networks run it"),
    Row("CP-x-type", CO, "x a list", "CP.batchnorm_forward(x.tolist(), w, b, {'mode': 'train'})",
        T, "batchnorm_forward: x must be a NumPy array of floats or integers, got "
        "builtins.list"),
    Row("CP-f16-overflow", CO, "a float16 running variance that overflows",
        "CP.batchnorm_forward(xh, np.ones(1, np.float16), np.zeros(1, np.float16), p)", V,
        "batchnorm_forward: the updated bn_param['running_var'] overflows float16 (largest "
        "3.6e+08): the convention's result would be inf; nothing was updated",
        setup="xh = np.array([[6e4], [-6e4]], np.float16); p = {'mode': 'train'}",
        check="assert p == {'mode': 'train'}"),
    Row("CP-x-dtype", CO, "x complex",
        "CP.batchnorm_forward(x.astype(complex), w, b, {'mode': 'train'})", T,
        "batchnorm_forward: x must be an array of float16/32/64 or integers, got dtype "
        "complex128"),
    Row("CP-ndim", CO, "3-D x for the 2-D function",
        "CP.batchnorm_forward(x3, w, b, {'mode': 'train'})", V,
        "batchnorm_forward: expected 2D x (got 3D x)"),
    Row("CP-spatial-ndim", CO, "3-D x for the spatial function",
        "CP.spatial_batchnorm_forward(x3, w, b, {'mode': 'train'})", V,
        "spatial_batchnorm_forward: expected 4D x (got 3D x)"),
    Row("CP-gamma", CO, "gamma of the wrong length",
        "CP.batchnorm_forward(x, np.ones(4, np.float32), b, {'mode': 'train'})", V,
        "batchnorm_forward: gamma must have shape (3,) or (1, 3) (x has 3 features along "
        "axis 1), got shape (4,)"),
    Row("CP-gamma-column", CO, "gamma as a (D, 1) column",
        "CP.batchnorm_forward(x, w[:, None], b, {'mode': 'train'})", V,
        "batchnorm_forward: gamma must have shape (3,) or (1, 3) (x has 3 features along "
        "axis 1), got shape (3, 1)"),
    Row("CP-gamma-str", CO, "gamma of strings",
        "CP.batchnorm_forward(x, np.array(['a', 'b', 'c']), b, {'mode': 'train'})", T,
        "batchnorm_forward: gamma must be an array of float16/32/64 or integers, got dtype <U1"),
    Row("CP-running-shape", CO, "running_mean of the wrong length",
        "CP.batchnorm_forward(x, w, b, {'mode': 'train', 'running_mean': np.zeros(2)})", V,
        "batchnorm_forward: bn_param['running_mean'] must have shape (3,) or (1, 3) (x has 3 "
        "features along axis 1), got shape (2,)"),
    Row("CP-eps", CO, "negative eps", "CP.batchnorm_forward(x, w, b, {'mode': 'train', "
        "'eps': -1e-5})", V, "batchnorm_forward: bn_param['eps'] must be finite and >= 0, "
        "got -1e-05"),
    Row("CP-momentum", CO, "NaN momentum", "CP.batchnorm_forward(x, w, b, {'mode': 'train', "
        "'momentum': float('nan')})", V,
        "batchnorm_forward: bn_param['momentum'] must be finite, got nan"),
    Row("CP-one-value", CO, "one row in training (the handout's formula gives beta)",
        "out, _ = CP.batchnorm_forward(x[:1], w, b, {'mode': 'train'})",
        check="assert np.array_equal(out, b[None])"),
    Row("CP-empty", CO, "no rows in training",
        "CP.batchnorm_forward(x[:0], w, b, {'mode': 'train'})", V,
        "batchnorm_forward: x has no rows (shape (0, 3)): the batch mean of an empty batch "
        "is NaN"),
    Row("CP-nan", CO, "NaN in a training batch",
        "CP.batchnorm_forward(xn, w, b, {'mode': 'train'})", V,
        "batchnorm_forward: x holds NaN or Inf (or values whose square overflows) in "
        "feature(s) [1]: the convention's batch statistics would be NaN there; nothing was "
        "updated", setup="xn = x.copy(); xn[2, 1] = np.nan"),
    Row("CP-eps0-constant", CO, "eps 0 with a constant feature",
        "CP.batchnorm_forward(xc, w, b, {'mode': 'train', 'eps': 0.0})", V,
        "batchnorm_forward: feature(s) [0] of x are constant over the batch and eps is 0: the "
        "convention's formula divides 0 by 0 there (NaN); use eps > 0",
        setup="xc = x.copy(); xc[:, 0] = 1"),
    Row("CP-test-var", CO, "negative running_var in test mode",
        "CP.batchnorm_forward(x, w, b, {'mode': 'test', 'running_mean': rm, "
        "'running_var': -rv})", V, match=r"batchnorm_forward: bn_param\['running_var'\] \+ "
        r"eps must be > 0 for every feature, got minimum -\S+ with eps 1e-05"),
    Row("CP-dout", CO, "dout of the wrong shape", "CP.batchnorm_backward(g[:3], cache)", V,
        "batchnorm_backward: dout must have the shape of x (4, 3), got (3, 3)",
        setup="_, cache = CP.batchnorm_forward(x, w, b, {'mode': 'train'})"),
    Row("CP-foreign-cache", CO, "a cache cybn did not make (half a switch)",
        "CP.batchnorm_backward_alt(g, (x, w, b))", T,
        "batchnorm_backward_alt: cache must come from cybn.compat.batchnorm_forward, got "
        "builtins.tuple (made by another implementation of the forward?): forward and "
        "backward must be switched together: cybn.compat.patch(<your package>) replaces "
        "every batch-norm function of the convention at once"),
    Row("CP-cache-unpacked", CO, "cybn's cache unpacked by a legacy backward",
        "xx, mu, var = cache", T,
        "this cache was made by cybn.compat.batchnorm_forward and is read only by "
        "cybn.compat's backward: a legacy backward function received it. forward and "
        "backward must be switched together: cybn.compat.patch(<your package>) replaces "
        "every batch-norm function of the convention at once",
        setup="_, cache = CP.batchnorm_forward(x, w, b, {'mode': 'train'})"),
    Row("CP-cache-kind", CO, "a spatial cache given to the fully connected backward",
        "CP.batchnorm_backward(np.ones((2, 3, 2, 2)), cache)", T,
        "batchnorm_backward: cache was made by cybn.compat.spatial_batchnorm_forward; "
        "batchnorm_backward reads caches of batchnorm_forward or batchnorm_forward_alt",
        setup="_, cache = CP.spatial_batchnorm_forward(np.ones((2, 3, 2, 2)) + "
        "np.arange(24).reshape(2, 3, 2, 2), w, b, {'mode': 'train'})"),
    Row("BN-layer-gamma", CO, "BatchNormalization with gamma of the wrong size",
        "CP.BatchNormalization(np.ones(4), np.zeros(4)).forward(x)", V,
        "BatchNormalization.forward: gamma must have shape (3,) or (1, 3) (x reshaped to "
        "(N, -1) has 3 features), got shape (4,)"),
    Row("BN-layer-1d", CO, "BatchNormalization given a 1-D x",
        "CP.BatchNormalization(w, b).forward(x[0])", V,
        "BatchNormalization.forward: expected at least 2D x (got 1D x)"),
    Row("BN-layer-backward-test", CO, "BatchNormalization.backward after a test-mode forward",
        "layer.backward(g)", R,
        "BatchNormalization.backward: no training forward to differentiate: the last forward "
        "was in test mode (train_flg=False); call forward(x, train_flg=True) before backward",
        setup="layer = CP.BatchNormalization(w, b); layer.forward(x); "
        "layer.forward(x, train_flg=False)"),
    Row("BN-layer-dout", CO, "BatchNormalization.backward with dout of another shape",
        "layer.backward(g[:2])", V,
        "BatchNormalization.backward: dout must have the shape of the forward's input (4, 3), "
        "got (2, 3)", setup="layer = CP.BatchNormalization(w, b); layer.forward(x)"),
    # batch norm fused with ReLU (activation="relu", residual)
    Row("C-activation", C, "unknown activation", "cybn.BatchNorm1d(3, activation='gelu')", V,
        "activation must be None or 'relu', got 'gelu'"),
    Row("C-activation-type", C, "activation not a str", "cybn.BatchNorm1d(3, activation=True)",
        T, "activation must be None or 'relu', got bool"),
    Row("MF-residual-no-activation", MF, "a residual for a module without an activation",
        "m(x, x.copy())", V, "residual is added before the activation: it needs "
        "activation='relu', got activation=None"),
    Row("MF-residual-shape", MF, "residual of another shape", "mr(x, x[:3])", V,
        "residual must have the input's shape (4, 3), got (3, 3)",
        setup="mr = cybn.BatchNorm1d(3, activation='relu')"),
    Row("MF-residual-dtype", MF, "residual of another dtype", "mr(x, x.astype(np.float64))", T,
        "residual must have the input's dtype float32, got float64",
        setup="mr = cybn.BatchNorm1d(3, activation='relu')"),
    Row("MF-residual-list", MF, "residual not an array", "mr(x, x.tolist())", T,
        "residual must be a NumPy array or None, got builtins.list",
        setup="mr = cybn.BatchNorm1d(3, activation='relu')"),
    Row("MF-residual-out", MF, "out is the residual (the backward reads it again)",
        "mr(x, r, out=r)", V,
        "out must not overlap residual (the backward reads the residual again)",
        setup="mr = cybn.BatchNorm1d(3, activation='relu'); r = x.copy()"),
    Row("F-activation", FF, "unknown activation", "F.batch_norm(x, rm, rv, activation='tanh')",
        V, "activation must be None or 'relu', got 'tanh'"),
    Row("F-residual-no-activation", FF, "residual without an activation",
        "F.batch_norm(x, rm, rv, residual=x.copy())", V, "residual is added before the "
        "activation: it needs activation='relu', got activation=None"),
    Row("F-bwd-residual-shape", FB, "residual of another shape",
        "F.batch_norm_backward(g, x, w, sm, si, activation='relu', residual=x[:2], bias=b)",
        V, "residual must have the input's shape (4, 3), got (2, 3)"),
    Row("F-bwd-bias", FB, "bias of the wrong size with an activation",
        "F.batch_norm_backward(g, x, w, sm, si, activation='relu', bias=b[:2], "
        "residual=None)", V,
        "bias should contain 3 elements not 2 (the input has 3 channels along axis 1; bias "
        "has shape (2,))"),
    Row("F-bwd-bias-missing", FB, "an activation without the forward's bias and residual",
        "F.batch_norm_backward(g, x, w, sm, si, activation='relu')", T,
        "with activation='relu', pass the forward's bias= and residual= (None if the "
        "forward had none): the ReLU's mask is recomputed from them"),
    Row("F-bwd-residual-out", FB, "out is the residual",
        "F.batch_norm_backward(g, x, w, sm, si, activation='relu', residual=r, bias=b, "
        "out=r)", V, "out must not overlap residual (the backward reads the residual again)",
        setup="r = x.copy()"),
    Row("fold-activation", AD, "folding a module with a fused ReLU",
        "cybn.fold_linear(np.ones((3, 2)), None, mr)", V,
        "cannot fold a batch norm with activation='relu': the ReLU after it is not affine "
        "(fold a module without activation and apply the ReLU after the folded layer)",
        setup="mr = cybn.BatchNorm1d(3, activation='relu').eval()"),
    Row("save-activation", AD, "saving a module whose activation was set to 'gelu'",
        "cybn.save(mr, __import__('io').BytesIO())", V,
        "activation must be None or 'relu', got 'gelu'",
        setup="mr = cybn.BatchNorm1d(3, activation='relu'); mr.activation = 'gelu'"),
    Row("renorm-activation", FAM, "renorm together with a fused ReLU",
        "cybn.BatchNorm1d(3, renorm=True, activation='relu')", V,
        "renorm=True and activation cannot be combined: the fused ReLU's backward "
        "recomputes its mask from the plain batch-norm constants"),
    Row("sync-activation", AD, "SyncBatchNorm from a module with a fused ReLU",
        "cybn.SyncBatchNorm.from_module(mr)", V,
        "SyncBatchNorm does not fuse an activation, got a module with activation='relu'",
        setup="mr = cybn.BatchNorm1d(3, activation='relu')"),
    Row("sync-activation-arg", AD, "SyncBatchNorm constructed with a fused ReLU",
        "cybn.SyncBatchNorm(3, activation='relu')", V,
        "SyncBatchNorm does not fuse an activation, got activation='relu'; leave it None "
        "and apply the ReLU to the output"),
    Row("sync-ghost-arg", AD, "SyncBatchNorm constructed with virtual batches",
        "cybn.SyncBatchNorm(3, virtual_batch_size=2)", V,
        "SyncBatchNorm does not support virtual_batch_size (its batch is the global one), "
        "got virtual_batch_size=2; leave it None"),
]

ROWS += [
    Row("renorm-no-running", FAM, "renorm without running statistics",
        "cybn.BatchNorm1d(3, renorm=True, track_running_stats=False)", V,
        "renorm=True needs the running statistics (r and d compare the batch with them): "
        "track_running_stats must be True"),
    Row("renorm-not-bool", FAM, "renorm not a bool", "cybn.BatchNorm1d(3, renorm=1)", T,
        "renorm must be a bool, got int"),
    Row("renorm-rmax-small", FAM, "rmax below 1", "cybn.BatchNorm1d(3, renorm=True, rmax=0.5)",
        V, "rmax must be >= 1 (inf: no clipping), got 0.5"),
    Row("renorm-rmax-nan", FAM, "rmax NaN",
        "cybn.BatchNorm1d(3, renorm=True, rmax=float('nan'))", V,
        "rmax must be >= 1 (inf: no clipping), got nan"),
    Row("renorm-dmax-negative", FAM, "dmax below 0",
        "cybn.BatchNorm1d(3, renorm=True, dmax=-1.0)", V,
        "dmax must be >= 0 (inf: no clipping), got -1.0"),
    Row("renorm-dmax-str", FAM, "dmax not a number",
        "cybn.BatchNorm1d(3, renorm=True, dmax='1')", T, "dmax must be a real number, got str"),
    Row("renorm-attr-rmax", FAM, "rmax set below 1 between steps",
        "m.forward(x)", V, "self.rmax must be >= 1 (inf: no clipping), got 0.9",
        setup="m.renorm = True; m.rmax = 0.9"),
    Row("renorm-ghost", FAM, "renorm together with virtual_batch_size",
        "cybn.BatchNorm1d(3, renorm=True, virtual_batch_size=2)", V,
        "renorm=True and virtual_batch_size cannot be combined: batch renormalization "
        "corrects one batch's statistics towards the running ones, not each virtual "
        "batch's"),
    Row("ghost-zero", FAM, "virtual_batch_size 0", "cybn.BatchNorm1d(3, virtual_batch_size=0)",
        V, "virtual_batch_size must be >= 1, got 0"),
    Row("ghost-float", FAM, "virtual_batch_size not an int",
        "cybn.BatchNorm1d(3, virtual_batch_size=2.0)", T,
        "virtual_batch_size must be an int or None, got float"),
    Row("ghost-one-value", FAM, "a virtual batch with one value per channel",
        "m.forward(x[:3])", V,
        "Expected more than 1 value per channel in each virtual batch when training, got "
        "input size (3, 3) with virtual_batch_size=2: rows 2:3 hold 1 value per channel",
        setup="m.virtual_batch_size = 2"),
    Row("ghost-axis-0", FAM, "virtual batches when the channel axis is 0",
        "m.forward(np.ascontiguousarray(x.T))", V,
        "virtual_batch_size groups the rows of axis 0, which is the channel axis here "
        "(axis=0): put the batch first", setup="m.virtual_batch_size = 2; m.axis = 0"),
    Row("ghost-sync", FAM, "SyncBatchNorm from a module with virtual batches",
        "cybn.SyncBatchNorm.from_module(cybn.BatchNorm1d(3, virtual_batch_size=2))", V,
        "from_module: SyncBatchNorm does not support virtual_batch_size (its batch is the "
        "global one), got virtual_batch_size=2"),
    Row("pop-empty", FAM, "population_stats without modules", "cybn.population_stats()", V,
        "population_stats needs at least one batch-norm module"),
    Row("pop-not-module", FAM, "population_stats given something else",
        "cybn.population_stats(m, 'bn')", T,
        "population_stats takes cybn batch-norm modules (e.g. cybn.BatchNorm1d), got str"),
    Row("pop-untracked", FAM, "population_stats of a module without running statistics",
        "cybn.population_stats(cybn.BatchNorm1d(3, track_running_stats=False))", V,
        "population_stats: BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=False) does not track running statistics "
        "(track_running_stats=False), so it has none to compute"),
    Row("pop-twice", FAM, "the same module twice", "cybn.population_stats(m, m)", V,
        "population_stats got the same module twice: BatchNorm1d(3, eps=1e-05, momentum=0.1, "
        "affine=True, bias=True, track_running_stats=True)"),
    Row("pop-nested", FAM, "a module already in an open block",
        "inner.__enter__()", R,
        "population_stats: BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True) is already in an open population_stats block",
        setup="outer = cybn.population_stats(m); outer.__enter__(); "
        "inner = cybn.population_stats(m)"),
    Row("nbt-not-array", FAM, "num_batches_tracked replaced by a Python int",
        "m.forward(x)", T,
        "self.num_batches_tracked must be a writeable 0-d integer array (as "
        "np.array(0, dtype=np.int64)), got int", setup="m.num_batches_tracked = 0"),
    Row("running-half", FAM, "running_var removed, running_mean kept", "m.forward(x)", V,
        "self.running_mean and self.running_var must either both be None or neither be None",
        setup="m.running_var = None"),
    Row("renorm-no-running-attr", FAM, "renorm on, running_mean removed", "m.forward(x)", V,
        "renorm=True needs the running statistics, but self.running_mean is None",
        setup="m.renorm = True; m.running_mean = None"),
    Row("pop-read-only", FAM, "population_stats of a module with read-only statistics",
        "cybn.population_stats(m).__enter__()", V,
        "population_stats: BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True).running_mean is updated in place and must be writeable, "
        "got a read-only array", setup="m.running_mean.flags.writeable = False"),
    Row("save-bad-option", FAM, "cybn.save of a module whose rmax was set below 1",
        "cybn.save(m, __import__('io').BytesIO())", V,
        "rmax must be >= 1 (inf: no clipping), got 0.2", setup="m.rmax = 0.2"),
    Row("lazy-params", FAM, "parameters of a lazy module before its first forward",
        "cybn.LazyBatchNorm1d().parameters()", R,
        "LazyBatchNorm1d has no parameters yet: their size comes from the first input. Run "
        "a forward (or load_state_dict) before collecting them"),
    Row("lazy-load-shapes", FAM, "a lazy module loading per-channel arrays of two lengths",
        "cybn.LazyBatchNorm1d().load_state_dict({'weight': np.ones(3), 'bias': np.ones(4), "
        "'running_mean': rm, 'running_var': rv})", R,
        "Error(s) in loading state_dict for LazyBatchNorm1d:\n\ta lazy module takes its "
        "channel count from 1-D per-channel arrays of one length, got weight of shape (3,), "
        "bias of shape (4,), running_mean of shape (3,), running_var of shape (3,)"),
    Row("lazy-first-forward", FAM, "a lazy module's first forward with one row",
        "lazy.forward(x[:1])", V,
        "Expected more than 1 value per channel when training, got input size (1, 3)",
        setup="lazy = cybn.LazyBatchNorm1d()",
        note="the module stays lazy (torch materialises it)"),
    Row("lazy-sync", FAM, "SyncBatchNorm from a lazy module before its first forward",
        "cybn.SyncBatchNorm.from_module(cybn.LazyBatchNorm1d())", V,
        "from_module got a lazy module that has no arrays yet (LazyBatchNorm1d): run a "
        "forward or load_state_dict first"),
]

GROUPS = [C, MF, BW, SD, FF, FB, CO, AD, FAM]
