"""The web interface a node serves to members' phones on the local network.

:func:`create_app` gives the ASGI application of a running node (to mount in an
app of your own); :func:`serve_web` serves it in the node's trio process with
Hypercorn's trio worker. Pages are server-rendered HTML that work without
JavaScript.
"""

from __future__ import annotations

from p2paid.web.app import create_app
from p2paid.web.server import serve_web

__all__ = ["create_app", "serve_web"]
