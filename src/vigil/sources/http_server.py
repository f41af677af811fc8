"""Serving an HTTP app with uvicorn on a background thread, for the sources that receive
requests (the backend ingest API and the SaaS webhook receivers).

The socket is bound by :func:`listen` before the server starts, so a ``port`` of 0 is
resolved (read it from the socket) and a port already taken fails at once as a
:class:`~vigil.errors.SourceError` naming the address, not inside uvicorn's thread.

Limits: at most ``max_connections`` connections and requests at once (a request past it is
answered 503), an idle keep-alive connection is closed after ``keep_alive_s``, and a request's
headers must arrive within ``header_timeout_s`` of the connection opening (or of the first byte
of a next request on a kept-alive one), else the connection is closed; so is one whose request,
answered before its body came (a 401, a 404), has not ended ``header_timeout_s`` after the answer.
The apps bound the time a body they read may take (:func:`vigil.sources.webhooks.read_body`).
Uvicorn itself bounds none of the other slow clients: connections that never sent a request, sent
its headers a byte at a time, or sent a body answered already a byte now and then, each held a
descriptor and a place under the limit for as long as the client liked, so a few hundred of them
made every request a 503.  In production a reverse proxy belongs in front all the same (TLS;
README, Sources).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vigil.errors import SourceError

#: Connections (and requests in flight) a server takes at once before answering 503: each holds
#: a file descriptor, and without a limit idle ones took every descriptor the process had.
MAX_CONNECTIONS = 256
#: Seconds an idle keep-alive connection is kept (uvicorn's own default, made explicit).
KEEP_ALIVE_S = 5
#: Seconds a client has to send a request's headers (nginx's client_header_timeout is 60; the
#: platforms and services that call these send theirs at once).
HEADER_TIMEOUT_S = 10.0


def _with_header_deadline(timeout_s: float) -> type[H11Protocol]:
    """Uvicorn's HTTP/1.1 protocol, closing a connection whose request headers have not all
    arrived ``timeout_s`` after it opened, or after the first byte of a next request; or whose
    request, answered before its body came, has not ended ``timeout_s`` after the answer."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            # Between requests (h11 waits for headers in IDLE): the first byte starts the clock;
            # the silence before it is the keep-alive timeout's.
            if self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            # Judged again after: these bytes may have ended a request answered before its body
            # came (a 401 to a request without a key), and uvicorn then waits for the next one
            # in IDLE with its keep-alive timer cancelled (by these bytes): the clock runs.  Or
            # they are more of such a body, which nothing reads: its clock (from the answer)
            # runs on.
            if self._waiting():
                self._arm()
            else:  # the headers are in, and the app has the body to read (it bounds that)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Answered before the body came (a 401 without a key, a 404, a 503 past the limit):
            # uvicorn's keep-alive timer, which it cancels at every byte received, was all that
            # bounded the rest of it, so a byte now and then held the connection for good.
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            """Whether the connection waits on the client with nothing else bounding it: for a
            request's headers, or for the rest of a body answered already (nobody reads it)."""
            their = self.conn.their_state
            return their is h11.IDLE or (their is h11.SEND_BODY and self.conn.our_state is h11.DONE)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def listen(host: str, port: int, label: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 = a free port); ``label`` starts the error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:  # (OverflowError: a port past 65535 was a traceback)
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
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> Iterator[None]:
    """Serve ``app`` on ``sock`` while the block runs; on leaving it, stop the server (it
    takes no more requests) and close the socket.  ``max_connections``, ``keep_alive_s`` and
    ``header_timeout_s`` are the limits in the module's docstring.

    Entering returns once uvicorn has started, or early when ``wait`` (the source's
    :meth:`~vigil.sources.base.Source.wait`) says the source is stopping.  A server that dies
    during start-up is a :class:`~vigil.errors.SourceError`.
    """
    port = sock.getsockname()[1]
    # access_log off: request lines carry secrets (webhook path tokens).  proxy_headers off:
    # uvicorn's default takes X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1 as the truth,
    # so behind a local proxy that passes the client's own header on, the client chose the
    # address the ingest API logs for its failed keys (and the scheme of the URL a webhook
    # signature is checked against).  The peer's address is logged; a proxy's logs name the
    # client.
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        lifespan="off",
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive_s,
        http=_with_header_deadline(header_timeout_s),
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
