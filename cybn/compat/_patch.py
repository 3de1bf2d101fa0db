"""Switch a whole legacy codebase to cybn in one step: :func:`patch` and :func:`unpatch`.

Why every namespace: ``from cs231n.layers import *`` copies the bindings into the
importing module when it runs, so replacing a function in ``cs231n.layers`` afterwards
does not change what ``classifiers/fc_net.py`` or a sandwich helper in ``layer_utils.py``
calls. :func:`patch` therefore rebinds the names in every module of the target (a package
with all its loaded submodules), and only in pairs: a forward of a family is switched
only together with a backward of the same family, because a cache made by one
implementation cannot be read by the other.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import sys
import types
import warnings

from . import cs231n, dlfs

__all__ = ["PatchReport", "patch", "unpatch"]


class _Family:
    """Names whose objects exchange caches, and how to recognise the legacy ones."""

    def __init__(self, title, forwards, backwards, check):
        self.title = title
        self.forwards = forwards
        self.backwards = backwards
        self.check = check  # legacy object -> None if it is of the convention, else why not

    @property
    def names(self):
        return self.forwards + self.backwards


def _function_check(n_params, last_name=None):
    def check(obj):
        if not isinstance(obj, types.FunctionType):
            return f"not a Python function ({type(obj).__name__})"
        params = list(inspect.signature(obj).parameters.values())
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        if (len(params) != n_params or not plain
                or (last_name is not None and params[-1].name != last_name)):
            expected = "forward(x, gamma, beta, bn_param)" if last_name else \
                "backward(dout, cache)"
            return (f"signature {obj.__name__}{inspect.signature(obj)} is not the handout's "
                    f"{expected}")
        return None
    return check


def _layer_check(obj):
    if not isinstance(obj, type):
        return f"not a class ({type(obj).__name__})"
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    if (list(params)[:2] != ["gamma", "beta"] or not callable(getattr(obj, "forward", None))
            or not callable(getattr(obj, "backward", None))):
        return ("not the book's layer: BatchNormalization(gamma, beta, momentum=0.9, ...) "
                "with forward(x, train_flg) and backward(dout)")
    return None


_FAMILIES = (
    _Family("cs231n batch norm", ("batchnorm_forward", "batchnorm_forward_alt"),
            ("batchnorm_backward", "batchnorm_backward_alt"),
            None),
    _Family("cs231n spatial batch norm", ("spatial_batchnorm_forward",),
            ("spatial_batchnorm_backward",), None),
    # one class holds its forward and its backward: always a complete pair
    _Family("Deep Learning from Scratch", ("BatchNormalization",), ("BatchNormalization",),
            _layer_check),
)
_REPLACEMENTS = {name: getattr(cs231n, name) for name in cs231n.__all__}
_REPLACEMENTS["BatchNormalization"] = dlfs.BatchNormalization
_FORWARD_CHECK = _function_check(4, "bn_param")
_BACKWARD_CHECK = _function_check(2)


def _check(family, name, obj):
    if family.check is not None:
        return family.check(obj)
    return (_FORWARD_CHECK if name in family.forwards else _BACKWARD_CHECK)(obj)


# module name -> {attribute: the legacy object patch replaced}
_ORIGINALS: dict[str, dict[str, object]] = {}
_HANDOUT_DEFAULTS = {"eps": 1e-5, "momentum": 0.9}
# every module loaded when a patch ran: unpatch restores cybn objects only in modules
# loaded later (whose star imports copied the patched bindings), never in these
_LOADED_AT_PATCH: set[str] = set()


def _is_cybn(obj, name):
    """Whether obj is cybn's object for the legacy name (a forward with another legacy
    function's defaults included)."""
    return obj is _REPLACEMENTS[name] or (
        getattr(obj, "__cybn_defaults__", None) is not None
        and getattr(obj, "__name__", None) == name
        and getattr(obj, "__module__", None) == cs231n.__name__)


