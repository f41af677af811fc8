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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source

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


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class TaxiiSource(Source):
    """Polls ``collection_urls`` (``https://host/api-root/collections/<id>/``), or every
    readable collection of ``api_root``, every ``poll_interval`` seconds.

    ``password`` is used for HTTP basic auth and never logged or put in records.  The
    cursor is ``{"collections": {collection URL: added_after}}``, or for a collection left in
    the middle of a poll ``{"at": date_added, "seen": ["<id>|<modified>", ...]}`` (see the
    module).
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
    ) -> None:
        super().__init__(source_id or "intel.taxii")
        urls = [collection_urls] if isinstance(collection_urls, str) else list(collection_urls)
        if not urls and not api_root:
            msg = "taxii: give collection URL(s) or an API root to discover collections from"
            raise SourceError(msg)
        self.collection_urls = [_slash(u) for u in urls]
        self.api_root = _slash(api_root) if api_root else None
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
        (s, 60), ``page_size`` (100), ``feed``, ``source_id``.  The password is the setting
        ``taxii_password`` (``VIGIL_TAXII_PASSWORD`` or vigil.toml), never an option: a command
        line is there for other users of the machine to read."""
        urls = [u.strip() for u in options.get("url", "").split(",") if u.strip()]
        if not urls and "api_root" not in options:
            msg = "taxii: option 'url' (collection URL) or 'api_root' is required"
            raise SourceError(msg)
        return cls(
            urls,
            api_root=options.get("api_root"),
            user=options.get("user") or settings.taxii_user,
            password=settings.taxii_password.get_secret_value() if settings.taxii_password else None,
            poll_interval=float(options.get("poll_interval", "60")),
            page_size=int(options.get("page_size", "100")),
            feed=options.get("feed"),
            source_id=options.get("source_id"),
        )

    def feed_for(self, url: str) -> str:
        return self._feed or "taxii:" + url.rstrip("/").rsplit("/", 1)[-1]

    def collections(self) -> list[str]:
        """The collection URLs to poll now (discovery runs at every poll)."""
        urls = list(self.collection_urls)
        if self.api_root:
            try:
                root = ApiRoot(self.api_root, user=self.user, password=self._password)
                found = [_slash(c.url) for c in root.collections if c.can_read]
            except (requests.RequestException, TAXIIServiceException) as exc:
                msg = (
                    f"taxii: listing the collections of API root {self.api_root} failed: {type(exc).__name__}"
                )
                raise SourceError(msg) from None
            urls += [u for u in found if u not in urls]
        return urls

    def _collection(self, url: str, last: _LastResponse) -> Collection:
        collection = Collection(url, user=self.user, password=self._password)

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
        for url in self.collections():
            try:
                published += self._poll_collection(sink, cursor, url)
                self.errors.pop(url, None)
            except SourceError as exc:
                self.errors[url] = str(exc)
                log.warning("%s (retried at the next poll)", exc)
                failed.append(str(exc))
        if failed:
            raise SourceError("; ".join(failed))
        return published

    def _poll_collection(self, sink: RawSink, cursor: dict[str, Any], url: str) -> int:
        last = _LastResponse()
        collection = self._collection(url, last)
        feed = self.feed_for(url)
        published = 0
        start, seen = _resume(cursor.get("collections", {}).get(url), feed)
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
                envelope = collection.get_objects(**kwargs)
                objects = envelope.get("objects", []) if isinstance(envelope, dict) else []
                added_last = last.headers.get("x-taxii-date-added-last")
                if not objects:
                    if resumed_at is not None:  # every object at the resumed time was out: caught up
                        self._publish(sink, cursor, url, [], resumed_at)
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
                            meta={"feed": feed, "collection": url, "added_last": added_last},
                        )
                    )
                position: str | dict[str, Any] = added_last
                if more:
                    # The next page may go on at this page's last time: resume at it, leaving out
                    # what went out at it (this page's objects, and earlier pages' at that time:
                    # those of this poll, and those published before a stop, resumed from).
                    keys = [_object_key(o) for o in objects]
                    before = positions.get(url)
                    if isinstance(before, dict) and before.get("at") == added_last:
                        keys = [*before.get("seen", []), *keys]
                    position = {"at": added_last, "seen": keys[-SEEN_AT_MOST:]}
                self._publish(sink, cursor, url, records, position)
                resumed_at = None
                published += len(objects)
                self.pages += 1
                self.objects += len(objects)
                if not more:
                    return published
        except (requests.RequestException, TAXIIServiceException) as exc:
            # Name the collection, not the full URL: a URL may carry a token in its query.
            msg = f"taxii: polling collection {feed!r} failed: {type(exc).__name__}: {exc}"
            raise SourceError(msg) from None

    def _publish(
        self, sink: RawSink, cursor: dict[str, Any], url: str, records: list[RawRecord], position: Any
    ) -> None:
        """``records`` with the collection's new ``position``, in one transaction."""
        positions: dict[str, Any] = cursor.get("collections", {})
        new_cursor = {**cursor, "collections": {**positions, url: position}}
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
                # cursor has not moved, so nothing is skipped.
                self.last_error = str(exc)
                log.warning("taxii: %s (retried at the next poll)", exc)
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
