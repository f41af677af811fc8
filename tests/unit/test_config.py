"""The one settings model."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import Settings, load_settings
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
    with pytest.raises(ConfigError, match="expected host:port") as caught:
        load_settings()
    # The value once (it was said twice), and pydantic's "Value error, " not at all.
    assert str(caught.value).count("'localhost'") == 1, caught.value
    assert "Value error" not in str(caught.value)
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2")
    with pytest.raises(ConfigError, match=r"'kafka-2' of it has no port; .*got 'kafka-1:9092,kafka-2'"):
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
    with pytest.raises(
        ConfigError, match=rf"brokr_port in {cfg}: unknown setting; expected one of: .*broker_port"
    ):
        load_settings()


def test_values_from_the_settings_file_are_named_as_its_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # They were reported as VIGIL_ variables that nobody had set, and the file went unnamed.
    cfg = tmp_path / "vigil.toml"
    cfg.write_text('broker_port = 5\nkafka_sasl_username = "u"\n')
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=rf"\n  broker_port in {cfg}: .*1024; got 5$") as caught:
        load_settings()
    assert "VIGIL_BROKER_PORT" not in str(caught.value)
    cfg.write_text('kafka_sasl_username = "u"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings:\n  settings that disagree: "
        f"kafka_sasl_username in {cfg} set with VIGIL_KAFKA_SECURITY_PROTOCOL PLAINTEXT, "
        "which sends no credentials; expected SASL_SSL (or SASL_PLAINTEXT)"
    )


def test_a_settings_file_that_is_not_toml_is_located(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # tomllib's exception came out of pydantic as a traceback.
    cfg = tmp_path / "vigil.toml"
    cfg.write_text("default_partitions = 3\nkafka_bootstrap = 127.0.0.1:9092\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=rf"^{cfg}:2:24: the settings file is not valid TOML: .*quotes"):
        load_settings()
    # The file in the working directory, read when VIGIL_CONFIG is not set, too.
    monkeypatch.delenv("VIGIL_CONFIG")
    monkeypatch.chdir(tmp_path)
    cfg.write_text("kafka_bootstrap = localhost:9092\n")
    with pytest.raises(ConfigError, match=r"^vigil.toml:1:19: the settings file is not valid TOML: .*quotes"):
        load_settings()


def test_a_ca_file_that_is_not_there_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # librdkafka refused it only when the first client was made, with a traceback.
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    with pytest.raises(
        ConfigError, match=r"VIGIL_KAFKA_SSL_CA_LOCATION \(kafka_ssl_ca_location\): no such file"
    ):
        load_settings()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings().kafka_client_config()["ssl.ca.location"] == str(tmp_path / "ca.pem")


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s)
    assert "hunter2" not in s.model_dump_json()
    assert s.kafka_client_config()["sasl.password"] == "hunter2"


def test_a_config_file_that_is_not_there_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Read as "no file", a mistyped path ran on the defaults: a local broker, not the cluster.
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "vigil-prod.toml"))
    with pytest.raises(ConfigError, match=r"VIGIL_CONFIG names .*vigil-prod.toml', which is not a file"):
        load_settings()


def test_the_value_of_a_misspelt_setting_is_not_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text('kafka_sasl_pw = "hunter2-secret"\n')
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="kafka_sasl_pw") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"VIGIL_KAFKA_SASL_MECHANISM": "PLAIN", "VIGIL_KAFKA_SASL_USERNAME": "u"},
            "set with VIGIL_KAFKA_SECURITY_PROTOCOL PLAINTEXT, which sends no credentials",
        ),
        (
            {"VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "VIGIL_KAFKA_SASL_USERNAME": ""},
            "SASL_SSL needs VIGIL_KAFKA_SASL_MECHANISM, VIGIL_KAFKA_SASL_USERNAME",
        ),
        (
            {"VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL", "VIGIL_KAFKA_SASL_USERNAME": "u"},
            "set with VIGIL_KAFKA_SECURITY_PROTOCOL SSL",
        ),
    ],
)
def test_security_settings_that_disagree_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    # librdkafka only warned, and connected without the credentials (or failed much later as a
    # request nobody answered).
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    # The check sees every setting at once as its input: none of their values is shown.
    assert "hunter2" not in str(caught.value)
    # Named as they were given, by variable: not "settings (settings): Value error, ...".
    assert "settings that disagree: VIGIL_KAFKA_" in str(caught.value)
    assert "settings (settings)" not in str(caught.value)
    assert "Value error" not in str(caught.value)


def test_a_ca_file_without_tls_and_empty_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As a templated env file leaves them: unset.  (An empty password or mechanism failed
    # every command: SecretStr("") is not "", and "" is no mechanism.)
    for name in ("USERNAME", "PASSWORD", "MECHANISM"):
        monkeypatch.setenv(f"VIGIL_KAFKA_SASL_{name}", "")
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "")
    loaded = load_settings()
    assert loaded.kafka_security_protocol == "PLAINTEXT"
    assert loaded.kafka_sasl_password is None
    assert loaded.kafka_bootstrap == Settings.model_fields["kafka_bootstrap"].default
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=r"VIGIL_KAFKA_SSL_CA_LOCATION set with .* PLAINTEXT"):
        load_settings()
    # A config file named with ~ (no shell to expand it: systemd, quoted values) is found.
    monkeypatch.delenv("VIGIL_KAFKA_SSL_CA_LOCATION")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "vigil.toml").write_text("default_partitions = 5\n")
    monkeypatch.setenv("VIGIL_CONFIG", "~/vigil.toml")
    assert load_settings().default_partitions == 5


def test_sasl_over_tls_with_its_credentials_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    conf = load_settings().kafka_client_config()
    assert (conf["security.protocol"], conf["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
