"""The sans-I/O core: keys, invites, envelopes, feeds, Noise, the wire format and the
replication state machine.

Nothing here imports trio, sockets, zeroconf or automerge: it moves and checks signed,
encrypted envelopes, never looking inside them, so nodes and relays share all of it; the
sans-I/O connection (:mod:`p2paid.core.connection`) puts the channel and the session
behind one API, which the trio driver in :mod:`p2paid.net.connection` runs.
"""
