"""The one settings model."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from vigil import config
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
    # (A port that is not a number was said to be missing: found in review.)
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "foo:bar")
    with pytest.raises(ConfigError, match=r"has a port that is not a number \('bar'\); expected host:port"):
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


def test_a_value_inside_a_table_setting_is_named_where_the_setting_was_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "VIGIL_BACKEND_SCOPES.SVC" named a variable nobody set, for a file's table too.
    cfg = tmp_path / "vigil.toml"
    cfg.write_text("[backend_scopes]\nsvc = 5\n")
    monkeypatch.setenv("VIGIL_CONFIG", str(cfg))
    with pytest.raises(
        ConfigError, match=rf"\n  backend_scopes in {cfg}: at svc: Input should be a valid list; got 5$"
    ):
        load_settings()
    cfg.write_text("")
    monkeypatch.setenv("VIGIL_BACKEND_SCOPES", '{"svc": 5}')
    with pytest.raises(
        ConfigError, match=r"\n  VIGIL_BACKEND_SCOPES \(backend_scopes\): at svc: Input should be"
    ):
        load_settings()


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
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    with pytest.raises(
        ConfigError, match=r"VIGIL_KAFKA_SSL_CA_LOCATION \(kafka_ssl_ca_location\): no such file"
    ):
        load_settings()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings().kafka_client_config()["ssl.ca.location"] == str(tmp_path / "ca.pem")
    # A directory of CA certificates, and "probe" (the system's usual places), as librdkafka
    # takes them: both were refused as "no such file".
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", str(tmp_path))
    assert load_settings().kafka_client_config()["ssl.ca.location"] == str(tmp_path)
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", "probe")
    assert load_settings().kafka_client_config()["ssl.ca.location"] == "probe"
    # A directory is no client certificate.
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION", str(tmp_path))
    with pytest.raises(ConfigError, match=r"kafka_ssl_certificate_location\): no such file"):
        load_settings()


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
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
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    conf = load_settings().kafka_client_config()
    assert (conf["security.protocol"], conf["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")


# ---------------------------------------------------------------------- connector credentials

#: Every connector credential that is a secret, with its variable.
CONNECTOR_SECRETS = [
    "hubspot_client_secret",
    "hubspot_access_token",
    "salesforce_webhook_token",
    "mailchimp_webhook_secret",
    "mandrill_webhook_key",
    "backend_keys",
    "taxii_password",
    "ethereum_rpc_url",
    "bitcoin_rpc_password",
]


@pytest.fixture
def no_vigil_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No VIGIL_* variable from the environment the tests run in, no vigil.toml, and no
    variable remembered as warned about already."""
    for key in list(os.environ):
        if key.upper().startswith("VIGIL_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "_warned", set(), raising=False)
    return monkeypatch


def test_a_connector_secret_is_read_from_its_variable_and_from_the_file(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The connectors read these from os.environ themselves: vigil.toml refused them as unknown
    # keys, and nothing listed them among the settings.
    cfg = tmp_path / "vigil.toml"
    cfg.write_text('hubspot_client_secret = "from-the-file"\ntaxii_user = "analyst"\n')
    assert load_settings().hubspot_client_secret == SecretStr("from-the-file")
    assert load_settings().taxii_user == "analyst"
    no_vigil_variables.setenv("VIGIL_HUBSPOT_CLIENT_SECRET", "from-the-variable")
    assert load_settings().hubspot_client_secret == SecretStr("from-the-variable")  # the variable wins
    for name in CONNECTOR_SECRETS:
        assert Settings.model_fields[name].description, name


def test_backend_keys_are_json_in_the_variable_or_a_table_in_the_file(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    digest = "ab" * 32
    (tmp_path / "vigil.toml").write_text(f'[backend_keys]\nwallet = "{digest}"\n')
    keys = load_settings().backend_keys
    assert keys is not None
    assert json.loads(keys.get_secret_value()) == {"wallet": digest}
    no_vigil_variables.setenv("VIGIL_BACKEND_KEYS", json.dumps({"ledger": digest}))
    keys = load_settings().backend_keys
    assert keys is not None
    assert json.loads(keys.get_secret_value()) == {"ledger": digest}


def test_backend_scopes_are_json_in_the_variable_or_a_table_in_the_file(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings().backend_scopes == {}  # every service: the default scope
    (tmp_path / "vigil.toml").write_text('[backend_scopes]\nindexer = ["chain", "login"]\nkyc = "identity"\n')
    assert load_settings().backend_scopes == {"indexer": ["chain", "login"], "kyc": ["identity"]}
    no_vigil_variables.setenv("VIGIL_BACKEND_SCOPES", json.dumps({"crm-sync": ["crm_record_export"]}))
    assert load_settings().backend_scopes == {"crm-sync": ["crm_record_export"]}  # the variable wins
    assert Settings.model_fields["backend_scopes"].description


def test_backend_scopes_that_are_not_json_are_named(no_vigil_variables: pytest.MonkeyPatch) -> None:
    no_vigil_variables.setenv("VIGIL_BACKEND_SCOPES", "indexer=chain")
    with pytest.raises(
        ConfigError, match=r"VIGIL_BACKEND_SCOPES \(backend_scopes\): not JSON \(.*\); expected \{\"service\""
    ):
        load_settings()


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (
            {"VIGIL_BACKEND_SCOPES": '["chain"]'},
            r"VIGIL_BACKEND_SCOPES \(backend_scopes\): a list; expected \{\"service\": \[",
        ),
        (
            {"vigil.toml": "backend_scopes = 3\n"},
            r"backend_scopes in vigil.toml: a number; expected \{\"service\": \[",
        ),
        (
            {"VIGIL_KAFKA_CLIENT_OPTIONS": '{"sasl.oauthbearer.client.secret": "hunter2",}'},
            r"VIGIL_KAFKA_CLIENT_OPTIONS \(kafka_client_options\): not JSON \(Expecting property name .*\); "
            r"expected \{\"<librdkafka setting>\"",
        ),
        (
            # json.loads raises RecursionError, not ValueError, this deep.
            {"VIGIL_KAFKA_CLIENT_OPTIONS": '{"a": ' * 100_000 + '"hunter2"'},
            r"VIGIL_KAFKA_CLIENT_OPTIONS \(kafka_client_options\): JSON nested too deeply to read; "
            r"expected \{\"<librdkafka setting>\"",
        ),
        (
            {"vigil.toml": 'kafka_client_options = ["hunter2"]\n'},
            r"kafka_client_options in vigil.toml: a list; "
            r"expected \{\"<librdkafka setting>\": value, \.\.\.\}; got <hidden>$",
        ),
    ],
)
def test_a_table_setting_that_is_no_table_is_named_with_what_was_expected(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path, given: dict[str, str], says: str
) -> None:
    # Each setting given as JSON in its variable or as a table in the file is read the one way
    # (config._json_table): named where it was given, with what it is and what was expected.
    for where, value in given.items():
        if where == "vigil.toml":
            (tmp_path / where).write_text(value)
        else:
            no_vigil_variables.setenv(where, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert re.search(says, str(caught.value)), str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_backend_keys_that_are_not_json_are_left_to_the_backend_source(
    no_vigil_variables: pytest.MonkeyPatch,
) -> None:
    # Read, and refused without showing them, by the backend ingest source alone
    # (tests/unit/sources/test_backend.py): every other command still runs.
    no_vigil_variables.setenv("VIGIL_BACKEND_KEYS", '{"wallet": "hunter2"')
    loaded = load_settings()
    assert loaded.backend_keys == SecretStr('{"wallet": "hunter2"')
    assert "hunter2" not in repr(loaded)


def test_connector_secrets_are_never_shown(no_vigil_variables: pytest.MonkeyPatch) -> None:
    for name in CONNECTOR_SECRETS:
        value = f"https://node.example/v3/{name}-hunter2"  # a URL, so that ethereum_rpc_url takes it
        no_vigil_variables.setenv(f"VIGIL_{name.upper()}", value)
    loaded = load_settings()
    for shown in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert "hunter2" not in shown
    assert loaded.ethereum_rpc_url == SecretStr("https://node.example/v3/ethereum_rpc_url-hunter2")


def test_a_bad_rpc_url_is_refused_without_showing_it(no_vigil_variables: pytest.MonkeyPatch) -> None:
    # No "secret" in its name, but hosted nodes put the API key in the URL's path: the value is
    # hidden as a password's is, in load_settings' message and in pydantic's own.
    no_vigil_variables.setenv("VIGIL_ETHEREUM_RPC_URL", "mainnet.example.io/v3/hunter2")
    with pytest.raises(
        ConfigError, match=r"VIGIL_ETHEREUM_RPC_URL \(ethereum_rpc_url\): expected the node's http"
    ) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValidationError) as raw:
        Settings()
    assert "hunter2" not in str(raw.value)


# ---------------------------------------------------------------------- unknown VIGIL_* variables


def test_a_misspelt_variable_is_named_with_the_closest_setting_not_its_value(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It was ignored in silence: VIGIL_KAFKA_BOOSTRAP ran on the local broker instead.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOSTRAP", "kafka-prod-1:9092")
    no_vigil_variables.setenv("VIGIL_HUBSPOT_CLIENT_SECRT", "hunter2")
    no_vigil_variables.setenv("VIGIL_NOTHING_LIKE_IT", "1")
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        loaded = load_settings()
    assert loaded.kafka_bootstrap is None
    [warning] = [r for r in caplog.records if r.name == "vigil.config"]
    line = warning.getMessage()
    assert warning.levelno == logging.WARNING
    assert "\n" not in line
    assert "VIGIL_KAFKA_BOOSTRAP (did you mean VIGIL_KAFKA_BOOTSTRAP?)" in line
    assert "VIGIL_HUBSPOT_CLIENT_SECRT (did you mean VIGIL_HUBSPOT_CLIENT_SECRET?)" in line
    assert "VIGIL_NOTHING_LIKE_IT:" in line  # named, with nothing suggested
    assert "kafka-prod-1" not in line
    assert "hunter2" not in line
    # Once per process: the local broker's readiness check loads the settings again.
    caplog.clear()
    load_settings()
    assert not [r for r in caplog.records if r.name == "vigil.config"]


def test_settings_and_the_variables_vigil_reads_besides_are_not_warned_about(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "vigil.toml").write_text("default_partitions = 3\n")
    no_vigil_variables.setenv("VIGIL_CONFIG", str(tmp_path / "vigil.toml"))
    no_vigil_variables.setenv("VIGIL_SHARED_DATA", str(tmp_path))
    no_vigil_variables.setenv("VIGIL_COMPILE", "0")
    no_vigil_variables.setenv("VIGIL_HOME", str(tmp_path))
    no_vigil_variables.setenv("VIGIL_TAXII_PASSWORD", "pw")
    no_vigil_variables.setenv("vigil_broker_port", "29093")  # read whatever its case
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        loaded = load_settings()
    assert loaded.broker_port == 29093
    assert not [r.getMessage() for r in caplog.records if r.name == "vigil.config"]


def test_a_ca_file_under_home_is_given_to_kafka_expanded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The check expanded "~" but the client was given it as written, which librdkafka refused.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", "~/ca.pem")
    assert load_settings().kafka_client_config()["ssl.ca.location"] == str(tmp_path / "ca.pem")


# -------------------------------------------------------- mutual TLS, OAUTHBEARER, client options


def _pem(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_a_client_certificate_and_key_reach_every_client(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # They were no settings: VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION was "ignored" with a warning.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_CA_LOCATION", str(_pem(tmp_path, "ca.pem")))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION", str(_pem(tmp_path, "client.pem")))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_LOCATION", str(_pem(tmp_path, "client.key")))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_PASSWORD", "hunter2-key")
    loaded = load_settings()
    conf = loaded.kafka_client_config()
    assert conf["ssl.certificate.location"] == str(tmp_path / "client.pem")
    assert conf["ssl.key.location"] == str(tmp_path / "client.key")
    assert conf["ssl.key.password"] == "hunter2-key"
    for shown in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert "hunter2" not in shown
    # Over SASL_SSL too (a cluster may ask for both), and "~" is expanded as for the CA file.
    no_vigil_variables.setenv("HOME", str(tmp_path))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_LOCATION", "~/client.key")
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    assert load_settings().kafka_client_config()["ssl.key.location"] == str(tmp_path / "client.key")


def test_a_certificate_or_key_that_is_not_there_is_named(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION", str(tmp_path / "client.pem"))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_LOCATION", str(tmp_path / "client.key"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION (kafka_ssl_certificate_location): no such file" in text
    assert "of the client's certificate" in text
    assert "VIGIL_KAFKA_SSL_KEY_LOCATION (kafka_ssl_key_location): no such file" in text
    assert "of the client's private key" in text


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION": "client.pem"},
            "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION set without VIGIL_KAFKA_SSL_KEY_LOCATION; expected both",
        ),
        (
            {"VIGIL_KAFKA_SSL_KEY_LOCATION": "client.key", "VIGIL_KAFKA_SSL_KEY_PASSWORD": "hunter2"},
            "VIGIL_KAFKA_SSL_KEY_LOCATION set without VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION; expected both",
        ),
        (
            {"VIGIL_KAFKA_SSL_KEY_PASSWORD": "hunter2"},
            "VIGIL_KAFKA_SSL_KEY_PASSWORD set without VIGIL_KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {
                "VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "VIGIL_KAFKA_SASL_MECHANISM": "PLAIN",
                "VIGIL_KAFKA_SASL_USERNAME": "u",
                "VIGIL_KAFKA_SASL_PASSWORD": "hunter2",
                "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION": "client.pem",
                "VIGIL_KAFKA_SSL_KEY_LOCATION": "client.key",
            },
            "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION, VIGIL_KAFKA_SSL_KEY_LOCATION set with "
            "VIGIL_KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT, which does not use TLS; expected SSL or SASL_SSL",
        ),
        (
            {
                "VIGIL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION": "client.pem",
                "VIGIL_KAFKA_SSL_KEY_LOCATION": "client.key",
                "VIGIL_KAFKA_SSL_KEY_PASSWORD": "hunter2",
            },
            "VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION, VIGIL_KAFKA_SSL_KEY_LOCATION, "
            "VIGIL_KAFKA_SSL_KEY_PASSWORD set with VIGIL_KAFKA_SECURITY_PROTOCOL PLAINTEXT, "
            "which does not use TLS",
        ),
    ],
)
def test_a_certificate_without_its_key_or_without_tls_is_refused(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path, given: dict[str, str], message: str
) -> None:
    _pem(tmp_path, "client.pem")
    _pem(tmp_path, "client.key")
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    for key, value in given.items():
        no_vigil_variables.setenv(key, str(tmp_path / value) if value.startswith("client.") else value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValidationError) as raw:
        Settings()
    assert "hunter2" not in str(raw.value)


#: The OIDC client of a cluster that takes OAUTHBEARER tokens (Confluent Cloud, Aiven, Strimzi...).
OIDC = {
    "sasl.oauthbearer.method": "oidc",
    "sasl.oauthbearer.client.id": "vigil",
    "sasl.oauthbearer.client.secret": "hunter2-oidc",
    "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
    "sasl.oauthbearer.scope": "kafka",
}


def test_oauthbearer_with_oidc_needs_no_user_or_password(no_vigil_variables: pytest.MonkeyPatch) -> None:
    # The validator asked for a username and password with any SASL mechanism.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps(OIDC))
    loaded = load_settings()
    conf = loaded.kafka_client_config()
    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    assert "sasl.username" not in conf
    assert "sasl.password" not in conf
    assert {key: conf[key] for key in OIDC} == OIDC
    for shown in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert "hunter2" not in shown
        assert "idp.example" not in shown


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"VIGIL_KAFKA_CLIENT_OPTIONS": json.dumps({"sasl.oauthbearer.client.secret": "hunter2"})},
            "VIGIL_KAFKA_SASL_MECHANISM OAUTHBEARER needs a token source in VIGIL_KAFKA_CLIENT_OPTIONS: "
            "sasl.oauthbearer.method = oidc",
        ),
        (
            {"VIGIL_KAFKA_CLIENT_OPTIONS": json.dumps(OIDC), "VIGIL_KAFKA_SASL_PASSWORD": "hunter2"},
            "VIGIL_KAFKA_SASL_PASSWORD set with VIGIL_KAFKA_SASL_MECHANISM OAUTHBEARER, which sends a token",
        ),
    ],
)
def test_oauthbearer_without_a_token_source_or_with_a_password_is_refused(
    no_vigil_variables: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    for key, value in env.items():
        no_vigil_variables.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_plain_and_scram_still_need_a_user_and_password(
    no_vigil_variables: pytest.MonkeyPatch, mechanism: str
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", mechanism)
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps(OIDC))
    with pytest.raises(
        ConfigError, match="SASL_SSL needs VIGIL_KAFKA_SASL_PASSWORD, VIGIL_KAFKA_SASL_USERNAME"
    ) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_client_options_are_json_in_the_variable_or_a_table_in_the_file(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings().kafka_client_options is None
    assert "socket.timeout.ms" not in load_settings().kafka_client_config()
    # In the file, a dotted key goes quoted or not (unquoted, TOML makes it a table in a table).
    # (sasl.* and ssl.* options with a protocol that uses SASL and TLS, on a cluster.)
    (tmp_path / "vigil.toml").write_text(
        'kafka_bootstrap = "kafka-1:9093"\n'
        'kafka_security_protocol = "SASL_SSL"\n'
        'kafka_sasl_mechanism = "OAUTHBEARER"\n'
        "[kafka_client_options]\n"
        '"sasl.oauthbearer.client.secret" = "hunter2-file"\n'
        'sasl.oauthbearer.method = "oidc"\n'
        "socket.timeout.ms = 30000\n"
        "socket.keepalive.enable = true\n"
        'ssl.endpoint.identification.algorithm = "https"\n'
    )
    conf = load_settings().kafka_client_config()
    assert conf["sasl.oauthbearer.client.secret"] == "hunter2-file"
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["socket.timeout.ms"] == 30000
    assert conf["socket.keepalive.enable"] is True
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["bootstrap.servers"] == "kafka-1:9093"  # Vigil's own settings, as before
    no_vigil_variables.setenv(
        "VIGIL_KAFKA_CLIENT_OPTIONS",
        json.dumps({"socket.timeout.ms": 5000, "sasl.oauthbearer.method": "oidc"}),
    )
    conf = load_settings().kafka_client_config()  # the variable wins, whole
    assert conf["socket.timeout.ms"] == 5000
    assert "sasl.oauthbearer.client.secret" not in conf
    # Keyword arguments (as tests and helpers build settings) take a mapping.
    assert Settings(kafka_client_options={"linger.ms": 1}).kafka_client_config()["linger.ms"] == 1
    assert Settings.model_fields["kafka_client_options"].description


def test_client_options_are_secret_everywhere(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({"ssl.key.pem": "hunter2-key"}))
    with caplog.at_level(logging.DEBUG):
        loaded = load_settings()
    assert loaded.kafka_client_config()["ssl.key.pem"] == "hunter2-key"
    for shown in (repr(loaded), str(loaded), loaded.model_dump_json(), caplog.text):
        assert "hunter2" not in shown
    assert config._is_secret("kafka_client_options")
    assert config._is_secret("kafka_ssl_key_password")
    assert config._is_secret("kafka_client_options.ssl.key.pem")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"sasl.oauthbearer.client.secret": hunter2}', r"not JSON \(Expecting value: line 1 column 36"),
        ('["hunter2"]', "a list; expected"),
        ('"hunter2"', "a string; expected"),
        (
            '{"sasl.oauthbearer.scope": ["hunter2"]}',
            "the value of 'sasl.oauthbearer.scope' is a list; expected a string",
        ),
        (
            '{"linger.ms": null}',
            "the value of 'linger.ms' is a null; expected a string, number or true/false",
        ),
    ],
)
def test_client_options_that_are_not_settings_are_refused_without_their_values(
    no_vigil_variables: pytest.MonkeyPatch, value: str, message: str
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert text.startswith("invalid settings:\n  VIGIL_KAFKA_CLIENT_OPTIONS (kafka_client_options): ")
    assert re.search(message, text), text
    assert text.endswith("; got <hidden>")
    assert "hunter2" not in text
    with pytest.raises(ValidationError) as raw:
        Settings()
    assert "hunter2" not in str(raw.value)


#: librdkafka settings Vigil makes from its own settings, each with that setting.
OWN_CLIENT_OPTIONS = {
    "bootstrap.servers": "kafka_bootstrap",
    "metadata.broker.list": "kafka_bootstrap",  # (librdkafka's other name for it)
    "security.protocol": "kafka_security_protocol",
    "sasl.mechanism": "kafka_sasl_mechanism",
    "sasl.mechanisms": "kafka_sasl_mechanism",
    "sasl.username": "kafka_sasl_username",
    "sasl.password": "kafka_sasl_password",
    "ssl.ca.location": "kafka_ssl_ca_location",
    "ssl.certificate.location": "kafka_ssl_certificate_location",
    "ssl.key.location": "kafka_ssl_key_location",
    "ssl.key.password": "kafka_ssl_key_password",
    "client.id": "kafka_client_id",
    "group.protocol": "kafka_group_protocol",
}


@pytest.mark.parametrize(("key", "setting"), sorted(OWN_CLIENT_OPTIONS.items()))
def test_client_options_that_vigil_sets_itself_are_refused_naming_the_setting(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path, key: str, setting: str
) -> None:
    # Which of the two would the client take?  Neither silently: the setting is the one place.
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({"linger.ms": 5, key: "hunter2"}))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert (
        f"VIGIL_KAFKA_CLIENT_OPTIONS (kafka_client_options): {key!r} is set by Vigil from its own "
        f"setting; set {setting} (VIGIL_{setting.upper()}) instead; got <hidden>"
    ) in str(caught.value)
    assert "hunter2" not in str(caught.value)
    # In the file too, whatever its case.
    no_vigil_variables.delenv("VIGIL_KAFKA_CLIENT_OPTIONS")
    (tmp_path / "vigil.toml").write_text(f'[kafka_client_options]\n"{key.upper()}" = "hunter2"\n')
    with pytest.raises(ConfigError, match=f"kafka_client_options in vigil.toml: .*set {setting} "):
        load_settings()


