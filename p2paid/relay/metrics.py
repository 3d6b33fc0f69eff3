"""Prometheus metrics for a relay (``p2paid relay --metrics HOST:PORT``).

Uses the standard client library, with a registry of the relay's own, served
by the library's HTTP server thread on the given address.
"""

from __future__ import annotations

from typing import final

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from p2paid.relay.replica import RelayStats

__all__ = ["RelayMetrics"]


@final
class RelayMetrics:
    """The relay's gauges and counters, exported over HTTP."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("p2paid_relay_connections", "Connected clients", registry=r)
        self.boards = Gauge("p2paid_relay_boards", "Boards held", registry=r)
        self.bytes = Gauge("p2paid_relay_stored_bytes", "Bytes of envelopes held", registry=r)
        self.stored = Counter("p2paid_relay_envelopes_stored",
                              "Envelopes stored since start", registry=r)
        self.refused = Gauge("p2paid_relay_envelopes_refused",
                             "Envelopes refused since start (forged, forked, malformed)",
                             registry=r)
        self.refused_full = Gauge("p2paid_relay_envelopes_refused_full",
                                  "Envelopes refused since start for lack of room", registry=r)
        self._server, self._thread = start_http_server(port, addr=host, registry=r)

    def connected(self, count: int) -> None:
        """Clients connected now."""
        self.connections.set(count)

    def envelopes_stored(self, count: int) -> None:
        """``count`` more envelopes were stored."""
        self.stored.inc(count)

    def refresh(self, boards: int, stored_bytes: int, stats: RelayStats) -> None:
        """What the relay holds, and its refusals since start."""
        self.boards.set(boards)
        self.bytes.set(stored_bytes)
        self.refused.set(stats.refused)
        self.refused_full.set(stats.refused_full)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
