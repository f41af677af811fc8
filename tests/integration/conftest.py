"""The real broker for integration tests.

With ``VIGIL_KAFKA_BOOTSTRAP`` set the tests use that cluster and start nothing.
Otherwise one single-node KRaft broker is started for the session through the project's
own :class:`~vigil.hub.broker.LocalBroker`, in a temporary home on free loopback ports
(reusing the jar cache in ``.vigil/kafka-dist``), and stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.throwaway_broker import TEST_BROKER_LOG_LEVELS

from vigil.config import Settings, load_settings
from vigil.hub.broker import LocalBroker, free_port_block

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _brokers_stopped_when_this_process_ends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every broker started under this process's temporary directory is stopped when the
    process ends, however it ends: a broker runs detached, so a test process killed or crashed
    (no finalizer runs) left its brokers running for good.  A reaper process waits for the end
    of a pipe only this process holds (see tests/reap_brokers.py)."""
    root = tmp_path_factory.getbasetemp()
    reaper = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "reap_brokers.py"), str(root)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C to the test run is not the reaper's to take
    )
    try:
        yield
    finally:
        assert reaper.stdin is not None
        reaper.stdin.close()  # the end: it stops what tests left running, then exits
        reaper.wait(timeout=120)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("VIGIL_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    home = tmp_path_factory.mktemp("vigil-home")
    broker = LocalBroker(
        home=home,
        port=free_port_block(2),
        dist_root=REPO / ".vigil" / "kafka-dist",
        heap_mb=768,
        log_levels=TEST_BROKER_LOG_LEVELS,
    )
    info = broker.start(nodes=1)
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def settings(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(kafka_bootstrap=kafka_bootstrap, home=tmp_path_factory.mktemp("vigil-state"))


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test (or concurrent run on a shared broker) uses."""
    return f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
