"""Where a failed attempt goes, decided and written by Routing without a broker.

Routing is given its collaborators; here they are plain recorders: the timer
table's ``schedule`` and the dead-letter send keep what they were given.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest

from dawning_streams.core.errors import MessageDecodeError, UsageError
from dawning_streams.core.names import Header
from dawning_streams.core.retry import Reject, Retry, RetryLater
from dawning_streams.core.settings import Settings
from dawning_streams.handlers.delivery import Delivery
from dawning_streams.handlers.routing import Routing
from dawning_streams.handlers.timers import Timer
from dawning_streams.observability.telemetry import Telemetry

MESSAGE_ID = str(uuid.uuid4())
VALUE = orjson.dumps({"MessageId": MESSAGE_ID, "Action": "x"})


class Recorded:
    """The timer table and the dead-letter topic, as lists."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[Timer, str | None]] = []
        self.sent: list[dict[str, Any]] = []

    def schedule(self, timer: Timer, *, hold: str | None = None) -> Any:
        self.scheduled.append((timer, hold))
        return _done()

    async def forward(self, topic: str, key: bytes | None, value: bytes | None, **kw: Any) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, **kw})


async def _done() -> None:
    return None


def routing(recorded: Recorded, retry: Retry, *, dead_letters: bool = True) -> Routing:
    return Routing(
        handler="audit",
        group="dawning-workers",
        retry=retry,
        dead_letter_topic="audit-log.dlq" if dead_letters else None,
        timers_topic="audit-log.audit.timers",
        timers=recorded,  # type: ignore[arg-type]
        telemetry=Telemetry(Settings()),
        forward=recorded.forward,
        retry_value=lambda delivery, n: delivery.value,
        max_delay_days=30,
    )


def delivery(**headers: str) -> Delivery:
    return Delivery(
        "audit-log",
        2,
        41,
        b"user-7",
        VALUE,
        (("traceparent", b"00-abc-def-01"), *((k, v.encode()) for k, v in headers.items())),
    )


async def test_a_retryable_failure_becomes_a_timer_with_the_same_bytes_and_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Recorded()
    before_ms = time.time() * 1000
    retried = await routing(recorded, Retry(max_retries=3, backoff_s=2.0)).fail(
        delivery(), 0, RuntimeError("db down"), hold="user-7"
    )
    assert retried is True and recorded.sent == []
    [(timer, hold)] = recorded.scheduled
    assert hold == "user-7"
    assert timer.id == MESSAGE_ID and timer.attempt == 1 and timer.partition == 2
    assert timer.delivery.value == VALUE and timer.delivery.key == b"user-7"
    assert timer.due_ms >= before_ms + 2000  # never earlier than the backoff
    assert timer.error == "RuntimeError: db down"
    headers = dict(timer.delivery.headers)
    assert Header.FIRST_FAILED_AT in headers
    assert headers["traceparent"].startswith(b"00-")  # stamped anew: the retry continues the trace
    assert [r.getMessage() for r in caplog.records] == [
        "audit: audit-log/2/41 failed (RuntimeError: db down); retry 1 of 3 in 2.0 s"
    ]


async def test_the_nth_retry_waits_the_doubled_backoff() -> None:
    recorded = Recorded()
    before_ms = time.time() * 1000
    await routing(recorded, Retry(max_retries=3, backoff_s=2.0)).fail(
        delivery(), 2, RuntimeError("still down")
    )
    [(timer, _)] = recorded.scheduled
    assert timer.attempt == 3 and timer.due_ms >= before_ms + 8000


