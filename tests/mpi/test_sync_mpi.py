"""cybn.SyncBatchNorm under MPI, against one process holding the gathered batch.

Run under ``mpiexec -n P`` (P = 1, 2, 3, ...): see conftest.py. Each rank draws its own
rows, the ranks ``allgather`` them, and every rank checks that its SyncBatchNorm gives,
for its own rows, what a single-process cybn batch-norm module gives on the concatenated
batch: forward output, grad_input, grad_weight/grad_bias (global sums), running
statistics and num_batches_tracked, to 1e-12 in float64. Every test makes all its
collective calls before it asserts anything, so a failed assertion cannot leave the
other ranks waiting in a collective.
"""

import numpy as np
import pytest
from _reference import assert_close

import cybn

MPI = pytest.importorskip("mpi4py.MPI")

COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
SIZE = COMM.Get_size()
F64 = np.float64


def local_sizes(pattern):
    """Local batch sizes of all ranks for a named pattern (needs 2+ ranks if empty)."""
    if pattern == "equal":
        return [4] * SIZE
    if pattern == "unequal":
        return [(3, 1, 6, 2)[r % 4] for r in range(SIZE)]
    if SIZE == 1:
        pytest.skip("an empty rank next to non-empty ones needs at least 2 ranks")
    if pattern == "first_empty":
        return [0] + [(3, 5, 2)[r % 3] for r in range(1, SIZE)]
    if pattern == "last_empty":
        return [(2, 5, 3)[r % 3] for r in range(SIZE - 1)] + [0]
    raise ValueError(pattern)


def my_rows(sizes):
    start = sum(sizes[:RANK])
    return slice(start, start + sizes[RANK])


def reference_module(tail, C, **kw):
    cls = cybn.BatchNorm2d if len(tail) == 2 else cybn.BatchNorm1d
    return cls(C, **kw)


def gathered(a):
    """The concatenation of every rank's ``a`` along axis 0, in rank order."""
    return np.concatenate(COMM.allgather(a), axis=0)


def local_rng(seed):
    return np.random.default_rng([seed, RANK])


def same_everywhere(a):
    """True when ``a`` is bitwise identical on every rank (a collective)."""
    a = np.ascontiguousarray(a)
    return all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
               for b in COMM.allgather(a))


class CountingComm(MPI.Intracomm):
    """COMM_WORLD, recording the bytes of each Allreduce."""

    def __init__(self, comm):
        super().__init__()
        self.allreduce_bytes = []

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM):
        buf = recvbuf[0] if isinstance(recvbuf, (list, tuple)) else recvbuf
        self.allreduce_bytes.append(np.asarray(buf).nbytes)
        return super().Allreduce(sendbuf, recvbuf, op)


