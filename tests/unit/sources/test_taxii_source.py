"""The TAXII source against plain local HTTP servers: what its failures say (never a URL's
token or password), and that no request waits for ever.  The protocol itself is tested against
a real medallion server (tests/integration/sources/test_taxii_medallion.py)."""

from __future__ import annotations

import base64
import http.server
import logging
import threading
from urllib.parse import urlsplit

import pytest
from tests.unit.sources.local_http import serving

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.sources.intel.taxii import TaxiiSource
from vigil.sources.sink import MemorySink

# A test token, with a percent-escape and a slash: it must reach the server as written.
TOKEN = "tok-%2B/key=1"  # noqa: S105 - a test value
WRONG = "p@ss:word"  # a test password, with characters user-info must escape


class Failing:
    """Answers 500 with a reason phrase holding a terminal escape, noting what it was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.auth: list[str | None] = []

    def __call__(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.paths.append(handler.path)
        self.auth.append(handler.headers.get("Authorization"))
        handler.send_response(500, "Broken\x1b[2J")
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.mark.parametrize("endpoint", ["collection", "api_root"])
def test_a_failed_request_names_the_endpoint_and_status_never_the_token_in_its_query(
    endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The message appended requests' text ("500 Server Error: ... for url: <the URL>"), and the
    # feed name, the URL's last segment, was "?apikey=<token>"; an API root's named it whole.
    answer = Failing()
    with serving(answer) as base:
        path = "/api/collections/abc/" if endpoint == "collection" else "/api/"
        url = f"{base}{path}?apikey={TOKEN}"
        source = TaxiiSource(url) if endpoint == "collection" else TaxiiSource(api_root=url)
        with caplog.at_level(logging.WARNING), pytest.raises(SourceError) as info:
            source.poll_once(MemorySink(), {})
    message = str(info.value)
    assert TOKEN not in message
    assert TOKEN not in caplog.text
    assert not any(TOKEN in k or TOKEN in v for k, v in source.errors.items())
    assert f"{base}{path} failed: HTTPError: HTTP 500 Broken\\x1b[2J" in message  # the escape made inert
    # The token still went with the request, as written, after the path taxii2client asked.
    asked = urlsplit(answer.paths[0])
    assert asked.path.startswith(path)
    assert asked.query.split("&")[0] == f"apikey={TOKEN}"


def test_a_url_user_info_is_sent_as_basic_auth_and_never_named(caplog: pytest.LogCaptureFixture) -> None:
    answer = Failing()
    with serving(answer) as base:
        escaped = WRONG.replace("@", "%40").replace(":", "%3A")
        url = base.replace("http://", f"http://analyst:{escaped}@") + "/api/collections/abc/"
        source = TaxiiSource(url)
        with caplog.at_level(logging.WARNING), pytest.raises(SourceError, match="500") as info:
            source.poll_once(MemorySink(), {})
    assert answer.auth[0] == "Basic " + base64.b64encode(f"analyst:{WRONG}".encode()).decode()
    for secret in (WRONG, escaped, "analyst"):
        assert secret not in str(info.value)
        assert secret not in caplog.text
    assert f"{base}/api/collections/abc/" in str(info.value)


def test_a_poll_that_gets_no_answer_times_out_and_is_retried_at_the_next() -> None:
    # taxii2client asks with no timeout: a server that took the connection and never answered
    # held the source for good, and stop() could not end it.
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def never_answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        arrived.release()
        release.wait(60)  # let go when the test ends; the connection closes unanswered

    with serving(never_answer) as base:
        url = f"{base}/api/collections/abc/"
        source = TaxiiSource.from_settings(Settings(), url=url, timeout="0.5", poll_interval="0.01")
        thread = threading.Thread(target=source.run, args=(MemorySink(),), daemon=True)
        thread.start()
        try:
            assert arrived.acquire(timeout=20), "the source asked nothing"
            assert arrived.acquire(timeout=20), "the first request never ended: no second poll"
            assert source.last_error is not None
            assert f"collection {url} failed: ReadTimeout: no answer within 0.5 s" in source.last_error
            source.stop()
            thread.join(20)  # the poll in flight times out too
            assert not thread.is_alive(), "run() still blocked in a request after stop()"
        finally:
            source.stop()
            release.set()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_the_timeout_option_must_be_a_positive_number_of_seconds(value: str) -> None:
    with pytest.raises(SourceError, match="timeout"):
        TaxiiSource.from_settings(Settings(), url="http://127.0.0.1:1/api/collections/abc/", timeout=value)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/api/collections/abc/", "http:///api/collections/abc/", "http://[::1/x?apikey=k"]
)
def test_a_url_that_is_not_http_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(SourceError, match="collection URL 1") as info:
        TaxiiSource(url)
    assert url not in str(info.value)


def test_the_token_is_in_no_urllib3_line_at_debug_either(caplog: pytest.LogCaptureFixture) -> None:
    # urllib3 logs every request at DEBUG with its path and query ("GET /...?apikey=<token>").
    with serving(Failing()) as base:
        source = TaxiiSource(f"{base}/api/collections/abc/?apikey={TOKEN}")
        with caplog.at_level(logging.DEBUG, logger="urllib3"), pytest.raises(SourceError):
            source.poll_once(MemorySink(), {})
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any('"GET /api/collections/abc/' in line and "?<query hidden>" in line for line in lines), lines
    assert not any(TOKEN in line for line in lines), lines


def test_an_answer_without_a_content_type_is_a_failed_poll_not_the_end_of_the_source() -> None:
    # taxii2client reads the header with []: its KeyError ended run().
    def bare(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    with serving(bare) as base:
        source = TaxiiSource(f"{base}/api/collections/abc/")
        with pytest.raises(SourceError, match="abc/ failed: an answer without a Content-Type header"):
            source.poll_once(MemorySink(), {})
        # Listing an API root's collections, too.
        root = TaxiiSource(api_root=f"{base}/api/")
        with pytest.raises(SourceError, match=r"API root .*/api/ failed: an answer without a Content-Type"):
            root.poll_once(MemorySink(), {})


def test_unknown_options_and_a_poll_interval_of_zero_are_refused() -> None:
    url = "http://127.0.0.1:1/api/collections/abc/"
    with pytest.raises(SourceError, match=r"taxii: unknown option\(s\) \['page_sise'\]"):
        TaxiiSource.from_settings(Settings(), url=url, page_sise="5")
    with pytest.raises(SourceError, match="option poll_interval must be a number of seconds above 0"):
        TaxiiSource.from_settings(Settings(), url=url, poll_interval="0")
