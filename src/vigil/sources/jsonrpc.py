"""A small JSON-RPC 2.0 client over HTTP, shared by the chain connectors.

Ethereum nodes and Bitcoin Core both speak JSON-RPC over HTTP POST.  The client keeps
the ``result`` exactly as the node sent it (:meth:`JsonRpcClient.call_raw` returns its
bytes, sliced out of the response without re-encoding) because connectors publish what
they received, unchanged.

Failures are split the way a poller needs them:

- transient (connection refused or reset, timeout, any other transport failure such as an
  egress proxy refusing the tunnel or a body cut short, a response not complete within the
  call's deadline, HTTP 429/502/503/504, a node's
  "busy / rate limited" error codes) raise :class:`~vigil.errors.Retry` with a delay,
  honouring ``Retry-After`` (seconds or an HTTP date) when the server sends one, capped at
  :data:`~vigil.sources.chain.MAX_RETRY_AFTER_S`;
- everything else raises :class:`JsonRpcError` (a :class:`~vigil.errors.SourceError`)
  naming the method, the endpoint and what the node answered.  So does a "limit exceeded"
  code whose words say the *answer* is too large (:func:`answer_too_large`: Infura's -32005
  "query returned more than 10000 results"): asked again, the same query gets the same answer,
  and it was retried every 30 s for ever; the caller may ask for less.

Two limits keep a node, or a proxy in front of it, from holding the connector: httpx's
``timeout_s`` bounds each read, not the call, so a body sent a byte at a time never ran into
it; ``deadline_s`` bounds the whole call, checked as the body arrives (a call ends at most one
read timeout past it; the status line and headers are bounded by the read timeout and httpcore's
100 KiB header limit only).  ``max_response_bytes`` bounds the body held in memory, which had
no limit: past it, a :class:`JsonRpcError`.

A URL that is not ``http://`` or ``https://`` is refused when the client is built, with a
:class:`~vigil.errors.ConfigError` naming the setting (it failed at the first call, as a
traceback).

Messages name the endpoint by scheme, host and port only: hosted nodes put API keys in
the user-info (``https://user:secret@host``) or the path (``/v3/<key>``), and neither is
ever printed.  HTTP basic-auth credentials are never part of a message either, and httpx's
own log line for each request shows the URL the same way.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from datetime import timedelta
from typing import Any

import httpx
import msgspec

from vigil.errors import ConfigError, Retry, SourceError
from vigil.events.codec import inert
from vigil.hub.topics import RAW_RECORD_MAX_BYTES
from vigil.sources.chain import MAX_RETRY_AFTER_S
from vigil.sources.http_limits import (
    BodyTooLarge,
    NotHttpUrl,
    PastDeadline,
    RetryAfter,
    http_url,
    read_bounded,
)

log = logging.getLogger(__name__)

#: HTTP statuses that mean "try again later" rather than "your request is wrong".
TRANSIENT_STATUS = frozenset({408, 425, 429, 502, 503, 504})

#: JSON-RPC error codes nodes use for overload or warm-up, not for bad requests:
#: -32005 limit exceeded (geth/infura), -28 Bitcoin Core still warming up (RPC_IN_WARMUP).
TRANSIENT_CODES = frozenset({-32005, -28})

#: How providers say, with a "limit exceeded" code, that a query's answer is too large rather than
#: that they are busy: Infura "query returned more than 10000 results" (-32005), others "too many
#: results" or "response size exceeded".  Deterministic for that query: not retried.
_TOO_LARGE = re.compile(r"more than [\d,]+ results|too many results|response size", re.IGNORECASE)

#: The largest response body read by default.  A block is published as one raw record, the
#: ``result`` unchanged, so a larger one could not be published anyway; the margin is the
#: JSON-RPC envelope around it.
MAX_RESPONSE_BYTES = RAW_RECORD_MAX_BYTES + (64 << 10)

#: ``deadline_s`` by default, in multiples of ``timeout_s`` (60 s at the default 10 s): time for
#: a node to build a large block (Bitcoin Core's ``getblock`` at verbosity 3 takes seconds) and
#: send up to MAX_RESPONSE_BYTES at about 1 MB/s.
DEADLINE_PER_TIMEOUT = 6


class JsonRpcError(SourceError):
    """The node answered with a JSON-RPC error, or with something that is not JSON-RPC."""

    def __init__(self, message: str, *, method: str, code: int | None = None, detail: str = "") -> None:
        self.method = method
        self.code = code
        #: The node's own error message (inert), or "" when the node sent none.
        self.detail = detail
        super().__init__(message)


def answer_too_large(exc: JsonRpcError) -> bool:
    """Whether ``exc`` says the answer to the query would be too large (ask for less)."""
    return _TOO_LARGE.search(exc.detail) is not None


class _Envelope(msgspec.Struct):
    """A JSON-RPC response; ``result`` stays raw bytes so it can be published unchanged."""

    id: Any = None
    result: msgspec.Raw = msgspec.Raw()
    error: dict[str, Any] | None = None
    jsonrpc: str | None = None


_decoder = msgspec.json.Decoder(_Envelope)


#: What a message about a URL that does not parse says instead of quoting it.
UNPARSABLE_URL_HINT = (
    "the URL itself is not shown, it may hold a key (a / ? # or @ in a user name or password "
    "must be percent-encoded: %2F for /, %3F, %23, %40)"
)


def redact_url(url: str | httpx.URL) -> str:
    """``scheme://host:port`` of ``url``, for messages (user-info and path may hold secrets)."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


