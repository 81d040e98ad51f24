"""A user's own message type: declared with its topic, no settings touched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dawning_streams import MessageBase, Settings, create_app, decode
from dawning_streams.core import records
from dawning_streams.core.names import dead_letter_topic
from dawning_streams.core.retry import Reject

from ..handler_helpers import Calls, running
from ..kafka_helpers import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture(autouse=True)
def forget_new_types() -> Iterator[None]:
    """Types live for the process; each test's go with it, so later apps do not
    declare their topics."""
    before = dict(records._TYPES)
    yield
    records._TYPES.clear()
    records._TYPES.update(before)


def invoice_type(topic: str) -> Any:
    """``class InvoicePaid<n>(MessageBase, topic=topic)``, with a name of its own:
    type names are unique in a process, and each test makes a new one."""

    def partition_key(self: Any) -> str:
        return str(self.invoice_id)

    namespace = {
        "__annotations__": {"invoice_id": uuid.UUID, "amount": float},
        "__module__": __name__,
        "partition_key": partition_key,
    }
    return type(f"InvoicePaid{uuid.uuid4().hex[:8]}", (MessageBase,), namespace, topic=topic)


async def test_a_declared_type_is_published_routed_handled_and_dead_lettered(
    settings: Settings,
) -> None:
    topic = f"{settings.kafka.topics.audit_log}.billing.invoice-paid"
    InvoicePaid = invoice_type(topic)
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(InvoicePaid)
    async def book(message: Any) -> None:
        if message.amount < 0:
            raise Reject("negative amount")
        calls.add(message.amount)

    invoice = uuid.uuid4()
    async with running(app):
        receipt = await app.bus.publish(InvoicePaid(invoice_id=invoice, amount=12.5))
        await book.delay(InvoicePaid(invoice_id=uuid.uuid4(), amount=-1.0))
        await calls.wait_until(lambda items: items == [12.5])
        [letter] = await read_topic(
            settings.kafka.bootstrap_servers[0], dead_letter_topic(topic), 1
        )
    assert receipt is not None and receipt.topic == topic
    assert decode(letter.value, InvoicePaid).amount == -1.0
    records = await read_topic(settings.kafka.bootstrap_servers[0], topic, 2)
    [record] = [r for r in records if decode(r.value, InvoicePaid).invoice_id == invoice]
    assert record.key == str(invoice).encode()


def test_a_type_without_a_topic_or_with_a_bad_one_is_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match=r"give the message type its topic"):
        type(f"NoTopic{uuid.uuid4().hex[:8]}", (MessageBase,), {"__module__": __name__})
    with pytest.raises(ValueError, match=r"topic 'bad topic!' is not a Kafka topic name"):
        invoice_type("bad topic!")


def test_clashes_are_refused_at_declaration() -> None:
    topic = f"billing.{uuid.uuid4().hex[:8]}"
    First = invoice_type(topic)
    with pytest.raises(TypeError, match=rf"topic '{topic}' already carries .*{First.__name__}"):
        invoice_type(topic)
    with pytest.raises(TypeError, match=rf"a message type named '{First.__name__}'"):
        type(First.__name__, (MessageBase,), {"__module__": __name__}, topic=topic + ".other")


def test_a_type_on_a_dawning_topic_is_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match=r"topic 'dawning.audit-log' is one of the Dawning"):
        invoice_type("dawning.audit-log")


def test_a_type_on_a_dawning_topic_is_refused_by_the_app(settings: Settings) -> None:
    invoice_type(settings.kafka.topics.user_event)
    with pytest.raises(TypeError, match=r"is one of the Dawning message topics"):
        create_app(settings, web_enabled=False)