def _bn_param_defaults(func, depth=0):
    """The defaults a legacy forward gives bn_param's eps and momentum.

    Read from its bytecode: the handout's ``bn_param.get('eps', 1e-5)`` compiles to the
    constant 'eps' immediately followed by the default's constant. A spatial forward that
    leaves them to the ``batchnorm_forward`` it calls inherits that function's.
    """
    found = {}
    code = getattr(func, "__code__", None)
    if code is not None:
        ins = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
        for a, b in zip(ins, ins[1:]):
            if (a.opname == "LOAD_CONST" and a.argval in _HANDOUT_DEFAULTS
                    and b.opname in ("LOAD_CONST", "LOAD_SMALL_INT")
                    and type(b.argval) in (int, float)):
                found.setdefault(a.argval, float(b.argval))
        inner = getattr(func, "__globals__", {}).get("batchnorm_forward")
        inherited = getattr(inner, "__cybn_defaults__", None)  # patched by an earlier call
        if inherited is not None and "batchnorm_forward" in code.co_names:
            for key, value in zip(("eps", "momentum"), inherited):
                found.setdefault(key, value)
        elif (depth == 0 and len(found) < 2 and inner is not func
                and isinstance(inner, types.FunctionType)
                and "batchnorm_forward" in code.co_names):
            for key, value in _bn_param_defaults(inner, 1).items():
                found.setdefault(key, value)
    return {**_HANDOUT_DEFAULTS, **found}


def _replacement(name, legacy, made):
    """cybn's object for a legacy one: the plain replacement, or, for a forward whose
    bn_param defaults differ from the handout's, one with its defaults (one object per
    legacy function, so every namespace binding it gets the same)."""
    if name not in ("batchnorm_forward", "batchnorm_forward_alt",
                    "spatial_batchnorm_forward"):
        return _REPLACEMENTS[name]
    defaults = _bn_param_defaults(legacy)
    if defaults == _HANDOUT_DEFAULTS:
        return _REPLACEMENTS[name]
    key = (name, defaults["eps"], defaults["momentum"])
    if key not in made:
        made[key] = cs231n.with_defaults(name, defaults["eps"], defaults["momentum"])
    return made[key]


class PatchReport:
    """What :func:`patch` or :func:`unpatch` did, module by module.

    Attributes
    ----------
    changed : list of (module, name, before, after)
        Bindings replaced (patch) or restored (unpatch); before/after are ``module.qualname``
        texts of the objects.
    unchanged : list of (module, name, reason)
        Known names left as they are, and why: already cybn's (patch is idempotent),
        another convention's object, half of a pair, or rebound since the patch.
    elsewhere : list of (module, name)
        Modules outside the target that still bind a legacy object patch replaced (their
        calls are not switched): patch them too if they call batch norm.
    """

    def __init__(self, action, modules):
        self.action = action
        self.modules = modules
        self.changed = []
        self.unchanged = []
        self.elsewhere = []

    def __str__(self):
        touched = len({m for m, _, _, _ in self.changed})
        lines = [f"cybn.compat.{self.action}: {len(self.changed)} binding(s) "
                 f"{'replaced' if self.action == 'patch' else 'restored'} in {touched} of "
                 f"{len(self.modules)} module(s) searched"]
        lines += [f"  {m}.{n}: {b} -> {a}" for m, n, b, a in self.changed]
        lines += [f"  {m}.{n}: unchanged ({why})" for m, n, why in self.unchanged]
        lines += [f"  {m}.{n}: " + ("NOT switched (outside the target)" if self.action == "patch"
                                    else "still cybn's (outside the target)")
                  for m, n in self.elsewhere]
        return "\n".join(lines)

    def __repr__(self):
        return (f"<PatchReport {self.action}: {len(self.changed)} changed, "
                f"{len(self.unchanged)} unchanged, {len(self.elsewhere)} elsewhere>")


