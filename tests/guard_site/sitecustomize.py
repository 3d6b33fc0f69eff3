"""Run at start-up by every Python process the test suite starts (this folder is put
first on ``PYTHONPATH`` by ``tests/conftest.py``): installs the multicast guard
(``p2paid_test_guard``), then runs the ``sitecustomize`` this one shadows, if any."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import p2paid_test_guard

p2paid_test_guard.install_from_env()

_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _shadowed = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_shadowed)