def test_the_new_settings_are_not_warned_about_as_unknown(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION was "ignoring environment variable ...: not a Vigil setting".
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9092")  # (TLS and SASL are for a cluster)
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION", str(_pem(tmp_path, "client.pem")))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_LOCATION", str(_pem(tmp_path, "client.key")))
    no_vigil_variables.setenv("VIGIL_KAFKA_SSL_KEY_PASSWORD", "pw")
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", "{}")
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        load_settings()
    assert not [r.getMessage() for r in caplog.records if r.name == "vigil.config"]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        *sorted(config.GUARANTEE_CLIENT_OPTIONS.items()),
        # Any test setting: test.mock.num.brokers made every client talk to an in-memory cluster
        # that acknowledged every record.
        ("test.mock.num.brokers", config.GUARANTEE_CLIENT_PREFIXES["test."]),
    ],
)
def test_client_options_that_vigils_guarantees_depend_on_are_refused_saying_why(
    no_vigil_variables: pytest.MonkeyPatch, key: str, why: str
) -> None:
    # acks=1 or read_uncommitted given here went into every client and was then overridden
    # silently by the producer's or consumer's own value; partitioner=random, a mock cluster or
    # a message.timeout.ms of 0 then won over it; now refused, whatever its case.
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({key.upper(): "hunter2"}))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert f"{key.upper()!r} is Vigil's to set, not an option: {why}" in said
    assert "hunter2" not in said


