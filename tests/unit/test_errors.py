"""How errors are named in logs and in the errors raised."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError

from dawning_streams.core.errors import described


def test_an_error_is_described_with_its_type_once() -> None:
    assert described(KafkaConnectionError("Connection at x closed")) == (
        "KafkaConnectionError: Connection at x closed"
    )
    assert described(ValueError("bad")) == "ValueError: bad"
    assert described(TimeoutError()) == "TimeoutError"
