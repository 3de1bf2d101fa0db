"""Demo of cybn, run with ``python -m cybn``.

It shows the build's threading setup, the classic two-row BatchNorm1d example,
and a small plain-NumPy MLP trained on scikit-learn's handwritten digits, once
with ``cybn.BatchNorm1d(activation="relu")`` (batch norm and ReLU fused), once
with batch norm followed by a separate NumPy ReLU (to show the time the fusion
saves), and once without batch norm.
"""

import argparse
import sys
import time

import numpy as np

import cybn

HIDDEN = 64
BATCH_SIZE = 32
LEARNING_RATE = 0.1
EPOCHS = 20
TEST_PER_CLASS = 36  # 10 digits x 36 = 360 held out, 1,437 left for training
DTYPE = np.dtype(np.float32)  # a dtype, not the scalar class (stubtest: disjoint base)

MATPLOTLIB_MISSING = (
    "--plot needs matplotlib, which is not installed.\n"
    'Install it with: pip install "cybn[plot]"   (or pip install ".[plot]" from a checkout)'
)
SKLEARN_MISSING = (
    "The digits part of the demo needs scikit-learn, which is not installed.\n"
    'Install it with: pip install "cybn[demo]"   (or pip install ".[demo]" from a checkout)'
)


# --------------------------------------------------------------------------- #
# Parts 1 and 2: build info and the classic example
# --------------------------------------------------------------------------- #


def print_build_info():
    """Print the cybn version, whether OpenMP is on, and the thread count."""
    openmp = "on" if cybn.openmp_enabled() else "off"
    print(f"cybn {cybn.__version__} | OpenMP: {openmp} | threads: {cybn.get_num_threads()}")


def classic_example():
    """Run BatchNorm1d(3) on one 2x3 batch in train mode, then in eval mode."""
    print("\n== BatchNorm1d(3) on a 2x3 batch ==")
    m = cybn.BatchNorm1d(3)
    x = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]], dtype=DTYPE)
    print(m)
    with np.printoptions(precision=6, suppress=True):
        print("input:\n", x, sep="")
        print("train-mode output (batch statistics):\n", m(x), sep="")
        print("running_mean after one step:", m.running_mean)
        print("running_var  after one step:", m.running_var)
        m.eval()
        print("eval-mode output (running statistics):\n", m(x), sep="")


# --------------------------------------------------------------------------- #
# Part 3: MLP on the digits
# --------------------------------------------------------------------------- #


def load_data(seed):
    """Load the digits and split them, holding out the same count of each digit.

    Parameters
    ----------
    seed : int
        Seed of the split's shuffle.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarray
        Pixels scaled to [0, 1] as float32 of shape (n, 64); labels as int64.
    """
    from sklearn.datasets import load_digits  # optional dependency: main() handles ImportError

    digits = load_digits()
    X = (digits.data / 16.0).astype(DTYPE)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == k))[:TEST_PER_CLASS] for k in range(10)]
    )
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    return X[~is_test], y[~is_test], X[is_test], y[is_test]


def init_params(rng, n_in, n_hidden, n_out):
    """He-initialised weights and zero biases of the two Linear layers.

    Returns
    -------
    params : dict of ndarray
        ``W1`` (n_in, n_hidden), ``b1`` (n_hidden,), ``W2`` (n_hidden, n_out), ``b2`` (n_out,).
    """

    def he(fan_in, fan_out):
        return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)

    return {
        "W1": he(n_in, n_hidden),
        "b1": np.zeros(n_hidden, dtype=DTYPE),
        "W2": he(n_hidden, n_out),
        "b2": np.zeros(n_out, dtype=DTYPE),
    }


def linear_forward(x, W, b):
    """Return ``x @ W + b`` for x of shape (N, n_in)."""
    return x @ W + b


def linear_backward(grad_output, x, W):
    """Gradients of ``x @ W + b``.

    Returns
    -------
    grad_input, grad_W, grad_b : ndarray
        Shapes (N, n_in), (n_in, n_out) and (n_out,).
    """
    return grad_output @ W.T, x.T @ grad_output, grad_output.sum(axis=0)


def softmax_xent(logits, y):
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Returns
    -------
    loss : float
    grad_logits : ndarray of shape (N, n_classes)
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -log_probs[np.arange(n), y].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), y] -= 1.0
    return float(loss), grad / DTYPE.type(n)


class Identity:
    """Stand-in for BatchNorm1d in the run without batch norm."""

    weight = bias = grad_weight = grad_bias = None

    def __call__(self, x):
        return x

    def backward(self, grad_output):
        return grad_output

    def train(self, mode=True):
        return self

    def eval(self):
        return self


