"""Serving an HTTP app with uvicorn on a background thread, for the sources that receive
requests (the backend ingest API and the SaaS webhook receivers).

The socket is bound by :func:`listen` before the server starts, so a ``port`` of 0 is
resolved (read it from the socket) and a port already taken fails at once as a
:class:`~vigil.errors.SourceError` naming the address, not inside uvicorn's thread.

Limits: at most ``max_connections`` connections and requests at once (a request past it is
answered 503), and an idle keep-alive connection is closed after ``keep_alive_s``.  The apps
bound the time a body may take (:func:`vigil.sources.webhooks.read_body`).  What uvicorn does
not bound is the time a client takes to send a request's headers, nor connections that never
send one (they still count against the limit, and hold a file descriptor): in production a
reverse proxy with header and idle timeouts belongs in front (README, Sources).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from vigil.errors import SourceError

#: Connections (and requests in flight) a server takes at once before answering 503: each holds
#: a file descriptor, and without a limit idle ones took every descriptor the process had.
MAX_CONNECTIONS = 256
#: Seconds an idle keep-alive connection is kept (uvicorn's own default, made explicit).
KEEP_ALIVE_S = 5


def listen(host: str, port: int, label: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 = a free port); ``label`` starts the error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        msg = f"{label}: cannot listen on {host}:{port}: {exc}"
        raise SourceError(msg) from None
    return sock


@contextmanager
def serving(
    app: Any,
    sock: socket.socket,
    *,
    label: str,
    host: str,
    wait: Callable[[float], bool],
    max_connections: int = MAX_CONNECTIONS,
    keep_alive_s: int = KEEP_ALIVE_S,
) -> Iterator[None]:
    """Serve ``app`` on ``sock`` while the block runs; on leaving it, stop the server (it
    takes no more requests) and close the socket.  ``max_connections`` and ``keep_alive_s``
    are the limits in the module's docstring.

    Entering returns once uvicorn has started, or early when ``wait`` (the source's
    :meth:`~vigil.sources.base.Source.wait`) says the source is stopping.  A server that dies
    during start-up is a :class:`~vigil.errors.SourceError`.
    """
    port = sock.getsockname()[1]
    # access_log off: request lines carry secrets (webhook path tokens).
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive_s,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                msg = f"{label}: the HTTP server on {host}:{port} exited at start-up"
                raise SourceError(msg)
            if wait(0.02):  # start-up poll of uvicorn's own flag
                break
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
