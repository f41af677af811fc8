"""The HTTP receivers' limits on real sockets: a body that does not arrive in time, and the
connection limit (uvicorn on a free loopback port, over a memory sink)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from vigil.sources.backend import BackendIngestSource, hash_key
from vigil.sources.mailchimp import MailchimpWebhook
from vigil.sources.sink import MemorySink
from vigil.sources.webhooks import WebhookSource

SECRET = "mailchimp-path-secret-0123456789"  # noqa: S105 - a test secret
KEY = "test-key-wallet-service-7f3a"  # a test value, not a secret
#: How long the test waits for an answer at most; the deadlines under test are far shorter.
PATIENCE_S = 15.0


@contextmanager
def running(source: WebhookSource | BackendIngestSource) -> Iterator[int]:
    """Run ``source`` on a free port in a thread; yields the port, stops the source after."""
    thread = threading.Thread(target=source.run, args=(MemorySink(),))
    thread.start()
    try:
        assert source.ready.wait(PATIENCE_S), "the server did not start"
        yield source.port
    finally:
        source.stop()
        thread.join(PATIENCE_S)
    assert not thread.is_alive()


def answer_to_a_stalled_body(port: int, head: bytes) -> bytes:
    """Send ``head`` (request line and headers announcing 100 bytes of body), then 2 bytes of
    body and nothing more; everything the server sends back until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as conn:
        conn.sendall(head + b"Content-Length: 100\r\n\r\nab")
        received = b""
        while chunk := conn.recv(4096):  # (before the deadline: TimeoutError, the test fails)
            received += chunk
        return received


def test_a_webhook_body_that_stops_arriving_is_answered_408_and_the_connection_closed() -> None:
    # Without a deadline, a client sending a byte now and then held its connection for ever.
    source = WebhookSource(MailchimpWebhook(SECRET), port=0, body_timeout_s=0.3)
    with running(source) as port:
        head = f"POST /webhooks/mailchimp/{SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        answer = answer_to_a_stalled_body(port, head)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"body not received within 0.3 s" in answer
    metrics = source.metrics.registry
    assert (
        metrics.get_sample_value(
            "vigil_webhook_rejected_total", {"platform": "mailchimp", "reason": "slow_body"}
        )
        == 1
    )


def test_an_ingest_body_that_stops_arriving_is_answered_408_and_the_connection_closed() -> None:
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, body_timeout_s=0.3)
    with running(source) as port:
        head = (
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/x-ndjson\r\n"
        ).encode()
        answer = answer_to_a_stalled_body(port, head)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"body not received within 0.3 s" in answer


def test_requests_past_the_connection_limit_are_answered_503() -> None:
    # Unlimited, idle connections took every file descriptor the process had.
    source = WebhookSource(MailchimpWebhook(SECRET), port=0, max_connections=2)
    with running(source) as port:
        held = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE_S)
        try:
            held.request("GET", "/healthz")  # answered, then kept open (keep-alive)
            assert held.getresponse().read() != b""
            # This request's connection and the one held make two: the limit.
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=PATIENCE_S).status_code == 503
        finally:
            held.close()