class _Timed:
    """Wrap a norm layer and add the wall time of its forward/backward calls to ``seconds``."""

    def __init__(self, layer):
        self.layer = layer
        self.seconds = 0.0

    def train(self, mode=True):
        self.layer.train(mode)
        return self

    def eval(self):
        self.layer.eval()
        return self

    def __call__(self, x):
        t0 = time.perf_counter()
        out = self.layer(x)
        self.seconds += time.perf_counter() - t0
        return out

    def backward(self, grad_output):
        t0 = time.perf_counter()
        grad_input = self.layer.backward(grad_output)
        self.seconds += time.perf_counter() - t0
        return grad_input


def _fused(norm):
    layer = getattr(norm, "layer", norm)
    return getattr(layer, "activation", None) == "relu"


def predict(params, norm, X):
    """Class predictions with ``norm`` in eval mode; ``norm`` is left in train mode
    (its ReLU, when fused, is applied again here: ReLU is idempotent)."""
    norm.eval()
    h = np.maximum(norm(linear_forward(X, params["W1"], params["b1"])), 0)
    norm.train()
    return linear_forward(h, params["W2"], params["b2"]).argmax(axis=1)


def train_one(data, norm, *, epochs, seed):
    """Train Linear -> norm -> ReLU -> Linear with minibatch SGD.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)`` from :func:`load_data`.
    norm : cybn.BatchNorm1d or Identity
        Layer between the first Linear and the ReLU; its parameters are trained too. A
        module with ``activation="relu"`` applies the ReLU itself (fused, and its backward
        takes the ReLU's gradient too); else the ReLU is a separate NumPy step, whose time
        counts as the layer's (``norm_seconds``) when ``norm`` is a batch norm.
    epochs, seed : int
        The seed fixes the initial weights and the minibatch order, so runs
        with the same seed differ only in ``norm``.

    Returns
    -------
    history : dict
        ``loss`` and ``acc`` (one per epoch: mean train loss, held-out accuracy),
        ``norm_seconds`` (time inside ``norm``) and ``total_seconds``.
    """
    X_train, y_train, X_test, y_test = data
    rng = np.random.default_rng(seed)
    params = init_params(rng, X_train.shape[1], HIDDEN, 10)
    timed = _Timed(norm)
    history = {"loss": [], "acc": []}
    fused = _fused(norm)
    relu_timed = isinstance(norm, cybn.BatchNorm1d) and not fused
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        losses = []
        for i in range(0, len(order), BATCH_SIZE):
            batch = order[i : i + BATCH_SIZE]
            x, y = X_train[batch], y_train[batch]
            z = linear_forward(x, params["W1"], params["b1"])
            if fused:
                a = timed(z)  # relu(bn(z)) in one call
            else:
                h = timed(z)
                t0 = time.perf_counter()
                a = np.maximum(h, 0)
                if relu_timed:
                    timed.seconds += time.perf_counter() - t0
            logits = linear_forward(a, params["W2"], params["b2"])
            loss, grad_logits = softmax_xent(logits, y)
            losses.append(loss)

            grad_a, grad_W2, grad_b2 = linear_backward(grad_logits, a, params["W2"])
            if fused:
                grad_z = timed.backward(grad_a)  # through the ReLU and the batch norm
            else:
                t0 = time.perf_counter()
                grad_h = grad_a * (h > 0)
                if relu_timed:
                    timed.seconds += time.perf_counter() - t0
                grad_z = timed.backward(grad_h)
            _, grad_W1, grad_b1 = linear_backward(grad_z, x, params["W1"])

            grads = {"W1": grad_W1, "b1": grad_b1, "W2": grad_W2, "b2": grad_b2}
            for name, grad in grads.items():
                params[name] -= LEARNING_RATE * grad
            # In place: the module owns its weight and bias arrays.
            for p, grad in ((norm.weight, norm.grad_weight), (norm.bias, norm.grad_bias)):
                if p is not None:
                    p -= LEARNING_RATE * grad
        history["loss"].append(float(np.mean(losses)))
        history["acc"].append(float((predict(params, timed, X_test) == y_test).mean()))
    history["norm_seconds"] = timed.seconds
    history["total_seconds"] = time.perf_counter() - start
    return history


def print_table(with_bn, without_bn):
    """Print the per-epoch comparison and the final accuracies."""
    header = ("epoch", "train loss, BN", "test acc, BN", "train loss, no BN", "test acc, no BN")
    print(" | ".join(header))
    print("-+-".join("-" * len(h) for h in header))
    rows = zip(with_bn["loss"], with_bn["acc"], without_bn["loss"], without_bn["acc"], strict=True)
    for epoch, (l_bn, a_bn, l_no, a_no) in enumerate(rows, start=1):
        print(f"{epoch:>5} | {l_bn:>14.4f} | {a_bn:>12.2%} | {l_no:>17.4f} | {a_no:>15.2%}")
    print(
        f"\nfinal held-out accuracy: with BN {with_bn['acc'][-1]:.2%}, "
        f"without BN {without_bn['acc'][-1]:.2%}"
    )


