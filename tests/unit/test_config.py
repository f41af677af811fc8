"""The one settings model."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.errors import ConfigError


def test_defaults_use_the_local_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIGIL_KAFKA_BOOTSTRAP", raising=False)
    s = load_settings()
    assert not s.uses_external_cluster
    assert s.kafka_client_config()["bootstrap.servers"] == f"127.0.0.1:{s.broker_port}"


def test_environment_names_an_existing_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    s = load_settings()
    assert s.uses_external_cluster
    assert s.kafka_client_config()["bootstrap.servers"] == "kafka-1:9092,kafka-2:9092"


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_BROKER_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"VIGIL_BROKER_PORT \(broker_port\).*'eighty'"):
        load_settings()


def test_bad_bootstrap_says_expected_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "localhost")
    with pytest.raises(ConfigError, match="expected host:port"):
        load_settings()


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text("default_partitions = 12\nbroker_port = 29092\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    monkeypatch.setenv("VIGIL_BROKER_PORT", "39092")
    s = load_settings()
    assert s.default_partitions == 12
    assert s.broker_port == 39092


def test_unknown_toml_key_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text("brokr_port = 1\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="brokr_port"):
        load_settings()


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s)
    assert "hunter2" not in s.model_dump_json()
    assert s.kafka_client_config()["sasl.password"] == "hunter2"
