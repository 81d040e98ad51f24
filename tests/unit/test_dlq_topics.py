"""Which dead-letter topics the dlq commands read by default: no services needed."""

from __future__ import annotations

from dawning_streams import UserEventMessage, create_app
from dawning_streams.agents import install
from dawning_streams.ops.dlq import dead_letter_topics


def test_the_default_is_every_handlers_dead_letter_topic_and_the_seven() -> None:
    app = create_app()
    install(app)

    @app.handler(UserEventMessage, topic="billing.invoice-paid")
    async def book_invoice(message: UserEventMessage) -> None: ...

    @app.handler(UserEventMessage, topic="billing.quiet", dead_letter=False)
    async def no_letters(message: UserEventMessage) -> None: ...

    topics = dead_letter_topics(app)
    assert "billing.invoice-paid.dlq" in topics
    assert "billing.quiet.dlq" not in topics
    assert {f"{t}.dlq" for t in app.dawning_settings.kafka.topics.all()} <= set(topics)