def print_timing(with_bn, without_bn, separate=None):
    """Print the wall time spent inside cybn against the runs' totals, and what fusing
    the ReLU into the batch norm saved against batch norm then a separate NumPy ReLU."""
    bn_s, total_s = with_bn["norm_seconds"], with_bn["total_seconds"]
    rows = [
        ("inside cybn calls (BN + ReLU fused, fwd + bwd)", bn_s, ""),
        ("BN run in total (training + evaluation)", total_s, f"  ({bn_s / total_s:.0%} in cybn)"),
        ("run without BN in total", without_bn["total_seconds"], ""),
    ]
    if separate is not None:
        sep_s = separate["norm_seconds"]
        saved = sep_s - bn_s
        rows.insert(1, ("BN then a separate NumPy ReLU (fwd + bwd)", sep_s, ""))
        rows.insert(2, ("time saved by the fusion", saved,
                        f"  ({saved / sep_s:.0%} of BN + ReLU)" if sep_s > 0 else ""))
    print("\nwall time:")
    for label, seconds, note in rows:
        print(f"  {label:<51} {seconds:6.3f} s{note}")


def digits_demo(epochs, seed):
    """Train the MLP with and without batch norm and print the comparison."""
    data = load_data(seed)
    n_train, n_test = len(data[1]), len(data[3])
    print("\n== MLP on scikit-learn's handwritten digits (sklearn.datasets.load_digits) ==")
    print(
        f"{n_train + n_test:,} 8x8 images, pixels / 16; {n_train:,} train / {n_test:,} held out "
        f"({TEST_PER_CLASS} per digit); seed {seed}"
    )
    print(
        f"Linear(64, {HIDDEN}) -> BatchNorm1d({HIDDEN}, activation='relu') (batch norm and "
        f"ReLU fused), or identity -> ReLU -> Linear({HIDDEN}, 10)"
    )
    print(
        f"softmax cross-entropy, He init, plain SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, "
        f"{epochs} epochs, float32\n"
    )
    with_bn = train_one(data, cybn.BatchNorm1d(HIDDEN, activation="relu"), epochs=epochs,
                        seed=seed)
    # the same network with the ReLU as a separate NumPy step, for the time it costs
    separate = train_one(data, cybn.BatchNorm1d(HIDDEN), epochs=epochs, seed=seed)
    without_bn = train_one(data, Identity(), epochs=epochs, seed=seed)
    print_table(with_bn, without_bn)
    print_timing(with_bn, without_bn, separate)
    return with_bn, without_bn


def plot_curves(with_bn, without_bn, path, *, seed):
    """Write the two runs' training curves to an image file (PNG, SVG or PDF by suffix).

    Parameters
    ----------
    with_bn, without_bn : dict
        Histories from :func:`train_one`.
    path : str or path-like
        The file to write; its suffix picks the format (matplotlib's ``savefig``).
    seed : int
        The runs' seed, shown in the title.

    Raises
    ------
    ImportError
        If matplotlib is not installed (the ``plot`` extra).
    """
    # The object-oriented API with an Agg canvas: no pyplot, so no GUI backend is chosen
    # and nothing global changes in the caller's matplotlib state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(with_bn["loss"]) + 1)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for history, label, style in ((with_bn, f"with BatchNorm1d({HIDDEN})", "-o"),
                                  (without_bn, "without batch norm", "--s")):
        loss_ax.plot(epochs, history["loss"], style, ms=3, label=label)
        acc_ax.plot(epochs, np.asarray(history["acc"]) * 100, style, ms=3, label=label)
    loss_ax.set(xlabel="epoch", ylabel="mean training loss (cross-entropy)", yscale="log",
                title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="held-out accuracy (%)", title="held-out accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"python -m cybn: NumPy MLP on scikit-learn's digits, SGD lr "
                 f"{LEARNING_RATE}, batch {BATCH_SIZE}, seed {seed} (cybn {cybn.__version__})")
    fig.savefig(path, dpi=110)


def main(argv=None):
    """Run the demo; return the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m cybn",
        description="cybn demo: BatchNorm1d on a toy batch, then in a NumPy MLP on the digits.",
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, init and batch order (default 0)"
    )
    parser.add_argument(
        "--plot", metavar="FILE",
        help="also write the training curves to FILE (.png, .svg or .pdf; needs matplotlib)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # say so before minutes of training, not after
            print(MATPLOTLIB_MISSING, file=sys.stderr)
            return 1

    start = time.perf_counter()
    print_build_info()
    classic_example()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("\n" + SKLEARN_MISSING, file=sys.stderr)
        return 1  # non-zero so that CI running the demo notices the missing extra
    with_bn, without_bn = digits_demo(args.epochs, args.seed)
    if args.plot is not None:
        plot_curves(with_bn, without_bn, args.plot, seed=args.seed)
        print(f"\ntraining curves written to {args.plot}")
    print(f"whole demo: {time.perf_counter() - start:.2f} s")
    return 0