class _RedactRequestUrls(logging.Filter):
    """Shows the request URL in httpx's log records as ``scheme://host:port``.

    httpx logs every request at INFO with its full URL (``HTTP Request: POST <url> ...``), so a
    deployment logging at INFO wrote the node's API key on every call.  A filter rather than a
    WARNING level on the ``httpx`` logger: a level is what a deployment's logging config sets
    (``dictConfig``, or raising it to see HTTP traffic while debugging), and the key would be
    back in the log; the filter holds at any level and keeps the line (method, host, status).
    It sits on the ``httpx`` logger, which httpx logs to itself (a logger's filters do not see
    its children's records); httpcore's DEBUG lines name host and port only, never the path or
    the user-info.  Every httpx client's request lines are shortened so, the safe side for the
    other connectors' URLs too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(redact_url(a) if isinstance(a, httpx.URL) else a for a in args)
        return True


_REDACT_REQUEST_URLS = _RedactRequestUrls()


class JsonRpcClient:
    """Calls one JSON-RPC endpoint.  Thread-compatible, not thread-safe (one per connector)."""

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 10.0,
        deadline_s: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        retry_after: timedelta = timedelta(seconds=1),
        headers: dict[str, str] | None = None,
        setting: str = "the JSON-RPC URL",
    ) -> None:
        """``timeout_s`` bounds each connect, write and read; ``deadline_s`` the whole call
        (default ``DEADLINE_PER_TIMEOUT * timeout_s``); ``max_response_bytes`` the body (decoded,
        so a small compressed body does not get past it).  ``setting`` names where ``url`` came
        from, for the error when it is not usable."""
        self.endpoint = _checked_endpoint(url, setting)
        # Posted to exactly as configured: as a base URL with post(""), httpx added a "/" to the
        # path (``/v3/<key>/``, Bitcoin Core's ``/wallet/hot/``).
        self._url = url
        self._retry_after = retry_after
        self._deadline_s = deadline_s if deadline_s is not None else DEADLINE_PER_TIMEOUT * timeout_s
        self._max_response_bytes = max_response_bytes
        self._asked = RetryAfter(self.endpoint, MAX_RETRY_AFTER_S)
        self._ids = itertools.count(1)
        logging.getLogger("httpx").addFilter(_REDACT_REQUEST_URLS)  # (added once: same object)
        self._http = httpx.Client(
            auth=httpx.BasicAuth(*auth) if auth else None,
            # No single read may wait past the whole call's deadline either.
            timeout=min(timeout_s, self._deadline_s),
            headers={"content-type": "application/json", **(headers or {})},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JsonRpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: list[Any] | None = None, *, about: str = "") -> Any:
        """The decoded ``result`` of ``method(params)``."""
        return msgspec.json.decode(self.call_raw(method, params, about=about))

    def call_raw(self, method: str, params: list[Any] | None = None, *, about: str = "") -> bytes:
        """The ``result`` of ``method(params)`` as the exact bytes the node sent.  ``about``
        says what was asked for (``block 812345 (<hash>)``) in the errors' messages."""
        request_id = next(self._ids)
        body = msgspec.json.encode(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or []}
        )
        where = f"{method} for {about} at {self.endpoint}" if about else f"{method} at {self.endpoint}"
        deadline = time.monotonic() + self._deadline_s
        try:
            # Streamed, so that the body is read against a deadline and a size limit: read whole
            # by post(), it had neither (httpx's timeout is per read, not per call).
            with self._http.stream("POST", self._url, content=body) as response:
                if response.status_code in TRANSIENT_STATUS:
                    raise Retry(self._delay(response), f"{where}: HTTP {response.status_code}")
                if response.status_code in (401, 403):
                    msg = f"{where}: HTTP {response.status_code}, the node refused the credentials"
                    raise JsonRpcError(msg, method=method)
                content = self._read(response, where, deadline, method)
        except httpx.UnsupportedProtocol as exc:
            # The configuration's, not the network's: waiting would not change it.
            msg = f"{where}: the URL cannot be requested: {exc}"
            raise JsonRpcError(msg, method=method) from None
        except httpx.LocalProtocolError:
            # A request this client cannot send (a header value with a newline, say): a
            # programming or configuration error.  Its text quotes the offending value, which
            # may be a key, so it is left out.
            msg = (
                f"{where}: the request could not be sent (LocalProtocolError: a header or the URL "
                "holds something HTTP does not allow; the value is not shown)"
            )
            raise JsonRpcError(msg, method=method) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # Every other transport failure is transient: timeouts, refused or reset connections,
            # a peer breaking the protocol, an egress proxy refusing the tunnel (ProxyError), a
            # compressed body cut short (DecodingError).  Only the first three were retried; the
            # others escaped as httpx tracebacks and stopped the connector.
            raise Retry(self._retry_after, f"{where}: {type(exc).__name__}: {exc}") from None
        # Bitcoin Core answers JSON-RPC errors with HTTP 500 (or 404 for unknown methods)
        # and a JSON body, so the body is read before judging the status.
        try:
            envelope = _decoder.decode(content)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than msgspec decodes (Python's recursion limit,
            # near a thousand levels; no node sends that).  It escaped as a traceback and stopped
            # the connector.
            snippet = content[:120].decode("utf-8", "replace")
            if response.status_code >= 500:
                # A server error that is not the node's (a proxy's HTML page, Cloudflare's 520-524):
                # a brief fault in front of the node, retried, not the end of the connector.
                raise Retry(
                    self._delay(response), f"{where}: HTTP {response.status_code}: {snippet!r}"
                ) from None
            msg = (
                f"{where}: HTTP {response.status_code}, expected a JSON-RPC response object; "
                f"got {snippet!r} ({exc})"
            )
            raise JsonRpcError(msg, method=method) from None
        if envelope.error is not None:
            code = envelope.error.get("code")
            # The node's words, inert: they reach the log (a Retry) and the terminal (the error),
            # where a newline forged a line and an ESC sequence drove the terminal.
            text = inert(str(envelope.error.get("message", ""))[:300])
            if code in TRANSIENT_CODES and not _TOO_LARGE.search(text):
                raise Retry(self._retry_after, f"{where}: node busy ({code}: {text})")
            msg = f"{where}: the node returned error {code!r}: {text}"
            raise JsonRpcError(msg, method=method, code=code if isinstance(code, int) else None, detail=text)
        if response.status_code >= 400:
            msg = f"{where}: HTTP {response.status_code} without a JSON-RPC error"
            raise JsonRpcError(msg, method=method)
        if envelope.id != request_id:
            msg = f"{where}: response id {envelope.id!r} does not match request id {request_id}"
            raise JsonRpcError(msg, method=method)
        if not envelope.result:
            msg = f"{where}: the response has neither `result` nor `error`"
            raise JsonRpcError(msg, method=method)
        return bytes(envelope.result)

    def _read(self, response: httpx.Response, where: str, deadline: float, method: str) -> bytes:
        """The body of ``response``; Retry once it passes ``deadline`` (a ``time.monotonic()``):
        a slow node, or a proxy, may be faster at the next attempt; JsonRpcError past
        ``max_response_bytes``: a block that large could not be published as one raw record
        either (the sink names it and stops, as here: retried, it would fail for ever)."""
        try:
            return read_bounded(response, deadline=deadline, limit=self._max_response_bytes)
        except BodyTooLarge as exc:
            msg = f"{where}: the response is larger than {exc.limit:,} bytes (max_response_bytes)"
            raise JsonRpcError(msg, method=method) from None
        except PastDeadline as exc:
            reason = (
                f"no complete response within {self._deadline_s:g}s (deadline_s; "
                f"{exc.received:,} bytes received, HTTP {response.status_code})"
            )
            raise Retry(self._retry_after, f"{where}: {reason}") from None

    def _delay(self, response: httpx.Response) -> timedelta:
        """The wait the response asks for with ``Retry-After`` (delay-seconds or an HTTP date),
        capped at MAX_RETRY_AFTER_S; the client's default when it asks for none it can read.
        Uncapped, ``86400000`` stalled the connector for 1,000 days after one warning and
        ``10**15`` stopped it with OverflowError."""
        seconds = self._asked.seconds(response)
        return self._retry_after if seconds is None else timedelta(seconds=seconds)


def _checked_endpoint(url: str, setting: str) -> str:
    """``url`` as messages show it, or ConfigError naming ``setting`` when it is not an
    ``http://`` or ``https://`` URL with a host.  The message never shows the path, the query
    or the user-info, where hosted nodes put their keys."""
    try:
        parsed = http_url(url)
    except NotHttpUrl as exc:
        if exc.unparsable:
            msg = f"{setting} is not a valid URL; {UNPARSABLE_URL_HINT}"
        else:
            msg = f"{setting} must be an http:// or https:// URL with a host; {exc}"
        raise ConfigError(msg) from None
    return redact_url(parsed)