@pytest.mark.parametrize(
    ("given", "key", "name"),
    [
        ({"topic.partitioner": "random"}, "topic.partitioner", "partitioner"),
        ({"topic": {"message.timeout.ms": 0}}, "topic.message.timeout.ms", "message.timeout.ms"),
        ({"topic.request.required.acks": 1}, "topic.request.required.acks", "request.required.acks"),
        ({"topic.auto.offset.reset": "latest"}, "topic.auto.offset.reset", "auto.offset.reset"),
    ],
)
def test_a_refused_client_option_is_refused_under_librdkafkas_topic_prefix_too(
    no_vigil_variables: pytest.MonkeyPatch, given: dict[str, object], key: str, name: str
) -> None:
    # librdkafka reads topic.<name> as <name> for every topic: topic.partitioner=random was
    # accepted and spread one customer's records over every partition.
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps(given))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    why = config.GUARANTEE_CLIENT_OPTIONS[name]
    assert f"{key!r} (librdkafka's {name} for every topic) is Vigil's to set, not an option: {why}" in str(
        caught.value
    )


def test_tuning_client_options_win_over_what_each_client_would_set(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vigil.hub.client import consumer_config, producer_config
    from vigil.stream.app import FETCH_DEFAULTS, Application

    tuned = {
        "linger.ms": 50,
        "compression.type": "zstd",
        "fetch.wait.max.ms": 100,
        "topic.metadata.refresh.interval.ms": 60_000,
    }
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps(tuned))
    settings = load_settings(home=tmp_path)
    # Each of these is a value the client sets itself (producer defaults, the runtime's fetch
    # defaults, a caller's override): the operator's option is what the client gets.
    assert FETCH_DEFAULTS["fetch.wait.max.ms"] != tuned["fetch.wait.max.ms"]
    produced = producer_config(settings, **{"linger.ms": 1})
    assert (produced["linger.ms"], produced["compression.type"]) == (50, "zstd")
    assert produced["acks"] == "all"
    assert produced["enable.idempotence"] is True
    consumed = consumer_config(settings, "g", **{"fetch.wait.max.ms": 1})
    assert consumed["fetch.wait.max.ms"] == 100
    assert consumed["topic.metadata.refresh.interval.ms"] == 60_000
    assert consumed["isolation.level"] == "read_committed"
    app = Application(settings, name="tuned", inputs=["events.payments"], operators=[])
    assert app.consumer_settings()["fetch.wait.max.ms"] == 100
    # Unset, each client keeps its own.
    no_vigil_variables.delenv("VIGIL_KAFKA_CLIENT_OPTIONS")
    assert producer_config(load_settings(home=tmp_path), **{"linger.ms": 1})["linger.ms"] == 1
    # (A consumer's topics' metadata every 10 s, not librdkafka's 5 min: see consumer_config.)
    assert consumer_config(load_settings(home=tmp_path), "g")["topic.metadata.refresh.interval.ms"] == 10_000


