"""A data dir's passphrase on the command line: unlocking, ``passphrase`` and ``wipe``.

Every command that opens a protected data dir unlocks it itself, each time (the CLI
beside a running node asks again; the node never hands its key to another
process). Where the passphrase comes from, first found wins:

1. ``--passphrase-file FILE`` (its first line);
2. ``$P2PAID_PASSPHRASE_FILE``;
3. ``$CREDENTIALS_DIRECTORY/p2paid-passphrase`` (a systemd credential:
   ``LoadCredential=p2paid-passphrase:/etc/p2paid/passphrase``);
4. the terminal (asked once; twice for a new passphrase).

A key file, if the data dir needs one, likewise: ``--data-key-file``, ``$P2PAID_DATA_KEY_FILE``,
``$CREDENTIALS_DIRECTORY/p2paid-data-key-file``. Nothing is asked for a data dir without
a passphrase.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from p2paid.board.store import Store, default_data_dir, open_store
from p2paid.cli.args import at_least
from p2paid.errors import NotFoundError, PassphraseError, UsageError
from p2paid.storage.atrest import DEFAULT_PARAMS, Credentials, KdfParams, KeyRecord, Unlocked
from p2paid.storage.files import file_error
from p2paid.storage.keystore import read_record
from p2paid.storage.lock import DataDirLock
from p2paid.storage.protect import change_passphrase, protect, set_duress, unprotect
from p2paid.storage.wipe import data_dir_files, wipe
from p2paid.web.webstore import WebStore

__all__ = ["add_passphrase_commands", "cli_store", "credentials", "new_credentials",
           "read_secret_file"]

PASSPHRASE_ENV: Final = "P2PAID_PASSPHRASE_FILE"
KEY_FILE_ENV: Final = "P2PAID_DATA_KEY_FILE"
SYSTEMD_PASSPHRASE: Final = "p2paid-passphrase"
SYSTEMD_KEY_FILE: Final = "p2paid-data-key-file"
_MAX_SECRET_FILE: Final = 1 << 16


def read_secret_file(path: Path, *, first_line: bool) -> bytes:
    """A passphrase file's first line (without its line ending) or a key file's bytes.

    Raises:
        FileError: it cannot be read.
        PassphraseError: it is empty, or too big to be one.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise file_error(path, exc, "read the passphrase from" if first_line
                         else "read the key file") from exc
    if len(data) > _MAX_SECRET_FILE:
        raise PassphraseError(f"{path} is too big to be a passphrase or key file")
    if first_line:
        data = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not data:
        raise PassphraseError(f"{path} is empty")
    return data


def _credential_file(explicit: Path | None, env: str, systemd: str) -> Path | None:
    if explicit is not None:
        return explicit
    if os.environ.get(env):
        return Path(os.environ[env])
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if folder and (Path(folder) / systemd).exists():
        return Path(folder) / systemd
    return None


def key_file_bytes(args: argparse.Namespace) -> bytes | None:
    path = _credential_file(args.data_key_file, KEY_FILE_ENV, SYSTEMD_KEY_FILE)
    return None if path is None else read_secret_file(path, first_line=False)


def _ask(prompt: str) -> bytes:
    if not sys.stdin.isatty():
        raise PassphraseError("the data dir is protected by a passphrase and there is no "
                              "terminal to ask on: give --passphrase-file FILE (or "
                              f"{PASSPHRASE_ENV}, or a systemd credential {SYSTEMD_PASSPHRASE})")
    text = getpass.getpass(prompt)
    if not text:
        raise PassphraseError("no passphrase given; nothing was changed")
    return text.encode()


def credentials(args: argparse.Namespace) -> Callable[[], Credentials]:
    """What unlocks the data dir, found when first needed (see the module docstring)."""

    def find() -> Credentials:
        path = _credential_file(args.passphrase_file, PASSPHRASE_ENV, SYSTEMD_PASSPHRASE)
        secret = (read_secret_file(path, first_line=True) if path is not None
                  else _ask(f"passphrase for {args.data_dir or default_data_dir()}: "))
        return Credentials(secret, key_file_bytes(args))

    return find


def new_credentials(args: argparse.Namespace, what: str = "new passphrase") -> Credentials:
    """A new passphrase: from ``--new-passphrase-file``, or asked twice on the terminal.

    Raises:
        PassphraseError: the two differ, or it is empty, or there is no terminal.
    """
    if args.new_passphrase_file is not None:
        secret = read_secret_file(args.new_passphrase_file, first_line=True)
    else:
        if not sys.stdin.isatty():
            raise PassphraseError(f"no terminal to ask for the {what} on: give "
                                  "--new-passphrase-file FILE")
        secret = _ask(f"{what}: ")
        if _ask(f"{what} again: ") != secret:
            raise PassphraseError("the two passphrases differ; nothing was changed")
    return Credentials(secret, key_file_bytes(args))


def cli_store(args: argparse.Namespace, *, create: bool = False) -> Store:
    """The data dir's store, unlocked as the module docstring says if it is protected."""
    return open_store(args.data_dir, create=create, credentials=credentials(args))


def _params(args: argparse.Namespace) -> KdfParams:
    return KdfParams(memory_kib=args.argon2_memory * 1024, iterations=args.argon2_iterations,
                     lanes=DEFAULT_PARAMS.lanes)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir is not None else default_data_dir()


def protect_store(args: argparse.Namespace, store: Store) -> None:
    """Protect an open, plain store with a new passphrase (``init --passphrase``, ``set``)."""
    creds = new_credentials(args)
    with DataDirLock(store.data_dir, "node"):
        protect(store.database, creds, _params(args))
    with WebStore(store.data_dir, sealer=store.sealer):
        pass  # (seals the labels of invites made before)


