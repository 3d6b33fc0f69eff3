"""Storage: the envelope-store port, its SQLite implementation, and ingest (verify a
batch and store what extends the feeds).

Nothing here imports trio, sockets, zeroconf or automerge.
"""
