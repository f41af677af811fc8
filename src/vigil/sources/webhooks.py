"""The HTTP receiver shared by the SaaS webhook sources (HubSpot, Salesforce, Mailchimp).

:func:`create_app` builds a FastAPI app with one route per platform,
``POST /webhooks/<platform>[/<path token>]``.  For every request it:

1. asks the platform's :class:`WebhookPlatform` to **precheck** what needs no body (the path
   token; the signature headers' presence, form and age): a request that fails is refused, and
   counted under its reason, before its body is read, so a client with a wrong token holds no
   connection while it sends one;
2. reads the body, bounded in size (larger than ``max_body_bytes``, by default what one raw
   record may carry, is **413**) and in time (not all received within ``body_timeout_s`` is
   **408**);
3. asks the platform to **verify** it; a forged signature, a stale timestamp, an unknown
   organisation or a wrong token is **401** and counted in
   ``vigil_webhook_rejected_total{platform, reason}``; a malformed body (including XML
   with a DTD or entities) is 400, also counted, and so is any other error a verifier
   raises (reason ``verify_error``: the request is the caller's, never a 500);
4. **publishes** the body to ``raw.<platform>`` (kind ``webhook``), unchanged but for what the
   platform removes (:meth:`WebhookPlatform.published_body`: a Salesforce session id), and waits
   until :meth:`RawSink.publish` returns, i.e. until Kafka has it (a verified delivery that
   carries nothing, such as Mandrill's empty test POST, is acknowledged unpublished).  It waits
   at most ``publish_timeout_s`` in all (3 s by default), the wait behind other deliveries'
   publishes included: one publish at a time goes to the sink;
5. only then **acknowledges** (2xx; Salesforce gets its SOAP ``Ack``).  If the broker
   fails, or has not taken the delivery within ``publish_timeout_s``, the answer is **503**
   with ``Retry-After`` (counted in ``vigil_webhook_unavailable_total``), and every platform
   retries later.  Without that bound a delivery with the broker down was answered after some
   90 s (the sink's own waits) and each one queued behind it 30 s more, while the platforms
   give up on an answer after seconds and count the delivery failed.

A request under ``/webhooks/<platform>/`` with more path segments than the route's (a path
token holding ``/``, raw or as ``%2F``) is 401 ``bad_token``, counted, not an uncounted 404.

Nothing about a request is logged except the platform, the reason and sizes: bodies,
signatures and path tokens are attacker-controlled or secret.  The ``path`` kept in the
record's meta is the route with the token replaced by ``<token>``.  The uvicorn access log must
stay off (:class:`WebhookSource` turns it off) because request lines carry path tokens.

``GET`` and ``HEAD`` on a platform's token route are verification pings for the platforms
that send them (Mailchimp and Mandrill), answered 200 when the token is right.
``GET /metrics`` serves the app's own Prometheus registry; ``GET /healthz`` says it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import SecretStr

from vigil.config import Settings
from vigil.errors import BrokerError, ContractError, SourceError
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source
from vigil.sources.http_server import HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS, listen, serving

log = logging.getLogger(__name__)
T = TypeVar("T")

WEBHOOK = "webhook"
REDACTED = "<token>"
#: The largest raw record the HTTP receivers (these and the backend ingest) publish, value, key
#: and headers counted as the broker counts them.  Their raw topics keep the broker's default
#: limit (1,048,588 bytes, the batch's own overhead included): a 1 MiB webhook body passed the
#: receiver, Kafka refused the record, and the platform was answered 503 and retried it for
#: ever.  Larger is 413, not retried.
RECORD_MAX_BYTES = 900_000
#: The largest body read (a larger one cannot make a record under RECORD_MAX_BYTES).
MAX_BODY_BYTES = RECORD_MAX_BYTES
#: How long a request's body may take to arrive once its headers have.  A client sending a
#: byte now and then held its connection (and a file descriptor) for ever.
BODY_TIMEOUT_S = 30.0
#: How long a delivery may wait for Kafka in all, queued behind other deliveries' publishes
#: included, before it is answered 503.  The platforms wait for an answer about 5 s (HubSpot),
#: about 10 s (Mailchimp and Mandrill) and 60 s (Salesforce); past that they count the delivery
#: failed whatever we answer.  3 s leaves HubSpot's 5 s room for the rest: the body, the
#: verification, the network, and the sink's own floor (each Kafka call, the last commit try and
#: the abort after it included, waits at least 0.5 s, so a publish out of time can run about
#: 1 s past it).  A healthy broker commits in tens of milliseconds.
PUBLISH_TIMEOUT_S = 3.0
#: A publish is not started with less time left than this, the least KafkaRawSink gives any call.
LEAST_PUBLISH_S = 0.5
#: What a path token may hold: what RFC 3986 lets a path segment carry as it is (unreserved,
#: sub-delims, ":" and "@"; the path is matched decoded, so a client sending "+" as "%2B" matches
#: too).  A "/" (in about 40% of `openssl rand -base64 24` secrets) splits the path, which then
#: never matches the token route; "?" and "#" end it; "%", spaces and other characters are
#: percent-encoded by some clients and not by others.  (base64's "+" and "=" worked, and still do.)
PATH_TOKEN = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
PATH_SEGMENT_RULE = (
    "letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ only (what a URL path segment carries as "
    "it is: no / ? # %, spaces or other characters)"
)


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
    #: Whether deliveries come to ``/webhooks/<name>/<path token>`` (the token a secret of the
    #: platform's, checked by :func:`verify_path_token`): said where the receiver listens.
    path_token: ClassVar[bool] = False

    def precheck(self, head: Delivery) -> None:
        """Raise :class:`Rejected` for what is wrong before the body is read: ``head`` is the
        request with an empty ``body`` (its method, URL, headers and path token).  Run before
        :meth:`verify`, which still sees the whole request.  By default, nothing."""
        return None

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
        """Whether ``GET`` and ``HEAD`` on the route are verification pings to answer 200
        (Mailchimp's and Mandrill's)."""
        return False

    def publishes(self, delivery: Delivery) -> bool:
        """Whether a verified delivery is published (False: acknowledged, nothing to keep)."""
        return True

    def published_body(self, delivery: Delivery) -> bytes:
        """The bytes published for a verified delivery: its body, less what must not be kept
        (a credential the platform sends along).  By default, the body as received."""
        return delivery.body


def constant_time_equal(given: str | bytes, expected: str | bytes) -> bool:
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def path_token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a path token, or None (the rule, never the value)."""
    if len(token) < 16:
        return "must be at least 16 characters"
    if PATH_TOKEN.fullmatch(token) is None:
        return f"must hold {PATH_SEGMENT_RULE}"
    return None


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