def _one_response(conn: socket.socket) -> bytes:
    """Read one HTTP response (head and a Content-Length body) from ``conn``."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(4096)
        assert chunk, f"the server closed the connection mid-response: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(4096)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return head


@pytest.mark.parametrize("kind", ["webhook", "ingest"])
def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(kind: str) -> None:
    # Idle keep-alive connections count against the connection limit and hold a descriptor:
    # kept for ever, a few hundred idle clients answered every other request 503.
    source: WebhookSource | BackendIngestSource = (
        WebhookSource(MailchimpWebhook(SECRET), port=0, keep_alive_s=1)
        if kind == "webhook"
        else BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, keep_alive_s=1)
    )
    with running(source) as port, socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as conn:
        health = b"/healthz" if kind == "webhook" else b"/v1/health"
        request = b"GET " + health + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
        # Two requests on one connection: it is kept alive after an answer, not closed with it.
        for _ in range(2):
            conn.sendall(request)
            head = _one_response(conn)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"connection: close" not in head.lower()
        # Then idle: the server closes it (recv() gives b""); past the deadline, recv() raises
        # TimeoutError and the test fails.
        assert conn.recv(4096) == b""


@pytest.mark.parametrize("kind", ["webhook", "ingest"])
def test_connections_that_do_not_send_their_headers_in_time_are_closed(kind: str) -> None:
    # Uvicorn alone kept a connection that sent nothing, or a request's headers in part, for as
    # long as the client liked: max_connections of them made every request a 503.
    source: WebhookSource | BackendIngestSource = (
        WebhookSource(MailchimpWebhook(SECRET), port=0, max_connections=4, header_timeout_s=0.3)
        if kind == "webhook"
        else BackendIngestSource(
            keys={"wallet": hash_key(KEY)}, port=0, max_connections=4, header_timeout_s=0.3
        )
    )
    health = b"/healthz" if kind == "webhook" else b"/v1/health"
    request = b"GET " + health + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with running(source) as port:
        silent = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
        partial = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
        kept = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
        try:
            partial.sendall(request[:20])  # the request line begun, no more
            # A kept-alive connection: answered once, then a next request begun and not ended.
            kept.sendall(request)
            assert _one_response(kept).startswith(b"HTTP/1.1 200 ")
            kept.sendall(request[:20])
            # The server closes each (recv() gives b""); past PATIENCE_S, recv() raises
            # TimeoutError and the test fails.
            for conn in (silent, partial, kept):
                assert conn.recv(4096) == b""
            # Their places under the limit (4: theirs and this request's) are free again, though
            # the clients hold on: answered, not 503.
            assert (
                httpx.get(f"http://127.0.0.1:{port}{health.decode()}", timeout=PATIENCE_S).status_code == 200
            )
        finally:
            for conn in (silent, partial, kept):
                conn.close()


def test_a_request_answered_before_its_body_does_not_leave_its_connection_without_a_deadline() -> None:
    # A request without a key is answered 401 before its body comes; the body then ends it
    # inside one read, which cancelled the keep-alive timer, and the connection waited for a next
    # request with no timer at all: a client without a key held a place under the limit for good.
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, header_timeout_s=0.3)
    with running(source) as port, socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as conn:
        conn.sendall(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\n")
        assert _one_response(conn).startswith(b"HTTP/1.1 401 ")
        conn.sendall(b"hello")  # the body, after the answer
        # Then silent: the server closes it (past PATIENCE_S, recv() raises TimeoutError).
        assert conn.recv(4096) == b""


@pytest.mark.parametrize("path", [b"/v1/events", b"/no-such-path"], ids=["401", "404"])
def test_the_rest_of_a_body_answered_before_it_came_has_a_deadline(path: bytes) -> None:
    # Answered (401 without a key, 404 for any path) before its body came, the request then had
    # no timer: uvicorn cancels its keep-alive timer at every byte, so one body byte, or a byte
    # now and then, held the connection and a place under the limit for good, with no key.
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, header_timeout_s=0.3)
    head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
    with running(source) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as once:
            once.sendall(head)
            assert _one_response(once).split(b" ")[1] in (b"401", b"404")
            once.sendall(b"[")  # one byte of the body, then silence
            assert once.recv(4096) == b""  # closed (past PATIENCE_S: TimeoutError, the test fails)
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as trickle:
            trickle.sendall(head)
            assert _one_response(trickle).split(b" ")[1] in (b"401", b"404")
            trickle.settimeout(0.1)
            closed = False
            for _ in range(int(PATIENCE_S / 0.1)):  # a byte every 0.1 s, each in time for the keep-alive
                try:
                    trickle.sendall(b"x")
                    closed = trickle.recv(4096) == b""
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                if closed:
                    break
            assert closed, "a body trickling in after the answer kept its connection open"


def test_an_address_in_x_forwarded_for_is_not_taken_for_the_clients(caplog: pytest.LogCaptureFixture) -> None:
    # Uvicorn trusts X-Forwarded-For (and -Proto) from 127.0.0.1 by default: behind a local proxy
    # that passes the client's own header on, the address logged for a wrong key was the
    # client's choice.
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0)
    with running(source) as port:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/events",
            content=b"{}",
            headers={"Authorization": "Bearer wrong", "X-Forwarded-For": "203.0.113.7"},
            timeout=PATIENCE_S,
        )
        assert answer.status_code == 401
    lines = [r.getMessage() for r in caplog.records if "unknown API key" in r.getMessage()]
    assert lines == ["backend ingest: request from 127.0.0.1 with an unknown API key"]


@pytest.mark.parametrize("path", [b"/webhooks/mailchimp/wrong-token-0123456789", b"/webhooks/mailchimp/a/b"])
def test_a_wrong_token_is_answered_at_once_not_after_the_body(path: bytes) -> None:
    # The body was read first: a client with a wrong token held its connection for body_timeout_s
    # dripping one, and was counted as slow_body (408), not as bad_token.
    source = WebhookSource(MailchimpWebhook(SECRET), port=0, body_timeout_s=3)
    with running(source) as port:
        started = time.monotonic()
        answer = answer_to_a_stalled_body(port, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        # Answered at once; the connection then closed by header_timeout_s (10 s), never read.
        assert time.monotonic() - started < PATIENCE_S
    rejected = source.metrics.registry.get_sample_value
    assert rejected("vigil_webhook_rejected_total", {"platform": "mailchimp", "reason": "bad_token"}) == 1
    assert rejected("vigil_webhook_rejected_total", {"platform": "mailchimp", "reason": "slow_body"}) is None
