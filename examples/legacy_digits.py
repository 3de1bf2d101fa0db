"""Switch a legacy NumPy network to cybn in one step, and show that nothing else changes.

    python examples/legacy_digits.py cs231n     # the cs231n-style package in legacy_cs231n/
    python examples/legacy_digits.py dlfs       # the book-style package in legacy_dlfs/

Each run trains the same network on scikit-learn's handwritten digits twice, in float64
and from the same seed: first with the package's own batch norm, then after

    cybn.compat.patch("cs231n")     # or "common"

and prints both per-epoch histories, their largest difference (it must stay below 1e-10:
the exit status is 1 otherwise) and the time spent inside batch norm each way. The
networks in legacy_cs231n/ and legacy_dlfs/ are cybn's own example code written in each
convention; nothing in them knows about cybn.
"""

import argparse
import contextlib
import importlib
import os
import sys
import time

import numpy as np

import cybn.compat

HERE = os.path.dirname(os.path.abspath(__file__))
BN_NAMES = ("batchnorm_forward", "batchnorm_forward_alt", "batchnorm_backward",
            "batchnorm_backward_alt", "spatial_batchnorm_forward", "spatial_batchnorm_backward")


def load_digits_split(seed=0):
    from sklearn.datasets import load_digits  # the [demo] / [test] extra

    digits = load_digits()
    X = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    return X[360:], y[360:], X[:360], y[:360]


class Clock:
    """Seconds spent inside the wrapped batch-norm calls."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, func):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed


@contextlib.contextmanager
def timing_module_functions(modules, clock):
    """Time every batch-norm function bound in the modules (the cs231n way of calling)."""
    saved = []
    for module in modules:
        for name in BN_NAMES:
            if name in vars(module):
                saved.append((module, name, vars(module)[name]))
                setattr(module, name, clock.wrap(vars(module)[name]))
    try:
        yield
    finally:
        for module, name, func in saved:
            setattr(module, name, func)


def train_cs231n(epochs, batch, clock):
    fc_net = importlib.import_module("cs231n.classifiers.fc_net")
    modules = [sys.modules[n] for n in ("cs231n.layers", "cs231n.layer_utils",
                                        "cs231n.classifiers.fc_net")]
    Xtr, ytr, Xva, yva = load_digits_split()
    net = fc_net.FullyConnectedNet([100, 100], 64, 10, normalization="batchnorm",
                                   weight_scale=0.05, reg=1e-4, dtype=np.float64, seed=0)
    order_rng = np.random.default_rng(1)
    history = []
    with timing_module_functions(modules, clock):
        for _ in range(epochs):
            losses = []
            for idx in np.array_split(order_rng.permutation(len(ytr)), len(ytr) // batch):
                loss, grads = net.loss(Xtr[idx], ytr[idx])
                for k, g in grads.items():
                    net.params[k] -= 0.1 * g
                losses.append(loss)
            acc = float(np.mean(net.loss(Xva).argmax(axis=1) == yva))
            history.append((float(np.mean(losses)), acc))
    params = np.concatenate([v.ravel() for v in net.params.values()])
    running = np.concatenate([p["running_var"].ravel() for p in net.bn_params])
    return history, params, running


def train_dlfs(epochs, batch, clock):
    net_module = importlib.import_module("common.multi_layer_net_extend")
    optimizer = importlib.import_module("common.optimizer").SGD(lr=0.1)
    Xtr, ytr, Xva, yva = load_digits_split()
    net = net_module.MultiLayerNetExtend(64, [100, 100], 10, use_batchnorm=True, seed=0)
    for key, layer in net.layers.items():  # time the BatchNormalization layers
        if key.startswith("BatchNorm"):
            layer.forward = clock.wrap(layer.forward)
            layer.backward = clock.wrap(layer.backward)
    order_rng = np.random.default_rng(1)
    history = []
    for _ in range(epochs):
        losses = []
        for idx in np.array_split(order_rng.permutation(len(ytr)), len(ytr) // batch):
            grads = net.gradient(Xtr[idx], ytr[idx])
            optimizer.update(net.params, grads)
            losses.append(net.loss(Xtr[idx], ytr[idx], train_flg=False))
        history.append((float(np.mean(losses)), net.accuracy(Xva, yva)))
    params = np.concatenate([v.ravel() for v in net.params.values()])
    running = np.concatenate([net.layers[k].running_var for k in net.layers if "BatchNorm" in k])
    return history, params, running


CONVENTIONS = {
    "cs231n": ("legacy_cs231n", "cs231n", "cs231n.classifiers.fc_net", train_cs231n),
    "dlfs": ("legacy_dlfs", "common", "common.multi_layer_net_extend", train_dlfs),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("convention", choices=sorted(CONVENTIONS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)
    folder, package, network_module, train = CONVENTIONS[args.convention]
    sys.path.insert(0, os.path.join(HERE, folder))
    importlib.import_module(network_module)  # the legacy package, as its users import it

    legacy_clock, cybn_clock = Clock(), Clock()
    legacy = train(args.epochs, args.batch, legacy_clock)
    report = cybn.compat.patch(package)  # <- the one step
    try:
        switched = train(args.epochs, args.batch, cybn_clock)
    finally:
        cybn.compat.unpatch(package)

    print(report)
    print(f"\n{args.convention}: {args.epochs} epochs, batch {args.batch}, float64")
    print(f"{'epoch':>5} | {'legacy loss':>14} {'val acc':>8} | {'cybn loss':>14} {'val acc':>8}")
    for i, ((l0, a0), (l1, a1)) in enumerate(zip(legacy[0], switched[0]), 1):
        print(f"{i:>5} | {l0:14.10f} {a0:8.4f} | {l1:14.10f} {a1:8.4f}")
    diff = max(
        max(abs(l0 - l1) for (l0, _), (l1, _) in zip(legacy[0], switched[0])),
        float(np.abs(legacy[1] - switched[1]).max()),
        float(np.abs(legacy[2] - switched[2]).max()))
    print(f"largest difference (losses, parameters, running variances): {diff:.2e}")
    print(f"time in batch norm: legacy {legacy_clock.seconds * 1e3:.1f} ms, cybn "
          f"{cybn_clock.seconds * 1e3:.1f} ms ({legacy_clock.calls} calls each; "
          f"{legacy_clock.seconds / max(cybn_clock.seconds, 1e-12):.1f}x)")
    if diff > 1e-10:
        print("FAILED: the histories differ by more than 1e-10", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