async def test_after_the_last_retry_it_is_dead_lettered_with_its_origin_and_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Recorded()
    first = "2026-01-01T00:00:00Z"
    retried = await routing(recorded, Retry(max_retries=3)).fail(
        delivery(**{Header.FIRST_FAILED_AT: first}), 3, RuntimeError("gave up")
    )
    assert retried is False and recorded.scheduled == []
    [sent] = recorded.sent
    assert (sent["topic"], sent["key"], sent["value"], sent["partition"]) == (
        "audit-log.dlq",
        b"user-7",
        VALUE,
        2,
    )
    headers = {k: v.decode() for k, v in sent["headers"]}
    assert headers[Header.ATTEMPT] == "4" and headers[Header.HANDLER] == "audit"
    assert headers[Header.GROUP] == "dawning-workers"
    assert (headers[Header.ORIGINAL_TOPIC], headers[Header.ORIGINAL_OFFSET]) == ("audit-log", "41")
    assert headers[Header.EXCEPTION_TYPE] == "builtins.RuntimeError"
    assert headers[Header.EXCEPTION_MESSAGE] == "gave up"
    assert headers[Header.FIRST_FAILED_AT] == first  # kept from the first failure
    assert "RuntimeError: gave up" in headers[Header.TRACEBACK]
    assert headers[Header.ORIGINAL_KEY] == "user-7" and headers["traceparent"] == "00-abc-def-01"
    assert [r.getMessage() for r in caplog.records] == [
        "audit: dead-lettering audit-log/2/41 after 4 tries (the first and 3 retries) "
        "(RuntimeError: gave up)"
    ]


async def test_reject_decode_errors_misuse_and_non_retryable_types_skip_the_retries() -> None:
    policy = Retry(max_retries=3, non_retryable=(KeyError,))
    misuse = UsageError("a blocking publish would block this running event loop")
    for exc in (Reject("never valid"), MessageDecodeError("bad json", "t"), misuse, KeyError("k")):
        recorded = Recorded()
        assert await routing(recorded, policy).fail(delivery(), 0, exc) is False
        assert recorded.scheduled == [] and len(recorded.sent) == 1, exc


async def test_retry_later_waits_the_delay_it_names_even_past_the_backoff() -> None:
    recorded = Recorded()
    before_ms = time.time() * 1000
    await routing(recorded, Retry(max_retries=1, backoff_s=1.0)).fail(
        delivery(), 0, RetryLater(30, "rate limited")
    )
    [(timer, _)] = recorded.scheduled
    assert timer.due_ms >= before_ms + 30_000


async def test_with_dead_letters_off_a_final_failure_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Recorded()
    await routing(recorded, Retry(max_retries=0), dead_letters=False).fail(
        delivery(), 0, RuntimeError("x")
    )
    assert recorded.sent == [] and recorded.scheduled == []
    assert [r.getMessage() for r in caplog.records] == [
        "audit: dropping audit-log/2/41 after its first try (RuntimeError: x); dead letters are off"
    ]


async def test_an_expired_message_is_dead_lettered_as_expired() -> None:
    recorded = Recorded()
    await routing(recorded, Retry()).expire(delivery(**{Header.EXPIRES_MS: "1000"}), 0)
    [sent] = recorded.sent
    headers = {k: v.decode() for k, v in sent["headers"]}
    assert headers[Header.EXCEPTION_TYPE] == "dawning_streams.core.retry.Expired"
    assert headers[Header.EXCEPTION_MESSAGE] == "expired at 1970-01-01T00:00:01Z"


@pytest.mark.parametrize(
    ("delay_s", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (-5, ValueError),
        ("soon", TypeError),
        (True, TypeError),
    ],
)
def test_retry_later_refuses_a_delay_that_is_no_number_of_seconds(
    delay_s: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"RetryLater delay_s must be a"):
        RetryLater(delay_s)  # type: ignore[arg-type]


async def test_retry_later_past_the_longest_delay_is_dead_lettered() -> None:
    recorded = Recorded()
    routed = routing(recorded, Retry(max_retries=3))
    assert await routed.fail(delivery(), 0, RetryLater(30 * 86400 + 1, "quota")) is False
    [sent] = recorded.sent
    headers = {k: v.decode() for k, v in sent["headers"]}
    assert recorded.scheduled == []
    assert headers[Header.EXCEPTION_MESSAGE] == (
        "RetryLater asked for 2592001 s (30.0 days), more than Timers:MaxDelayDays (30) ahead"
        " (quota)"
    )
    # The longest delay itself is scheduled.
    assert await routed.fail(delivery(), 0, RetryLater(30 * 86400)) is True
