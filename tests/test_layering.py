"""The layout is the architecture: each package may load only the layers below it.

Every module of the package is found by walking it (``pkgutil.walk_packages``), so a
new module is covered without editing this test, and imported alone in a fresh
interpreter (zeroconf's test_circular_imports habit); then what it loaded is checked
against its layer's rules:

* ``core``, ``automerge``, ``storage`` and ``board`` are sans-I/O: no trio, sockets,
  zeroconf or asyncio; ``core``, ``automerge`` (the change format, in Python) and
  ``storage`` load no Automerge library either, so relays never do;
* no layer loads one above it: core < automerge < storage < board < net < node <
  web, relay < cli < bench (a relay needs no board, a node no relay server or web).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import p2paid

IO = ("trio", "socket", "zeroconf", "asyncio")
AUTOMERGE = ("automerge",)
#: package -> (libraries it must not load, p2paid packages it must not load)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "": (IO + AUTOMERGE, ("core", "automerge", "storage", "board", "net", "node", "relay",
                          "web", "cli", "bench")),  # errors.py and the lazy __init__
    "core": (IO + AUTOMERGE, ("automerge", "storage", "board", "net", "node", "relay", "web",
                              "cli", "bench")),
    "automerge": (IO + AUTOMERGE, ("storage", "board", "net", "node", "relay", "web", "cli",
                                   "bench")),
    "storage": (IO + AUTOMERGE, ("board", "net", "node", "relay", "web", "cli", "bench")),
    "board": (IO, ("net", "node", "relay", "web", "cli", "bench")),
    "net": (AUTOMERGE, ("board", "node", "relay", "web", "cli", "bench")),
    "relay": (AUTOMERGE, ("board", "node", "web", "cli", "bench")),
    "node": ((), ("relay", "web", "cli", "bench")),
    "web": ((), ("relay", "cli", "bench")),
    "cli": ((), ("bench",)),
    "bench": ((), ()),
}


#: Modules with rules of their own: the PostgreSQL store's driver (psycopg) loads socket
#: and asyncio (its async API, unused); still no trio, no layer above storage.
MODULE_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "p2paid.storage.pg": (("trio", "zeroconf", *AUTOMERGE), RULES["storage"][1]),
}


def _rules(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for prefix, rules in MODULE_RULES.items():
        if module == prefix or module.startswith(prefix + "."):
            return rules
    return RULES[_layer(module)]


def _modules() -> list[str]:
    found = ["p2paid"]
    for info in pkgutil.walk_packages(p2paid.__path__, "p2paid."):
        if info.name != "p2paid.__main__":  # an entry script: importing it runs the CLI
            found.append(info.name)
    return sorted(found)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RULES) else ""


def test_every_module_has_a_layer() -> None:
    """A new top-level package must be given its rules here (a new module need not)."""
    for module in _modules():
        assert _layer(module) in RULES, f"{module} is in no known layer"
    assert len(_modules()) > 50


@pytest.mark.parametrize("module", _modules())
def test_a_module_loads_nothing_above_its_layer(module: str) -> None:
    libraries, packages = _rules(module)
    code = ("import json, sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code, module], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    libs = sorted(lib for lib in libraries if lib in loaded)
    assert not libs, f"{module} loads {libs}"
    above = sorted({m.split(".")[1] for m in loaded
                    if m.startswith("p2paid.") and m.split(".")[1] in packages})
    assert not above, f"{module} loads the layer(s) above it: {above}"


def test_a_relay_loads_no_automerge() -> None:
    """The issue's own check: a relay process never loads the Automerge library."""
    code = "import sys, p2paid.relay.server; print('automerge' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