def test_the_consumer_group_protocol_is_a_setting_and_each_client_is_made_for_it(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from confluent_kafka import Consumer, KafkaException

    from vigil.hub.client import consumer_config
    from vigil.stream.app import Application

    classic = load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1")
    assert classic.kafka_group_protocol == "classic"
    app = Application(classic, name="p", inputs=["events.payments"], operators=[])
    conf = app.consumer_settings()
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert (conf["session.timeout.ms"], conf["heartbeat.interval.ms"]) == (10_000, 1_000)
    assert "group.protocol" not in conf

    no_vigil_variables.setenv("VIGIL_KAFKA_GROUP_PROTOCOL", "consumer")
    kip848 = load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1")
    app = Application(kip848, name="p", inputs=["events.payments"], operators=[])
    conf = app.consumer_settings()
    assert conf["group.protocol"] == "consumer"
    # librdkafka refuses a consumer of this protocol given any of these (the broker's to set):
    # "`session.timeout.ms` is not supported for `group.protocol=consumer`".
    assert not {"partition.assignment.strategy", *config.CLASSIC_GROUP_OPTIONS} & set(conf)
    assert conf["isolation.level"] == "read_committed"
    assert conf["fetch.min.bytes"] == 64 * 1024  # (the runtime's other settings stay)
    # Made by librdkafka as the runtime makes it (no broker needed to make one).
    Consumer(conf).close()
    with pytest.raises(KafkaException, match=r"`session\.timeout\.ms` is not supported"):
        Consumer({**conf, "session.timeout.ms": 10_000})
    # Given by a caller, refused by name with what to do instead, before librdkafka's refusal.
    with pytest.raises(ConfigError, match=r"consumer of group 'g': 'heartbeat\.interval\.ms' is a classic"):
        consumer_config(kip848, "g", **{"heartbeat.interval.ms": 1_000})
    with pytest.raises(ConfigError) as caught:
        Application(
            kip848,
            name="p",
            inputs=["events.payments"],
            operators=[],
            consumer_overrides={"session.timeout.ms": 6000},
        )
    instead = config.CLASSIC_GROUP_OPTIONS["session.timeout.ms"]
    assert str(caught.value) == (
        "application 'p': consumer_overrides may not set 'session.timeout.ms': a classic group protocol "
        f'setting, and kafka_group_protocol is "consumer": {instead}'
    )
    # (Classic: the application's own override, taken.)
    app = Application(
        classic,
        name="p",
        inputs=["events.payments"],
        operators=[],
        consumer_overrides={"session.timeout.ms": 6000},
    )
    assert app.consumer_settings()["session.timeout.ms"] == 6000


@pytest.mark.parametrize("key", sorted(config.CLASSIC_GROUP_OPTIONS))
def test_classic_group_options_are_refused_with_the_consumer_protocol_naming_the_brokers_setting(
    no_vigil_variables: pytest.MonkeyPatch, key: str
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({key: "hunter2"}))
    assert load_settings().kafka_client_options is not None  # (classic: tuning, taken)
    no_vigil_variables.setenv("VIGIL_KAFKA_GROUP_PROTOCOL", "consumer")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    # (The loader names the setting by the variable that gave it.)
    assert (
        f"VIGIL_KAFKA_CLIENT_OPTIONS {key!r} is a classic group protocol setting, and "
        'VIGIL_KAFKA_GROUP_PROTOCOL is "consumer"'
    ) in said
    assert said.endswith(f": {config.CLASSIC_GROUP_OPTIONS[key]}")
    assert "hunter2" not in said


def test_an_unknown_group_protocol_is_refused_naming_the_choices(
    no_vigil_variables: pytest.MonkeyPatch,
) -> None:
    no_vigil_variables.setenv("VIGIL_KAFKA_GROUP_PROTOCOL", "stream")
    with pytest.raises(ConfigError, match=r"VIGIL_KAFKA_GROUP_PROTOCOL.*'classic' or 'consumer'"):
        load_settings()


# ------------------------------------------------ settings that make no sense, refused at load


def test_tls_and_sasl_settings_without_a_cluster_are_refused_naming_the_bootstrap(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The local broker Vigil starts speaks PLAINTEXT only: these were accepted, and every client
    # failed some 10 s later with a TLS or SASL error that never named the missing bootstrap.
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512"}.items():
        no_vigil_variables.setenv(f"VIGIL_KAFKA_{name}", value)
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings:\n  settings that disagree: VIGIL_KAFKA_SECURITY_PROTOCOL, "
        "VIGIL_KAFKA_SASL_MECHANISM, VIGIL_KAFKA_SASL_USERNAME, VIGIL_KAFKA_SASL_PASSWORD set without "
        "VIGIL_KAFKA_BOOTSTRAP, so Vigil would use its local broker, which speaks PLAINTEXT only; "
        "expected VIGIL_KAFKA_BOOTSTRAP (or kafka_bootstrap in the settings file) naming the cluster "
        "these settings are for"
    )
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9093")
    assert load_settings().kafka_client_config()["bootstrap.servers"] == "kafka-1:9093"
    # TLS alone, from the file, named as its keys.
    for key in list(os.environ):
        if key.startswith("VIGIL_KAFKA_"):
            no_vigil_variables.delenv(key)
    _pem(tmp_path, "ca.pem")
    (tmp_path / "vigil.toml").write_text(
        'kafka_security_protocol = "SSL"\nkafka_ssl_ca_location = "ca.pem"\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"kafka_security_protocol in vigil.toml, kafka_ssl_ca_location in vigil.toml set without "
        r"VIGIL_KAFKA_BOOTSTRAP, so Vigil would use its local broker, which speaks PLAINTEXT only",
    ):
        load_settings()


def test_an_empty_secret_in_the_settings_file_is_unset_as_an_empty_variable_is(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # kafka_sasl_password = "" was SecretStr(""), which is not "": accepted, then left out of the
    # client settings, and librdkafka's refusal was blamed on kafka_client_options.
    (tmp_path / "vigil.toml").write_text(
        'kafka_bootstrap = "kafka-1:9093"\nkafka_security_protocol = "SASL_SSL"\n'
        'kafka_sasl_mechanism = "SCRAM-SHA-512"\nkafka_sasl_username = "vigil-detect"\n'
        'kafka_sasl_password = ""\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings:\n  settings that disagree: kafka_security_protocol in vigil.toml SASL_SSL "
        "needs kafka_sasl_password in vigil.toml"
    )
    # Every text secret alike (an empty RPC URL was "expected the node's http:// URL", an empty
    # key password "set without kafka_ssl_key_location").
    secrets = [name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)]
    assert {"kafka_sasl_password", "kafka_ssl_key_password", *CONNECTOR_SECRETS} <= set(secrets)
    (tmp_path / "vigil.toml").write_text("".join(f'{name} = ""\n' for name in secrets))
    loaded = load_settings()
    assert {name: getattr(loaded, name) for name in secrets} == dict.fromkeys(secrets)


@pytest.mark.parametrize(
    ("variable", "value", "bound"),
    [
        ("VIGIL_BROKER_START_TIMEOUT_S", "inf", "3600"),
        ("VIGIL_BROKER_HEAP_MB", "99999999", "32768"),
        ("VIGIL_DEFAULT_PARTITIONS", "1000000", "10000"),
    ],
)
def test_values_beyond_any_deployment_are_refused_stating_the_bound(
    no_vigil_variables: pytest.MonkeyPatch, variable: str, value: str, bound: str
) -> None:
    # inf waited forever for a broker that never answered; the heap went to the JVM as it was.
    no_vigil_variables.setenv(variable, value)
    name = variable.removeprefix("VIGIL_").lower()
    with pytest.raises(
        ConfigError,
        match=rf"{variable} \({name}\): Input should be less than or equal to {bound}; got '{value}'",
    ):
        load_settings()
    no_vigil_variables.setenv(variable, bound)
    assert getattr(load_settings(), name) == float(bound)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("home", r"the directory for Vigil's local files \(leave home out for the default, \.vigil\)"),
        (
            "kafka_bootstrap",
            r"host:port\[,host:port\.\.\.\] \(leave kafka_bootstrap out to use the local broker\)",
        ),
        (
            "kafka_client_id",
            r"the name the brokers know Vigil's clients by \(leave kafka_client_id out for vigil\)",
        ),
    ],
)
def test_an_empty_value_in_the_settings_file_is_refused_and_an_empty_variable_is_unset(
    no_vigil_variables: pytest.MonkeyPatch, tmp_path: Path, key: str, expected: str
) -> None:
    # home = "" was the working directory, kafka_bootstrap = "" the local broker, in silence.
    (tmp_path / "vigil.toml").write_text(f'{key} = ""\n')
    with pytest.raises(ConfigError, match=rf"\n  {key} in vigil.toml: empty; expected {expected}; got ''$"):
        load_settings()
    # An empty variable, as templated env files leave them, is still unset: the default.
    (tmp_path / "vigil.toml").unlink()
    no_vigil_variables.setenv(f"VIGIL_{key.upper()}", "")
    assert getattr(load_settings(), key) == getattr(Settings(), key)


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        ("::1", "is an IPv6 address without brackets; expected [address]:port, e.g. [::1]:9092"),
        ("::1:9092", "is an IPv6 address without brackets"),
        ("kafka-1:9092,2001:db8::7:9093", "'2001:db8::7:9093' of it is an IPv6 address without brackets"),
        ("[kafka-1]:9092", "has no IPv6 address in brackets; expected [address]:port"),
    ],
)
def test_an_ipv6_bootstrap_needs_its_brackets(
    no_vigil_variables: pytest.MonkeyPatch, bootstrap: str, message: str
) -> None:
    # "::1" passed the port check as host ":" and port 1.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", bootstrap)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"VIGIL_KAFKA_BOOTSTRAP (kafka_bootstrap): {message}" in str(caught.value)


