"""Syslog (RFC 5424) receiver over UDP and TCP, and its normaliser.

:class:`SyslogSource` listens on a UDP port (one message per datagram, RFC 5426) and a
TCP port (RFC 6587: octet-counting ``"<len> <msg>"`` or LF-terminated non-transparent
framing, detected per frame by the first byte: a digit starts an octet count, ``<`` a
PRI).  Each message is published unchanged to ``raw.syslog`` (kind ``syslog``) with the
transport and peer in ``meta``.  Syslog has no acknowledgement, so a message is only
as safe as the batch it is published in; batches are small and flushed on a short timer.
While Kafka is unavailable the batch is retried with backoff and new messages wait in a
buffer bounded in messages and in bytes (``max_buffered``, ``max_buffered_bytes``): when
either is reached, TCP senders are slowed down (flow control) and UDP datagrams are dropped
and counted in ``dropped``.  ``stop()`` stops taking messages at once: the listeners are closed
and the TCP connections' reading ends, then what was already buffered is published, for at most
``drain_timeout`` seconds (what is left is logged).  Each TCP connection has a thread: at most
``max_tcp_connections`` at once (one more is closed at once, counted in ``refused``).  Dead
peers and half-open connections are found by TCP keepalive (probes after a minute of silence)
and give their threads back; a quiet sender that is alive keeps its connection.  An idle
timeout (``tcp_idle_timeout``, off by default) closes quiet connections too, at a price: a
plain-TCP sender's next message after the close is accepted by its own kernel and lost.

:class:`SyslogNormalizer` parses the RFC 5424 header, structured data and message into a
``security_event``.  Anything that is not RFC 5424 raises :class:`ContractError` naming
the field and the offset where parsing stopped.  Message text is attacker-controlled:
it is kept as data (``payload.message``), never interpreted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import Counter

from vigil.config import Settings
from vigil.errors import ContractError, SourceError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.types import SecurityEvent, SecurityEventPayload
from vigil.hub.raw import RawRecord
from vigil.sources.addresses import client_ip
from vigil.sources.base import Normalizer, RawSink, Source, check_options, connector_metrics

log = logging.getLogger(__name__)


@functools.cache
def _dropped_counter() -> Counter:
    """UDP datagrams refused by the full buffer, on the registry the commands that run
    connectors serve (created on first use: importing this module registers nothing)."""
    return Counter(
        "vigil_syslog_dropped_datagrams",
        "UDP datagrams dropped because the buffer waiting for Kafka was full",
        ["source"],
        registry=connector_metrics(),
    )


NAME = "syslog"
Outcome = Literal["success", "failure", "unknown"]
KIND = "syslog"
#: Longest frame accepted on TCP; a larger octet count is a framing error (or an attack).
MAX_FRAME = 64 * 1024
#: TCP connections served at once (a thread each).  Unbounded, idle connections took a thread
#: and a file descriptor each for as long as their peers liked.
MAX_TCP_CONNECTIONS = 256
#: Seconds a TCP connection may send nothing before it is closed; 0: never (keepalive finds dead
#: peers).  Off by default: closing a live quiet sender lost its next message.
TCP_IDLE_TIMEOUT_S = 0.0
#: TCP keepalive: first probe after this many seconds of silence, then every KEEPALIVE_EVERY_S,
#: the peer given up after KEEPALIVE_PROBES unanswered ones (about two minutes in all).
KEEPALIVE_IDLE_S = 60
KEEPALIVE_EVERY_S = 10
KEEPALIVE_PROBES = 6
#: What the buffer may hold, in bytes of messages (besides ``max_buffered`` messages).  Bounded by
#: count only, 100,000 messages of up to MAX_FRAME were 6 GiB, which any sender reaching the UDP
#: port could make it hold while Kafka was down.  The value of the HTTP receivers' bound.
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
#: Seconds ``run`` goes on publishing what was buffered once stopped (``vigil run`` waits 30).
DRAIN_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- receiver


@dataclass(frozen=True)
class _Received:
    data: bytes
    transport: str
    peer: str
    received_at: datetime


class _Buffer:
    """A FIFO of received messages between the listeners and the publisher, bounded in messages
    (``maxsize``) and in bytes of message data (``max_bytes``).  A message larger than the whole
    byte bound is taken only when the buffer is empty.  ``close`` refuses every later message and
    wakes the senders waiting for room."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._items: deque[_Received] = deque()
        self._bytes = 0
        self._closed = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        #: Senders (TCP connections) waiting for room right now.
        self.waiting = 0

    def qsize(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def items(self) -> list[_Received]:
        """What is waiting, oldest first (a copy; nothing is taken)."""
        with self._lock:
            return list(self._items)

    def _fits(self, size: int) -> bool:
        return not self._items or (len(self._items) < self.maxsize and self._bytes + size <= self.max_bytes)

    def put(self, item: _Received, *, block: bool) -> bool:
        """Add ``item``; with ``block``, wait for room.  False if it was not taken: no room (not
        ``block``), or the buffer is closed."""
        size = len(item.data)
        with self._lock:
            if block and not self._closed and not self._fits(size):
                self.waiting += 1
                try:
                    while not self._closed and not self._fits(size):
                        self._not_full.wait()
                finally:
                    self.waiting -= 1
            if self._closed or not self._fits(size):
                return False
            self._items.append(item)
            self._bytes += size
            self._not_empty.notify()
            return True

    def take(self, max_items: int, timeout: float) -> list[_Received]:
        """Up to ``max_items`` messages, oldest first, waiting up to ``timeout`` for the first."""
        with self._lock:
            if not self._items and not self._closed and timeout > 0:
                self._not_empty.wait(timeout)
            items: list[_Received] = []
            while self._items and len(items) < max_items:
                item = self._items.popleft()
                self._bytes -= len(item.data)
                items.append(item)
            if items:
                self._not_full.notify_all()
            return items

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
            self._not_empty.notify_all()


class _TcpHandler(socketserver.StreamRequestHandler):
    server: _TcpServer

    def setup(self) -> None:
        sock = self.request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # (Linux; elsewhere the system's own keepalive times)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_EVERY_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.settimeout(self.server.idle_timeout or None)
        super().setup()
        self.server.register(sock)

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            for frame in iter_frames(self.rfile):
                if not self.server.deliver(_Received(frame, "tcp", peer, datetime.now(UTC))):
                    log.debug("syslog: stopping, no longer reading from %s", peer)
                    return
        except TimeoutError:
            log.info("syslog: closing %s, silent for %g s", peer, self.server.idle_timeout)
        except OSError as exc:  # reset by the peer: the connection is over, nothing to report
            log.debug("syslog: connection from %s ended: %s", peer, exc)

    def finish(self) -> None:
        try:
            super().finish()
        finally:  # before the server closes the socket: ``close_connections`` never sees it closed
            self.server.unregister(self.request)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        addr: tuple[str, int],
        out: _Buffer,
        *,
        max_connections: int = MAX_TCP_CONNECTIONS,
        idle_timeout: float = TCP_IDLE_TIMEOUT_S,
    ) -> None:
        self._out = out
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        #: Connections closed at once because ``max_connections`` were open.
        self.refused = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closing = False
        super().__init__(addr, _TcpHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:  # a flood of them is one line a thousand
                log.warning(
                    "syslog: refused TCP connections (%d so far, the last from %s): %d already open",
                    self.refused,
                    client_address[0],
                    self.max_connections,
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def deliver(self, item: _Received) -> bool:
        """Buffer ``item``; False once the source is stopping (the connection is then left).

        Blocks while the buffer is full, which stops reading the socket: TCP flow control then
        slows the sender instead of losing messages."""
        return self._out.put(item, block=True)

    def register(self, sock: socket.socket) -> None:
        with self._connections_lock:
            if self._closing:  # accepted as the source stopped: read nothing from it
                _shut(sock)
            else:
                self._connections.add(sock)

    def unregister(self, sock: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(sock)

    def close_connections(self) -> None:
        """End every connection's reading: a handler blocked in a read sees the end of its stream.
        Without it, a sender that kept sending kept its handler reading (and buffering) for ever."""
        with self._connections_lock:
            self._closing = True
            for sock in self._connections:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already reset by the peer
        sock.shutdown(socket.SHUT_RDWR)


def iter_frames(stream: Any) -> Any:
    """Yield the messages of an RFC 6587 TCP stream (octet-counting or LF framing).

    A stream that starts a frame with neither a digit nor ``<`` is not syslog; the rest of
    the connection is dropped (there is no way to resynchronise), which the sender sees as
    a closed connection.
    """
    while True:
        first = stream.read(1)
        if not first:
            return
        if first.isdigit():
            digits = first
            while True:
                ch = stream.read(1)
                if not ch:
                    return
                if ch == b" ":
                    break
                if not ch.isdigit() or len(digits) > 6:
                    return
                digits += ch
            length = int(digits)
            if length > MAX_FRAME:
                return
            frame = stream.read(length)
            if len(frame) < length:
                return
            yield frame
        elif first == b"<":
            line = stream.readline(MAX_FRAME)
            if len(line) >= MAX_FRAME and not line.endswith(b"\n"):
                # Longer than a frame: truncated, as RFC 5424 6.1 lets a receiver, and the rest of
                # the line read and dropped.  Left in the stream, its tail was taken for a message
                # of its own: text an attacker got into a relayed line forged an event.
                dropped = 0
                while True:
                    rest = stream.readline(MAX_FRAME)
                    dropped += len(rest.rstrip(b"\r\n"))
                    if not rest or rest.endswith(b"\n"):
                        break
                if dropped:
                    log.warning(
                        "syslog: a line over %d bytes was cut there (%d bytes dropped)", MAX_FRAME, dropped
                    )
            yield first + line.rstrip(b"\r\n")
        elif first in b"\r\n":
            continue
        else:
            return


#: The options ``vigil source syslog`` takes.
SYSLOG_OPTIONS = frozenset(
    {
        "host",
        "udp_port",
        "tcp_port",
        "max_tcp_connections",
        "tcp_idle_timeout",
        "max_buffered",
        "max_buffered_bytes",
        "drain_timeout",
        "source_id",
    }
)


class SyslogSource(Source):
    """Receives syslog on ``host``: UDP on ``udp_port`` and TCP on ``tcp_port`` (0 = any free port).

    ``bound`` (set once listening) says which ports were actually bound, so tests and the
    CLI can print them.  Messages are published in batches of up to ``batch_size`` or every
    ``flush_interval`` seconds.  Until published they wait in a buffer of at most
    ``max_buffered`` messages and ``max_buffered_bytes`` bytes of message data (the batch being
    published, at most ``batch_size`` messages, is out of it); when either is reached, TCP
    connections are no longer read until there is room and UDP datagrams are dropped (counted in
    ``dropped``).  ``stop`` stops taking messages at once; ``run`` then publishes what was
    buffered, retrying for at most ``drain_timeout`` seconds, and returns (``drained`` says
    whether all of it was published; what was not is logged).
    """

    name = NAME

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        udp_port: int | None = 5514,
        tcp_port: int | None = 5514,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_buffered: int = 100_000,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        drain_timeout: float = DRAIN_TIMEOUT_S,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT_S,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id)
        if max_buffered < 1 or max_buffered_bytes < 1 or not drain_timeout >= 0:
            # (0 was "no bound" to the queue this buffer replaced: refused, not taken as 1.)
            msg = (
                f"syslog: max_buffered and max_buffered_bytes must be at least 1 and drain_timeout "
                f"at least 0; got {max_buffered}, {max_buffered_bytes}, {drain_timeout}"
            )
            raise SourceError(msg)
        self.host = host
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self.drain_timeout = drain_timeout
        self.bound: dict[str, int] = {}
        self.ready = threading.Event()
        self.published = 0
        #: UDP datagrams dropped because the buffer was full (TCP senders are slowed down instead).
        self.dropped = 0
        self.publish_failures = 0
        self.last_error: str | None = None
        #: Once ``run`` has returned: whether everything buffered at the stop was published.
        self.drained: bool | None = None
        self._queue = _Buffer(max_buffered, max_buffered_bytes)
        self._pending: list[RawRecord] = []
        self._backoff = 0.1
        self._tcp: _TcpServer | None = None

    @property
    def refused(self) -> int:
        """TCP connections closed at once because ``max_tcp_connections`` were open."""
        return self._tcp.refused if self._tcp is not None else 0

    @property
    def buffered(self) -> int:
        """Messages waiting in the buffer (not counting the batch being published)."""
        return self._queue.qsize()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the messages waiting in the buffer (at most ``max_buffered_bytes``)."""
        return self._queue.bytes

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> SyslogSource:
        """Options: ``host`` (127.0.0.1), ``udp_port`` / ``tcp_port`` (5514; ``off`` disables one),
        ``max_tcp_connections`` (256), ``tcp_idle_timeout`` (s, 0: off), ``max_buffered``
        (messages, 100000), ``max_buffered_bytes`` (256 MiB), ``drain_timeout`` (s, 20),
        ``source_id`` (``syslog``; each of several instances needs its own: their Kafka
        transactions are named after it, and fence each other)."""
        del settings  # nothing from the shared settings is needed
        check_options(NAME, options, SYSLOG_OPTIONS)

        def port(name: str) -> int | None:
            value = options.get(name, "5514")
            return None if value == "off" else int(value)

        return cls(
            host=options.get("host", "127.0.0.1"),
            udp_port=port("udp_port"),
            tcp_port=port("tcp_port"),
            max_buffered=int(options.get("max_buffered", "100000")),
            max_buffered_bytes=int(options.get("max_buffered_bytes", str(MAX_BUFFERED_BYTES))),
            drain_timeout=float(options.get("drain_timeout", str(DRAIN_TIMEOUT_S))),
            max_tcp_connections=int(options.get("max_tcp_connections", str(MAX_TCP_CONNECTIONS))),
            tcp_idle_timeout=float(options.get("tcp_idle_timeout", str(TCP_IDLE_TIMEOUT_S))),
            source_id=options.get("source_id"),
        )

    def stop(self) -> None:
        """Stop taking messages at once; ``run`` then publishes what was buffered and returns."""
        super().stop()
        self._queue.close()

    def listening(self, timeout: float) -> str | None:
        if not self.ready.wait(timeout) or not self.bound or not self.running:
            return None  # (not yet, nothing bound with both ports off, or stopping)
        bound = sorted(self.bound.items(), reverse=True)  # (udp, then tcp)
        return ", ".join(f"{proto} {self.host}:{port}" for proto, port in bound)

    def run(self, sink: RawSink) -> None:
        udp_thread: threading.Thread | None = None
        threads: list[threading.Thread] = []
        udp: socket.socket | None = None
        tcp: _TcpServer | None = None
        try:
            if self.udp_port is not None:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind((self.host, self.udp_port))
                udp.settimeout(0.2)
                self.bound["udp"] = udp.getsockname()[1]
                udp_thread = threading.Thread(target=self._udp_loop, args=(udp,), daemon=True)
                threads.append(udp_thread)
            if self.tcp_port is not None:
                tcp = self._tcp = _TcpServer(
                    (self.host, self.tcp_port),
                    self._queue,
                    max_connections=self.max_tcp_connections,
                    idle_timeout=self.tcp_idle_timeout,
                )
                self.bound["tcp"] = tcp.server_address[1]
                threads.append(
                    threading.Thread(target=tcp.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
                )
        except (OSError, OverflowError) as exc:  # (OverflowError: a port past 65535 was a traceback)
            if udp is not None:
                udp.close()
            msg = f"syslog: cannot listen on {self.host} (udp {self.udp_port}, tcp {self.tcp_port}): {exc}"
            raise SourceError(msg) from None
        for t in threads:
            t.start()
        self.ready.set()
        try:
            while self.running:
                self._publish_batch(sink)
        finally:
            # Stop taking input before draining: drained while the listeners still ran, the buffer
            # was refilled by TCP senders as fast as it emptied and ``run`` never returned.
            self._queue.close()
            if tcp is not None:
                tcp.close_connections()
                tcp.shutdown()
                tcp.server_close()
            if udp is not None:
                if udp_thread is not None:
                    udp_thread.join(timeout=5)  # it sees the stop within its 0.2 s receive timeout
                udp.close()
        self._drain(sink)

    def _drain(self, sink: RawSink) -> None:
        """Publish what was buffered when the source stopped, retrying until ``drain_timeout``."""
        deadline = time.monotonic() + self.drain_timeout
        while self._pending or self._queue.qsize():
            # The time left goes to the sink too: with the broker down, a publish's own waits
            # (start, commit, abort) kept a 20 s drain going for minutes.
            published = self._publish_batch(sink, drain=True, timeout=max(0.0, deadline - time.monotonic()))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not published:  # the sink failed; the batch is kept for the next attempt
                time.sleep(min(self._backoff, remaining))
        left = self._queue.items()
        self.drained = not (self._pending or left)
        if not self.drained:
            count = len(self._pending) + len(left)
            size = sum(len(r.value) for r in self._pending) + sum(len(item.data) for item in left)
            times = [r.received_at for r in self._pending] + [item.received_at for item in left]
            log.error(
                "syslog: stopped with %d messages (%d bytes, received %s to %s) not published "
                "within drain_timeout (%g s): %s",
                count,
                size,
                min(times).isoformat(),
                max(times).isoformat(),
                self.drain_timeout,
                self.last_error or "publishing took too long",
            )

    def _udp_loop(self, sock: socket.socket) -> None:
        while self.running:
            try:
                data, addr = sock.recvfrom(MAX_FRAME)
            except TimeoutError:
                continue
            except OSError:
                return
            received = _Received(data.rstrip(b"\r\n"), "udp", f"{addr[0]}:{addr[1]}", datetime.now(UTC))
            if not self._queue.put(received, block=False):
                if not self.running:  # refused because the source stopped (not counted: not full)
                    return
                # UDP has no back-pressure: count what the full buffer refused.
                self.dropped += 1
                _dropped_counter().labels(self.name).inc()
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "syslog: dropped UDP datagrams (%d so far): the buffer is full "
                        "(%d messages, %d bytes waiting for Kafka): %s",
                        self.dropped,
                        self._queue.qsize(),
                        self._queue.bytes,
                        self.last_error,
                    )

    def _record(self, item: _Received) -> RawRecord:
        return RawRecord(
            source=self.name,
            kind=KIND,
            value=item.data,
            received_at=item.received_at,
            key=item.peer.rsplit(":", 1)[0].encode(),
            meta={"transport": item.transport, "peer": item.peer},
        )

    def _publish_batch(self, sink: RawSink, *, drain: bool = False, timeout: float | None = None) -> bool:
        """Publish what is pending, or the next batch from the buffer (within ``timeout`` s if
        given).  False if nothing was published (buffer empty, or the sink failed and the batch
        is kept for a retry)."""
        if not self._pending:
            items = self._queue.take(self.batch_size, 0 if drain else self.flush_interval)
            if not items:
                return False
            self._pending = [self._record(item) for item in items]
        try:
            sink.publish(self._pending, timeout=timeout)
        except Exception as exc:  # not durable: keep the batch, retry after a pause
            self.publish_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("syslog: publishing %d messages failed, will retry: %s", len(self._pending), exc)
            self._backoff = min(self._backoff * 2, 5.0)
            if not drain:
                self.wait(self._backoff)
            return False
        self._backoff = 0.1
        self.last_error = None
        self.published += len(self._pending)
        self._pending = []
        return True


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class SyslogMessage:
    """An RFC 5424 message; ``None`` where the sender wrote the NILVALUE ``-``.

    ``structured_data``: SD-ID -> PARAM-NAME -> its values in the order written (RFC 5424 lets
    a parameter repeat in an element; an SD-ID written twice, which it forbids, has its
    parameters added to the first: nothing the sender wrote is overwritten).
    """

    facility: int
    severity: int
    version: int
    timestamp: datetime | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: dict[str, dict[str, list[str]]]
    msg: str | None


_PRI = re.compile(rb"<(\d{1,3})>(\d{1,2}) ")
_SD_NAME = re.compile(r"[^= \]\"]{1,32}")
_SD_VALUE = re.compile(r'((?:[^"\\]|\\.)*)"', re.DOTALL)
_SD_ESCAPE = re.compile(r'\\(["\\\]])')
_BOM = "\ufeff"


def _bad(reason: str, offset: int) -> ContractError:
    return ContractError(f"not RFC 5424 syslog: {reason} (at byte {offset})")


def _at(text: str, pos: int, base: int) -> int:
    """The byte offset in the message of character ``pos`` of ``text`` (the message decoded
    from byte ``base`` on): a character before it may take several bytes."""
    return base + len(text[:pos].encode("utf-8"))


def parse_rfc5424(data: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message; raises :class:`ContractError` saying what and where."""
    m = _PRI.match(data)
    if m is None:
        msg = "expected '<PRI>VERSION ' with PRI 0-191 and VERSION 1"
        raise _bad(msg, 0)
    pri, version = int(m.group(1)), int(m.group(2))
    if pri > 191:
        msg = f"PRI {pri} is out of range 0-191"
        raise _bad(msg, 1)
    if version != 1:
        msg = f"VERSION must be 1, got {version}"
        raise _bad(msg, m.start(2))
    try:
        text = data[m.end() :].decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"header or message is not UTF-8 ({exc.reason})"
        raise _bad(msg, m.end() + exc.start) from None
    pos = 0
    fields: list[str] = []
    for name in ("TIMESTAMP", "HOSTNAME", "APP-NAME", "PROCID", "MSGID"):
        end = text.find(" ", pos)
        if end <= pos:
            msg = f"missing {name} (header fields are separated by single spaces)"
            raise _bad(msg, _at(text, pos, m.end()))
        fields.append(text[pos:end])
        pos = end + 1
    ts_text, host, app, procid, msgid = fields
    timestamp = None
    if ts_text != "-":
        try:
            timestamp = datetime.fromisoformat(ts_text.replace("Z", "+00:00"))
        except ValueError:
            msg = f"TIMESTAMP {ts_text[:40]!r} is not RFC 3339"
            raise _bad(msg, m.end()) from None
        if timestamp.tzinfo is None:
            msg = f"TIMESTAMP {ts_text[:40]!r} has no time zone"
            raise _bad(msg, m.end())
        try:
            timestamp = timestamp.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is valid RFC 3339 but before year 1 in UTC
            msg = f"TIMESTAMP {ts_text[:40]!r} is outside the years 1-9999 once converted to UTC"
            raise _bad(msg, m.end()) from None
    sd, pos = _parse_sd(text, pos, m.end())
    body: str | None = None
    if pos < len(text):
        if text[pos] != " ":
            msg = "expected a space between STRUCTURED-DATA and MSG"
            raise _bad(msg, _at(text, pos, m.end()))
        body = text[pos + 1 :].removeprefix(_BOM)
    return SyslogMessage(
        facility=pri // 8,
        severity=pri % 8,
        version=version,
        timestamp=timestamp,
        hostname=None if host == "-" else host,
        app_name=None if app == "-" else app,
        procid=None if procid == "-" else procid,
        msgid=None if msgid == "-" else msgid,
        structured_data=sd,
        msg=body,
    )


def _parse_sd(text: str, pos: int, base: int) -> tuple[dict[str, dict[str, list[str]]], int]:
    if text.startswith("-", pos):
        return {}, pos + 1
    if not text.startswith("[", pos):
        msg = "STRUCTURED-DATA must be '-' or start with '['"
        raise _bad(msg, _at(text, pos, base))
    out: dict[str, dict[str, list[str]]] = {}
    while text.startswith("[", pos):
        pos += 1
        m = _SD_NAME.match(text, pos)
        if m is None:
            msg = "SD-ID missing"
            raise _bad(msg, _at(text, pos, base))
        sd_id = m.group()
        pos = m.end()
        params = out.setdefault(sd_id, {})
        while text.startswith(" ", pos):
            pos += 1
            m = _SD_NAME.match(text, pos)
            if m is None or not text.startswith('="', m.end()):
                msg = f'SD-PARAM in [{sd_id}] must be name="value"'
                raise _bad(msg, _at(text, pos, base))
            name = m.group()
            pos = m.end() + 2
            v = _SD_VALUE.match(text, pos)
            if v is None:
                msg = f"unterminated value of {sd_id}.{name}"
                raise _bad(msg, _at(text, pos, base))
            value = v.group(1)
            # RFC 5424 escapes only '"', '\\' and ']'; any other backslash is kept as written.
            params.setdefault(name, []).append(_SD_ESCAPE.sub(r"\1", value) if "\\" in value else value)
            pos = v.end()
        if not text.startswith("]", pos):
            msg = f"expected ']' closing [{sd_id}]"
            raise _bad(msg, _at(text, pos, base))
        pos += 1
    return out, pos


# --------------------------------------------------------------------------- normaliser

#: SD parameter names that, in common practice (RFC 5424 examples, rsyslog, auditd
#: forwarders), carry who did it, from where, and whether it worked.
_PRINCIPAL_KEYS = ("user", "username", "acct", "principal", "uid")
_IP_KEYS = ("src", "srcip", "src_ip", "ip", "addr", "client_ip")
_OUTCOME_KEYS = ("outcome", "res", "result", "status")
_SUCCESS = {"success", "succeeded", "ok", "allow", "allowed", "accept", "accepted", "true"}
_FAILURE = {"failure", "failed", "fail", "deny", "denied", "reject", "rejected", "false", "error"}
#: RFC 5424 7.2: ``[origin ip=...]`` describes the host that sent the message (its own address,
#: software), not the user or client of the event.  Taken for the client, the relay's own address
#: became ``entities.ip`` whenever the element came before the one with ``src``.  It is still kept
#: in ``attributes``.
_ORIGIN_SD_ID = "origin"


def _values(sd: dict[str, dict[str, list[str]]], keys: tuple[str, ...]) -> Iterator[str]:
    """The values of the parameters named ``keys``, element by element (``origin`` left out)."""
    for sd_id, params in sd.items():
        if sd_id == _ORIGIN_SD_ID:
            continue
        for key in keys:
            yield from params.get(key, ())


def _first(sd: dict[str, dict[str, list[str]]], keys: tuple[str, ...]) -> str | None:
    return next((value for value in _values(sd, keys) if value), None)


def _first_ip(sd: dict[str, dict[str, list[str]]]) -> str | None:
    """The first client-address parameter that holds an IP, canonical (a host name in ``addr``
    is no IP: kept in ``attributes`` only)."""
    return next((ip for value in _values(sd, _IP_KEYS) if (ip := client_ip(value)) is not None), None)


class SyslogNormalizer(Normalizer):
    """``syslog`` raw records -> ``security_event`` (provider ``syslog``).

    Syslog carries no message id, so the event id hashes the message bytes: a dated message
    delivered twice (a TCP resend) is deduplicated downstream, and so would be two truly
    identical lines -- same timestamp to the sub-second, host, process and text -- which
    is accepted as the price of a stable id.  A message without a TIMESTAMP (``-``) also
    hashes ``received_at``: otherwise every repeat of the same line (the same failed
    password, again and again) had one id and all but the first were deduplicated away.
    So a resend of an undated line, received again, is a new event (not deduplicated); a
    replay of its stored raw record keeps its ``received_at`` and its id.
    Who/where/outcome come from structured data parameters in common use (``user``,
    ``src``, ``outcome`` ...), never from the ``origin`` element (the sending host's own
    address); everything else is kept in ``attributes`` (``sd.<SD-ID>.<name>``, a repeated
    parameter's later values as ``sd.<SD-ID>.<name> (2)`` ...).  The client IP is the first of
    those parameters that holds an address, spelled one way (:func:`client_ip`).
    """

    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.kind != KIND:
            msg = f"raw.syslog record of kind {record.kind!r}; expected {KIND!r}"
            raise ContractError(msg)
        parsed = parse_rfc5424(record.value)
        sd = parsed.structured_data
        outcome_text = (_first(sd, _OUTCOME_KEYS) or "").lower()
        outcome: Outcome = "unknown"
        if outcome_text in _SUCCESS:
            outcome = "success"
        elif outcome_text in _FAILURE:
            outcome = "failure"
        principal = _first(sd, _PRINCIPAL_KEYS)
        attributes = {
            k: v
            for k, v in {
                "host": parsed.hostname,
                "app": parsed.app_name,
                "procid": parsed.procid,
                "msgid": parsed.msgid,
                "facility": str(parsed.facility),
            }.items()
            if v is not None
        }
        for sd_id, params in sd.items():
            for name, values in params.items():
                key = f"sd.{sd_id}.{name}"
                attributes.setdefault(key, values[0])
                # A repeated parameter: "key (2)", "key (3)"... (a space is in no SD-NAME, so
                # no parameter of the sender's takes the place of one of these)
                for n, value in enumerate(values[1:], 2):
                    attributes.setdefault(f"{key} ({n})", value)
        action = parsed.msgid or parsed.app_name or "syslog"
        if parsed.timestamp is not None:
            event_id = stable_id(NAME, record.value, prefix="syslog-")
        else:  # the arrival time is then all that tells repeats of one line apart
            event_id = stable_id(NAME, record.value, record.received_at.isoformat(), prefix="syslog-")
        return [
            SecurityEvent(
                event_id=event_id,
                source=NAME,
                occurred_at=parsed.timestamp or record.received_at,
                ingested_at=record.received_at,
                entities=Entities(employee=principal, ip=_first_ip(sd)),
                payload=SecurityEventPayload(
                    provider="syslog",
                    action=action,
                    outcome=outcome,
                    principal=principal,
                    resource=parsed.hostname,
                    severity=parsed.severity,
                    message=parsed.msg,
                    attributes=attributes,
                ),
            )
        ]
