"""The HTTP receiver shared by the SaaS webhook sources (HubSpot, Salesforce, Mailchimp).

:func:`create_app` builds a FastAPI app with one route per platform,
``POST /webhooks/<platform>[/<path token>]``.  For every request it:

1. reads the body (bounded: larger than ``max_body_bytes`` is 413);
2. asks the platform's :class:`WebhookPlatform` to **verify** it; a forged signature, a
   stale timestamp, an unknown organisation or a wrong token is **401** and counted in
   ``vigil_webhook_rejected_total{platform, reason}``; a malformed body (including XML
   with a DTD or entities) is 400, also counted;
3. **publishes** the body unchanged to ``raw.<platform>`` (kind ``webhook``) and waits
   until :meth:`RawSink.publish` returns, i.e. until Kafka has it;
4. only then **acknowledges** (2xx; Salesforce gets its SOAP ``Ack``).  If the broker
   fails the answer is **503** with ``Retry-After``, and every platform retries later.

Nothing about a request is logged except the platform, the reason and sizes: bodies,
signatures and path tokens are attacker-controlled or secret.  Path tokens are
redacted from the ``path`` kept in the record's meta.  The uvicorn access log must stay
off (:class:`WebhookSource` turns it off) because request lines carry path tokens.

``GET /metrics`` serves the app's own Prometheus registry; ``GET /healthz`` says it runs.
"""

from __future__ import annotations

import hmac
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from vigil.errors import BrokerError, ContractError, SourceError
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source
from vigil.sources.http_server import listen, serving

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
REDACTED = "<token>"


@dataclass(frozen=True)
class Delivery:
    """One HTTP request as the verifier sees it (``headers`` keys are lower-case)."""

    platform: str
    method: str
    #: The full URL the app received, including the query string.
    url: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    received_at: datetime
    #: The path segment after ``/webhooks/<platform>/``, if any (a secret token for some platforms).
    token: str | None = None


class Rejected(Exception):
    """The request is not accepted.  ``reason`` is a short label for the counter; ``detail`` is
    safe to return to the caller (it never echoes secrets or the body)."""

    def __init__(self, reason: str, detail: str, status: int = 401) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}")


class WebhookPlatform(ABC):
    """What the receiver needs from one platform."""

    #: Source name: the route is ``/webhooks/<name>`` and records go to ``raw.<name>``.
    name: str

    @abstractmethod
    def verify(self, delivery: Delivery) -> None:
        """Raise :class:`Rejected` unless the request is authentic and fresh."""

    def key(self, delivery: Delivery) -> bytes | None:
        """Kafka key of the raw record (an account or list id keeps one tenant in order)."""
        return None

    def meta(self, delivery: Delivery) -> dict[str, Any]:
        """Extra facts for the raw record (never secrets)."""
        return {}

    def acknowledge(self, delivery: Delivery) -> Response:
        """The answer once Kafka has the record."""
        return Response(status_code=204)

    def answers_get(self) -> bool:
        """Whether ``GET`` on the route is a verification ping to answer 200 (Mailchimp's)."""
        return False


def constant_time_equal(given: str | bytes, expected: str | bytes) -> bool:
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def verify_path_token(delivery: Delivery, secret: str, url: str) -> None:
    """Reject a delivery whose path token is missing or is not ``secret``, for platforms that
    sign nothing and are protected only by a secret in the URL they call.  ``url`` names that
    URL in the answer ("webhook", "endpoint"), as the platform's documentation does."""
    if delivery.token is None:
        raise Rejected(reason="missing_token", detail=f"the {url} URL must end with its secret token")
    if not constant_time_equal(delivery.token, secret):
        raise Rejected(reason="bad_token", detail=f"unknown {url} token")


