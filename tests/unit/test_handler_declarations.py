"""Handler declarations: the forms that work, and the mistakes caught at import."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest

from dawning_streams import AuditLogMessage, EmailMessage, HandlerTimeout, create_app
from dawning_streams.core.retry import Retry
from dawning_streams.handlers.handler import HandlerError


@pytest.fixture
def app():  # type: ignore[no-untyped-def]
    return create_app()


def test_a_bare_handler_takes_its_type_from_the_annotation(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler
    async def audit(message: AuditLogMessage) -> None: ...

    assert (audit.message_type, audit.topic, audit.name) == (
        AuditLogMessage,
        "dawning.audit-log",
        "audit",
    )
    assert audit.retry == Retry()
    assert set(app.agents) == {"audit", "audit.timers"}
    declared = [t.get_topic_name() for t in app.declared_topics]
    # The source and the dead letters are shared by the topic's handlers; each
    # handler adds its timers topic and its timer table's changelog.
    assert "dawning.audit-log.dlq" in declared
    assert "dawning.audit-log.audit.timers" in declared
    assert audit.timers.table.changelog_topic.get_topic_name() == (
        "dawning-identity-group-audit-timers-changelog"
    )


def test_a_called_handler_takes_type_topic_and_policy(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler(
        EmailMessage,
        topic="custom.mail",
        name="mailer",
        retry=Retry(max_retries=5, backoff_s=1, max_backoff_s=10, jitter=0.1),
    )
    async def send(message): ...  # type: ignore[no-untyped-def]

    assert (send.message_type, send.topic, send.name, send.retry.max_retries) == (
        EmailMessage,
        "custom.mail",
        "mailer",
        5,
    )
    assert send.timers_topic == "custom.mail.mailer.timers"
    assert "mailer-timers" in app.tables


def test_a_batch_handler_takes_its_type_from_a_list_annotation(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler(batch_size=100, batch_within_s=0.5)
    async def store(messages: list[AuditLogMessage]) -> None: ...

    assert (store.message_type, store.options.batch_size) == (AuditLogMessage, 100)


def test_a_topic_handler_of_raw_bytes(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler("legacy.events")
    async def legacy(raw: bytes) -> None: ...

    assert (legacy.message_type, legacy.topic) == (bytes, "legacy.events")


async def test_a_handler_can_be_called_directly_and_may_be_synchronous(app) -> None:  # type: ignore[no-untyped-def]
    seen = []

    @app.handler
    def audit(message: AuditLogMessage) -> None:
        seen.append(message.action)

    await audit(AuditLogMessage(user_id=uuid.uuid4(), action="direct", entity_type="U"))
    assert seen == ["direct"]


def handle(message):  # type: ignore[no-untyped-def]
    """A handler function without annotations."""


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda app: app.handler(dict)(handle), "is not a dawning message type"),
        (lambda app: app.handler(handle), "give a message type"),
        (lambda app: app.handler(bytes)(handle), "needs topic="),
        (lambda app: app.handler(AuditLogMessage, retry=3)(handle), "retry must be a Retry"),
        (
            lambda app: app.handler(AuditLogMessage, ordered=True, concurrency=4)(handle),
            "ordered handler runs with concurrency=1",
        ),
        (
            lambda app: app.handler(AuditLogMessage, concurrency=0)(handle),
            "concurrency must be a positive integer",
        ),
        (
            lambda app: app.handler(AuditLogMessage, name="no spaces")(handle),
            "may use only letters",
        ),
        (lambda app: app.handler(42), "takes a message type or a topic name"),
        (lambda app: app.handler(AuditLogMessage, batch_size=0)(handle), "batch_size must be"),
        (
            lambda app: app.handler(AuditLogMessage, ordered=True, batch_size=10)(handle),
            "ordered handler runs with concurrency=1 and batch_size=1",
        ),
        (lambda app: app.handler(AuditLogMessage, retries=3), "unexpected keyword argument"),
    ],
)
def test_a_bad_declaration_fails_at_import(app, declare, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HandlerError, match=error):
        declare(app)


def test_a_duplicate_handler_name_fails(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler(AuditLogMessage)
    async def audit(message): ...  # type: ignore[no-untyped-def]

    with pytest.raises(HandlerError, match="a handler named 'audit' is already declared"):

        @app.handler(AuditLogMessage)
        async def audit(message): ...  # type: ignore[no-untyped-def]


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (dict(max_retries=-1), "max_retries must be 0 to 50"),
        (dict(backoff_s=0), "backoff_s must be positive"),
        (dict(backoff_s=10, max_backoff_s=5), "max_backoff_s \\(5\\) must be at least"),
        (dict(jitter=1.5), "jitter must be in"),
        (dict(non_retryable=("ValueError",)), "must list exception types"),
    ],
)
def test_a_nonsense_retry_policy_fails(policy, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=error):
        Retry(**policy)


async def test_sending_the_wrong_type_is_refused(app) -> None:  # type: ignore[no-untyped-def]
    @app.handler
    async def audit(message: AuditLogMessage) -> None: ...

    with pytest.raises(TypeError, match="audit takes AuditLogMessage, got EmailMessage"):
        await audit.delay(EmailMessage(to="a@b", subject="s", body="b"))


async def test_timeout_s_ends_a_slow_attempt_but_passes_the_handlers_own_timeout_on(
    app,  # type: ignore[no-untyped-def]
) -> None:
    @app.handler(timeout_s=0.05)
    async def slow(message: AuditLogMessage) -> None:
        await asyncio.sleep(30)

    @app.handler(timeout_s=30)
    async def clients(message: AuditLogMessage) -> None:
        raise TimeoutError("the SMTP server did not answer")

    message = AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="e")
    with pytest.raises(HandlerTimeout, match=r"^slow did not finish within timeout_s=0.05$"):
        await slow(message)
    with pytest.raises(TimeoutError) as raised:
        await clients(message)
    assert type(raised.value) is TimeoutError  # not taken for the limit's


def test_handlers_a_worker_module_declares_on_an_app_of_its_own_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dawning_streams import app as worker_app

    own = create_app()

    @own.handler
    async def ping(message: AuditLogMessage) -> None: ...

    module = types.SimpleNamespace(app=own, worker=worker_app.app)
    worker_app._warn_of_other_apps("myproj.tasks", module)
    assert [r.getMessage() for r in caplog.records] == [
        "myproj.tasks.app is an app of its own (create_app()), which this worker does not run:"
        " its handler(s) ping never run here; declare them on"
        " `from dawning_streams.app import app`"
    ]
