"""cybn.compat.patch / unpatch on synthetic packages laid out like real legacy code.

Each test writes a small package into tmp_path (unique names, removed from sys.modules
afterwards): the cs231n layout (``layers`` defining the functions, ``layer_utils`` and
``classifiers/fc_net`` star-importing them) and the book's layout (``common/layers`` with
the class, ``common/multi_layer_net_extend`` star-importing it). The legacy code in them is
written here, in each convention, and is also the oracle: a training step before and after
the switch must agree to 1e-10 (float64).
"""

import importlib
import itertools
import sys
import textwrap
import warnings

import numpy as np
import pytest

import cybn.compat as CP

_COUNTER = itertools.count()

CS231N_LAYERS = '''
import _legacy

# the handout's signatures, each delegating to the tests' oracle of the convention
def batchnorm_forward(x, gamma, beta, bn_param):
    return _legacy.cs231n_forward(x, gamma, beta, bn_param)

def batchnorm_backward_alt(dout, cache):
    return _legacy.cs231n_backward_alt(dout, cache)

def batchnorm_backward(dout, cache):
    return _legacy.cs231n_backward_graph(dout, cache)

def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    return _legacy.cs231n_spatial_forward(x, gamma, beta, bn_param)

def spatial_batchnorm_backward(dout, cache):
    return _legacy.cs231n_spatial_backward(dout, cache)

def layernorm_forward(x, gamma, beta, ln_param):
    return x, None
'''

CS231N_UTILS = '''
from {pkg}.layers import *

def affine_bn_forward(x, w, gamma, beta, bn_param):
    out, bn_cache = batchnorm_forward(x @ w, gamma, beta, bn_param)
    return out, (x, w, bn_cache)

def affine_bn_backward(dout, cache):
    x, w, bn_cache = cache
    da, dgamma, dbeta = batchnorm_backward_alt(dout, bn_cache)
    return da @ w.T, x.T @ da, dgamma, dbeta
'''

CS231N_NET = '''
import numpy as np
from {pkg}.layers import *
from {pkg}.layer_utils import *

def step(x, w, gamma, beta, bn_param, dout, x4, g4, b4, p4):
    out, cache = affine_bn_forward(x, w, gamma, beta, bn_param)
    grads = affine_bn_backward(dout, cache)
    out4, cache4 = spatial_batchnorm_forward(x4, g4, b4, p4)
    grads4 = spatial_batchnorm_backward(np.cos(out4), cache4)
    direct, c2 = batchnorm_forward(out, gamma, beta, dict(bn_param, mode="train"))
    grads2 = batchnorm_backward(np.sin(direct), c2)
    return (out, *grads, out4, *grads4, direct, *grads2)
'''

BOOK_LAYERS = '''
import _legacy

class BatchNormalization(_legacy.BookBatchNormalization):
    """The book's layer (the tests' oracle), defined in this package's layers module."""
'''

BOOK_NET = '''
import numpy as np
from {pkg}.layers import *

class Net:
    def __init__(self, D):
        self.params = {{"gamma1": np.ones(D), "beta1": np.zeros(D)}}
        self.bn = BatchNormalization(self.params["gamma1"], self.params["beta1"])

    def train_step(self, x, dout, lr=0.1):
        y = self.bn.forward(x, True)
        dx = self.bn.backward(dout)
        grads = {{"gamma1": self.bn.dgamma, "beta1": self.bn.dbeta}}
        for k in self.params:
            self.params[k] -= lr * grads[k]  # in place: the layer must see it
        return y, dx, self.bn.forward(x, False)
'''


def _write_package(root, files):
    pkg = f"legacy_pkg_{next(_COUNTER)}"
    for rel, text in files.items():
        path = root / pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(pkg=pkg))
    return pkg


@pytest.fixture
def make_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(files):
        pkg = _write_package(tmp_path, files)
        made.append(pkg)
        importlib.invalidate_caches()
        return pkg

    yield make
    loaded = [pkg for pkg in made if pkg in sys.modules]
    if loaded:
        CP.unpatch(*loaded)  # all at once: none of them is "outside" the others
    for pkg in made:
        for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
            del sys.modules[name]