@dataclass
class WebhookMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.accepted = Counter(
            "vigil_webhook_accepted", "Webhook requests published and acknowledged", ["platform"],
            registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "vigil_webhook_rejected", "Webhook requests rejected (forged, stale, malformed)",
            ["platform", "reason"], registry=self.registry,
        )  # fmt: skip
        self.unavailable = Counter(
            "vigil_webhook_unavailable", "Webhook requests answered 503 because Kafka failed", ["platform"],
            registry=self.registry,
        )  # fmt: skip


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) by its Content-Length or once it streams past ``limit`` bytes:
    never read whole first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(reason="too_large", detail=f"body over {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(reason="too_large", detail=f"body over {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    sink: RawSink,
    platforms: Sequence[WebhookPlatform],
    *,
    metrics: WebhookMetrics | None = None,
    max_body_bytes: int = 1024 * 1024,
    retry_after_s: int = 30,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The receiver app.  ``clock`` is the time used for timestamps and freshness checks."""
    by_name = {p.name: p for p in platforms}
    if len(by_name) != len(platforms):
        msg = f"webhook platforms must have distinct names; got {[p.name for p in platforms]}"
        raise ValueError(msg)
    stats = metrics or WebhookMetrics()
    app = FastAPI(title="Vigil webhooks", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = stats

    def reject(platform: str, exc: Rejected) -> Response:
        stats.rejected.labels(platform, exc.reason).inc()
        log.warning("webhook %s rejected: %s", platform, exc.reason)
        return Response(exc.detail + "\n", status_code=exc.status, media_type="text/plain")

    async def handle(request: Request, name: str, token: str | None) -> Response:
        platform = by_name.get(name)
        if platform is None:
            return Response("unknown webhook platform\n", status_code=404, media_type="text/plain")
        try:
            body = await read_body(request, max_body_bytes)
            path = request.url.path
            delivery = Delivery(
                platform=name,
                method=request.method,
                url=str(request.url),
                path=path,
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                received_at=clock(),
                token=token,
            )
            platform.verify(delivery)
        except Rejected as exc:
            return reject(name, exc)
        if request.method == "GET":
            return Response("ok\n", media_type="text/plain")  # verified ping; nothing to publish
        safe_path = path if token is None else path.replace(token, REDACTED)
        meta = {"path": safe_path, "content_type": delivery.headers.get("content-type", "")}
        meta.update(platform.meta(delivery))
        record = RawRecord(
            source=name,
            kind=WEBHOOK,
            value=body,
            received_at=delivery.received_at,
            key=platform.key(delivery),
            meta=meta,
        )
        try:
            await run_in_threadpool(sink.publish, [record])
        except BrokerError as exc:
            stats.unavailable.labels(name).inc()
            log.error("webhook %s: Kafka did not take the delivery, answering 503: %s", name, exc)
            return Response(
                "temporarily unavailable\n",
                status_code=503,
                headers={"Retry-After": str(retry_after_s)},
                media_type="text/plain",
            )
        stats.accepted.labels(name).inc()
        return platform.acknowledge(delivery)

    @app.post("/webhooks/{name}")
    async def post(request: Request, name: str) -> Response:
        return await handle(request, name, None)

    @app.post("/webhooks/{name}/{token}")
    async def post_with_token(request: Request, name: str, token: str) -> Response:
        return await handle(request, name, token)

    @app.get("/webhooks/{name}/{token}")
    async def get_with_token(request: Request, name: str, token: str) -> Response:
        platform = by_name.get(name)
        if platform is None or not platform.answers_get():
            return Response("method not allowed\n", status_code=405, media_type="text/plain")
        return await handle(request, name, token)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(stats.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True, "platforms": sorted(by_name)}

    return app


class WebhookSource(Source):
    """Serves :func:`create_app` for one platform with uvicorn until stopped.

    Options shared by the three sources: ``host`` (default 127.0.0.1) and ``port`` (default
    8089 HubSpot, 8090 Salesforce, 8091 Mailchimp, so the three run side by side; 0 picks a
    free one, read from :attr:`port` once :attr:`ready` is set).
    """

    def __init__(
        self,
        platform: WebhookPlatform,
        *,
        host: str = "127.0.0.1",
        port: int = 8089,
        source_id: str | None = None,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self.name = platform.name
        super().__init__(source_id)
        self.platform = platform
        self.host = host
        self.port = port
        self.metrics = metrics or WebhookMetrics()
        self.ready = threading.Event()

    def run(self, sink: RawSink) -> None:
        app = create_app(sink, [self.platform], metrics=self.metrics)
        label = f"{self.name} webhooks"
        sock = listen(self.host, self.port, label)
        self.port = sock.getsockname()[1]
        with serving(app, sock, label=label, host=self.host, wait=self.wait):
            self.ready.set()
            self._stop.wait()


def check_options(source: str, options: Mapping[str, str], known: set[str]) -> None:
    unknown = set(options) - known
    if unknown:
        msg = f"{source}: unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
        raise SourceError(msg)


def secret_option(options: Mapping[str, str], name: str, env: Mapping[str, str], env_var: str) -> str:
    """A secret from the options or, by default, the environment; never echoed in errors."""
    value = options.get(name) or env.get(env_var, "")
    if not value:
        msg = f"{name} is required: set {env_var} (or pass the option {name}=...)"
        raise SourceError(msg)
    return value


def listen_options(options: Mapping[str, str], default_port: int) -> dict[str, Any]:
    """The ``host`` and ``port`` options as keyword arguments of :class:`WebhookSource`."""
    return {"host": options.get("host", "127.0.0.1"), "port": int(options.get("port", str(default_port)))}


def webhook_where(source: str, record: RawRecord) -> str:
    """Where a normaliser's errors for ``record`` happened; a :class:`ContractError` unless the
    record is a delivery this receiver published (kind ``webhook``)."""
    where = f"raw.{source} ({record.kind})"
    if record.kind != WEBHOOK:
        msg = f"{where}: expected kind {WEBHOOK!r}, got {record.kind!r}"
        raise ContractError(msg)
    return where
