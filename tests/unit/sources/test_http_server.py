"""The HTTP receivers' limits on real sockets: a body that does not arrive in time, and the
connection limit (uvicorn on a free loopback port, over a memory sink)."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

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
