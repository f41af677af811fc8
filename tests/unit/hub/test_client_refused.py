"""A Kafka client librdkafka refuses to make is a configuration error naming the settings, its
values hidden (making a client asks no broker: a closed port will do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.hub.client import make_admin, make_consumer, make_producer


def test_client_options_librdkafka_refuses_together_are_a_config_error_naming_the_setting(
    tmp_path: Path,
) -> None:
    # max.poll.interval.ms below the session timeout: `vigil normalize` ended in a traceback
    # ("Failed to create consumer: max.poll.interval.ms must be >= session.timeout.ms").
    settings = load_settings(
        kafka_bootstrap="127.0.0.1:1", home=tmp_path, kafka_client_options={"max.poll.interval.ms": 5000}
    )
    with pytest.raises(
        ConfigError, match=r"refused making a consumer: .*max\.poll\.interval\.ms.*kafka_client_options"
    ):
        make_consumer(settings, "g")


@pytest.mark.parametrize("value", ["not-a-codec-but-maybe-a-token", 'x"LEAKED-SECRET'])
def test_a_refused_value_is_not_shown(tmp_path: Path, value: str) -> None:
    # librdkafka quotes a value it does not take ("Invalid value "..." for ..."): the options may
    # hold secrets.  (One holding a quote showed what followed it.)
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match=r"Invalid value <hidden> for configuration property") as caught:
        make_producer(settings, **{"compression.codec": value})
    assert value not in str(caught.value)
    assert "LEAKED" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_value_out_of_range_is_not_shown_and_an_admin_client_refused_is_a_config_error(
    tmp_path: Path,
) -> None:
    # librdkafka's other wording showed the value ('Configuration property "..." value 123456789
    # is outside allowed range'), and an admin client's refusal came raw, the value quoted
    # (found in review).
    out_of_range = load_settings(
        kafka_bootstrap="127.0.0.1:1", home=tmp_path, kafka_client_options={"socket.timeout.ms": 123456789}
    )
    with pytest.raises(ConfigError, match=r'"socket\.timeout\.ms" value <hidden> is outside') as caught:
        make_producer(out_of_range)
    assert "123456789" not in str(caught.value)
    assert "\n" not in str(caught.value)
    invalid = load_settings(
        kafka_bootstrap="127.0.0.1:1", home=tmp_path, kafka_client_options={"compression.codec": "s3cr3t"}
    )
    with pytest.raises(ConfigError, match=r"refused making an admin client") as caught:
        make_admin(invalid)
    assert "s3cr3t" not in str(caught.value)
