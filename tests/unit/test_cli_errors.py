"""Everyday mistakes get a one-line error and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.hub.broker import free_port_block


def _vigil(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    clean |= {"VIGIL_HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("source", "bitcoin", "-o", "bogus=1"), "unknown option(s) ['bogus']"),
        (("source", "bitcoin", "-o", "confirmations=x"), "option confirmations must be a whole number"),
        (("source", "bitcoin", "-o", "rpc_user=u"), "rpc_user and rpc_password go together"),
    ],
)
def test_bad_connector_options_are_named(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    out = _vigil(tmp_path, *args)
    assert out.returncode == 1
    assert says in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_no_broker_answering_is_a_clear_error(tmp_path: Path) -> None:
    # (A closed loopback port: nothing listens there.)
    closed = f"127.0.0.1:{free_port_block(1)}"
    for args in (("source", "coinbase", "-o", "products=BTC-USD"), ("normalize",)):
        out = _vigil(tmp_path, *args, VIGIL_KAFKA_BOOTSTRAP=closed)
        assert out.returncode == 1, out.stderr
        assert "did not answer a metadata request" in out.stderr + out.stdout
        assert "Traceback" not in out.stderr


def test_run_refuses_a_bad_connector_option_before_starting_anything(tmp_path: Path) -> None:
    # Built after normalise and detection had started, a bad option raised with those running
    # in daemon threads: the exit killed them mid-transaction.  (A closed port: nothing would
    # answer, so a start would show as a different error.)
    closed = f"127.0.0.1:{free_port_block(1)}"
    out = _vigil(
        tmp_path, "run", "--source", "bitcoin", "-o", "bitcoin.confirmations=x", VIGIL_KAFKA_BOOTSTRAP=closed
    )
    assert out.returncode == 1
    assert "option confirmations must be a whole number" in out.stderr + out.stdout
    assert "did not answer" not in out.stderr + out.stdout
