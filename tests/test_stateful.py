"""Stateful property test: a hypothesis RuleBasedStateMachine drives one cybn module through
random sequences of forward/backward in training and evaluation, train()/eval(),
state_dict()/load_state_dict(), reset_running_stats()/reset_parameters(), parameter updates
and bad calls, and checks it against the float64 reference model (_reference.RefBatchNorm1d)
after every step.

Every bad call must raise its documented exception type and change nothing: parameters,
running statistics, num_batches_tracked, grad_weight/grad_bias, the training flag, the
hyperparameters, and the backward cache (a backward on a deep copy of the module, taken
before and after the bad call, gives bit-identical results).

Bounds: those of test_properties.py (_hardening.y_bound and check_*). The running
statistics of the model are re-synchronised to the module after each comparison, so
rounding differences cannot accumulate over a run.

Examples (profile "ci", derandomized): 200 machines x up to 40 steps (about 7700 steps, 30 %
of them forwards, 18 % bad calls).
"""

import copy

import numpy as np
import pytest
from _hardening import (
    COMPUTE,
    F16,
    F32,
    F64,
    LAYOUTS,
    PROFILE,
    as_layout,
    check_bound,
    check_eval_grads,
    check_running,
    check_train_grads,
    hsettings,
    present,
    unpresent,
    y_bound,
)
from _reference import RefBatchNorm1d, batch_stats
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import cybn

pytestmark = pytest.mark.slow

MACHINES = 200
STEPS = 40

#: the strategies of one batch (forward, train_step, eval_step)
BATCH = {
    "N": st.sampled_from([0, 1, 2, 3, 8, 33]), "L": st.sampled_from([1, 2, 5]),
    "seed": st.integers(0, 2**32 - 1), "xdtype": st.sampled_from([None, F32, F64]),
    "offset": st.sampled_from([0.0, 2.0, -40.0]), "scale_i": st.integers(0, 3),
    "layout": st.sampled_from(LAYOUTS), "readonly": st.booleans(), "nan": st.booleans(),
}

STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def snapshot(m):
    """Everything a failing call must leave alone, as copies."""
    snap = {k: None if getattr(m, k) is None else np.array(getattr(m, k), copy=True)
            for k in STATE_KEYS + ("grad_weight", "grad_bias")}
    snap["ids"] = {k: id(getattr(m, k)) for k in STATE_KEYS}
    snap["hyper"] = (m.training, m.eps, m.momentum, m.affine, m.track_running_stats,
                     m.num_features, m.dtype, m.axis, m.check_finite, m.n_threads)
    return snap


def assert_same_snapshot(a, b, what):
    assert a["hyper"] == b["hyper"], what
    assert a["ids"] == b["ids"], f"{what}: a state array was replaced"
    for k in STATE_KEYS + ("grad_weight", "grad_bias"):
        if a[k] is None:
            assert b[k] is None, (what, k)
        else:
            assert b[k] is not None and a[k].dtype == b[k].dtype, (what, k)
            assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k} changed"


