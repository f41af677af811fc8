"""A TAXII 2.1 client source: polls collections for objects added since the cursor.

The collections are given as URLs, or discovered from an API root (every collection the
credentials can read, re-listed at each poll so a new collection is picked up without a
restart).  Each page of ``GET .../collections/<id>/objects/?added_after=<cursor>`` is
published unchanged (the response body, captured with a ``requests`` response hook) to
``raw.intel`` as kind ``taxii_objects``, together with the new cursor in one transaction.

A poll reads every page from the cursor's ``added_after`` on, following the server's ``next``
token while it says ``more``: objects are stamped with the time the server took them, so one
upload of many objects shares one ``date_added``, and asking each next page with
``added_after`` = the page's ``X-TAXII-Date-Added-Last`` (strict: "added after") skipped the
rest of such an upload for good.  The cursor after each page is that page's
``X-TAXII-Date-Added-Last``; a restart resumes after it.  (Not from the ``next`` token: servers
keep a token's place themselves, so one used by a connector that died before publishing the
page it fetched skips that page.)  In the middle of a poll (the server said ``more``), the
objects after the page may share its last ``date_added`` (one upload over several pages): the
cursor then says to resume *at* that time, with the objects already published at it (the
last pages' ``id``/``modified``, up to :data:`SEEN_AT_MOST`), and a restart asks from just
before that time and leaves those out: nothing is missed, and an object is published twice
only when more than that many shared one time.  A server that says ``more`` without a
``next`` token is asked with ``added_after`` (and warned about).

A URL's query (a server's API token, ``?apikey=...``) and user-info (``user:password@``) go with
every request to it and nowhere else: logs, errors, records, feed names and the cursor name the
collection by ``scheme://host:port/path/``, and a failed request by its exception's type and HTTP
status, never by requests' text (which quotes the URL it asked, query and all).  Every request
has a timeout (option ``timeout``, 30 s; taxii2client sets none): a server that took the
connection and never answered held the source for good, past ``stop()``; a poll that times out
fails as any other, retried at the next.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from requests.auth import HTTPBasicAuth
from taxii2client.common import _HTTPConnection
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.events.codec import inert
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source, check_options, seconds_option

log = logging.getLogger(__name__)

NAME = "intel"
KIND = "taxii_objects"
#: Objects published at a mid-poll cursor's time that the cursor names, to leave out on resuming:
#: the last pages' (a page of 100 to 1,000 objects, their ids some 100 bytes: the cursor record
#: stays well under Kafka's message limit).
SEEN_AT_MOST = 2_000
_MICROSECOND = timedelta(microseconds=1)


@dataclass
class _LastResponse:
    """What the hook saw of the latest response (taxii2-client returns only the parsed JSON)."""

    content: bytes = b""
    #: Lower-cased names: servers and proxies spell them as they like (X-Taxii-..., x-taxii-...).
    headers: dict[str, str] = field(default_factory=dict)


#: Said instead of quoting a URL that does not parse: it may hold a token or a password.
_NOT_SHOWN = "the URL is not shown: it may hold a token or a password"


def _checked(url: str, what: str) -> str:
    """``url`` with a slash ending its path (see :func:`_slash`), refused with a
    :class:`SourceError` naming ``what`` unless it is an ``http(s)://host/...`` URL: one that does
    not parse would otherwise fail at every poll, or end the source, with its text unshown."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its ValueError (a port out of range, or not a number)
    except ValueError:
        msg = f"taxii: {what} does not parse as a URL ({_NOT_SHOWN})"
        raise SourceError(msg) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"taxii: {what} must be an http:// or https:// URL with a host ({_NOT_SHOWN})"
        raise SourceError(msg)
    return _slash(url)


