"""Benchmark child: one side of automerge-repo's initial sync, the peer p2paid is compared to.

``python -m p2paid.bench.peer_repo send N`` holds a document of ``N`` needs in an
``automerge.repo.Repo`` (the Python automerge-repo that ships in automerge-py: samod's
Rust hub driven by asyncio) and accepts TCP connections on 127.0.0.1; it prints
``{"port", "url", "item_id", "build_s"}`` and serves until its stdin closes.

``python -m p2paid.bench.peer_repo recv PORT URL ITEM_ID N`` starts an empty Repo, waits
for a line on stdin, then dials the sender, finds the document, reads one need's title,
and prints the times (from dialling) and the bytes it read off the socket.

The document is shaped like p2paid's: a root map ``needs`` of maps keyed by item id, each
with the fields ``Board.post_need`` stores (title, category, quantity, unit, location,
created; empty and None fields left out, as p2paid leaves them out), one Automerge change
per need (plus one creating ``needs``): p2paid sends one envelope per need, so the peer
gets the same history, not one squashed change. The changes are made with
``automerge.core`` and handed to the Repo through its storage (``DocHandle.change`` costs
O(document) each, minutes for 10,000), which is what the Repo would hold had it made them.

The transport is automerge-repo's ``Transport`` protocol (``send``/``recv`` of whole
messages) over a TCP stream, each message framed by a 4-byte length: the package's
websocket transport needs ``websockets``, which p2paid does not depend on; its framing
would cost 2-14 bytes a message instead of 4. Bytes are counted as read from the socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

# (the stub of automerge._automerge does not list the repo's types; automerge.repo uses them)
from automerge._automerge import AutomergeUrl, DocumentId, StorageKey  # type: ignore[attr-defined]
from automerge.core import ROOT, Document, ObjType, ScalarType
from automerge.repo import InMemoryStorage, Repo

from p2paid.board.document import new_item_id
from p2paid.board.model import ItemKind, item_fields, now_ms

__all__ = ["main"]

perf = time.perf_counter
#: Where results go: the Repo prints its warnings to stdout, so stdout is moved to stderr.
_results = sys.stdout


def say(value: dict[str, Any]) -> None:
    """Write one result line (on the original stdout)."""
    _results.write(json.dumps(value) + "\n")
    _results.flush()


class TcpTransport:
    """automerge-repo's ``Transport`` over a TCP stream: length-prefixed messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.bytes_in = self.bytes_out = self.messages_in = 0

    async def send(self, msg: bytes) -> None:
        self.writer.write(len(msg).to_bytes(4, "big") + msg)
        self.bytes_out += 4 + len(msg)
        await self.writer.drain()

    async def recv(self) -> bytes:
        size = int.from_bytes(await self.reader.readexactly(4), "big")
        msg = await self.reader.readexactly(size)
        self.bytes_in += 4 + size
        self.messages_in += 1
        return msg

    async def close(self) -> None:
        self.writer.close()


def _storage() -> InMemoryStorage:
    return InMemoryStorage()  # type: ignore[no-untyped-call]  # (its __init__ is unannotated)


def _document(n: int) -> tuple[bytes, str]:
    """A saved document of ``n`` needs, one change each; and the last need's id."""
    doc = Document()
    with doc.transaction() as tx:
        needs = bytes(tx.put_object(ROOT, "needs", ObjType.Map))
    item_id = ""
    for i in range(n):
        fields = item_fields(ItemKind.NEED, f"Need #{i}: warm winter coats for a family of four",
                             now=now_ms(), category="shelter", quantity=i % 7 + 1,
                             unit="coats", location="north camp", expires_in_days=14)
        item_id = new_item_id()
        with doc.transaction() as tx:
            obj = bytes(tx.put_object(needs, item_id, ObjType.Map))
            for key, value in fields.items():
                if isinstance(value, int):
                    tx.put(obj, key, ScalarType.Int, value)
                elif value:
                    tx.put(obj, key, ScalarType.Str, value)
    return doc.save(), item_id


def _needs(handle: Any) -> Any:
    """The document's ``needs`` map (read-only proxy), or an empty dict before it arrives."""
    doc = handle.doc()
    return doc["needs"] if "needs" in list(doc) else {}


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _send(n: int) -> None:
    t0 = perf()
    saved, item_id = _document(n)
    build_s = perf() - t0
    doc_id = DocumentId.from_bytes(os.urandom(16))
    storage = _storage()
    await storage.put(StorageKey.from_parts([doc_id.to_string(), "snapshot", "bench"]), saved)
    repo = await Repo.load(storage)
    transports: list[TcpTransport] = []
    async with repo:
        handle = await repo.find(AutomergeUrl.from_document_id(doc_id))
        assert handle is not None, "the sender's Repo did not load the document"

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = TcpTransport(reader, writer)
            transports.append(transport)
            await repo.accept(transport)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        say({"port": port, "url": str(handle.url), "item_id": item_id, "build_s": build_s,
             "saved_bytes": len(saved)})
        stdin = await _stdin_lines()
        while await stdin.readline():
            pass
        server.close()
    say({"stats": {"bytes_out": sum(t.bytes_out for t in transports)}})


async def _receive(port: int, url: str, item_id: str, n: int) -> None:
    repo = await Repo.load(_storage())
    async with repo:
        stdin = await _stdin_lines()
        await stdin.readline()
        t0 = perf()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = TcpTransport(reader, writer)
        connection = asyncio.create_task(repo.connect(transport))
        handle = None
        while handle is None:  # (not found until the peer's handshake is done)
            handle = await repo.find(url)
            if handle is None:
                await asyncio.sleep(0.001)
        while len(_needs(handle)) < n:  # (found at once, filled in when the sync is done)
            await asyncio.sleep(0.001)
        loaded = perf() - t0
        title = _needs(handle)[item_id]["title"]
        readable = perf() - t0
        count = len(_needs(handle))
        say({"loaded_s": loaded, "readable_s": readable, "title": str(title), "needs": count,
             "complete": count == n, "bytes_in": transport.bytes_in,
             "messages_in": transport.messages_in})
        # Measured: the Repo logs its own teardown ("Connection 0 not found"), not news.
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        connection.cancel()


def main(argv: list[str]) -> None:
    global _results
    _results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if argv[0] == "send":
        asyncio.run(_send(int(argv[1])))
    else:
        port, url, item_id, n = argv[1:]
        asyncio.run(_receive(int(port), url, item_id, int(n)))


if __name__ == "__main__":
    main(sys.argv[1:])
