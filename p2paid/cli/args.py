"""Argument parsing shared by every ``p2paid`` command: the parser class, the global
options (accepted before or after the command), and value checks."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from p2paid.board.store import default_data_dir
from p2paid.core.text import escape_text
from p2paid.errors import UsageError
from p2paid.net.tcp import parse_address, parse_listen_address

__all__ = ["GLOBAL_DEFAULTS", "Parser", "at_least", "global_options",
           "listen_address", "peer_address", "positive_number", "settle_globals"]

#: Every global option's attribute and its value when not given.
GLOBAL_DEFAULTS: dict[str, Any] = {"data_dir": None, "verbose": False, "quiet": False,
                                   "no_pager": False, "passphrase_file": None,
                                   "data_key_file": None}


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, escape_text(f"{self.prog}: {message} (see '{self.prog} --help')") + "\n")


def global_options() -> argparse.ArgumentParser:
    """A parent parser with the global options, for the main parser and every
    subcommand. Their defaults are suppressed, so that an option given after the
    command is not reset by the main parser's default (see :func:`settle_globals`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global options (before or after the command)")
    group.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                       help="where keys and boards live (env P2PAID_DATA_DIR; default "
                            f"{default_data_dir()})")
    group.add_argument("--passphrase-file", type=Path, default=argparse.SUPPRESS,
                       metavar="FILE", help="a protected data dir's passphrase: FILE's first "
                       "line (env P2PAID_PASSPHRASE_FILE; a systemd credential "
                       "p2paid-passphrase; default: ask on the terminal)")
    group.add_argument("--data-key-file", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                       help="a key file that unlocks the data dir with the passphrase (env "
                            "P2PAID_DATA_KEY_FILE; a systemd credential p2paid-data-key-file; "
                            "'passphrase set' with it makes one needed)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="say more (run, relay: log debugging detail)")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="say less (run, relay: log only problems)")
    group.add_argument("--no-pager", action="store_true", default=argparse.SUPPRESS,
                       help="never page long output (default: page it on a terminal, with "
                            "$P2PAID_PAGER, $PAGER or 'less -FRX')")
    return common


def settle_globals(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Give every global option its default where it was not given; refuse ``-v``
    together with ``-q``."""
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet cannot be used together")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def whole_number(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {value})")
        return value

    return whole_number


def positive_number(text: str) -> float:
    """An argparse type: a number greater than 0."""
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0 (got {text})")
    return value


def peer_address(default_port: int | None = None) -> Callable[[str], tuple[str, int]]:
    """An argparse type: ``HOST:PORT`` to dial (``[IPV6]:PORT``; the port may be left
    out when there is a default)."""

    def host_and_port(text: str) -> tuple[str, int]:
        try:
            return parse_address(text, default_port)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return host_and_port


def listen_address(default_port: int | None = None) -> Callable[[str], tuple[str, int]]:
    """An argparse type: ``HOST:PORT`` to listen on, the host an IP address of this
    machine or ``localhost`` (checked before anything starts)."""

    def host_and_port(text: str) -> tuple[str, int]:
        try:
            return parse_listen_address(text, default_port)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return host_and_port