def _slash(url: str) -> str:
    """``url`` with a slash ending its path, as taxii2client wants (it appends ``objects/`` to
    it).  The slash goes before the query: appended to the whole URL it went into the query, into
    the token there.  The fragment, never sent, is left out."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=_slash_path(parts.path), fragment=""))


def _slash_path(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _named(url: str) -> str:
    """``scheme://host:port/path/`` of ``url``: what logs, errors, records and the cursor call the
    collection (or API root).  Its user-info and query, a password or a token, are left out."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{_slash_path(parts.path)}"


T = TypeVar("T")


class _NoContentType(Exception):
    """taxii2client reads an answer's Content-Type with ``[]``: a server (or a proxy) that sent
    none raised KeyError, which ended the source."""

    WHY = "an answer without a Content-Type header"


def _answered(ask: Callable[..., T], **kwargs: Any) -> T:
    """``ask()`` (one taxii2client request), its KeyError for a missing Content-Type named; only
    around the request, so that a KeyError of Vigil's own (publishing, the cursor) is no such."""
    try:
        return ask(**kwargs)
    except KeyError:
        raise _NoContentType from None


def _failure(exc: Exception, timeout: float) -> str:
    """What went wrong with a request, for a message: the exception's type, and the HTTP status
    and reason, or the timeout, or the system's reason for a failed connection.  Never the
    exception's text: requests' quotes the URL it asked, query (a token) and all, and so does
    taxii2client's InvalidJSONError."""
    name = type(exc).__name__
    if isinstance(exc, requests.Timeout):
        return f"{name}: no answer within {timeout:g} s"
    response = exc.response if isinstance(exc, requests.RequestException) else None
    if response is not None:
        # The reason phrase is the server's text: escaped, so it forges no log line.
        return f"{name}: HTTP {response.status_code} {inert(str(response.reason or ''))}".rstrip()
    cause = _os_error(exc)
    return f"{name}: {cause}" if cause else name


def _os_error(exc: BaseException) -> str | None:
    """The system's words for the failure under a connection error ("Connection refused", "Name
    or service not known"): requests wraps urllib3's error, which wraps the socket's."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            return inert(err.strerror)
        todo += [err.__cause__, err.__context__, getattr(err, "reason", None), *err.args[:1]]
    return None


class _HideQueries(logging.Filter):
    """Cuts the query off the URLs in urllib3's log lines (``"GET /collections/x/?apikey=...
    HTTP/1.1" 200`` at DEBUG, ``Retry: ...``, ``Redirecting ... -> ...``): a collection's query
    may be its token.  A filter, not a level: a deployment raising urllib3's level to see HTTP
    traffic while debugging would log the token again."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(
                a.partition("?")[0] + "?<query hidden>" if isinstance(a, str) and "?" in a else a
                for a in args
            )
        return True


_HIDE_QUERIES = _HideQueries()


class _Session(requests.Session):
    """A requests session that gives every request a timeout and the endpoint's query.

    taxii2client asks its session with neither: its ``get`` takes no timeout, and it builds the
    URLs it asks by appending to the endpoint's, so a query left in that URL would end up in the
    middle of them (``...?apikey=KEY/objects/``).  The query is added to the URL as written, so a
    token reaches the server unchanged."""

    def __init__(self, query: str, timeout: float) -> None:
        super().__init__()
        self.query = query
        self.timeout = timeout

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        if self.query and isinstance(request.url, str):
            request.url = f"{request.url}{'&' if '?' in request.url else '?'}{self.query}"
        return super().prepare_request(request)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