async def read_body(request: Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The body, refused (413) by its Content-Length or once it streams past ``limit`` bytes:
    never read whole first; refused (408) when it has not all arrived within ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(reason="too_large", detail=f"body over {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejected(reason="too_large", detail=f"body over {limit} bytes", status=413)
                chunks.append(chunk)
    except TimeoutError:
        msg = f"body not received within {timeout_s:g} s ({size} bytes came)"
        raise Rejected(reason="slow_body", detail=msg, status=408) from None
    return b"".join(chunks)


def closing(status: int) -> dict[str, str]:
    """Headers for an answer given before the body was read to its end: the connection is
    closed after it (kept open, the client went on sending into it, or held it)."""
    return {"Connection": "close"} if status in (408, 413) else {}


def create_app(
    sink: RawSink,
    platforms: Sequence[WebhookPlatform],
    *,
    metrics: WebhookMetrics | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    retry_after_s: int = 30,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The receiver app.  ``clock`` is the time used for timestamps and freshness checks;
    ``publish_timeout_s`` bounds a delivery's wait for Kafka (see the module)."""
    by_name = {p.name: p for p in platforms}
    if len(by_name) != len(platforms):
        msg = f"webhook platforms must have distinct names; got {[p.name for p in platforms]}"
        raise ValueError(msg)
    stats = metrics or WebhookMetrics()
    app = FastAPI(title="Vigil webhooks", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = stats
    # One publish at a time, taken with the delivery's deadline: waiting on the sink's own lock
    # had no bound, and with the broker down each delivery queued behind the others' 30 s waits.
    # Waited for on the event loop (one lock per loop: tests run a loop per request), not in a
    # worker thread: with a slow broker, deliveries waiting there took every thread, and the
    # others' verification waited for one past HubSpot's 5 s (found in review).  Held until the
    # worker's publish returns (a request that stops waiting is not cancelled under it: anyio's
    # threads are not abandoned), so no second publish starts beside one still running.
    publishing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
        weakref.WeakKeyDictionary()
    )

    async def publish(record: RawRecord, deadline: float) -> None:
        """``record`` into Kafka by ``deadline`` (``time.monotonic``), or BrokerError."""
        loop = asyncio.get_running_loop()
        lock = publishing.get(loop) or publishing.setdefault(loop, asyncio.Lock())
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await lock.acquire()
        except TimeoutError:
            msg = f"other deliveries' publishes took all of publish_timeout_s ({publish_timeout_s:g} s)"
            raise BrokerError(msg) from None
        try:
            left = deadline - time.monotonic()
            # Less than the sink gives any Kafka call (it would run that long past the deadline):
            # the deliveries ahead took the time, so the broker is slow or away.
            if left < LEAST_PUBLISH_S:
                msg = f"under {LEAST_PUBLISH_S:g} s of publish_timeout_s ({publish_timeout_s:g} s) was left"
                raise BrokerError(msg)
            await run_in_threadpool(sink.publish, [record], timeout=left)
        finally:
            lock.release()

    def reject(platform: str, exc: Rejected) -> Response:
        stats.rejected.labels(platform, exc.reason).inc()
        log.warning("webhook %s rejected: %s", platform, exc.reason)
        return Response(
            exc.detail + "\n", status_code=exc.status, headers=closing(exc.status), media_type="text/plain"
        )

    def checked(name: str, what: str, check: Callable[[], None]) -> None:
        """``check()``, any error but :class:`Rejected` a counted 400 (``verify_error``): a
        verifier's bug on a hostile input (a header int() refused) was an unauthenticated 500
        with a traceback; the request is the caller's fault."""
        try:
            check()
        except Rejected:
            raise
        except Exception as exc:
            log.warning("webhook %s: %s raised %s", name, what, type(exc).__name__)
            raise Rejected(reason="verify_error", detail="malformed request", status=400) from None

    def prepare(
        platform: WebhookPlatform, delivery: Delivery, method: str, token: str | None
    ) -> RawRecord | Response:
        """The record to publish of a delivery, or the answer it gets instead; raises
        :class:`Rejected`.  Run in a worker thread (see handle)."""
        name = platform.name
        checked(name, "verifying", lambda: platform.verify(delivery))
        if method in ("GET", "HEAD"):
            return Response("ok\n", media_type="text/plain")  # verified ping; nothing to publish
        # Verified: whatever the body holds is published (its normaliser dead-letters what is bad,
        # with the reason).  What a platform reads of it here to decide, key or label it is
        # guarded as verify is: a hostile body (JSON nested a thousand deep) was a 500, the
        # delivery neither published nor dead-lettered, and retried by the platform for ever.
        if not _guarded(name, "publishes", lambda: platform.publishes(delivery), True):
            stats.accepted.labels(name).inc()
            return Response("ok\n", media_type="text/plain")
        # Built from the route, not by replacing the token in the path: the path Starlette gives
        # back re-encodes characters (?, #, \) and then no longer contains the token as sent.
        safe_path = f"/webhooks/{name}" if token is None else f"/webhooks/{name}/{REDACTED}"
        meta = {"path": safe_path, "content_type": delivery.headers.get("content-type", "")}
        nothing: dict[str, Any] = {}
        meta.update(_guarded(name, "meta", lambda: platform.meta(delivery), nothing))
        try:
            published = platform.published_body(delivery)
        except Exception as exc:
            # Not published as received (what _guarded does for a key or meta): what this
            # removes is a credential, and Kafka keeps it for days.  Refused, counted, logged.
            log.warning("webhook %s: preparing the body to publish raised %s", name, type(exc).__name__)
            raise Rejected(reason="unpublishable", detail="malformed request", status=400) from None
        record = RawRecord(
            source=name,
            kind=WEBHOOK,
            value=published,
            received_at=delivery.received_at,
            key=_guarded(name, "key", lambda: platform.key(delivery), None),
            meta=meta,
        )
        size = record.size()
        if size > RECORD_MAX_BYTES:  # the body fitted, but not with its key and headers
            detail = f"delivery is {size:,} bytes with its key and headers; at most {RECORD_MAX_BYTES:,}"
            raise Rejected(reason="too_large", detail=detail, status=413)
        return record

    async def handle(request: Request, name: str, token: str | None) -> Response:
        platform = by_name.get(name)
        if platform is None:
            return Response("unknown webhook platform\n", status_code=404, media_type="text/plain")
        try:
            head = Delivery(
                platform=name,
                method=request.method,
                url=str(request.url),
                path=request.url.path,
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=b"",
                received_at=clock(),
                token=token,
            )
            # Before the body: a client with a wrong token held a connection for up to
            # body_timeout_s sending one, and was counted as slow_body, not bad_token.
            checked(name, "prechecking", lambda: platform.precheck(head))
            body = await read_body(request, max_body_bytes, body_timeout_s)
            delivery = dataclasses.replace(head, body=body, received_at=clock())
            # From here the delivery's wait counts: a wait for a worker thread, the platform's
            # work and the publish.
            deadline = time.monotonic() + publish_timeout_s
            # What the platform does with the body (verify, key, label, redact it: Salesforce's
            # parse a SOAP body of up to the body limit, four times) in a worker thread: on the
            # event loop it held every other request of every platform meanwhile (found in review).
            prepared = await run_in_threadpool(prepare, platform, delivery, request.method, token)
        except Rejected as exc:
            return reject(name, exc)
        if isinstance(prepared, Response):
            return prepared
        record = prepared
        try:
            await publish(record, deadline)
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
        return platform.acknowledge(delivery)  # (a constant answer: no thread to wait for)

    @app.post("/webhooks/{name}")
    async def post(request: Request, name: str) -> Response:
        return await handle(request, name, None)

    @app.post("/webhooks/{name}/{token}")
    async def post_with_token(request: Request, name: str, token: str) -> Response:
        return await handle(request, name, token)

    # HEAD too: Mandrill checks a new webhook URL with HEAD before its test POST.
    @app.api_route("/webhooks/{name}/{token}", methods=["GET", "HEAD"])
    async def get_with_token(request: Request, name: str, token: str) -> Response:
        platform = by_name.get(name)
        if platform is None or not platform.answers_get():
            return Response("method not allowed\n", status_code=405, media_type="text/plain")
        return await handle(request, name, token)

    # More segments than a token route has: a token holding "/" (raw or as %2F, which the path
    # is decoded from), or a guess.  An uncounted 404 before: a receiver configured with such a
    # token refused every delivery and nothing counted or logged it.
    @app.api_route("/webhooks/{name}/{token}/{rest:path}", methods=["POST", "GET", "HEAD"])
    async def too_deep(request: Request, name: str, token: str, rest: str) -> Response:
        if name not in by_name:
            return Response("unknown webhook platform\n", status_code=404, media_type="text/plain")
        return reject(name, Rejected(reason="bad_token", detail="unknown webhook URL"))

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
    free one, read from :attr:`port` once :attr:`ready` is set); ``body_timeout_s``,
    ``max_connections``, ``keep_alive_s`` and ``header_timeout_s`` bound slow and idle clients
    (:func:`read_body`, :func:`~vigil.sources.http_server.serving`); ``publish_timeout_s``
    (default 3) bounds how long a delivery waits for Kafka in all, behind other deliveries'
    publishes included, before it is answered 503 (:data:`PUBLISH_TIMEOUT_S` says why 3).
    """

    def __init__(
        self,
        platform: WebhookPlatform,
        *,
        host: str = "127.0.0.1",
        port: int = 8089,
        source_id: str | None = None,
        metrics: WebhookMetrics | None = None,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        keep_alive_s: int = KEEP_ALIVE_S,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        if not 0 < publish_timeout_s < math.inf:
            msg = (
                f"{platform.name}: publish_timeout_s must be a number of seconds above 0; got "
                f"{publish_timeout_s}"
            )
            raise ValueError(msg)
        self.name = platform.name
        super().__init__(source_id)
        self.platform = platform
        self.host = host
        self.port = port
        self.metrics = metrics or WebhookMetrics()
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.keep_alive_s = keep_alive_s
        self.header_timeout_s = header_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.ready = threading.Event()

    def listening(self, timeout: float) -> str | None:
        # (Not while stopping: its start-up ends early then, and ``ready`` is set anyway.)
        if not self.ready.wait(timeout) or not self.running:
            return None
        # A platform's path token, a secret, is not said, only where it goes: its URL without
        # one was refused by every delivery, and the line did not say so (found in review).
        where = f"http://{self.host}:{self.port}/webhooks/{self.name}"
        return f"{where}/{REDACTED}" if self.platform.path_token else where

    def run(self, sink: RawSink) -> None:
        app = create_app(
            sink,
            [self.platform],
            metrics=self.metrics,
            body_timeout_s=self.body_timeout_s,
            publish_timeout_s=self.publish_timeout_s,
        )
        label = f"{self.name} webhooks"
        sock = listen(self.host, self.port, label)
        self.port = sock.getsockname()[1]
        with serving(
            app,
            sock,
            label=label,
            host=self.host,
            wait=self.wait,
            max_connections=self.max_connections,
            keep_alive_s=self.keep_alive_s,
            header_timeout_s=self.header_timeout_s,
        ):
            self.ready.set()
            self._stop.wait()


def path_token_option(
    options: Mapping[str, str], name: str, settings: Settings, setting: str, source: str
) -> str:
    """:func:`secret_option`, checked to be usable as the last segment of a URL path
    (:func:`path_token_problem`): a :class:`SourceError` at start naming where it came from and
    the rule, never the value, rather than a receiver that answers every delivery 404."""
    value = secret_option(options, name, settings, setting)
    problem = path_token_problem(value)
    if problem is not None:
        given = (
            f"the option {name}"
            if options.get(name)
            else f"VIGIL_{setting.upper()} (or {setting} in vigil.toml)"
        )
        msg = (
            f"{source}: the path token in {given} {problem}; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
        raise SourceError(msg)
    return value


def secret_option(options: Mapping[str, str], name: str, settings: Settings, setting: str) -> str:
    """The secret given as option ``name`` or, by default, as the setting ``setting`` (a
    :class:`~pydantic.SecretStr` field of ``settings``); never echoed in errors."""
    given: SecretStr | None = getattr(settings, setting)
    value = options.get(name) or (given.get_secret_value() if given is not None else "")
    if not value:
        msg = (
            f"{name} is required: set VIGIL_{setting.upper()} or {setting} in vigil.toml "
            f"(or pass the option {name}=...)"
        )
        raise SourceError(msg)
    return value


#: The options every webhook source takes (:func:`listen_options`).  ``source_id``: each of
#: several receivers of one platform (behind a load balancer) needs its own, or their Kafka
#: transactions, named after it, fence each other.
LISTEN_OPTIONS = frozenset(
    {
        "host",
        "port",
        "body_timeout_s",
        "max_connections",
        "keep_alive_s",
        "header_timeout_s",
        "publish_timeout_s",
        "source_id",
    }
)


def listen_options(options: Mapping[str, str], default_port: int) -> dict[str, Any]:
    """The :data:`LISTEN_OPTIONS` as keyword arguments of :class:`WebhookSource`."""
    return {
        "host": options.get("host", "127.0.0.1"),
        "port": int(options.get("port", str(default_port))),
        "body_timeout_s": float(options.get("body_timeout_s", str(BODY_TIMEOUT_S))),
        "max_connections": int(options.get("max_connections", str(MAX_CONNECTIONS))),
        "keep_alive_s": int(options.get("keep_alive_s", str(KEEP_ALIVE_S))),
        "header_timeout_s": float(options.get("header_timeout_s", str(HEADER_TIMEOUT_S))),
        "publish_timeout_s": float(options.get("publish_timeout_s", str(PUBLISH_TIMEOUT_S))),
        "source_id": options.get("source_id"),
    }


def webhook_where(source: str, record: RawRecord) -> str:
    """Where a normaliser's errors for ``record`` happened; a :class:`ContractError` unless the
    record is a delivery this receiver published (kind ``webhook``)."""
    where = f"raw.{source} ({record.kind})"
    if record.kind != WEBHOOK:
        msg = f"{where}: expected kind {WEBHOOK!r}, got {record.kind!r}"
        raise ContractError(msg)
    return where


def _guarded(name: str, what: str, read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` when it raises (logged by type, never the body)."""
    try:
        return read()
    except Exception as exc:
        log.warning(
            "webhook %s: %s raised %s; publishing the delivery as it is", name, what, type(exc).__name__
        )
        return default