def cs231n_package(make_package, extra=None):
    files = {"__init__.py": "", "layers.py": CS231N_LAYERS, "layer_utils.py": CS231N_UTILS,
             "classifiers/__init__.py": "", "classifiers/fc_net.py": CS231N_NET}
    files.update(extra or {})
    pkg = make_package(files)
    importlib.import_module(f"{pkg}.classifiers.fc_net")
    return pkg


def _cs231n_inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 5))
    w = rng.standard_normal((5, 4))
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    x4 = rng.standard_normal((3, 2, 4, 5))
    g4, b4 = rng.uniform(0.5, 2, 2), rng.standard_normal(2)
    return x, w, gamma, beta, rng.standard_normal((8, 4)), x4, g4, b4


def _run_cs231n(net, seed=0):
    x, w, gamma, beta, dout, x4, g4, b4 = _cs231n_inputs(seed)
    p, p4 = {"mode": "train"}, {"mode": "train"}
    results = net.step(x, w, gamma, beta, p, dout, x4, g4, b4, p4)
    return results + (p["running_mean"], p["running_var"], p4["running_var"])


def test_patch_switches_every_namespace_of_a_cs231n_package(make_package):
    pkg = cs231n_package(make_package)
    net = sys.modules[f"{pkg}.classifiers.fc_net"]
    legacy = _run_cs231n(net)
    originals = {m: dict(vars(sys.modules[f"{pkg}.{m}"])) for m in
                 ("layers", "layer_utils", "classifiers.fc_net")}
    report = CP.patch(pkg)
    changed = {(m, n) for m, n, _, _ in report.changed}
    for mod in ("layers", "layer_utils", "classifiers.fc_net"):
        for name in ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
                     "spatial_batchnorm_forward", "spatial_batchnorm_backward"):
            assert (f"{pkg}.{mod}", name) in changed
            assert getattr(sys.modules[f"{pkg}.{mod}"], name) is getattr(CP, name)
    assert sys.modules[f"{pkg}.layers"].layernorm_forward is originals["layers"][
        "layernorm_forward"]  # not batch norm: untouched
    assert "replaced" in str(report) and report.elsewhere == []
    switched = _run_cs231n(net)
    assert len(legacy) == len(switched) == 16
    for i, (a, b) in enumerate(zip(legacy, switched)):
        assert a.shape == b.shape, i
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10, err_msg=str(i))
    # idempotent
    again = CP.patch(pkg)
    assert again.changed == [] and len(again.unchanged) == len(report.changed)
    assert all(why == "already cybn's" for _, _, why in again.unchanged)
    # unpatch restores every original object
    back = CP.unpatch(pkg)
    assert len(back.changed) == len(report.changed)
    for mod, namespace in originals.items():
        for name, obj in namespace.items():
            assert vars(sys.modules[f"{pkg}.{mod}"])[name] is obj, (mod, name)
    np.testing.assert_array_equal(_run_cs231n(net)[0], legacy[0])
    assert CP.unpatch(pkg).changed == []


