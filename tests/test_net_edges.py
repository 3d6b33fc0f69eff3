"""No upward edges from the network shell: ``p2paid.net`` takes host protocols and dial
targets, never a Node or a Relay, not even for type checking (the layering test sees
only what loads at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2paid.net

NET = Path(p2paid.net.__file__).parent
ABOVE = ("p2paid.board", "p2paid.node", "p2paid.relay", "p2paid.cli", "p2paid.bench")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize("path", sorted(NET.glob("*.py")), ids=lambda p: p.name)
def test_net_names_nothing_above_it(path: Path) -> None:
    above = [name for name in _imports(path) if name.startswith(ABOVE)]
    assert above == [], f"{path.name} imports {above}"
