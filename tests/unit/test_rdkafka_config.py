"""The settings as the bus's librdkafka producer reads them, and its errors as ours."""

from __future__ import annotations

import dataclasses

import confluent_kafka
import pytest

from dawning_streams.bus import rdkafka
from dawning_streams.bus.publisher import BrokerUnavailable, RefusedError
from dawning_streams.bus.rdkafka import producer_config, translated
from dawning_streams.core.settings import KafkaSecuritySettings, Secret, Settings


def config_for(**kafka: object) -> dict[str, object]:
    settings = Settings()
    return producer_config(
        dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, **kafka)), "me"
    )


def test_more_than_one_request_in_flight_is_allowed_with_a_warning_naming_the_risk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    producer = dataclasses.replace(settings.kafka.producer, max_in_flight=5)
    rdkafka._warn_in_flight.cache_clear()  # said once per process
    config = config_for(producer=producer)
    assert config["max.in.flight.requests.per.connection"] == 5
    [warning] = [r for r in caplog.records if "MaxInFlight" in r.getMessage()]
    assert warning.levelname == "WARNING" and "implicit acks" in warning.getMessage()


def test_every_producer_setting_reaches_librdkafka() -> None:
    config = config_for()
    assert {k: v for k, v in config.items() if k not in ("logger", "error_cb")} == {
        "bootstrap.servers": "localhost:9092",
        "client.id": "me",
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 5,
        "batch.size": 16384,
        "compression.type": "snappy",
        "message.max.bytes": 1048576,
        "message.timeout.ms": 0,
        "partitioner": "consistent_random",
        "security.protocol": "plaintext",
    }


@pytest.mark.parametrize(
    ("ours", "librdkafkas"),
    [("consistent_random", "consistent_random"), ("murmur2", "murmur2_random")],
)
def test_each_partitioner_is_librdkafkas_of_the_same_placement(ours: str, librdkafkas: str) -> None:
    assert config_for(partitioner=ours)["partitioner"] == librdkafkas


def test_sasl_over_tls_reaches_librdkafka() -> None:
    security = KafkaSecuritySettings(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=Secret("s3cret"),
    )
    config = config_for(security=security)
    assert {k: config[k] for k in config if k.startswith(("sasl.", "ssl.", "security."))} == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        # No Kafka:Security:CaFile: the system's CA bundle.
        "ssl.ca.location": "probe",
    }


@pytest.mark.parametrize(
    ("code", "ours"),
    [
        (confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, RefusedError),
        (confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, RefusedError),
        (confluent_kafka.KafkaError._MSG_TIMED_OUT, BrokerUnavailable),
        (confluent_kafka.KafkaError._TRANSPORT, BrokerUnavailable),
        (confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS, BrokerUnavailable),
        (confluent_kafka.KafkaError._PURGE_QUEUE, BrokerUnavailable),
    ],
)
def test_librdkafkas_errors_are_refusals_for_good_or_unavailability(
    code: int, ours: type[Exception]
) -> None:
    error = translated(confluent_kafka.KafkaError(code))
    assert type(error) is ours
    assert confluent_kafka.KafkaError(code).name() in str(error)


def test_an_unknown_partition_names_the_setting_that_counts_partitions() -> None:
    error = translated(confluent_kafka.KafkaError(confluent_kafka.KafkaError._UNKNOWN_PARTITION))
    assert type(error) is RefusedError
    assert str(error).endswith(
        "(a partition the topic does not have: is Kafka:Partitions more than the topic's"
        " partition count?)"
    )