@pytest.mark.parametrize(
    "bootstrap", ["[::1]:9092,[2001:db8::7]:9093", "PLAINTEXT://kafka-1:9092,PLAINTEXT://[::1]:9093"]
)
def test_an_ipv6_bootstrap_in_brackets_is_taken(
    no_vigil_variables: pytest.MonkeyPatch, bootstrap: str
) -> None:
    # (A listener's protocol before an address, as librdkafka takes it, was refused as an IPv6
    # address without brackets: found in review.)
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", bootstrap)
    assert load_settings().kafka_client_config()["bootstrap.servers"] == bootstrap


@pytest.mark.parametrize("host", ["not a host!", "127.0.0.1:9100", "-metrics.example", "[::1]", "a" * 64])
def test_a_metrics_host_that_is_no_address_nor_host_name_is_refused(
    no_vigil_variables: pytest.MonkeyPatch, host: str
) -> None:
    # It was found only when /metrics was started, and reported as a problem with the port.
    no_vigil_variables.setenv("VIGIL_METRICS_HOST", host)
    with pytest.raises(
        ConfigError,
        match=r"VIGIL_METRICS_HOST \(metrics_host\): neither an IP address nor a host name; expected",
    ):
        load_settings()


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "127.0.0.2", "::1", "localhost", "metrics.internal.example.", "metrics_exporter"]
)
def test_a_metrics_host_that_is_an_address_or_a_host_name_is_taken(
    no_vigil_variables: pytest.MonkeyPatch, host: str
) -> None:
    no_vigil_variables.setenv("VIGIL_METRICS_HOST", host)
    assert load_settings().metrics_host == host


