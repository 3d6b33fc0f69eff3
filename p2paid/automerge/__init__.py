"""The Automerge change format as p2paid reads it, and the rules a member's change
must pass (``protocol/SPEC.md`` section 5).

Pure Python over bytes: nothing here imports the automerge library, trio or sockets.
"""
