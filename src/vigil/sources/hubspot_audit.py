"""HubSpot's account audit log, polled: the logins and exports its webhooks never report.

``GET {base_url}/account-info/v3/activity/audit-logs`` (Enterprise accounts), with a private
app's access token (scope ``account-info.security.read``) as a bearer token, asked with
``occurredAfter``, ``occurredBefore``, ``limit`` and the paging cursor ``after`` (the previous
page's ``paging.next.after``) until a page has no ``paging.next``.  Each page is published to
``raw.hubspot`` as one record of kind ``audit_log``, which the HubSpot normaliser reads
(:func:`vigil.sources.hubspot._audit_events`): its body as received, byte for byte, or, when some
of its results were published already (see below), ``{"results": [...]}`` holding the others,
each result's bytes as received.  A page all of whose results were published publishes nothing.

The cursor (``{"v": 2, "at", "seen", "pending", "recent", "since"}``, written with every page in one
Kafka transaction) does not rely on the order HubSpot returns results in, which is not
documented:

- ``at`` is the newest ``occurredAt`` published (RFC 3339, UTC), and ``seen`` the ids of the
  results published at ``at`` (or later: see the clock below), at most :data:`SEEN_AT_MOST`;
- ``recent`` holds the ids and times of the results published dated from ``settle`` (10
  minutes) before ``at`` up to it (from ``since``, when that is later: a first start's, whose
  window began at ``at``), at most :data:`RECENT_AT_MOST`: HubSpot may write a result after
  newer ones (how late is not documented), and a poll asked only from ``at`` never asked for it
  again;
- a poll asks the window from just before ``at`` less ``settle``, or ``since`` if later
  (``occurredAfter`` that less a
  millisecond: whether HubSpot's "after" is strict is not documented either, and a result at
  the window's start written after the last poll must not be missed) to the poll's start
  (``occurredBefore``, so that results arriving while the poll pages do not shift its pages);
  it leaves out results older than its start and those whose id is in ``seen`` or ``recent``;
- ``pending`` lists the ids published by the poll so far: it is written with each page, and a
  poll left in the middle (a crash, a failed page, ``stop()``) is resumed by asking the same
  window's start again and leaving those out too.  ``at`` and ``seen`` advance only with the
  poll's last page, to the newest ``occurredAt`` among every result the poll was given.

So a restart neither repeats nor skips a result, in any order of results, as long as one poll
has published at most :data:`PENDING_AT_MOST` results before a crash: past that, the oldest
of its ids are forgotten and a crash re-publishes those results.  Such duplicates carry the
same audit ids, hence the same event ids (the normaliser's ``stable_id`` of the audit id),
which downstream deduplication removes; so do results of the settle window past
``RECENT_AT_MOST`` of them.  What no cursor can give: a result HubSpot writes later than
``settle`` after its time, dated before ``at`` less ``settle``, is never asked for again (a
larger ``settle`` costs each poll the pages of that window again).  A result dated after
the poll's ``occurredBefore`` (which HubSpot should not return; a clock far ahead) is published
but moves ``at`` no further than that bound.  A first start (no cursor) begins ``lookback``
ago (1 day; HubSpot keeps 90 days at most).

Failures are polls that fail, each logged once and retried at the next interval, the cursor
unmoved: a 429 or 5xx waits ``Retry-After`` too (capped at
:data:`~vigil.sources.chain.MAX_RETRY_AFTER_S`); a 401 or 403 names the scope the token needs
(the token may be rotated, so it is asked again); a body that is not JSON, or not a page of
audit results, names what was wrong and where (page, field).  Each request has httpx's
``timeout`` (per read) and a deadline for the whole answer (6 times the timeout), and an answer
larger than a raw record may be is refused.  The token is a setting, never an option (a
command line is readable by other users), and is never in a log line, error, record or cursor.
Text from the server (a reason phrase, a paging token, a field) is made inert before it is
logged or raised.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from pydantic import SecretStr

from vigil.config import Settings
from vigil.errors import Retry, SourceError
from vigil.events.codec import inert
from vigil.hub.raw import RawRecord
from vigil.hub.topics import RAW_RECORD_MAX_BYTES
from vigil.sources.base import RawSink, Source, check_options, seconds_option
from vigil.sources.chain import MAX_RETRY_AFTER_S
from vigil.sources.http_limits import (
    BodyTooLarge,
    NotHttpUrl,
    PastDeadline,
    RetryAfter,
    http_url,
    read_bounded,
)
from vigil.sources.hubspot import AUDIT_LOG, NAME
from vigil.sources.jsonrpc import DEADLINE_PER_TIMEOUT, redact_url

log = logging.getLogger(__name__)

#: The registry's name for this source (it publishes as ``hubspot``, to ``raw.hubspot``).
SOURCE = "hubspot_audit"
DEFAULT_SOURCE_ID = "hubspot.audit"
DEFAULT_BASE_URL = "https://api.hubapi.com"
PATH = "/account-info/v3/activity/audit-logs"
SCOPE = "account-info.security.read"
SETTING = "hubspot_access_token"
OPTIONS = frozenset({"base_url", "poll_interval", "page_size", "lookback", "settle", "timeout", "source_id"})
MAX_PAGE_SIZE = 200
#: HubSpot keeps the audit log this long.
MAX_LOOKBACK = timedelta(days=90)
#: Ids the cursor keeps of results at ``at``, and of a poll's published results (see the module):
#: each id at most :data:`_ID_CHARS_KEPT` characters, the cursor stays well under Kafka's 1 MB.
SEEN_AT_MOST = 1_000
PENDING_AT_MOST = 5_000
#: Ids (with their times) the cursor keeps of the results published within ``settle`` before
#: ``at`` (see the module): about 200 KB of cursor with ids of 64 characters (HubSpot's are
#: digits; one of other characters is kept as a hash, see _id_key).
RECENT_AT_MOST = 2_000
#: How late after its time HubSpot may write a result and still have it published (``settle``).
DEFAULT_SETTLE = timedelta(minutes=10)
MAX_SETTLE = timedelta(days=1)
#: The largest answer read: a page is published as one raw record (room kept for its headers).
MAX_RESPONSE_BYTES = RAW_RECORD_MAX_BYTES - (64 << 10)
#: A paging token longer than this is named in a record's meta by its length only.
_AFTER_SHOWN_CHARS = 500
#: An id longer than this is kept in the cursor as a hash of it.
_ID_CHARS_KEPT = 64
_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: What a bearer token may hold (RFC 6750's b64token, which HubSpot's ``pat-na1-<uuid>`` fits).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class _Next(msgspec.Struct):
    after: str | int


class _Paging(msgspec.Struct):
    next: _Next | None = None


class _Page(msgspec.Struct):
    results: list[msgspec.Raw]
    paging: _Paging | None = None


class _Result(msgspec.Struct):
    id: str | int
    occurredAt: str | int


_page_decoder = msgspec.json.Decoder(_Page)
_result_decoder = msgspec.json.Decoder(_Result)


class HubSpotAuditSource(Source):
    """Polls the account's audit log every ``poll_interval`` seconds (see the module).

    Counters for a status view: ``pages`` and ``objects`` (results) published, ``failed_polls``,
    ``errors`` (the endpoint's failure while it lasts) and ``last_error`` (None after a poll
    that succeeded)."""

    name = NAME

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        poll_interval: float = 60.0,
        page_size: int = 100,
        lookback: timedelta = timedelta(days=1),
        settle: timedelta = DEFAULT_SETTLE,
        timeout: float = 30.0,
        source_id: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__(source_id or DEFAULT_SOURCE_ID)
        if not token:
            msg = f"{SOURCE}: the setting {SETTING} is empty; {_SETTING_HELP}"
            raise SourceError(msg)
        if not _TOKEN.fullmatch(token):
            msg = (
                f"{SOURCE}: the setting {SETTING} holds a character an access token does not (a space, "
                "a newline, a quote?); its value is not shown"
            )
            raise SourceError(msg)
        for option, seconds in (("poll_interval", poll_interval), ("timeout", timeout)):
            if not 0 < seconds < math.inf:
                msg = f"{SOURCE}: option {option} must be a number of seconds above 0; got {seconds!r}"
                raise SourceError(msg)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            msg = f"{SOURCE}: option page_size must be from 1 to {MAX_PAGE_SIZE}; got {page_size}"
            raise SourceError(msg)
        if not timedelta(0) < lookback <= MAX_LOOKBACK:
            msg = (
                f"{SOURCE}: option lookback must be above 0 and at most {MAX_LOOKBACK.days} days "
                f"(HubSpot keeps no more); got {lookback.total_seconds():g} s"
            )
            raise SourceError(msg)
        if not timedelta(0) <= settle <= MAX_SETTLE:
            msg = f"{SOURCE}: option settle must be from 0 to a day; got {settle.total_seconds():g} s"
            raise SourceError(msg)
        self.endpoint = _checked_base_url(base_url)
        self._url = base_url.rstrip("/") + PATH
        # A SecretStr, not the header: shown as "**********" by a traceback's locals or a debugger.
        self._token = SecretStr(token)
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.lookback = lookback
        self.settle = settle
        self.timeout = timeout
        self.deadline_s = DEADLINE_PER_TIMEOUT * timeout
        self.max_response_bytes = max_response_bytes
        self.pages = 0
        self.objects = 0
        self.failed_polls = 0
        self.errors: dict[str, str] = {}
        self.last_error: str | None = None
        #: The cursor as last published (read from the sink at the first poll, and again after a
        #: publish that failed: what Kafka holds then is not known here).
        self._cursor: dict[str, Any] | None = None
        self._asked = RetryAfter(f"{SOURCE}: {self.endpoint}", MAX_RETRY_AFTER_S)

    def __repr__(self) -> str:
        return f"HubSpotAuditSource({self.endpoint!r}, source_id={self.source_id!r})"

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> HubSpotAuditSource:
        """Options: ``base_url`` (``https://api.hubapi.com``), ``poll_interval`` (s, 60),
        ``page_size`` (100, at most 200), ``lookback`` (s, a day: where a first start begins;
        at most 90 days), ``settle`` (s, 600: how late HubSpot may write a result and still have
        it published; at most a day), ``timeout`` (s, 30: to connect and between bytes of an answer; each
        answer has 6 times that in all) and ``source_id`` (``hubspot.audit``).  The access token
        is the setting ``hubspot_access_token`` (``VIGIL_HUBSPOT_ACCESS_TOKEN`` or vigil.toml),
        never an option: a command line is there for other users of the machine to read."""
        given = [key for key in options if key in ("token", "access_token", SETTING)]
        if given:
            msg = (
                f"{SOURCE}: option {given[0]} is not taken (its value is not shown): the access token "
                f"is the setting {SETTING}, as a command line is readable by other users; {_SETTING_HELP}"
            )
            raise SourceError(msg)
        check_options(SOURCE, options, OPTIONS)
        secret = settings.hubspot_access_token
        if secret is None:
            msg = f"{SOURCE}: the setting {SETTING} is not set; {_SETTING_HELP}"
            raise SourceError(msg)
        return cls(
            secret.get_secret_value(),
            base_url=options.get("base_url", DEFAULT_BASE_URL),
            poll_interval=seconds_option(SOURCE, options, "poll_interval", 60.0),
            page_size=_page_size(options),
            lookback=_lookback(options),
            settle=_settle(options),
            timeout=seconds_option(SOURCE, options, "timeout", 30.0),
            source_id=options.get("source_id"),
        )

    # ------------------------------------------------------------------ polling

    def run(self, sink: RawSink) -> None:
        """Polls until :meth:`stop`.  A failed poll is retried at the next interval (or after
        the server's ``Retry-After``, when longer); a failure to publish ends it."""
        while self.running:
            wait = self.poll_interval
            try:
                self.poll_once(sink)
            except Retry as exc:
                wait = max(wait, exc.after.total_seconds())
            except SourceError:
                pass  # logged by poll_once; the cursor has not moved
            if self.wait(wait):
                return

    def poll_once(self, sink: RawSink) -> int:
        """One poll: every page of the window after the cursor, each published with the cursor
        in one transaction; returns the number of results published.  A failure is logged once
        and raised as a :class:`SourceError` (:class:`Retry` when the server asked to wait);
        what the sink raises is raised as it is."""
        try:
            published = self._poll(sink)
        except SourceError as exc:
            self.failed_polls += 1
            self.last_error = str(exc)
            self.errors[self.endpoint] = str(exc)
            log.warning("%s (retried at the next poll)", exc)
            raise
        self.last_error = None
        self.errors.pop(self.endpoint, None)
        return published

    def _poll(self, sink: RawSink) -> int:
        if self._cursor is None:
            self._cursor = dict(sink.last_cursor(self.source_id) or {})
        at, seen, pending, recent, covered = self._resume(self._cursor)
        # The window ends at the poll's start, whole milliseconds as asked (never before ``at``:
        # a clock set back), and begins ``settle`` before ``at``.
        before = max(_floor_ms(datetime.now(UTC)), at)
        # (Not before what ``recent`` holds every result of: a first start, or a cursor of
        # version 1, holds none before ``at``, and would publish them again.)
        since = max(at - self.settle, covered)
        window = {"occurredAfter": _iso_ms(_floor_ms(since) - _MS), "occurredBefore": _iso_ms(before)}
        done = set(seen) | set(pending) | set(recent)
        # The time of every result of the window, published now or before (for ``recent``).
        times: dict[str, datetime] = {}
        published_ids = list(pending)
        # The newest time among the poll's results (no later than ``before``) and the ids at it.
        newest: datetime | None = None
        at_newest: list[str] = []
        published = 0
        afters: set[str] = set()
        after: str | None = None
        page = 0
        # The header is built in the call, kept by no local a traceback would show; httpx's
        # Headers show an Authorization value as "[secure]" in their repr.
        with httpx.Client(
            timeout=min(self.timeout, self.deadline_s),
            headers={
                "Authorization": "Bearer " + self._token.get_secret_value(),
                "Accept": "application/json",
            },
        ) as client:
            while True:
                page += 1
                where = _where(self.endpoint, page, window["occurredAfter"], after)
                params: dict[str, str | int] = {**window, "limit": self.page_size}
                if after is not None:
                    params["after"] = after
                body = self._get(client, params, where)
                results, next_after = _parse(body, where)
                fresh: list[bytes] = []
                older = 0
                for raw, key, when in results:
                    if when < since:
                        older += 1
                        continue
                    when = min(when, before)
                    times[key] = when
                    if when < at:
                        pass  # (written late, or published already: ``at`` does not move back)
                    elif newest is None or when > newest:
                        newest, at_newest = when, [key]
                    elif when == newest:
                        at_newest.append(key)
                    if key not in done:
                        done.add(key)
                        fresh.append(raw)
                        published_ids.append(key)
                left_out = len(results) - len(fresh)
                records: list[RawRecord] = []
                if fresh:
                    value = body if not left_out else b'{"results":[' + b",".join(fresh) + b"]}"
                    meta: dict[str, Any] = {"endpoint": self.endpoint, **_meta_window(window), "page": page}
                    if after is not None:
                        meta["after"] = _shown_after(after)
                    if left_out:
                        meta["left_out"] = left_out  # already published (or older than the cursor)
                    records.append(
                        RawRecord(
                            source=NAME,
                            kind=AUDIT_LOG,
                            value=value,
                            received_at=datetime.now(UTC),
                            key=self.source_id.encode(),
                            meta=meta,
                        )
                    )
                if next_after is None:
                    # The poll's end: ``at`` and ``seen`` move (written even without records, as
                    # ``pending`` goes; nothing at all when the cursor stays as it was).
                    kept, covers = _recent({**recent, **times}, max(since, (newest or at) - self.settle))
                    cursor = _cursor(at, seen, newest, at_newest, recent=kept, covered=covers)
                    if records or cursor != self._cursor:
                        self._publish(sink, records, cursor)
                elif records:
                    cursor = _cursor(
                        at,
                        seen,
                        None,
                        [],
                        pending=published_ids[-PENDING_AT_MOST:],
                        recent=recent,
                        covered=covered,
                    )
                    self._publish(sink, records, cursor)
                if records:
                    published += len(fresh)
                    self.pages += 1
                    self.objects += len(fresh)
                log.debug(
                    "%s: %d result(s), %d published, %d older than the cursor",
                    where,
                    len(results),
                    len(fresh),
                    older,
                )
                if next_after is None or not self.running:
                    # Stopped in the middle: the cursor's ``pending`` resumes the poll.
                    return published
                if next_after in afters:
                    msg = f"{where}: the answer's paging.next.after names a page this poll asked for already"
                    raise SourceError(msg)
                afters.add(next_after)
                after = next_after

    def _publish(self, sink: RawSink, records: list[RawRecord], cursor: dict[str, Any]) -> None:
        try:
            sink.publish(records, cursor=cursor)
        except BaseException:
            # Whether Kafka has it is not known here (a commit that timed out may have gone
            # through): read again from the sink at the next poll.
            self._cursor = None
            raise
        self._cursor = cursor

    def _resume(
        self, cursor: dict[str, Any]
    ) -> tuple[datetime, list[str], list[str], dict[str, datetime], datetime]:
        """``at``, ``seen``, ``pending``, ``recent`` and the time from which ``recent`` holds
        every result published (``since``) of the cursor; a first start's ``at`` is ``lookback``
        ago.  One of version 1 has no ``recent``: its ``seen`` covers ``at`` alone."""
        if not cursor:
            start = datetime.now(UTC) - self.lookback
            return start, [], [], {}, start
        text = cursor.get("at")
        at = _time(text) if isinstance(text, str) else None
        seen, pending = cursor.get("seen", []), cursor.get("pending", [])
        lists = isinstance(seen, list) and isinstance(pending, list)
        recent = _recent_read(cursor.get("recent", []))
        text = cursor.get("since")
        covered = _time(text) if isinstance(text, str) else at
        if (
            at is None
            or cursor.get("v") not in (1, 2)
            or not lists
            or recent is None
            or covered is None
            or not all(isinstance(k, str) for k in seen + pending)
        ):
            msg = (
                f"{SOURCE}: the cursor of source id {self.source_id!r} is not one this version writes "
                f"({inert(repr(cursor)[:200])}); reset it to start again (README, Sources)"
            )
            raise SourceError(msg)
        return at, seen, pending, recent, min(covered, at)

    # ------------------------------------------------------------------ HTTP

    def _get(self, client: httpx.Client, params: dict[str, str | int], where: str) -> bytes:
        """The body of a 200 answer, or a SourceError naming what went wrong (Retry for a 429
        or 5xx).  Streamed, so that it is read against a deadline and a size limit: httpx's
        timeout is per read, and a body dripped a byte at a time never ran into it."""
        deadline = time.monotonic() + self.deadline_s
        try:
            with client.stream("GET", self._url, params=params) as response:
                status = response.status_code
                # The server's words: escaped and bounded, so they forge no log line.
                said = f"HTTP {status} {inert(response.reason_phrase[:80])}".rstrip()
                if status == 429 or status >= 500:
                    raise Retry(self._delay(response), f"{where}: {said}")
                if status in (401, 403):
                    msg = (
                        f"{where}: {said}: HubSpot refused the access token (the setting {SETTING}); "
                        f"it must be a private app's token with the scope {SCOPE} (asked again at "
                        "each poll: the token may be rotated)"
                    )
                    raise SourceError(msg)
                content = self._read(response, where, deadline)
        except httpx.TimeoutException as exc:
            msg = f"{where}: {type(exc).__name__}: no answer within {self.timeout:g} s (option timeout)"
            raise SourceError(msg) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # Their text names the failure (a refused connection, a peer breaking the protocol),
            # never a request's headers.
            msg = f"{where}: {type(exc).__name__}: {inert(str(exc)[:200])}"
            raise SourceError(msg) from None
        if status != 200:
            msg = f"{where}: {said}, expected 200: {inert(content[:200].decode('utf-8', 'replace'))!r}"
            raise SourceError(msg)
        return content

    def _read(self, response: httpx.Response, where: str, deadline: float) -> bytes:
        try:
            return read_bounded(response, deadline=deadline, limit=self.max_response_bytes)
        except BodyTooLarge as exc:
            msg = (
                f"{where}: the answer is larger than {exc.limit:,} bytes, more than a raw record may "
                "be (lower the option page_size)"
            )
            raise SourceError(msg) from None
        except PastDeadline as exc:
            msg = (
                f"{where}: no complete answer within {self.deadline_s:g} s (6 times the option "
                f"timeout; {exc.received:,} bytes received)"
            )
            raise SourceError(msg) from None

    def _delay(self, response: httpx.Response) -> timedelta:
        """What ``Retry-After`` asks (delay-seconds or an HTTP date), capped at MAX_RETRY_AFTER_S;
        0 (the next poll) when it asks nothing readable."""
        return timedelta(seconds=self._asked.seconds(response) or 0.0)


_SETTING_HELP = (
    f"give a HubSpot private app's access token with the scope {SCOPE} as VIGIL_HUBSPOT_ACCESS_TOKEN "
    f"or {SETTING} in vigil.toml"
)


def _lookback(options: dict[str, str]) -> timedelta:
    """The option ``lookback``, refused past MAX_LOOKBACK before a timedelta is made of it
    (1e14 s raised OverflowError, a traceback)."""
    seconds = seconds_option(SOURCE, options, "lookback", 86_400.0)
    if seconds > MAX_LOOKBACK.total_seconds():
        msg = (
            f"{SOURCE}: option lookback must be above 0 and at most {MAX_LOOKBACK.days} days "
            f"(HubSpot keeps no more); got {seconds:g} s"
        )
        raise SourceError(msg)
    return timedelta(seconds=seconds)


def _settle(options: dict[str, str]) -> timedelta:
    """The option ``settle``: seconds from 0 to a day (0: results written late are not asked
    for again)."""
    text = options.get("settle")
    if text is None:
        return DEFAULT_SETTLE
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_SETTLE.total_seconds():
        msg = f"{SOURCE}: option settle must be a number of seconds from 0 to 86400; got {text[:40]!r}"
        raise SourceError(msg)
    return timedelta(seconds=seconds)


def _checked_base_url(url: str) -> str:
    """``scheme://host:port`` of ``url`` (how messages and records name it), or a SourceError
    naming the option unless it is an ``http(s)://host[/path]`` URL.  The URL itself is never
    quoted: a query or user-info may hold a key."""
    problem = f"{SOURCE}: option base_url must be an http:// or https:// URL with a host"
    try:
        parsed = http_url(url)
    except NotHttpUrl as exc:
        msg = f"{problem}; {exc} (the rest of the URL is not shown)"
        raise SourceError(msg) from None
    if parsed.userinfo or parsed.query or parsed.fragment:
        msg = f"{problem} and no user-info, query or fragment (the URL is not shown)"
        raise SourceError(msg)
    return redact_url(parsed)


def _page_size(options: dict[str, str]) -> int:
    text = options.get("page_size", "100")
    try:
        return int(text)
    except ValueError:
        msg = (
            f"{SOURCE}: option page_size must be a whole number from 1 to {MAX_PAGE_SIZE}; "
            f"got {inert(text[:40])!r}"
        )
        raise SourceError(msg) from None


def _where(endpoint: str, page: int, occurred_after: str, after: str | None) -> str:
    paging = f", after '{inert(after[:60])}'" if after is not None else ""
    return f"{SOURCE}: {endpoint}{PATH} page {page} (occurredAfter {occurred_after}{paging})"


def _parse(body: bytes, where: str) -> tuple[list[tuple[bytes, str, datetime]], str | None]:
    """The page's results (each: its bytes as received, its id as the cursor keeps it, its
    time) and the next page's ``after`` (None on the last page); SourceError naming what is
    wrong and where."""
    try:
        page = _page_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        # (RecursionError: JSON nested deeper than msgspec decodes.)
        detail = str(exc) if isinstance(exc, msgspec.DecodeError) else "nested too deeply"
        if isinstance(exc, msgspec.ValidationError):
            msg = f'{where}: expected a page of audit results ({{"results": [...]}}): {inert(detail)}'
        else:
            start = inert(body[:80].decode("utf-8", "replace"))
            msg = f"{where}: the answer is not JSON ({inert(detail)}): {start!r}"
        raise SourceError(msg) from None
    out: list[tuple[bytes, str, datetime]] = []
    for i, raw in enumerate(page.results):
        path = f"$.results[{i}]"
        try:
            result = _result_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            text = str(exc)
            text = (
                text.replace(" - at `$", f" - at `{path}") if " - at `$" in text else f"{text} - at `{path}`"
            )
            msg = f"{where}: expected an audit result with an id and an occurredAt: {inert(text)}"
            raise SourceError(msg) from None
        if result.id == "":
            msg = f"{where}: an audit result with an empty id - at `{path}.id`"
            raise SourceError(msg)
        when = _result_time(result.occurredAt)
        if when is None:
            shown = inert(repr(result.occurredAt)[:60])
            msg = (
                f"{where}: expected an RFC 3339 time with its offset or epoch milliseconds, got {shown} "
                f"- at `{path}.occurredAt`"
            )
            raise SourceError(msg)
        out.append((bytes(raw), _id_key(result.id), when))
    following = page.paging.next if page.paging else None
    after = None if following is None else str(following.after)
    if after == "":
        msg = f"{where}: the answer's paging.next.after is empty"
        raise SourceError(msg)
    return out, after


def _id_key(value: str | int) -> str:
    """The id as the cursor keeps it: bounded, so a long id cannot grow the cursor past Kafka's
    limit (a hash of it then: the same id gives the same key).  Printable ASCII alone is kept
    as it is: 64 characters of another kind took up to 12 bytes each in the cursor's JSON
    (escaped), past the 1 MB of a record (found in review)."""
    text = str(value)
    if len(text) <= _ID_CHARS_KEPT and text.isascii() and text.isprintable():
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _result_time(value: str | int) -> datetime | None:
    if isinstance(value, int):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            return None
    return _time(value)


def _time(text: str) -> datetime | None:
    """An RFC 3339 time with its offset, in UTC; None otherwise."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # before year 1 in UTC
        return None


def _cursor(
    at: datetime,
    seen: list[str],
    newest: datetime | None,
    at_newest: list[str],
    pending: list[str] | None = None,
    *,
    recent: dict[str, datetime],
    covered: datetime,
) -> dict[str, Any]:
    """The cursor in the middle of a poll (``pending`` given: ``at`` and ``seen`` unmoved), or
    at its end (``newest``, the newest time among its results at or after ``at``, and the ids
    at it: the new ``at`` and ``seen``; ``seen`` kept and added to when that is ``at`` still).
    ``recent`` as :func:`_recent` keeps it, written oldest first, with ``since``: the time from
    which it holds every result published (``covered``)."""
    written = [[key, _iso(when)] for key, when in sorted(recent.items(), key=lambda kv: (kv[1], kv[0]))]
    tail = {"recent": written, "since": _iso(covered)}
    if pending is not None:
        return {"v": 2, "at": _iso(at), "seen": seen, "pending": pending, **tail}
    if newest is None:
        return {"v": 2, "at": _iso(at), "seen": seen, **tail}
    keys = [*seen, *at_newest] if newest == at else at_newest
    return {"v": 2, "at": _iso(newest), "seen": list(dict.fromkeys(keys))[-SEEN_AT_MOST:], **tail}


def _recent(times: dict[str, datetime], since: datetime) -> tuple[dict[str, datetime], datetime]:
    """The ids (and times) of ``times`` dated ``since`` or later, and the time from which they
    are all there.  Past :data:`RECENT_AT_MOST` of them, the newest are kept (and every one at
    the oldest time kept), and that time is where the next poll's window begins: the ids
    forgotten were asked for and published again at every poll until ``at`` moved past them,
    on a quiet account after a burst never (found in review); a result HubSpot writes that late
    and dated before it is then not asked for again (warned of)."""
    kept = sorted(((when, key) for key, when in times.items() if when >= since), reverse=True)
    if len(kept) > RECENT_AT_MOST:
        oldest = kept[RECENT_AT_MOST - 1][0]
        log.warning(
            "%s: %d results within settle of the newest, over the %d the cursor keeps: results "
            "written late are asked for from %s only",
            SOURCE,
            len(kept),
            RECENT_AT_MOST,
            _iso(oldest),
        )
        kept = [(when, key) for when, key in kept if when >= oldest]
        since = max(since, oldest)
    return {key: when for when, key in kept}, since


def _recent_read(value: object) -> dict[str, datetime] | None:
    """A cursor's ``recent`` (``[[id, time], ...]``), or None when it is not one."""
    if not isinstance(value, list):
        return None
    out: dict[str, datetime] = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            return None
        when = _time(item[1])
        if when is None:
            return None
        out[item[0]] = when
    return out


def _meta_window(window: dict[str, str]) -> dict[str, str]:
    return {"occurred_after": window["occurredAfter"], "occurred_before": window["occurredBefore"]}


def _shown_after(after: str) -> str:
    return after if len(after) <= _AFTER_SHOWN_CHARS else f"<{len(after):,} characters>"


def _floor_ms(when: datetime) -> datetime:
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _iso_ms(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