class TaxiiSource(Source):
    """Polls ``collection_urls`` (``https://host/api-root/collections/<id>/``), or every
    readable collection of ``api_root``, every ``poll_interval`` seconds.

    ``password`` is used for HTTP basic auth and never logged or put in records; so is a URL's
    user-info, when no ``user`` and ``password`` are given.  A URL's query (a token) is sent with
    every request to it, and an API root's with its collections'; neither is named anywhere (see
    the module).  Every request times out after ``timeout`` seconds.  The cursor is
    ``{"collections": {collection: added_after}}``, the collection named by its URL without
    user-info or query, or for a collection left in the middle of a poll
    ``{"at": date_added, "seen": ["<id>|<modified>", ...]}`` (see the module).
    """

    name = NAME

    def __init__(
        self,
        collection_urls: str | Sequence[str] = (),
        *,
        api_root: str | None = None,
        user: str | None = None,
        password: str | None = None,
        poll_interval: float = 60.0,
        page_size: int = 100,
        feed: str | None = None,
        source_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(source_id or "intel.taxii")
        logging.getLogger("urllib3.connectionpool").addFilter(_HIDE_QUERIES)  # (once: same object)
        urls = [collection_urls] if isinstance(collection_urls, str) else list(collection_urls)
        if not urls and not api_root:
            msg = "taxii: give collection URL(s) or an API root to discover collections from"
            raise SourceError(msg)
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            msg = f"taxii: timeout must be a positive number of seconds; got {timeout!r}"
            raise SourceError(msg)
        self.collection_urls = [_checked(u, f"collection URL {n}") for n, u in enumerate(urls, 1)]
        self.api_root = _checked(api_root, "API root") if api_root else None
        self.timeout = float(timeout)
        self.user = user
        self._password = password
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._feed = feed
        self.pages = 0
        self.objects = 0
        self.errors: dict[str, str] = {}
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> TaxiiSource:
        """Options: ``url`` (collection URL(s), comma-separated) or ``api_root`` (poll all its
        readable collections), ``user`` (default: the setting ``taxii_user``), ``poll_interval``
        (s, 60), ``page_size`` (100), ``feed``, ``source_id``, ``timeout`` (s, 30: for each
        request, to connect and between bytes of the answer).  The password is the setting
        ``taxii_password`` (``VIGIL_TAXII_PASSWORD`` or vigil.toml), never an option: a command
        line is there for other users of the machine to read."""
        check_options(
            "taxii",
            options,
            {"url", "api_root", "user", "poll_interval", "page_size", "feed", "source_id", "timeout"},
        )
        urls = [u.strip() for u in options.get("url", "").split(",") if u.strip()]
        if not urls and "api_root" not in options:
            msg = "taxii: option 'url' (collection URL) or 'api_root' is required"
            raise SourceError(msg)
        return cls(
            urls,
            api_root=options.get("api_root"),
            user=options.get("user") or settings.taxii_user,
            password=settings.taxii_password.get_secret_value() if settings.taxii_password else None,
            poll_interval=seconds_option("taxii", options, "poll_interval", 60.0),
            page_size=int(options.get("page_size", "100")),
            feed=options.get("feed"),
            source_id=options.get("source_id"),
            timeout=seconds_option("taxii", options, "timeout", 30.0),
        )

    def feed_for(self, url: str) -> str:
        """``feed``, or ``taxii:<the last segment of the collection URL's path>`` (its id)."""
        return self._feed or "taxii:" + urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]

    def collections(self) -> list[str]:
        """The collection URLs to poll now (discovery runs at every poll)."""
        urls = list(self.collection_urls)
        if self.api_root:
            name = _named(self.api_root)
            root = ApiRoot(name, conn=self._connection(self.api_root))
            try:
                found = _answered(lambda: root.collections)
                paths = [urlsplit(c.url).path for c in found if c.can_read]
            except (requests.RequestException, TAXIIServiceException) as exc:
                why = _failure(exc, self.timeout)
                msg = f"taxii: listing the collections of API root {name} failed: {why}"
                raise SourceError(msg) from None
            except _NoContentType:
                msg = f"taxii: listing the collections of API root {name} failed: {_NoContentType.WHY}"
                raise SourceError(msg) from None
            finally:
                root.close()
            # The API root's query and user-info (its token, its password) go with its collections'.
            parts = urlsplit(self.api_root)
            names = {_named(u) for u in urls}
            for path in paths:
                url = _slash(urlunsplit(parts._replace(path=path)))
                if _named(url) not in names:
                    names.add(_named(url))
                    urls.append(url)
        return urls

    def _connection(self, url: str) -> Any:
        """A taxii2client connection for the endpoint at ``url``, which taxii2client is to be given
        as :func:`_named` (its requests carry the query, and the user-info as basic auth)."""
        parts = urlsplit(url)
        session = _Session(parts.query, self.timeout)
        if self.user and self._password:
            session.auth = HTTPBasicAuth(self.user, self._password)
        elif parts.username is not None and parts.password is not None:
            # As requests reads a URL's user-info, which the URL taxii2client has no longer holds.
            session.auth = HTTPBasicAuth(unquote(parts.username), unquote(parts.password))
        conn = _HTTPConnection(version="2.1")
        conn.session = session  # its own session, which would send neither query nor timeout
        return conn

    def _collection(self, url: str, last: _LastResponse) -> Collection:
        collection = Collection(_named(url), conn=self._connection(url))

        def remember(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
            last.content = resp.content
            last.headers = {name.lower(): value for name, value in resp.headers.items()}

        collection._conn.session.hooks["response"].append(remember)  # the client's own requests session
        return collection

    def poll_once(self, sink: RawSink, cursor: dict[str, Any]) -> int:
        """Fetch every page added after the cursor, from every collection; returns the number
        of objects published.  One failing collection does not stop the others; the failures
        are raised together at the end as one :class:`SourceError`."""
        published = 0
        failed: list[str] = []
        try:
            urls = self.collections()
        except SourceError as exc:
            log.warning("%s (retried at the next poll)", exc)
            raise
        for url in urls:
            try:
                published += self._poll_collection(sink, cursor, url)
                self.errors.pop(_named(url), None)
            except SourceError as exc:
                self.errors[_named(url)] = str(exc)
                log.warning("%s (retried at the next poll)", exc)
                failed.append(str(exc))
        if failed:
            raise SourceError("; ".join(failed))
        return published

    def _poll_collection(self, sink: RawSink, cursor: dict[str, Any], url: str) -> int:
        last = _LastResponse()
        collection = self._collection(url, last)
        feed = self.feed_for(url)
        name = _named(url)
        old: dict[str, Any] = cursor.get("collections", {})
        if url != name and url in old and name not in old:
            # A cursor from before, which named the collection by its URL, user-info (a password)
            # and all: taken over, and written from now on under the name.
            cursor["collections"] = {name if k == url else k: v for k, v in old.items()}
        published = 0
        start, seen = _resume(cursor.get("collections", {}).get(name), feed)
        # Resumed at a time: the objects published at it before the stop, left out of every page
        # of this poll (the rest of that time's objects may run over several pages).
        done = set(seen[1]) if seen else set()
        # Until a page is published, the cursor still says "resume at" that time.
        resumed_at = seen[0] if seen else None
        token: str | None = None
        try:
            while True:
                positions: dict[str, Any] = cursor.get("collections", {})
                kwargs: dict[str, Any] = {"limit": self.page_size}
                if start:
                    kwargs["added_after"] = start
                if token:
                    kwargs["next"] = token
                envelope = _answered(collection.get_objects, **kwargs)
                objects = envelope.get("objects", []) if isinstance(envelope, dict) else []
                added_last = last.headers.get("x-taxii-date-added-last")
                if not objects:
                    if resumed_at is not None:  # every object at the resumed time was out: caught up
                        self._publish(sink, cursor, name, [], resumed_at)
                    return published
                if not added_last:
                    # TAXII 2.1 (section 5.4) requires this header; without it there is no safe
                    # cursor, and publishing anyway would re-publish the page at every poll.
                    msg = (
                        f"taxii: collection {feed!r} answered {len(objects)} objects without an "
                        "X-TAXII-Date-Added-Last header; cannot keep a cursor"
                    )
                    raise SourceError(msg)
                more = bool(envelope.get("more"))
                token = str(envelope.get("next") or "") or None if more else None
                if more and token is None:
                    log.warning(
                        "taxii: collection %r says more without a next token; asking after %s "
                        "(objects added at that very time after this page would be missed)",
                        feed,
                        added_last,
                    )
                    start = added_last
                content = last.content
                if done:
                    fresh = [o for o in objects if _object_key(o) not in done]
                    if len(fresh) < len(objects):
                        content = json.dumps({**envelope, "objects": fresh}).encode()
                        objects = fresh
                records = []
                if objects:
                    records.append(
                        RawRecord(
                            source=self.name,
                            kind=KIND,
                            value=content,
                            received_at=datetime.now(UTC),
                            key=feed.encode(),
                            meta={"feed": feed, "collection": name, "added_last": added_last},
                        )
                    )
                position: str | dict[str, Any] = added_last
                if more:
                    # The next page may go on at this page's last time: resume at it, leaving out
                    # what went out at it (this page's objects, and earlier pages' at that time:
                    # those of this poll, and those published before a stop, resumed from).
                    keys = [_object_key(o) for o in objects]
                    before = positions.get(name)
                    if isinstance(before, dict) and before.get("at") == added_last:
                        keys = [*before.get("seen", []), *keys]
                    position = {"at": added_last, "seen": keys[-SEEN_AT_MOST:]}
                self._publish(sink, cursor, name, records, position)
                resumed_at = None
                published += len(objects)
                self.pages += 1
                self.objects += len(objects)
                if not more:
                    return published
        except (requests.RequestException, TAXIIServiceException) as exc:
            # Named, not quoted: the URL may carry a token in its query (see _failure).
            msg = f"taxii: polling collection {name} failed: {_failure(exc, self.timeout)}"
            raise SourceError(msg) from None
        except _NoContentType:
            msg = f"taxii: polling collection {name} failed: {_NoContentType.WHY}"
            raise SourceError(msg) from None
        finally:
            collection.close()  # its connections, one timed out among them, closed now, not at GC

    def _publish(
        self, sink: RawSink, cursor: dict[str, Any], name: str, records: list[RawRecord], position: Any
    ) -> None:
        """``records`` with the collection's (``name``'s) new ``position``, in one transaction."""
        positions: dict[str, Any] = cursor.get("collections", {})
        new_cursor = {**cursor, "collections": {**positions, name: position}}
        sink.publish(records, cursor=new_cursor)
        cursor.update(new_cursor)

    def run(self, sink: RawSink) -> None:
        cursor: dict[str, Any] = dict(sink.last_cursor(self.source_id) or {})
        while self.running:
            try:
                self.poll_once(sink, cursor)
                self.last_error = None
            except SourceError as exc:
                # A TAXII server that is briefly down is retried at the next poll; the
                # cursor has not moved, so nothing is skipped.  (Logged by poll_once, each
                # failure once.)
                self.last_error = str(exc)
            if self.wait(self.poll_interval):
                return


def _object_key(obj: Any) -> str:
    """What tells an object apart from another one, or another version of it."""
    if not isinstance(obj, dict):
        return repr(obj)
    return f"{obj.get('id')}|{obj.get('modified', '')}"


def _resume(position: Any, feed: str) -> tuple[str | None, tuple[str, list[str]] | None]:
    """The ``added_after`` to ask a collection from, and (for a poll left in the middle) the time
    it stopped at with the objects already published at it."""
    if not isinstance(position, dict):
        return (str(position) if position else None), None
    at = str(position.get("at") or "")
    seen = [str(k) for k in position.get("seen", [])]
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        # Not a time this client can step back from (TAXII's are RFC 3339): after it, as before.
        log.warning("taxii: collection %r: cannot resume at %r; asking after it", feed, at)
        return at or None, None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    before = (when - _MICROSECOND).astimezone(UTC).isoformat(timespec="microseconds")
    return before.replace("+00:00", "Z"), (at, seen)