def counting_world():
    return CountingComm(COMM)


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["equal", "unequal", "first_empty", "last_empty"])
@pytest.mark.parametrize("tail", [(), (4,), (2, 3)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_matches_single_process(pattern, tail, momentum):
    sizes = local_sizes(pattern)
    C = 5
    shared = np.random.default_rng(7)  # the same on every rank
    w0 = shared.uniform(0.5, 2.0, C)
    b0 = shared.normal(size=C)
    sync = cybn.SyncBatchNorm(C, momentum=momentum, dtype=F64)
    ref = reference_module(tail, C, momentum=momentum, dtype=F64)
    for m in (sync, ref):
        m.weight[...] = w0
        m.bias[...] = b0
    rng = local_rng(11)
    rows = my_rows(sizes)
    checks = []
    for step in range(3):
        x = 5.0 + 2.0 * rng.standard_normal((sizes[RANK], C) + tail)
        dy = rng.standard_normal(x.shape)
        X, DY = gathered(x), gathered(dy)
        y = sync(x)
        g = sync.backward(dy)
        checks.append((step, y, ref(X)[rows], g, ref.backward(DY)[rows],
                       sync.grad_weight.copy(), ref.grad_weight.copy(),
                       sync.grad_bias.copy(), ref.grad_bias.copy(),
                       sync.running_mean.copy(), ref.running_mean.copy(),
                       sync.running_var.copy(), ref.running_var.copy()))
    identical = [same_everywhere(a) for a in
                 (sync.running_mean, sync.running_var, sync.grad_weight, sync.grad_bias)]
    for step, y, Y, g, G, gw, GW, gb, GB, rm, RM, rv, RV in checks:
        msg = f"step {step}, sizes {sizes}, rank {RANK}"
        assert y.shape == Y.shape and y.dtype == Y.dtype
        assert_close(y, Y, err_msg=msg)
        assert_close(g, G, err_msg=msg)
        assert_close(gw, GW, err_msg=msg)
        assert_close(gb, GB, err_msg=msg)
        assert_close(rm, RM, err_msg=msg)
        assert_close(rv, RV, err_msg=msg)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    assert all(identical), "state differs between ranks"


def test_float32_module_and_input():
    sizes = local_sizes("unequal")
    C = 8
    rng = local_rng(3)
    sync = cybn.SyncBatchNorm(C)
    ref = cybn.BatchNorm1d(C)
    x = (1.0 + rng.standard_normal((sizes[RANK], C, 3))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    X, DY = gathered(x), gathered(dy)
    y, g = sync(x), sync.backward(dy)
    Y, G = ref(X)[my_rows(sizes)], ref.backward(DY)[my_rows(sizes)]
    assert y.dtype == g.dtype == np.float32
    assert sync.running_var.dtype == sync.grad_weight.dtype == np.float32
    assert_close(y, Y)
    assert_close(g, G)
    assert_close(sync.grad_weight, ref.grad_weight)
    assert_close(sync.running_var, ref.running_var)


def test_channels_last_axis():
    sizes = local_sizes("unequal")
    C = 4
    rng = local_rng(5)
    sync = cybn.SyncBatchNorm(C, dtype=F64, axis=-1)
    ref = cybn.BatchNorm1d(C, dtype=F64, axis=-1)
    x = rng.standard_normal((sizes[RANK], 3, C))
    dy = rng.standard_normal(x.shape)
    X, DY = gathered(x), gathered(dy)
    y, g = sync(x), sync.backward(dy)
    assert_close(y, ref(X)[my_rows(sizes)])
    assert_close(g, ref.backward(DY)[my_rows(sizes)])
    assert_close(sync.running_var, ref.running_var)


def test_one_row_per_rank_uses_the_global_count():
    # (1, C) on every rank: one value per channel locally, SIZE values globally.
    C = 3
    x = local_rng(9).standard_normal((1, C))
    X = gathered(x)
    sync = cybn.SyncBatchNorm(C, dtype=F64)
    error = None
    try:
        y = sync(x)
    except ValueError as exc:
        error = exc
    if SIZE == 1:
        assert error is not None
        assert "Expected more than 1 value per channel when training" in str(error)
        assert int(sync.num_batches_tracked) == 0
    else:
        assert error is None
        ref = cybn.BatchNorm1d(C, dtype=F64)
        assert_close(y, ref(X)[RANK:RANK + 1])
        assert_close(sync.running_var, ref.running_var)


@pytest.mark.parametrize("tail", [(), (1,)], ids=["NC", "NCL"])
def test_global_count_of_one_raises_on_every_rank(tail):
    C = 3
    sizes = [1] + [0] * (SIZE - 1)
    x = np.ones((sizes[RANK], C) + tail)
    sync = cybn.SyncBatchNorm(C, dtype=F64)
    before = [a.copy() for a in sync.state_dict().values()]
    error = None
    try:
        sync(x)
    except ValueError as exc:
        error = exc
    after = [a.copy() for a in sync.state_dict().values()]
    # the module still works, on every rank: nobody was left inside a collective
    X = 1.0 + np.arange(2 * C, dtype=F64).reshape(2, C) ** 2
    y = sync(X)
    ref = cybn.BatchNorm1d(C, dtype=F64)
    Y = ref(np.concatenate([X] * SIZE))[:2]
    assert error is not None, "every rank must raise"
    assert "Expected more than 1 value per channel when training" in str(error)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert sync.grad_weight is None
    assert_close(y, Y)
    assert int(sync.num_batches_tracked) == 1


def test_all_ranks_empty_changes_nothing():
    C = 3
    sync = cybn.SyncBatchNorm(C, dtype=F64)
    sync.running_mean[...] = [1.0, 2.0, 3.0]
    comm = counting_world()
    sync.comm = comm
    y = sync(np.empty((0, C, 2)))
    g = sync.backward(np.empty((0, C, 2)))
    assert y.shape == g.shape == (0, C, 2)
    assert_close(sync.running_mean, [1.0, 2.0, 3.0])
    assert_close(sync.running_var, np.ones(C))
    assert int(sync.num_batches_tracked) == 0
    assert_close(sync.grad_weight, np.zeros(C))
    assert_close(sync.grad_bias, np.zeros(C))
    assert comm.allreduce_bytes == [24 * (C + 1)]  # the forward only: nothing to reduce


def test_one_collective_each_way_and_its_size():
    C = 6
    comm = counting_world()
    sync = cybn.SyncBatchNorm(C, comm=comm, dtype=F64)
    x = local_rng(1).standard_normal((3, C))
    sync(x)
    after_forward = list(comm.allreduce_bytes)
    sync.backward(np.ones_like(x))
    assert after_forward == [24 * (C + 1)]  # C + 1 records of 3 doubles
    assert comm.allreduce_bytes == [24 * (C + 1), 8 * (2 * C + 1)]


def test_eval_is_local():
    C = 4
    comm = counting_world()
    sync = cybn.SyncBatchNorm(C, comm=comm, dtype=F64)
    rng = local_rng(2)
    sync(rng.standard_normal((4, C)))  # one training step: identical running stats
    n_before = len(comm.allreduce_bytes)
    sync.eval()
    ref = cybn.BatchNorm1d(C, dtype=F64).eval()
    ref.load_state_dict(sync.state_dict())
    # a different number of calls on each rank: would deadlock if eval communicated
    results = []
    for _ in range(RANK + 1):
        x = rng.standard_normal((RANK + 2, C))
        dy = rng.standard_normal(x.shape)
        results.append((sync(x), ref(x), sync.backward(dy), ref.backward(dy),
                        sync.grad_weight.copy(), ref.grad_weight.copy()))
    n_after = len(comm.allreduce_bytes)
    COMM.Barrier()
    assert n_after == n_before
    for y, Y, g, G, gw, GW in results:
        assert_close(y, Y)
        assert_close(g, G)
        assert_close(gw, GW)


def test_eval_without_running_stats_uses_local_batch():
    C = 3
    sync = cybn.SyncBatchNorm(C, dtype=F64, track_running_stats=False).eval()
    x = local_rng(4).standard_normal((RANK + 2, C))
    ref = cybn.BatchNorm1d(C, dtype=F64, track_running_stats=False).eval()
    assert_close(sync(x), ref(x))


def test_invalid_input_on_one_rank_raises_everywhere():
    C = 3
    sync = cybn.SyncBatchNorm(C, dtype=F64)
    good = local_rng(6).standard_normal((3, C))
    bad = np.ones((3, C + 1)) if RANK == 0 else good
    error = None
    try:
        sync(bad)
    except (ValueError, RuntimeError) as exc:
        error = exc
    nbt_after_error = int(sync.num_batches_tracked)
    y = sync(good)  # everyone is still in step
    grad_error = None
    try:
        sync.backward(np.ones((2, C)) if RANK == SIZE - 1 else np.ones_like(good))
    except (ValueError, RuntimeError) as exc:
        grad_error = exc
    g = sync.backward(np.ones_like(good))
    assert error is not None
    if RANK == 0:
        assert isinstance(error, ValueError) and "should contain" in str(error)
    else:
        assert isinstance(error, RuntimeError) and "another rank" in str(error)
    assert nbt_after_error == 0
    assert y.shape == g.shape == good.shape
    assert grad_error is not None
    if RANK == SIZE - 1:
        assert isinstance(grad_error, ValueError) and "grad_output" in str(grad_error)
    else:
        assert isinstance(grad_error, RuntimeError) and "another rank" in str(grad_error)


def test_check_finite_raises_on_every_rank():
    C = 3
    sync = cybn.SyncBatchNorm(C, dtype=F64, check_finite=True)
    x = local_rng(8).standard_normal((2, C))
    if RANK == SIZE - 1:
        x[1, 2] = np.nan
    error = None
    try:
        sync(x)
    except ValueError as exc:
        error = exc
    assert error is not None and "channel(s) [2]" in str(error)
    assert int(sync.num_batches_tracked) == 0
    assert_close(sync.running_mean, np.zeros(C))


def test_from_module_shares_state():
    C = 4
    rng = np.random.default_rng(12)  # same on every rank
    bn = cybn.BatchNorm1d(C, dtype=F64, momentum=0.3)
    bn(rng.standard_normal((6, C)))  # some non-trivial state, identical on all ranks
    bn.weight[...] = rng.uniform(0.5, 2, C)
    ref = cybn.BatchNorm1d(C, dtype=F64, momentum=0.3)
    ref.load_state_dict(bn.state_dict())
    sync = cybn.SyncBatchNorm.from_module(bn)
    x = local_rng(13).standard_normal((RANK + 2, C))
    X = gathered(x)
    y = sync(x)
    Y = ref(X)[sum(range(2, RANK + 2)):][:RANK + 2]
    assert sync.weight is bn.weight and sync.running_mean is bn.running_mean
    assert sync.num_batches_tracked is bn.num_batches_tracked
    assert sync.momentum == 0.3 and sync.comm == COMM
    assert_close(y, Y)
    assert_close(bn.running_var, ref.running_var)  # updated through the shared arrays
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("layout", ["reversed", "fortran", "float16"])
def test_inputs_the_forward_must_copy(layout):
    # float16 input and layouts that are no axis permutation of C order are copied by the
    # forward and copied again by backward (the cache holds the input by reference)
    sizes = local_sizes("unequal")
    C = 3
    rng = local_rng(14)
    base = rng.standard_normal((sizes[RANK], C, 4))
    dy = rng.standard_normal(base.shape)
    if layout == "reversed":
        x = base[::-1, :, ::-1].copy()[::-1, :, ::-1]  # negative strides
    elif layout == "fortran":
        x = np.asfortranarray(base)
    else:
        x = base.astype(np.float16)
        dy = dy.astype(np.float16)
    X, DY = gathered(np.ascontiguousarray(x)), gathered(np.ascontiguousarray(dy))
    dt = F64 if layout != "float16" else np.float32
    sync = cybn.SyncBatchNorm(C, dtype=dt)
    ref = cybn.BatchNorm1d(C, dtype=dt)
    y, g = sync(x), sync.backward(dy)
    assert y.dtype == g.dtype == x.dtype
    assert_close(y, ref(X)[my_rows(sizes)])
    assert_close(g, ref.backward(DY)[my_rows(sizes)])
    assert_close(sync.grad_weight, ref.grad_weight)


def test_out_buffers_equal_returned_arrays():
    # forward(out=) and backward(out=) write what the calls return without them, and a bad
    # out on one rank makes every rank raise with nothing changed (the collective is made)
    rng = local_rng(11)
    x = rng.standard_normal((5 + RANK, 4)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    a, b = cybn.SyncBatchNorm(4), cybn.SyncBatchNorm(4)
    y = a(x, out=np.empty_like(x))
    gi = a.backward(g, out=np.empty_like(x))
    assert y.tobytes() == b(x).tobytes()
    assert gi.tobytes() == b.backward(g).tobytes()
    before = {k: np.array(v) for k, v in a.state_dict().items()}
    bad = np.empty(x.shape, np.float64) if RANK == 0 else np.empty_like(x)
    with pytest.raises((TypeError, RuntimeError)):
        a(x, out=bad)
    assert all(np.array(v).tobytes() == before[k].tobytes()
               for k, v in a.state_dict().items())


@pytest.mark.parametrize("pattern", ["equal", "unequal", "first_empty"])
def test_renorm_matches_single_process(pattern):
    # batch renormalization with the global batch's statistics
    sizes = local_sizes(pattern)
    C = 4
    shared = np.random.default_rng(3)
    state = {"weight": shared.uniform(0.5, 2.0, C), "bias": shared.normal(size=C),
             "running_mean": shared.normal(size=C), "running_var": shared.uniform(0.3, 3, C)}
    kw = dict(dtype=F64, renorm=True, rmax=1.5, dmax=0.4)
    sync = cybn.SyncBatchNorm(C, **kw)
    ref = cybn.BatchNorm1d(C, **kw)
    for m in (sync, ref):
        m.load_state_dict(state, strict=False)
    rng = local_rng(5)
    rows = my_rows(sizes)
    x = 1.0 + 2.0 * rng.standard_normal((sizes[RANK], C, 3))
    dy = rng.standard_normal(x.shape)
    X, DY = gathered(x), gathered(dy)
    y, g = sync(x), sync.backward(dy)
    Y, G = ref(X)[rows], ref.backward(DY)[rows]
    identical = same_everywhere(sync.grad_weight)
    assert_close(y, Y)
    assert_close(g, G)
    assert_close(sync.grad_weight, ref.grad_weight)
    assert_close(sync.running_var, ref.running_var)
    assert identical


def test_population_stats_use_the_global_batches():
    sizes = local_sizes("unequal")
    C = 3
    sync = cybn.SyncBatchNorm(C, dtype=F64)
    rng = local_rng(9)
    xs = [50.0 + 3.0 * rng.standard_normal((sizes[RANK] + k, C, 2)) for k in range(3)]
    with cybn.population_stats(sync):
        for x in xs:
            sync(x)
    everything = np.concatenate([gathered(x) for x in xs])
    identical = same_everywhere(sync.running_var)
    flat = np.moveaxis(everything, 1, -1).reshape(-1, C)
    np.testing.assert_allclose(sync.running_mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sync.running_var, flat.var(axis=0, ddof=1), rtol=1e-12)
    assert int(sync.num_batches_tracked) == 3
    assert identical
