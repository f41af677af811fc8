"""/metrics for the stream applications of a process: merged families, served and stopped."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from vigil.cli._common import serve_metrics_of
from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.hub.broker import free_port_block
from vigil.stream import app as app_module
from vigil.stream.app import MAX_BATCH_SIZE
from vigil.stream.metrics import MetricsServer, PrometheusMetrics


def _free_port() -> int:
    return free_port_block(1)  # below the ephemeral range: no client's source port takes it


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_two_applications_are_served_as_one_exposition_until_stopped() -> None:
    route, detect = PrometheusMetrics("route"), PrometheusMetrics("detect")
    route.processed.labels("route").inc(3)
    detect.processed.labels("detect").inc(5)
    server = MetricsServer(lambda: [route.registry, detect.registry]).start(0)  # any free port
    port = server.port
    try:
        text = _scrape(port)
    finally:
        server.stop()
    assert 'vigil_stream_records_total{app="route"} 3.0' in text
    assert 'vigil_stream_records_total{app="detect"} 5.0' in text
    # One family per name, as the text format requires (Prometheus rejects a repeated TYPE line).
    assert text.count("# TYPE vigil_stream_records_total counter") == 1
    # Stopped: the port is closed.
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        _scrape(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port


def test_metrics_are_served_only_when_a_port_is_given_and_a_busy_port_is_named() -> None:
    app: Any = SimpleNamespace(prometheus=PrometheusMetrics("normalize"))
    app.prometheus.processed.labels("normalize").inc(2)
    assert serve_metrics_of(load_settings(), None, lambda: [app]) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            ConfigError, match=f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}"
        ) as busy_port:
            serve_metrics_of(load_settings(), port, lambda: [app])
        # (No privileges' hint for a port that needs none: found in review.)
        assert str(busy_port.value).endswith("expected a free port")
        # Named as it was given: the setting (a VIGIL_METRICS_PORT for every process), not the option.
        setting = rf"the metrics_port setting \(VIGIL_METRICS_PORT\) {port}: cannot listen"
        with pytest.raises(ConfigError, match=setting):
            serve_metrics_of(load_settings(metrics_port=port), None, lambda: [app])
    port = _free_port()
    server = serve_metrics_of(load_settings(metrics_port=port), None, lambda: [app])
    assert server is not None
    try:
        assert 'vigil_stream_records_total{app="normalize"} 2.0' in _scrape(port)
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        _scrape(port)


def _refused(host: str, port: int) -> bool:
    """True when nothing listens on host:port (the connection is refused)."""
    try:
        socket.create_connection((host, port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def _scrape_at(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_by_default_metrics_listen_on_loopback_only() -> None:
    metrics = PrometheusMetrics("route")
    metrics.processed.labels("route").inc(4)
    server = MetricsServer(lambda: [metrics.registry]).start(0)
    try:
        port = server.port
        assert 'vigil_stream_records_total{app="route"} 4.0' in _scrape_at("127.0.0.1", port)
        # Bound to 127.0.0.1 itself, not to every address: another loopback address is refused
        # (a wildcard bind, 0.0.0.0, would answer there and on every interface).
        assert _refused("127.0.0.2", port)
    finally:
        server.stop()


def test_metrics_listen_on_the_host_given_and_nowhere_else() -> None:
    metrics = PrometheusMetrics("route")
    metrics.processed.labels("route").inc(6)
    server = MetricsServer(lambda: [metrics.registry]).start(0, "127.0.0.2")
    try:
        port = server.port
        assert 'vigil_stream_records_total{app="route"} 6.0' in _scrape_at("127.0.0.2", port)
        assert _refused("127.0.0.1", port)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("192.0.2.1", "Cannot assign requested address"),  # (TEST-NET-1: no machine's own)
        ("metrics.invalid", ""),  # (.invalid never resolves: RFC 6761)
    ],
)
def test_a_metrics_host_that_cannot_be_listened_on_is_named_not_the_port(
    monkeypatch: pytest.MonkeyPatch, host: str, why: str
) -> None:
    # Both were "--metrics-port N: cannot listen on ...", or "the metrics_port setting N": the
    # port blamed for the host.
    app: Any = SimpleNamespace(prometheus=PrometheusMetrics("normalize"))
    monkeypatch.setenv("VIGIL_METRICS_HOST", host)
    for flag, setting in ((_free_port(), None), (None, _free_port())):
        with pytest.raises(ConfigError) as caught:
            serve_metrics_of(load_settings(metrics_port=setting), flag, lambda: [app])
        said = str(caught.value)
        assert said.startswith(
            f"the metrics_host setting (VIGIL_METRICS_HOST) {host!r}: cannot listen on it ({why}"
        ), said
        assert "expected an address of this machine" in said
        assert "metrics_port" not in said
        assert "--metrics-port" not in said


def test_the_cli_serves_metrics_on_loopback_unless_vigil_metrics_host_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app: Any = SimpleNamespace(prometheus=PrometheusMetrics("normalize"))
    app.prometheus.processed.labels("normalize").inc(2)
    monkeypatch.delenv("VIGIL_METRICS_HOST", raising=False)
    for host, elsewhere in (("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")):
        if host != "127.0.0.1":
            monkeypatch.setenv("VIGIL_METRICS_HOST", host)
        port = _free_port()
        server = serve_metrics_of(load_settings(), port, lambda: [app])
        assert server is not None
        try:
            assert f"metrics: http://{host}:{port}/metrics" in capsys.readouterr().out
            assert 'vigil_stream_records_total{app="normalize"} 2.0' in _scrape_at(host, port)
            assert _refused(elsewhere, port)
        finally:
            server.stop()


def test_every_series_of_an_application_is_there_at_zero_before_its_first_count() -> None:
    # A series first seen at 1 is invisible to increase() and rate(): an alert on dead letters
    # missed the first one, and any burst that came within one scrape (found in review).
    text = generate_latest(PrometheusMetrics("detect").registry).decode()
    for family in (
        "vigil_stream_records_total",
        "vigil_stream_dead_letters_total",
        "vigil_stream_skipped_records_total",
        "vigil_stream_late_events_total",
        "vigil_stream_restored_records_total",
        "vigil_stream_batch_size_count",
        "vigil_stream_gc_seconds_count",
    ):
        assert f'{family}{{app="detect"}} 0.0' in text, family


def test_a_scrape_filtered_by_name_gets_those_series_of_every_application() -> None:
    # ``name[]`` (a scrape config's params) found none of the merged families and answered an
    # empty page: no lag series, so no lag alert could fire.
    route, detect = PrometheusMetrics("route"), PrometheusMetrics("detect")
    route.lag.labels("route", "events.payment", "0").set(1234)
    detect.lag.labels("detect", "detect.routed", "1").set(7)
    detect.processed.labels("detect").inc(5)
    server = MetricsServer(lambda: [route.registry, detect.registry]).start(0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics?name[]=vigil_stream_consumer_lag&name[]=vigil_stream_records_total"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()
    samples = sorted(line for line in text.splitlines() if not line.startswith("#"))
    assert samples == [
        'vigil_stream_consumer_lag{app="detect",partition="1",topic="detect.routed"} 7.0',
        'vigil_stream_consumer_lag{app="route",partition="0",topic="events.payment"} 1234.0',
        'vigil_stream_records_total{app="detect"} 5.0',
        'vigil_stream_records_total{app="route"} 0.0',
    ]
    assert text.count("# TYPE vigil_stream_consumer_lag gauge") == 1


def test_the_batch_and_checkpoint_histograms_reach_what_the_runtime_allows() -> None:
    # Past the top bucket, histogram_quantile answers the top bucket: 50,000 records and 10 s,
    # where the runtime takes batches of up to MAX_BATCH_SIZE and lets one run to a quarter of
    # max.poll.interval.ms (75 s by default); and 10 s for a checkpoint whose transactional calls
    # were tried for minutes with the broker out of reach.
    metrics = PrometheusMetrics("detect")
    text = generate_latest(metrics.registry).decode()
    tops = {
        family: max(
            float(le) for le in re.findall(rf'{family}_bucket{{app="detect",le="([0-9.e+]+)"}}', text)
        )
        for family in (
            "vigil_stream_batch_size",
            "vigil_stream_batch_processing_seconds",
            "vigil_stream_checkpoint_seconds",
        )
    }
    assert tops["vigil_stream_batch_size"] >= MAX_BATCH_SIZE
    assert tops["vigil_stream_batch_processing_seconds"] >= 300_000 / 1000 / 4
    assert tops["vigil_stream_checkpoint_seconds"] >= app_module._RETRY_TXN_CALL_S
