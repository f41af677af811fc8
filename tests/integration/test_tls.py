"""Mutual TLS against a real broker that requires client certificates (:mod:`tests.integration.tls_broker`).

Vigil's own clients (``make_producer``, ``make_consumer``, ``make_admin``), built from settings
that hold the client's certificate, its encrypted key and the key's password, produce and
consume; a client without a certificate, or with one from a CA the broker does not trust, is
refused.  The certificates are made by ``openssl`` in the test's temporary directory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.admin import NewTopic
from tests.integration.tls_broker import KEY_PASSWORD, TlsBroker

from vigil.config import Settings
from vigil.errors import BrokerError, ConfigError
from vigil.hub.client import check_reachable, make_admin, make_consumer, make_producer, watermarks

MESSAGES = 20
#: The TLS alert the broker ends a handshake with when the client shows no certificate it
#: trusts (OpenSSL's words: "sslv3 alert bad certificate", or TLS 1.3's "certificate required").
REFUSED = "alert (bad certificate|certificate required)"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    tls = TlsBroker(tmp_path_factory.mktemp("tls-broker"))
    try:
        tls.start()
        yield tls
    finally:
        tls.stop()


@pytest.fixture(scope="module")
def topic(broker: TlsBroker) -> str:
    name = f"test.tls.{uuid.uuid4().hex[:8]}"
    admin = make_admin(broker.settings())  # (kept: a client destroyed fails its futures)
    admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=30)[name].result(30)
    return name


def _produce(
    settings: Settings, topic: str, values: list[bytes], timeout_s: float
) -> list[KafkaError | None]:
    """Produce ``values`` through Vigil's producer; each one's delivery outcome (None: delivered)."""
    outcomes: list[KafkaError | None] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        outcomes.append(err)

    producer = make_producer(settings, **{"message.timeout.ms": int(timeout_s * 1000)})
    for value in values:
        producer.produce(topic, key=b"k", value=value, on_delivery=delivered)
    producer.flush(timeout_s + 10)
    return outcomes


def _high_watermark(settings: Settings, topic: str) -> int:
    consumer = make_consumer(settings, f"vigil-tls-{uuid.uuid4().hex[:8]}")
    try:
        return watermarks(consumer, TopicPartition(topic, 0))[1]
    finally:
        consumer.close()


def test_vigil_produces_and_consumes_over_mutual_tls(broker: TlsBroker, topic: str) -> None:
    settings = broker.settings()
    conf = settings.kafka_client_config()
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.certificate.location"] == str(broker.certs.client_certificate)
    assert conf["ssl.key.location"] == str(broker.certs.client_key)
    assert conf["ssl.key.password"] == KEY_PASSWORD
    assert KEY_PASSWORD not in repr(settings)

    values = [f"event-{i}".encode() for i in range(MESSAGES)]
    assert _produce(settings, topic, values, timeout_s=20) == [None] * MESSAGES

    consumer = make_consumer(settings, f"vigil-tls-{uuid.uuid4().hex[:8]}")
    read: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(read) < MESSAGES and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            read.append(msg.value() or b"")
    finally:
        consumer.close()
    assert read == values


def test_a_client_without_a_certificate_is_refused(broker: TlsBroker, topic: str) -> None:
    written = _high_watermark(broker.settings(), topic)
    anonymous = broker.anonymous()
    assert "ssl.certificate.location" not in anonymous.kafka_client_config()
    # It trusts the broker (the handshake's first half passes); the broker asks for a certificate
    # and, shown none, ends the handshake with a TLS alert, which Vigil's check names.
    with pytest.raises(BrokerError, match=rf"Kafka at {broker.bootstrap} did not answer .*{REFUSED}"):
        check_reachable(anonymous, timeout=5)
    [outcome] = _produce(anonymous, topic, [b"not-allowed"], timeout_s=5)
    assert outcome is not None
    assert outcome.code() == KafkaError._MSG_TIMED_OUT  # never delivered
    # Nothing got in: a client with a certificate finds the topic as it was.
    assert _high_watermark(broker.settings(), topic) == written


def test_a_certificate_from_a_ca_the_broker_does_not_trust_is_refused(broker: TlsBroker) -> None:
    # (librdkafka does not even send it: the broker's request names the CAs it trusts, and no
    # issuer matched.  Either way, it is refused like no certificate at all.)
    certs = broker.certs
    stranger = broker.settings(certificate=certs.stranger_certificate, key=certs.stranger_key)
    assert stranger.kafka_client_config()["ssl.certificate.location"] == str(certs.stranger_certificate)
    with pytest.raises(BrokerError, match=rf"Kafka at {broker.bootstrap} did not answer .*{REFUSED}"):
        check_reachable(stranger, timeout=5)


def test_a_wrong_key_password_is_refused_without_showing_it(broker: TlsBroker) -> None:
    wrong = broker.settings(kafka_ssl_key_password="wrong-hunter2")  # noqa: S106 - a test value
    assert "hunter2" not in repr(wrong)
    # (A configuration error, as for any client librdkafka refuses to make: not a traceback.)
    with pytest.raises(ConfigError, match="refused making a producer") as caught:
        make_producer(wrong)
    assert "ssl.key" in str(caught.value)
    assert "hunter2" not in str(caught.value)
