"""What an HTTP client connector reads from a server that may be slow, large or hostile.

httpx's ``timeout`` bounds each read, not a call: a body sent a byte at a time never runs into
it.  :func:`read_bounded` reads a streamed response against a deadline for the whole call
and a size limit (counted after decompression, so a small gzip body that expands without end
is cut too), and says which one was passed; each caller turns that into its own error (a
retry for a slow node, a failed poll, ...).  :func:`retry_after_s` reads ``Retry-After``.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from vigil.events.codec import inert

log = logging.getLogger(__name__)

#: ``Retry-After`` in seconds (ASCII digits only: ``"²".isdigit()`` is true and int() refuses it).
_SECONDS = re.compile(r"[0-9]+")


class BodyTooLarge(Exception):
    """The body passed the limit it was read with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit:,} bytes")
        self.limit = limit


class PastDeadline(Exception):
    """The body was not complete by the deadline it was read with."""

    def __init__(self, received: int) -> None:
        super().__init__(f"{received:,} bytes received")
        self.received = received


def read_bounded(response: httpx.Response, *, deadline: float, limit: int) -> bytes:
    """The body of a streamed ``response``, or BodyTooLarge past ``limit`` bytes, or
    PastDeadline once ``time.monotonic()`` passes ``deadline`` (checked as each piece arrives,
    so a call ends at most one read timeout past it).  Pieces are joined once: no per-byte work."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        if time.monotonic() > deadline:
            raise PastDeadline(size)
        chunks.append(chunk)
    return b"".join(chunks)


def retry_after_s(header: str) -> float | None:
    """The seconds a ``Retry-After`` value asks (delay-seconds, or an HTTP date: 0 when it is
    past), uncapped (the caller caps it); None when it asks nothing readable."""
    header = header.strip()
    if _SECONDS.fullmatch(header):
        return float(header)  # (float: int() refuses more than 4,300 digits; this gives inf)
    if not header:
        return None
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


class RetryAfter:
    """``Retry-After`` of one endpoint's answers, capped at ``cap_s`` seconds: uncapped,
    ``86400000`` stalled a connector for 1,000 days after one warning and ``10**15`` stopped it
    with OverflowError.  The first answer over the cap is logged, naming ``endpoint``; the
    later ones are not (a server asking it of every answer would flood the log)."""

    def __init__(self, endpoint: str, cap_s: float) -> None:
        self.endpoint = endpoint
        self.cap_s = cap_s
        self._capped_logged = False

    def seconds(self, response: httpx.Response) -> float | None:
        """What ``response`` asks, at most ``cap_s``; None when it asks nothing readable."""
        header = response.headers.get("retry-after", "").strip()
        seconds = retry_after_s(header)
        if seconds is not None and seconds > self.cap_s:
            if not self._capped_logged:
                self._capped_logged = True
                log.warning(
                    "%s asked to wait %.3g s (Retry-After: %r); waiting at most %g s, for this and "
                    "any later answer asking for more (logged once)",
                    self.endpoint,
                    seconds,
                    inert(header[:60]),
                    self.cap_s,
                )
            seconds = self.cap_s
        return seconds


class NotHttpUrl(ValueError):
    """Why a URL is no ``http://`` or ``https://`` URL with a host, without quoting it (its
    path, query or user-info may hold a key); ``unparsable`` when httpx cannot read it at all."""

    def __init__(self, why: str, *, unparsable: bool = False) -> None:
        super().__init__(why)
        self.unparsable = unparsable


def http_url(url: str) -> httpx.URL:
    """``url`` parsed, or NotHttpUrl.  Not httpx's words for one it cannot read: they quote the
    part it could not read, and with a "/" in a password ("Invalid port: '<the password's
    start>'") that part is the key."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        msg = "it does not parse"
        raise NotHttpUrl(msg, unparsable=True) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        scheme = f"scheme {inert(parsed.scheme[:20])!r}" if parsed.scheme else "no scheme"
        host = f"host {inert(parsed.host[:80])!r}" if parsed.host else "no host"
        msg = f"got {scheme} and {host}"
        raise NotHttpUrl(msg)
    return parsed