def test_client_options_that_turn_off_certificate_checks_are_warned_about_once(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Allowed (some test clusters need them), but they were taken in silence: anyone on the way
    # to the cluster could pose as a broker, and nothing told the security team.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9093")
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    checked = {"enable.ssl.certificate.verification": True, "ssl.endpoint.identification.algorithm": "https"}
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps(checked))
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        load_settings()
    assert not [r.getMessage() for r in caplog.records if r.name == "vigil.config"]
    unchecked = {
        "enable.ssl.certificate.verification": False,
        "ssl.endpoint.identification.algorithm": "NONE",
    }
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({**unchecked, "linger.ms": 5}))
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        load_settings()
        load_settings()  # (a command may load them more than once: one warning each)
    warnings = [r for r in caplog.records if r.name == "vigil.config"]
    assert [r.levelno for r in warnings] == [logging.WARNING] * 2
    for record, option in zip(warnings, unchecked, strict=True):
        assert record.getMessage().startswith(
            f"VIGIL_KAFKA_CLIENT_OPTIONS (kafka_client_options): {option!r} turns off the check of the "
            "brokers' TLS certificates"
        )


@pytest.mark.parametrize(
    ("protocol", "option", "why"),
    [
        ("PLAINTEXT", "ssl.key.pem", "which does not use TLS; expected SSL or SASL_SSL"),
        ("PLAINTEXT", "enable.ssl.certificate.verification", "which does not use TLS"),
        ("PLAINTEXT", "sasl.oauthbearer.client.secret", "which sends no credentials; expected SASL_SSL"),
        ("SSL", "sasl.kerberos.keytab", "which sends no credentials"),
        ("SASL_PLAINTEXT", "ssl.ca.pem", "which does not use TLS"),
    ],
)
def test_tls_and_sasl_client_options_need_a_protocol_that_uses_them(
    no_vigil_variables: pytest.MonkeyPatch, protocol: str, option: str, why: str
) -> None:
    # librdkafka ignored them in silence: a client meant to verify or authenticate did not.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-1:9093")
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", protocol)
    if protocol.startswith("SASL_"):
        for name, value in {"MECHANISM": "PLAIN", "USERNAME": "u", "PASSWORD": "hunter2"}.items():
            no_vigil_variables.setenv(f"VIGIL_KAFKA_SASL_{name}", value)
    no_vigil_variables.setenv("VIGIL_KAFKA_CLIENT_OPTIONS", json.dumps({option: "hunter2"}))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert (
        f"VIGIL_KAFKA_CLIENT_OPTIONS {option!r} set with VIGIL_KAFKA_SECURITY_PROTOCOL {protocol}, {why}"
        in said
    )
    assert "hunter2" not in said