class BatchNormMachine(RuleBasedStateMachine):
    """One module and its reference model."""

    # -- setup -------------------------------------------------------------------------

    @initialize(
        C=st.sampled_from([1, 2, 3, 5, 17, 1025]),
        pres=st.sampled_from(["1d-NC", "1d-NCL", "1d-NLC"]),
        dtype=st.sampled_from([F16, F32, F64]),
        affine=st.booleans(), bias=st.booleans(), track=st.booleans(),
        momentum=st.sampled_from([None, 0.0, 1.0, 0.1, 0.5]),
        eps=st.sampled_from([1e-5, 1e-3, 0.1]),
        check_finite=st.booleans(),
        n_threads=st.sampled_from([None, 1, 2]),
    )
    def setup(self, C, pres, dtype, affine, bias, track, momentum, eps, check_finite,
              n_threads):
        self.C = C
        self.pres = pres
        self.dtype = dtype
        axis = -1 if pres == "1d-NLC" else 1
        self.m = cybn.BatchNorm1d(C, eps=eps, momentum=momentum, affine=affine,
                                  track_running_stats=track, bias=bias, dtype=dtype,
                                  axis=axis, check_finite=check_finite, n_threads=n_threads)
        self.ref = RefBatchNorm1d(C, eps=eps, momentum=momentum, affine=affine,
                                  track_running_stats=track, bias=bias, dtype=dtype)
        self.last = None     # (x64 (N, C, L), presented shape, input dtype, batch stats?)
        self.saved = None    # a state_dict snapshot (copies) for load_state_dict
        self.ref_saved = None
        # float16 modules keep their running variance in float16 (overflows above 65504)
        self.scale_choices = [1e-2, 1.0, 3.0] if dtype == F16 else [1e-2, 1.0, 3.0, 100.0]

    # -- helpers -------------------------------------------------------------------------

    def use_batch(self):
        return self.m.training or not self.m.track_running_stats

    def make_batch(self, N, L, seed, xdtype, offset, scale):
        if self.pres == "1d-NC":
            L = 1
        rng = np.random.default_rng(seed)
        x = (offset + scale * rng.standard_normal((N, self.C, L))).astype(xdtype)
        return x

    def probe(self):
        """Backward results of a deep copy of the module (does not touch the module)."""
        if self.last is None:
            return None
        shape, xdtype = self.last[1], self.last[2]
        g = np.random.default_rng(12345).standard_normal(shape).astype(xdtype)
        c = copy.deepcopy(self.m)
        gi = c.backward(g)
        return gi, c.grad_weight, c.grad_bias

    def expect_failure(self, exc_type, call, what):
        before = snapshot(self.m)
        probe_before = self.probe()
        with pytest.raises(exc_type):
            call()
        assert_same_snapshot(before, snapshot(self.m), what)
        probe_after = self.probe()
        if probe_before is not None:
            for a, b in zip(probe_before, probe_after):
                if a is None:
                    assert b is None, what
                else:
                    assert a.tobytes() == b.tobytes(), f"{what}: backward cache changed"

    # -- valid calls ---------------------------------------------------------------------

    @rule(**BATCH)
    def forward(self, **batch):
        """A forward in the current mode."""
        self.do_forward(**batch)

    @rule(**BATCH, gdtype=st.sampled_from([None, F32, F64]))
    def train_step(self, gdtype, **batch):
        """What a training loop does: train(), forward, backward."""
        self.set_mode(True, False)
        if self.do_forward(**batch):
            self.backward(batch["seed"] + 1, gdtype)

    @rule(**BATCH)
    def eval_step(self, **batch):
        """What an inference service does: eval(), forward."""
        self.set_mode(False, True)
        self.do_forward(**batch)

    def do_forward(self, N, L, seed, xdtype, offset, scale_i, layout, readonly, nan):
        """Run one forward and check it; returns whether it was a valid call."""
        m, ref = self.m, self.ref
        xdtype = self.dtype if xdtype is None else xdtype
        scale = self.scale_choices[scale_i % len(self.scale_choices)]
        x = self.make_batch(N, L, seed, xdtype, offset, scale)
        Lx = x.shape[2]
        if self.use_batch() and N * Lx == 1:
            xp, _ = present(x, self.pres)
            self.expect_failure(ValueError, lambda: m(xp), "one value per channel")
            return False
        if nan and x.size:
            if m.training and m.check_finite:
                x.flat[seed % x.size] = np.nan
                xp, _ = present(x, self.pres)
                self.expect_failure(ValueError, lambda: m(xp), "NaN with check_finite")
                return False
            if not self.use_batch():  # eval: NaN stays in its element (docs/semantics.md §7)
                x.flat[seed % x.size] = np.nan
        xp, _ = present(x, self.pres)
        xp = as_layout(xp, layout, readonly)
        before = xp.copy()
        rm_old = None if m.running_mean is None else m.running_mean.astype(np.float64)
        rv_old = None if m.running_var is None else m.running_var.astype(np.float64)
        nbt_old = None if m.num_batches_tracked is None else int(m.num_batches_tracked)
        y = m(xp)
        assert np.array_equal(xp, before, equal_nan=True), "input modified"
        assert y.shape == xp.shape and y.dtype == xp.dtype
        x64 = x.astype(np.float64)
        y_ref = ref.forward(x64)
        C = self.C
        w64 = np.ones(C) if ref.weight is None else ref.weight
        b64 = np.zeros(C) if ref.bias is None else ref.bias
        n = N * Lx
        use_batch = self.use_batch()
        out_dt = COMPUTE[np.dtype(xdtype)] if xdtype != F16 else F16
        if n > 0:
            if use_batch:
                mean, var_b, var_u = batch_stats(x64)
                center, a = mean, w64 / np.sqrt(var_b + m.eps)
            else:
                center, a = rm_old, w64 / np.sqrt(rv_old + m.eps)
            check_bound(unpresent(y, self.pres), y_ref,
                        y_bound(y_ref, x64, center, a, b64, out_dt, COMPUTE[np.dtype(xdtype)]),
                        "forward y")
        if m.running_mean is not None:
            if m.training and n > 0:
                assert int(m.num_batches_tracked) == nbt_old + 1 == ref.num_batches_tracked
                f = 1.0 / (nbt_old + 1) if m.momentum is None else m.momentum
                check_running(m.running_mean, m.running_var, rm_old, rv_old, mean, var_u, f,
                              self.dtype, "forward", x64, COMPUTE[np.dtype(xdtype)])
            else:
                assert int(m.num_batches_tracked) == nbt_old
                assert m.running_mean.astype(np.float64).tobytes() == rm_old.tobytes()
                assert m.running_var.astype(np.float64).tobytes() == rv_old.tobytes()
            self.resync()
        self.last = (x64, xp.shape, np.dtype(xdtype), use_batch,
                     None if rm_old is None else (rm_old, rv_old))
        return True

    @precondition(lambda self: self.last is not None)
    @rule(seed=st.integers(0, 2**32 - 1), gdtype=st.sampled_from([None, F32, F64]))
    def backward_rule(self, seed, gdtype):
        self.backward(seed, gdtype)

    def backward(self, seed, gdtype):
        m, ref = self.m, self.ref
        x64, shape, xdtype, use_batch, rstats = self.last
        g = np.random.default_rng(seed).standard_normal(x64.shape)
        g = g.astype(xdtype if gdtype is None else gdtype)
        gp, _ = present(g, self.pres)
        gi = m.backward(gp)
        assert gi.shape == shape and gi.dtype == xdtype
        C = self.C
        for name, arr, has in (("grad_weight", m.grad_weight, m.weight is not None),
                               ("grad_bias", m.grad_bias, m.bias is not None)):
            assert (arr is None) == (not has), name
            if arr is not None:
                assert arr.dtype == self.dtype and arr.shape == (C,), name
        # grad_output is converted to the input's compute dtype first
        dy64 = g.astype(COMPUTE[xdtype]).astype(np.float64)
        _dx, gw_r, gb_r = ref.backward(dy64)
        # without weight/bias the module has no grad_*; check grad_input against the oracle
        gw = m.grad_weight if m.grad_weight is not None else gw_r
        gb = m.grad_bias if m.grad_bias is not None else gb_r
        gi_dt = COMPUTE[xdtype] if xdtype != F16 else F16
        if x64.shape[0] * x64.shape[2] == 0:
            assert gi.size == 0 and not np.any(gw) and not np.any(gb)
            return
        w64 = None if ref.weight is None else ref.weight
        if use_batch:
            check_train_grads(unpresent(gi, self.pres), gw, gb, x64, dy64, w64, m.eps, gi_dt,
                              self.dtype, "backward", COMPUTE[xdtype])
        else:
            rm_old, rv_old = rstats
            check_eval_grads(unpresent(gi, self.pres), gw, gb, x64, dy64, rm_old, rv_old, w64,
                             m.eps, gi_dt, self.dtype, "backward", COMPUTE[xdtype])

    @rule(mode=st.booleans(), via_eval=st.booleans())
    def set_mode_rule(self, mode, via_eval):
        self.set_mode(mode, via_eval)

    def set_mode(self, mode, via_eval):
        r = self.m.eval() if (via_eval and not mode) else self.m.train(mode)
        assert r is self.m
        self.ref.training = mode

    @rule(seed=st.integers(0, 2**32 - 1))
    def update_parameters(self, seed):
        """An optimizer step: the parameters are changed in place."""
        rng = np.random.default_rng(seed)
        if self.m.weight is not None:
            self.m.weight -= (0.1 * rng.standard_normal(self.C)).astype(self.dtype)
            self.ref.set_weight(self.m.weight)
        if self.m.bias is not None:
            self.m.bias -= (0.1 * rng.standard_normal(self.C)).astype(self.dtype)
            self.ref.set_bias(self.m.bias)

    @rule(save=st.booleans(), as_lists=st.booleans())
    def checkpoint(self, save, as_lists):
        """state_dict() (a copy is kept) or load_state_dict() of the last one kept."""
        if save or self.saved is None:
            self.save_state()
        else:
            self.load_state(as_lists)

    def save_state(self):
        sd = self.m.state_dict()
        assert list(sd) == [k for k in STATE_KEYS if getattr(self.m, k) is not None]
        for k, v in sd.items():
            assert v is getattr(self.m, k), "state_dict holds live references"
        self.saved = {k: v.copy() for k, v in sd.items()}
        self.ref_saved = copy.deepcopy(
            (self.ref.weight, self.ref.bias, self.ref.running_mean, self.ref.running_var,
             self.ref.num_batches_tracked))

    def load_state(self, as_lists):
        sd = {k: (v.tolist() if as_lists else v) for k, v in self.saved.items()}
        ids = {k: id(getattr(self.m, k)) for k in STATE_KEYS}
        res = self.m.load_state_dict(sd)
        assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
        assert ids == {k: id(getattr(self.m, k)) for k in STATE_KEYS}, "copied in place"
        for k, v in self.saved.items():
            assert getattr(self.m, k).tobytes() == v.tobytes(), k
        (self.ref.weight, self.ref.bias, self.ref.running_mean, self.ref.running_var,
         self.ref.num_batches_tracked) = copy.deepcopy(self.ref_saved)

    @rule(parameters=st.booleans())
    def reset(self, parameters):
        if parameters:
            self.reset_parameters()
        else:
            self.reset_running_stats()

    def reset_running_stats(self):
        self.m.reset_running_stats()
        if self.ref.running_mean is not None:
            self.ref.running_mean = np.zeros(self.C)
            self.ref.running_var = np.ones(self.C)
            self.ref.num_batches_tracked = 0

    def reset_parameters(self):
        self.reset_running_stats()
        self.m.reset_parameters()
        if self.ref.weight is not None:
            self.ref.weight = np.ones(self.C)
        if self.ref.bias is not None:
            self.ref.bias = np.zeros(self.C)

    # -- bad calls -----------------------------------------------------------------------

    @rule(kind=st.sampled_from([
        "ndim1", "ndim4", "int_dtype", "list", "none", "wrong_channels", "eps0", "momentum_nan",
        "train_str", "huge", "backward_shape", "backward_int", "load_shape", "load_missing",
        "load_unexpected", "load_text", "backward_before_forward",
    ]))
    def bad_call(self, kind):
        m, C, dt = self.m, self.C, self.dtype
        ok = np.zeros((4, C, 2), dt)
        if self.pres == "1d-NC":
            ok = ok[:, :, 0]
        elif self.pres == "1d-NLC":
            ok = np.moveaxis(ok, 1, -1).copy()
        if kind == "ndim1":
            self.expect_failure(ValueError, lambda: m(np.zeros(C, dt)), kind)
        elif kind == "ndim4":
            self.expect_failure(ValueError, lambda: m(np.zeros((2, C, 2, 2), dt)), kind)
        elif kind == "int_dtype":
            self.expect_failure(TypeError, lambda: m(ok.astype(np.int32)), kind)
        elif kind == "list":
            self.expect_failure(TypeError, lambda: m(ok.tolist()), kind)
        elif kind == "none":
            self.expect_failure(TypeError, lambda: m(None), kind)
        elif kind == "wrong_channels":
            if m.running_mean is None and m.weight is None:
                return  # like torch: without per-channel state any C is accepted
            shape = {"1d-NC": (4, C + 1), "1d-NCL": (4, C + 1, 2), "1d-NLC": (4, 2, C + 1)}
            bad = np.zeros(shape[self.pres], dt)
            self.expect_failure(ValueError, lambda: m(bad), kind)
        elif kind == "eps0":
            if not self.use_batch():
                return
            old = m.eps
            m.eps = 0.0
            try:
                self.expect_failure(ValueError, lambda: m(ok), kind)
            finally:
                m.eps = old
        elif kind == "momentum_nan":
            if not (m.training and m.track_running_stats):
                return
            old = m.momentum
            m.momentum = float("nan")
            try:
                self.expect_failure(ValueError, lambda: m(ok), kind)
            finally:
                m.momentum = old
        elif kind == "train_str":
            self.expect_failure(TypeError, lambda: m.train("yes"), kind)
        elif kind == "huge":
            # 2**48 rows: more bytes than any address space, so the copy cybn has to make
            # fails for certain (no overcommit gamble)
            shape = (2**48,) + ok.shape[1:]
            huge = np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape=shape,
                                                   strides=(0,) * len(shape))
            self.expect_failure(MemoryError, lambda: m(huge), kind)
        elif kind in ("backward_shape", "backward_int"):
            if self.last is None:
                return
            shape = self.last[1]
            g = (np.zeros((shape[0] + 1,) + shape[1:], dt) if kind == "backward_shape"
                 else np.zeros(shape, np.int64))
            exc = ValueError if kind == "backward_shape" else TypeError
            self.expect_failure(exc, lambda: m.backward(g), kind)
        elif kind == "backward_before_forward":
            if self.last is not None:
                return
            self.expect_failure(RuntimeError, lambda: m.backward(ok), kind)
        else:
            sd = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
            if not sd:
                return
            key = next(iter(sd))
            if kind == "load_shape":
                sd[key] = np.zeros(sd[key].size + 1, sd[key].dtype)
            elif kind == "load_missing":
                del sd[key]
            elif kind == "load_unexpected":
                sd["extra"] = np.zeros(1)
            elif kind == "load_text":
                sd[key] = np.array(["x"] * sd[key].size).reshape(sd[key].shape)
            self.expect_failure(RuntimeError, lambda: m.load_state_dict(sd), kind)

    # -- after every step ------------------------------------------------------------------

    def resync(self):
        """Copy the module's running statistics into the model (after checking them)."""
        m, ref = self.m, self.ref
        if m.running_mean is not None:
            ref.running_mean = m.running_mean.astype(np.float64)
            ref.running_var = m.running_var.astype(np.float64)
            ref.num_batches_tracked = int(m.num_batches_tracked)

    @invariant()
    def matches_reference(self):
        m, ref = self.m, self.ref
        assert m.training == ref.training
        for k in ("weight", "bias", "running_mean", "running_var"):
            a, b = getattr(m, k), getattr(ref, k)
            assert (a is None) == (b is None), k
            if a is not None:
                assert a.dtype == self.dtype and a.shape == (self.C,), k
                # the model holds the module's values (rounded to the module dtype)
                assert np.array_equal(a.astype(np.float64), b, equal_nan=True), k
        if m.num_batches_tracked is not None:
            assert m.num_batches_tracked.shape == () and m.num_batches_tracked.dtype == np.int64
            assert int(m.num_batches_tracked) == ref.num_batches_tracked


TestBatchNormMachine = BatchNormMachine.TestCase
TestBatchNormMachine.settings = hsettings(MACHINES, stateful_step_count=STEPS)


def test_example_counts_are_stated():
    if PROFILE != "ci":
        pytest.skip("the counts are stated for the ci profile")
    assert TestBatchNormMachine.settings.max_examples == MACHINES == 200
    assert TestBatchNormMachine.settings.stateful_step_count == STEPS == 40