def _describe(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _modules(targets, func):
    if not targets:
        raise TypeError(f"{func}() needs at least one target: a module, a package, or a "
                        "dotted name such as 'cs231n'")
    found = {}
    for target in targets:
        if isinstance(target, str):
            module = sys.modules.get(target) or importlib.import_module(target)
        elif isinstance(target, types.ModuleType):
            module = target
        else:
            raise TypeError(f"{func}: a target must be a module or a dotted module name, got "
                            f"{type(target).__name__}")
        found[module.__name__] = module
        if hasattr(module, "__path__"):  # a package: every loaded submodule
            prefix = module.__name__ + "."
            for name, sub in list(sys.modules.items()):
                if name.startswith(prefix) and isinstance(sub, types.ModuleType):
                    found[name] = sub
    return [found[name] for name in sorted(found)]


def patch(*targets):
    """Replace every legacy batch-norm function or class in the targets by cybn's.

    Parameters
    ----------
    *targets : module or str
        Modules, or packages (then every loaded submodule too), as objects or dotted
        names (imported if not loaded yet); ``'__main__'`` for a script or notebook.

    Returns
    -------
    PatchReport
        What was replaced where, what was left and why (``print`` it).

    Raises
    ------
    TypeError
        If no target is given or a target is not a module or a name.
    ModuleNotFoundError
        If a dotted name cannot be imported.
    ValueError
        If the targets bind no batch-norm name of a known convention at all.

    Notes
    -----
    The known names are the cs231n functions ``batchnorm_forward``,
    ``batchnorm_forward_alt``, ``batchnorm_backward``, ``batchnorm_backward_alt``,
    ``spatial_batchnorm_forward``, ``spatial_batchnorm_backward`` (plain functions with
    the handout's signatures) and the book's class ``BatchNormalization``, wherever
    they are bound: defined there or imported (also by ``from ... import *``). A family is
    switched only as a whole (a forward with its backward, in every target module):
    when the targets hold only one side of it, or a member that is not of the convention
    (another signature, another library's class), the family is left alone, with a
    ``UserWarning``. Patch before the network is built: layer objects that already
    exist keep their class. Calling ``patch`` again is harmless (already-switched names
    are reported as such); :func:`unpatch` restores the originals.
    """
    modules = _modules(targets, "patch")
    report = PatchReport("patch", [m.__name__ for m in modules])
    plan = []
    seen_any = False
    for family in _FAMILIES:
        members = []  # (module, name, legacy object or None when already cybn's)
        refused = []
        for module in modules:
            namespace = vars(module)
            for name in dict.fromkeys(family.names):
                if name not in namespace:
                    continue
                seen_any = True
                obj = namespace[name]
                if _is_cybn(obj, name):
                    members.append((module, name, None))
                    continue
                why = _check(family, name, obj)
                if why is None:
                    members.append((module, name, obj))
                else:
                    refused.append((module.__name__, name, why))
        if not members and not refused:
            continue
        has_fwd = any(n in family.forwards for _, n, _ in members)
        has_bwd = any(n in family.backwards for _, n, _ in members)
        todo = [m for m in members if m[2] is not None]
        if refused and todo:
            why = "; ".join(f"{m}.{n}: {w}" for m, n, w in refused)
            warnings.warn(f"cybn.compat.patch: {family.title} not switched: {why}. Switching "
                          "the other names alone would hand cybn's caches to legacy code.",
                          UserWarning, stacklevel=2)
            report.unchanged += [(m.__name__, n, f"{family.title} left as a whole")
                                 for m, n, _ in todo]
            report.unchanged += refused
            continue
        report.unchanged += refused
        if todo and not (has_fwd and has_bwd):
            have = sorted({n for _, n, _ in members})
            warnings.warn(
                f"cybn.compat.patch: {family.title} not switched: the targets bind only "
                f"{', '.join(have)}, not both a forward and a backward; a cybn cache would "
                "reach a legacy function. Patch the module that holds the other half too "
                "(patch accepts several targets).", UserWarning, stacklevel=2)
            report.unchanged += [(m.__name__, n, "half of a pair") for m, n, _ in todo]
            continue
        report.unchanged += [(m.__name__, n, "already cybn's")
                             for m, n, o in members if o is None]
        plan += todo
    if not seen_any:
        raise ValueError(
            "cybn.compat.patch: no batch-norm name of a known convention in "
            f"{', '.join(report.modules)} (looked for {', '.join(_REPLACEMENTS)}). A package "
            "counts only its loaded submodules: import the network's modules first")
    _LOADED_AT_PATCH.update(sys.modules)
    made = {}
    # every replacement is chosen before any binding changes: a spatial forward reads the
    # defaults of the legacy batchnorm_forward it calls
    plan = [(module, name, obj, _replacement(name, obj, made)) for module, name, obj in plan]
    for module, name, obj, new in plan:
        setattr(module, name, new)
        _ORIGINALS.setdefault(module.__name__, {})[name] = obj
        defaults = getattr(new, "__cybn_defaults__", None)
        report.changed.append((module.__name__, name, _describe(obj), _describe(new) + (
            "" if defaults is None else
            f" (keeping the original's defaults eps={defaults[0]:g}, momentum={defaults[1]:g})")))
    _find_elsewhere(report, plan, {m.__name__ for m in modules})
    return report


def _find_elsewhere(report, plan, inside):
    replaced = {id(obj): name for _, name, obj, _ in plan}
    if not replaced:
        return
    for mod_name, module in list(sys.modules.items()):
        if mod_name in inside or not isinstance(module, types.ModuleType):
            continue
        namespace = getattr(module, "__dict__", None) or {}
        for name in set(replaced.values()):
            obj = namespace.get(name)
            if obj is not None and id(obj) in replaced:
                report.elsewhere.append((mod_name, name))
    if report.elsewhere:
        where = ", ".join(f"{m}.{n}" for m, n in report.elsewhere)
        warnings.warn(f"cybn.compat.patch: {where} still bind(s) the legacy object(s) just "
                      "replaced; calls made there are not switched. Patch those modules too "
                      "if they call batch norm.", UserWarning, stacklevel=3)


def unpatch(*targets):
    """Restore what :func:`patch` replaced in the targets.

    Parameters
    ----------
    *targets : module or str
        As for :func:`patch`.

    Returns
    -------
    PatchReport
        The restored bindings, also in modules imported after the patch whose star imports
        copied cybn's objects (when the original is unambiguous); a name rebound by someone
        else since the patch is left as it is and listed under ``unchanged``; modules
        outside the targets that still bind cybn's objects under a legacy name are listed
        under ``elsewhere`` (with a ``UserWarning``).

    Raises
    ------
    TypeError, ModuleNotFoundError
        As :func:`patch`.
    """
    modules = _modules(targets, "unpatch")
    report = PatchReport("unpatch", [m.__name__ for m in modules])
    restored = {}  # name -> {id: original} restored in this call
    for module in modules:
        saved = _ORIGINALS.get(module.__name__)
        if not saved:
            continue
        namespace = vars(module)
        for name, original in list(saved.items()):
            current = namespace.get(name)
            if _is_cybn(current, name):
                setattr(module, name, original)
                report.changed.append((module.__name__, name, _describe(current),
                                       _describe(original)))
                restored.setdefault(name, {})[id(original)] = original
            else:
                report.unchanged.append((module.__name__, name, "rebound since the patch"))
            del saved[name]
        if not saved:
            del _ORIGINALS[module.__name__]
    # Modules imported after the patch copied cybn's objects with their star imports:
    # give them the original their source module got back, when that is unambiguous.
    for module in modules:
        if module.__name__ in _LOADED_AT_PATCH:
            continue  # bound to cybn's before or by the patch: deliberate, or restored above
        namespace = vars(module)
        for name in _REPLACEMENTS:
            current = namespace.get(name)
            if current is None or not _is_cybn(current, name):
                continue
            candidates = list(restored.get(name, {}).values())
            if len(candidates) == 1:
                setattr(module, name, candidates[0])
                report.changed.append((module.__name__, name, _describe(current),
                                       _describe(candidates[0]) + " (imported after the patch)"))
            else:
                report.unchanged.append((module.__name__, name, "cybn's, bound here after the "
                                         "patch; no unique original to restore"))
    if restored:
        inside = set(report.modules)
        own = __name__.split(".")[0]  # cybn's own modules bind them by definition
        for mod_name, module in list(sys.modules.items()):
            if (mod_name in inside or mod_name.split(".")[0] == own
                    or not isinstance(module, types.ModuleType)):
                continue
            namespace = getattr(module, "__dict__", None) or {}
            for name in restored:
                if _is_cybn(namespace.get(name), name):
                    report.elsewhere.append((mod_name, name))
        if report.elsewhere:
            where = ", ".join(f"{m}.{n}" for m, n in report.elsewhere)
            warnings.warn(f"cybn.compat.unpatch: {where} still bind(s) cybn's object(s) "
                          "(star-imported after the patch, or on purpose); unpatch those "
                          "modules too if they should call the legacy code again.",
                          UserWarning, stacklevel=2)
    return report