def test_every_setting_is_in_the_readme() -> None:
    # kafka_client_id, broker_start_timeout_s, default_partitions and default_replication were
    # read but in no documentation: a new setting cannot go undocumented.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [
        name
        for name in Settings.model_fields
        if f"`{name}`" not in readme and not re.search(rf"`VIGIL_{name.upper()}[`=]", readme)
    ]
    assert not missing, f"settings not named in README.md: {missing}"


def test_a_password_sent_unencrypted_is_warned_about_once(
    no_vigil_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # PLAIN over SASL_PLAINTEXT was taken in silence: the password crosses the network as it is.
    no_vigil_variables.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka-plain.example:9092")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_USERNAME", "vigil")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_PASSWORD", "hunter2-not-shown")
    for protocol, mechanism in (("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-512")):
        no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", protocol)
        no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", mechanism)
        with caplog.at_level(logging.WARNING, logger="vigil.config"):
            load_settings()
        assert not [r.getMessage() for r in caplog.records if r.name == "vigil.config"], protocol
    no_vigil_variables.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    no_vigil_variables.setenv("VIGIL_KAFKA_SASL_MECHANISM", "PLAIN")
    with caplog.at_level(logging.WARNING, logger="vigil.config"):
        load_settings()
        load_settings()  # (once a process)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vigil.config"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "VIGIL_KAFKA_SASL_MECHANISM (kafka_sasl_mechanism) PLAIN with VIGIL_KAFKA_SECURITY_PROTOCOL "
        "(kafka_security_protocol) SASL_PLAINTEXT: the SASL password goes to the cluster unencrypted"
    )
    assert "hunter2" not in warnings[0]
