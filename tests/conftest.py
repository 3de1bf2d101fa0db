"""Shared pytest configuration for the cybn suite.

The tests import their oracle as ``from _reference import ...``; make that
work whatever import mode pytest is configured with.
"""

import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def rng(request):
    """A per-test deterministic generator (seeded from the test's node id)."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _restore_cybn_threads():
    """Undo any cybn.set_num_threads a test performed (even if it failed)."""
    yield
    mod = sys.modules.get("cybn")
    if mod is not None and hasattr(mod, "set_num_threads"):
        mod.set_num_threads(None)
