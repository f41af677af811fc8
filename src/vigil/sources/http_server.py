"""Serving an HTTP app with uvicorn on a background thread, for the sources that receive
requests (the backend ingest API and the SaaS webhook receivers).

The socket is bound by :func:`listen` before the server starts, so a ``port`` of 0 is
resolved (read it from the socket) and a port already taken fails at once as a
:class:`~vigil.errors.SourceError` naming the address, not inside uvicorn's thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from vigil.errors import SourceError


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
    app: Any, sock: socket.socket, *, label: str, host: str, wait: Callable[[float], bool]
) -> Iterator[None]:
    """Serve ``app`` on ``sock`` while the block runs; on leaving it, stop the server (it
    takes no more requests) and close the socket.

    Entering returns once uvicorn has started, or early when ``wait`` (the source's
    :meth:`~vigil.sources.base.Source.wait`) says the source is stopping.  A server that dies
    during start-up is a :class:`~vigil.errors.SourceError`.
    """
    port = sock.getsockname()[1]
    # access_log off: request lines carry secrets (webhook path tokens).
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
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
