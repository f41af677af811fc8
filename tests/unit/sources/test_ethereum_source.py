"""Ethereum connector construction (its node behaviour is tested against anvil in tests/integration)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from vigil.cli.source import build_connector
from vigil.config import Settings
from vigil.errors import ConfigError, Retry, SourceError
from vigil.sources.ethereum import EthereumSource


def test_from_settings_parses_options(tmp_path: Path) -> None:
    source = EthereumSource.from_settings(
        Settings(home=tmp_path),
        url="http://127.0.0.1:1",
        confirmations="3",
        start_block="100",
        poll_interval="0.5",
        source_id="eth-main",
    )
    try:
        assert (source.confirmations, source.start, source.source_id) == (3, 100, "eth-main")
        assert source.poll_interval.total_seconds() == 0.5
        assert source.default_topic == "raw.ethereum"
    finally:
        source.close()


def test_unknown_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*'confirmation'"):
        EthereumSource.from_settings(Settings(home=tmp_path), confirmation="3")


def test_negative_confirmations_are_rejected() -> None:
    with pytest.raises(ValueError, match="confirmations must be >= 0"):
        EthereumSource("http://127.0.0.1:1", confirmations=-1)


def test_cursor_round_trips_and_a_malformed_one_is_refused() -> None:
    source = EthereumSource("http://127.0.0.1:1", source_id="eth-x")
    try:
        state = source.restore({"next_block": 11, "hash": "0xab", "recent": [[9, "0xaa"], [10, "0xab"]]})
        assert source.cursor(state) == {
            "next_block": 11,
            "hash": "0xab",
            "recent": [[9, "0xaa"], [10, "0xab"]],
            "chain_id": 1,
        }
        with pytest.raises(SourceError, match=r"eth-x.*stored cursor is malformed"):
            source.restore({"next_height": 11})
        with pytest.raises(SourceError, match="malformed"):
            source.restore({"next_block": -1})
    finally:
        source.close()


def test_a_negative_start_block_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="ethereum source: option start_block must be a height >= 0; got -5"
    ):
        EthereumSource.from_settings(Settings(home=tmp_path), start_block="-5")


def test_a_poll_interval_of_zero_or_less_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="option poll_interval must be more than 0 seconds; got 0"):
        EthereumSource.from_settings(Settings(home=tmp_path), poll_interval="0")
    with pytest.raises(ConfigError, match=r"option poll_interval must be more than 0 seconds; got -0\.5"):
        EthereumSource("http://127.0.0.1:1", poll_interval=timedelta(seconds=-0.5))


def test_the_node_url_comes_from_the_settings_and_is_never_shown(tmp_path: Path) -> None:
    # Read from os.environ by the connector: vigil.toml refused ethereum_rpc_url as unknown.
    # A closed loopback port: the first call fails, as a node that is down does.
    configured = Settings(home=tmp_path, ethereum_rpc_url="http://127.0.0.1:9/v3/apikey-hunter2")
    source = EthereumSource.from_settings(configured)
    try:
        with pytest.raises(Retry) as failed:
            source.head()
        assert "http://127.0.0.1:9" in str(failed.value)  # the node called is the settings' one
        assert "hunter2" not in str(failed.value)
    finally:
        source.close()
    # The option, given, goes first.
    source = EthereumSource.from_settings(configured, url="http://127.0.0.1:1")
    try:
        with pytest.raises(Retry, match=r"http://127\.0\.0\.1:1\b"):
            source.head()
    finally:
        source.close()


@pytest.mark.parametrize("source", ["ethereum", "bitcoin"])
@pytest.mark.parametrize("given", ["inf", "-inf", "1e300", "nan", "3601"])
def test_a_poll_interval_out_of_range_is_refused_by_name(tmp_path: Path, source: str, given: str) -> None:
    # inf and 1e300 raised OverflowError in timedelta, which build_connector did not catch: a
    # traceback instead of the option's name.
    with pytest.raises(
        ConfigError,
        match=rf"{source} source: option poll_interval must be a number at most 3600; got '{given}'",
    ):
        build_connector(source, Settings(home=tmp_path), {"poll_interval": given})


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("confirmations", "1" + "0" * 400, "a whole number at most 10000"),
        ("start_block", str(2**64), "a whole number at most 9007199254740992"),
        ("chain_id", "0", "a whole number from 1 to 9223372036854775807"),
    ],
)
def test_absurd_whole_numbers_are_refused_by_name(
    tmp_path: Path, name: str, given: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=f"ethereum source: option {name} must be {expected}; got "):
        EthereumSource.from_settings(Settings(home=tmp_path), **{name: given})


def test_the_chain_id_option_names_the_chain_expected(tmp_path: Path) -> None:
    source = EthereumSource.from_settings(Settings(home=tmp_path), chain_id="11155111")  # sepolia
    try:
        assert source.expected_network == 11155111
    finally:
        source.close()
    mainnet = EthereumSource.from_settings(Settings(home=tmp_path))
    try:
        assert mainnet.expected_network == 1
    finally:
        mainnet.close()
