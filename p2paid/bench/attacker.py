"""Benchmark child: the attacker of ``p2paid bench --only attacks``.

``python -m p2paid.bench.attacker KIND HOST PORT OPTIONS_JSON`` (see
:func:`p2paid.bench.attacks.attacker_main`).
"""

from __future__ import annotations

import sys

from p2paid.bench.attacks import attacker_main

__all__ = ["main"]


def main(argv: list[str]) -> None:
    attacker_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