# ---------------------------------------------------------------------------- commands


def cmd_passphrase_set(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        if store.protected:
            raise UsageError("the data dir is protected already; use 'p2paid passphrase "
                             "change'")
        protect_store(args, store)
    print(f"the data dir {_data_dir(args)} is now encrypted at rest; keep the passphrase "
          "safe: without it, nobody (not even you) can read it")
    return 0


def cmd_passphrase_change(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        unlocked, record = _unlocked(store)
        new = new_credentials(args)
        kept = change_passphrase(store.data_dir, record, unlocked, new)
    print("passphrase changed (only the key file was rewritten)")
    if not kept:
        print("the duress passphrase was cleared (it goes with the key file); set it again "
              "with 'p2paid passphrase duress'")
    return 0


def cmd_passphrase_remove(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        if not store.protected:
            raise UsageError("the data dir is not protected by a passphrase")
        with DataDirLock(store.data_dir, "node"):
            with WebStore(store.data_dir, sealer=store.sealer) as web:
                web.reseal_labels(None)
            unprotect(store.database)
    print(f"the data dir {_data_dir(args)} is no longer encrypted: anyone with the disk can "
          "read it")
    return 0


def cmd_passphrase_duress(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        unlocked, record = _unlocked(store)
        if args.clear:
            set_duress(store.data_dir, record, unlocked, None, None)
            print("duress passphrase cleared")
            return 0
        duress = new_credentials(args, "duress passphrase")
        set_duress(store.data_dir, record, unlocked, duress.passphrase, duress.key_file)
    print("duress passphrase set: typed instead of the real one, it wipes this data dir "
          "without a word and opens an empty one")
    return 0


def _unlocked(store: Store) -> tuple[Unlocked, KeyRecord]:
    if not store.protected:
        raise UsageError("the data dir is not protected by a passphrase; set one with "
                         "'p2paid passphrase set'")
    unlocked = store.unlocker.unlocked
    record = read_record(store.data_dir)
    if unlocked is None or record is None:
        raise PassphraseError("the data dir's key could not be read; nothing was changed")
    return unlocked, record


def cmd_wipe(args: argparse.Namespace) -> int:
    path = _data_dir(args)
    if not data_dir_files(path):
        raise NotFoundError(f"no p2paid data in {path}: nothing to wipe")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("wipe destroys every board and key in the data dir: confirm "
                             "with --yes")
        answer = input(f"destroy everything in {path}, for good? type 'wipe': ")
        if answer.strip().lower() != "wipe":
            print("nothing was wiped")
            return 1

    def erased() -> None:
        print("the data dir's key is erased; deleting the files", flush=True)

    report = wipe(path, on_erased=erased)
    stopped = f"; stopped the node (pid {report.stopped_pid})" if report.stopped_pid else ""
    if report.key_erased:
        print(f"wiped {path}: its key is destroyed and {report.files} files deleted{stopped}")
    else:
        print(f"wiped {path}: {report.files} files overwritten and deleted{stopped} (it had no"
              " passphrase: on flash storage the old blocks may survive)")
    return 0


def _params_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-passphrase-file", type=Path, metavar="FILE",
                   help="read the new passphrase from FILE's first line (default: ask twice)")
    p.add_argument("--argon2-memory", type=at_least(1), metavar="MIB",
                   default=DEFAULT_PARAMS.memory_kib // 1024,
                   help=f"Argon2id memory in MiB (default {DEFAULT_PARAMS.memory_kib // 1024})")
    p.add_argument("--argon2-iterations", type=at_least(1), metavar="N",
                   default=DEFAULT_PARAMS.iterations,
                   help=f"Argon2id passes (default {DEFAULT_PARAMS.iterations})")


def add_init_options(p: argparse.ArgumentParser) -> None:
    """``init --passphrase`` and its options."""
    p.add_argument("--passphrase", action="store_true",
                   help="protect the new data dir with a passphrase (asked twice)")
    _params_options(p)


def add_passphrase_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``passphrase set|change|remove|duress`` and ``wipe``."""
    group = cmd("passphrase", None, "encrypt the data dir at rest under a passphrase, "
                "change it, remove it, or set a duress passphrase")
    psub = group.add_subparsers(dest="passphrase_command", metavar="ACTION", required=True)
    p = cmd("set", cmd_passphrase_set, "encrypt the data dir under a new passphrase (and "
            "--data-key-file, if given); the node must be stopped", psub)
    _params_options(p)
    p = cmd("change", cmd_passphrase_change, "change the passphrase (rewrites the key file "
            "only; works while a node runs)", psub)
    p.add_argument("--new-passphrase-file", type=Path, metavar="FILE",
                   help="read the new passphrase from FILE's first line (default: ask twice)")
    cmd("remove", cmd_passphrase_remove, "decrypt the data dir and drop the passphrase; the "
        "node must be stopped", psub)
    p = cmd("duress", cmd_passphrase_duress, "set a duress passphrase: typed instead of the "
            "real one, it silently wipes the data dir and opens an empty one", psub)
    p.add_argument("--new-passphrase-file", type=Path, metavar="FILE",
                   help="read the duress passphrase from FILE's first line (default: ask "
                        "twice)")
    p.add_argument("--clear", action="store_true", help="remove the duress passphrase")
    p = cmd("wipe", cmd_wipe, "panic: make the data dir unreadable at once (its key is "
            "overwritten), stop its node, then delete it",
            epilog="No passphrase is needed. With a passphrase set, the data is unreadable "
                   "as soon as 'key is erased' is printed, even if the deleting is "
                   "interrupted.")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