def test_patch_single_module_warns_about_other_bindings(make_package):
    pkg = cs231n_package(make_package)
    with pytest.warns(UserWarning, match="still bind"):
        report = CP.patch(f"{pkg}.layers")
    assert {m for m, _ in report.elsewhere} == {f"{pkg}.layer_utils", f"{pkg}.classifiers.fc_net"}
    # the network's own calls are not switched, but each namespace stays consistent
    net = sys.modules[f"{pkg}.classifiers.fc_net"]
    CP.unpatch(f"{pkg}.layers")
    legacy = _run_cs231n(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CP.patch(sys.modules[f"{pkg}.layers"])
    for a, b in zip(legacy, _run_cs231n(net)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


def test_patch_several_targets_and_main_like_modules(make_package):
    pkg = cs231n_package(make_package)
    notebook = make_package({"__init__.py": f"from {pkg}.layers import batchnorm_forward\n"})
    importlib.import_module(notebook)
    with pytest.warns(UserWarning, match="not both a forward and a backward"):
        report = CP.patch(notebook)  # a forward alone would hand cybn's cache to legacy code
    assert report.changed == []
    assert sys.modules[notebook].batchnorm_forward is not CP.batchnorm_forward
    report = CP.patch(notebook, pkg)
    assert sys.modules[notebook].batchnorm_forward is CP.batchnorm_forward
    assert (notebook, "batchnorm_forward") in {(m, n) for m, n, _, _ in report.changed}


def test_patch_leaves_other_conventions_alone(make_package):
    # a blog-style forward(x, gamma, beta, eps) with another cache: not the handout's
    other = make_package({
        "__init__.py": "",
        "bn.py": '''
            def batchnorm_forward(x, gamma, beta, eps):
                return x, (x, eps)
            def batchnorm_backward(dout, cache):
                return dout, None, None
            class BatchNormalization:  # a framework layer, not the book's
                def __init__(self, axis=-1, momentum=0.99):
                    self.axis = axis
        ''',
    })
    mod = importlib.import_module(f"{other}.bn")
    before = dict(vars(mod))
    with pytest.warns(UserWarning, match="not switched"):
        report = CP.patch(other)
    assert report.changed == []
    reasons = {n: why for _, n, why in report.unchanged}
    assert "not the handout's forward(x, gamma, beta, bn_param)" in reasons["batchnorm_forward"]
    assert "not the book's layer" in reasons["BatchNormalization"]
    assert vars(mod) == before


def test_patch_nothing_known_raises(make_package):
    empty = make_package({"__init__.py": "x = 1\n"})
    with pytest.raises(ValueError, match="no batch-norm name of a known convention"):
        CP.patch(empty)
    with pytest.raises(TypeError, match="at least one target"):
        CP.patch()
    with pytest.raises(TypeError, match="a target must be a module"):
        CP.patch(42)
    with pytest.raises(ModuleNotFoundError):
        CP.patch("no_such_module_cybn_test")


def test_star_import_after_own_imports_switches_a_module(make_package):
    pkg = cs231n_package(make_package, {
        "classifiers/star_net.py": CS231N_NET + "\nfrom cybn.compat import *\n",
    })
    star = importlib.import_module(f"{pkg}.classifiers.star_net")
    plain = sys.modules[f"{pkg}.classifiers.fc_net"]
    for name in ("batchnorm_forward", "batchnorm_backward_alt", "spatial_batchnorm_forward"):
        assert getattr(star, name) is getattr(CP, name)
    # star_net calls cybn directly and the legacy sandwich helpers (consistent in their own
    # namespace): same numbers as the legacy network
    for a, b in zip(_run_cs231n(plain), _run_cs231n(star)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


def test_patch_switches_the_book_layout(make_package):
    pkg = make_package({"__init__.py": "", "layers.py": BOOK_LAYERS,
                        "multi_layer_net_extend.py": BOOK_NET})
    net_mod = importlib.import_module(f"{pkg}.multi_layer_net_extend")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 2, 2))
    dout = rng.standard_normal((6, 2, 2, 2))

    def train(net):
        return [np.copy(a) for _ in range(3) for a in net.train_step(x, dout)] + [
            net.params["gamma1"].copy(), net.bn.running_var]

    legacy = train(net_mod.Net(8))
    report = CP.patch(pkg)
    assert {n for _, n, _, _ in report.changed} == {"BatchNormalization"}
    assert len(report.changed) == 2  # layers and the network module's star-import binding
    net = net_mod.Net(8)
    assert type(net.bn) is CP.BatchNormalization
    assert net.bn.gamma is net.params["gamma1"]
    for a, b in zip(legacy, train(net)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    CP.unpatch(pkg)
    assert type(net_mod.Net(8).bn) is not CP.BatchNormalization


def test_patch_keeps_a_solutions_own_bn_param_defaults(make_package):
    # a 2016 solution defaulted eps to 1e-3 (and momentum to 0.8) and never set them
    layers = CS231N_LAYERS.replace(
        "    return _legacy.cs231n_forward(x, gamma, beta, bn_param)",
        "    q = dict(bn_param, eps=bn_param.get('eps', 1e-3),\n"
        "             momentum=bn_param.get('momentum', 0.8))\n"
        "    out = _legacy.cs231n_forward(x, gamma, beta, q)\n"
        "    bn_param['running_mean'], bn_param['running_var'] = q['running_mean'], "
        "q['running_var']\n"
        "    return out").replace(
        "    return _legacy.cs231n_spatial_forward(x, gamma, beta, bn_param)",
        "    N, C, H, W = x.shape  # the handout's way: through batchnorm_forward\n"
        "    out, cache = batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, C), gamma, "
        "beta, bn_param)\n"
        "    return out.reshape(N, H, W, C).transpose(0, 3, 1, 2), (cache, x.shape)")
    assert layers.count("batchnorm_forward(x.transpose") == 1
    pkg = cs231n_package(make_package, {"layers.py": layers})
    net = sys.modules[f"{pkg}.classifiers.fc_net"]
    legacy = _run_cs231n(net)
    report = CP.patch(pkg)
    assert "keeping the original's defaults eps=0.001, momentum=0.8" in str(report)
    fwd = sys.modules[f"{pkg}.layers"].batchnorm_forward
    assert fwd.__cybn_defaults__ == (1e-3, 0.8) and fwd is net.batchnorm_forward
    # the spatial forward delegates to batchnorm_forward: it inherits the same defaults
    assert sys.modules[f"{pkg}.layers"].spatial_batchnorm_forward.__cybn_defaults__ == (1e-3,
                                                                                         0.8)
    for a, b in zip(legacy, _run_cs231n(net)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    assert CP.patch(pkg).changed == []  # idempotent with the derived objects too
    CP.unpatch(pkg)
    assert sys.modules[f"{pkg}.layers"].batchnorm_forward is not fwd


def test_unpatch_reaches_modules_imported_after_the_patch(make_package):
    pkg = make_package({"__init__.py": "", "layers.py": CS231N_LAYERS,
                        "layer_utils.py": CS231N_UTILS})
    layers = importlib.import_module(f"{pkg}.layers")
    original = layers.batchnorm_forward
    CP.patch(pkg)
    utils = importlib.import_module(f"{pkg}.layer_utils")  # star-imports cybn's objects now
    assert utils.batchnorm_forward is CP.batchnorm_forward
    report = CP.unpatch(pkg)
    assert utils.batchnorm_forward is original
    assert any("imported after the patch" in after for m, _, _, after in report.changed
               if m == f"{pkg}.layer_utils")
    # a module that star-imported cybn.compat before any patch keeps its choice
    star = make_package({"__init__.py": f"from {pkg}.layers import *\n"
                                        "from cybn.compat import *\n"})
    mod = importlib.import_module(star)
    CP.patch(pkg)
    CP.unpatch(pkg, star)
    assert mod.batchnorm_forward is CP.batchnorm_forward


def test_compat_runs_single_threaded_unless_set(monkeypatch):
    import cybn
    from cybn import functional as F

    seen = []
    real = F._forward

    def spy(*args, **kwargs):
        seen.append(kwargs["n_threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "_forward", spy)
    x = np.random.default_rng(0).standard_normal((300, 400))
    CP.batchnorm_forward(x, np.ones(400), np.zeros(400), {"mode": "train"})
    cybn.set_num_threads(2)
    CP.batchnorm_forward(x, np.ones(400), np.zeros(400), {"mode": "train"})
    assert seen == [1, 2]


def test_unpatch_reports_modules_outside_that_still_bind_cybn(make_package):
    pkg = cs231n_package(make_package)
    CP.patch(pkg)
    outside = make_package({"__init__.py": f"from {pkg}.layers import *\n"})
    importlib.import_module(outside)  # like a notebook star-importing after the patch
    with pytest.warns(UserWarning, match="still bind"):
        report = CP.unpatch(pkg)
    assert (outside, "batchnorm_forward") in report.elsewhere
    assert "still cybn's (outside the target)" in str(report)
    CP.unpatch(outside)  # it was loaded after the patch: its copies are restored too
