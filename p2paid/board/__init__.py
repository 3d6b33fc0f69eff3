"""Boards: the Automerge document of a board, its read model and domain objects, the
replica engine that keeps it in step with the store, and the synchronous library API
(:class:`~p2paid.board.store.Store`, :class:`~p2paid.board.board.Board`).

Nothing here imports trio, sockets or zeroconf.
"""
