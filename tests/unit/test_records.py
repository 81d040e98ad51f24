"""Building messages: the same objects as Faust's own ``__init__``, named errors, ids."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest

from dawning_streams import (
    AlertNotificationMessage,
    AuditLogMessage,
    CacheInvalidationMessage,
    ConfigChangedMessage,
    EmailMessage,
    SystemEventMessage,
    UserEventMessage,
    encode,
)
from dawning_streams.core.building import new_uuid4
from dawning_streams.core.records import MessageBase, message_types

USER = uuid.UUID("9f706e05-3812-4496-a6d4-6f1f5f5e0512")
WHEN = datetime(2025, 1, 15, 8, 30, tzinfo=UTC)
#: Every message type, with its required fields given.
REQUIRED: list[tuple[type[MessageBase], dict[str, Any]]] = [
    (AuditLogMessage, {"user_id": USER, "action": "Login", "entity_type": "User"}),
    (
        AlertNotificationMessage,
        {
            "alert_rule_id": USER,
            "rule_name": "r",
            "metric_type": "m",
            "severity": "high",
            "current_value": 2.0,
            "threshold": 1.0,
        },
    ),
    (EmailMessage, {"to": "a@example.com", "subject": "s", "body": "b"}),
    (ConfigChangedMessage, {"config_group": "g", "config_key": "k"}),
    (CacheInvalidationMessage, {"pattern": "user:*"}),
    (UserEventMessage, {"user_id": USER, "event_type": "user.created"}),
    (SystemEventMessage, {"event_type": "instance.started"}),
]


def _fausts_own(cls: type[MessageBase], **values: Any) -> MessageBase:
    # A __faust argument takes any type to Faust's generated __init__.
    return cls(**values, __faust={})


@pytest.mark.parametrize(("cls", "required"), REQUIRED, ids=lambda v: getattr(v, "__name__", ""))
def test_a_message_is_built_as_fausts_init_builds_it(
    cls: type[MessageBase], required: dict[str, Any]
) -> None:
    given = {**required, "message_id": USER, "timestamp": WHEN}
    made, reference = cls(**given), _fausts_own(cls, **given)
    assert list(made.__dict__.items()) == list(reference.__dict__.items())
    assert made == reference and hash(made) == hash(reference)
    assert encode(made) == encode(reference)
    # None for an optional field is its default, as Faust has it.
    nones = {f.attr: None for f in cls.wire_fields if not f.required and f.attr not in required}
    made = cls(**{**given, **nones, "message_id": USER, "timestamp": WHEN})
    reference = _fausts_own(cls, **{**given, **nones, "message_id": USER, "timestamp": WHEN})
    assert made.__dict__ == reference.__dict__


def test_required_fields_may_be_given_by_position_optional_ones_only_by_name() -> None:
    made = AuditLogMessage(USER, "Login", "User", user_name="alice", timestamp=WHEN)
    assert (made.user_id, made.action, made.entity_type) == (USER, "Login", "User")
    assert (made.user_name, made.timestamp) == ("alice", WHEN)
    assert EmailMessage(to="a@x", subject="s", body="b").priority == 0  # a non-None default
    # Faust's order puts the base class's optional fields (MessageId first)
    # right after the required ones: a third value here would be the MessageId.
    with pytest.raises(TypeError, match=r"ConfigChangedMessage.__init__\(\) takes 3 positional"):
        ConfigChangedMessage("security", "lockout", "5")  # type: ignore[misc]
    # Types built through Faust's own __init__ (a list field) too.
    with pytest.raises(TypeError, match=r"EmailMessage.__init__\(\) takes 4 positional"):
        EmailMessage("a@x", "s", "b", ["cc@x"])  # type: ignore[misc]
    assert EmailMessage("a@x", "s", "b", cc=["cc@x"]).cc == ["cc@x"]


def test_a_message_gets_an_id_a_utc_time_and_its_type() -> None:
    made = CacheInvalidationMessage(
        pattern="p", timestamp=datetime(2025, 1, 15, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    )
    assert (made.message_id.version, made.message_id.variant) == (4, uuid.RFC_4122)
    assert made.timestamp == WHEN and made.timestamp.tzinfo is UTC
    assert made.message_type == "CacheInvalidationMessage"
    naive = CacheInvalidationMessage(pattern="p", timestamp=datetime(2025, 1, 15, 8, 30))
    assert naive.timestamp == WHEN


def test_message_ids_are_random_whatever_the_random_module_is_seeded_with() -> None:
    random.seed(7)
    first = AuditLogMessage(**REQUIRED[0][1]).message_id
    random.seed(7)
    second = AuditLogMessage(**REQUIRED[0][1]).message_id
    assert first != second
    ids = {new_uuid4() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert {(i.version, i.variant, i.is_safe) for i in ids} == {
        (4, uuid.RFC_4122, uuid.SafeUUID.unknown)
    }
    assert all(uuid.UUID(str(i)) == i for i in list(ids)[:100])


def test_a_missing_field_is_named_with_its_class() -> None:
    with pytest.raises(TypeError, match=r"^AuditLogMessage\.__init__\(\) missing 1 required "):
        AuditLogMessage(user_id=USER, action="Login")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^AuditLogMessage got unexpected argument: colour"):
        AuditLogMessage(**REQUIRED[0][1], colour="red")  # type: ignore[call-arg]


class Custom(MessageBase, topic="records.custom"):
    """A type that writes its own ``__init__``: it is kept."""

    name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.built_by = "Custom.__init__"


def test_an_init_written_in_the_class_is_kept() -> None:
    assert Custom().built_by == "Custom.__init__"


class Normalised(MessageBase, topic="records.normalised"):
    """A type with a ``__setattr__`` of its own: every value goes through it."""

    email: str

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value.strip().lower() if isinstance(value, str) else value)


def test_a_setattr_of_the_types_own_sees_every_value() -> None:
    made = Normalised(email=" Bob@Example.COM ")
    assert (made.email, made.message_type) == ("bob@example.com", "normalised")


class Job(MessageBase, topic="records.jobs"):
    """Fields named as the generated ``__init__``'s own names would be."""

    name: str
    __dawning_defaults: str | None = None
    _defaults: str | None = None
    _faust_init: str | None = None


def test_fields_may_have_any_name() -> None:
    assert Job("x").name == "x"
    assert Job("x", _defaults="d", _faust_init="f")._defaults == "d"
    with pytest.raises(TypeError, match=r"^Job got unexpected argument: colour"):
        Job("x", colour=1)  # type: ignore[call-arg]


def test_a_patched_uuid4_gives_the_ids() -> None:
    fixed = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    with mock.patch("uuid.uuid4", return_value=fixed):
        assert AuditLogMessage(**REQUIRED[0][1]).message_id == fixed
        assert EmailMessage(to="a@x", subject="s", body="b").message_id == fixed
    assert AuditLogMessage(**REQUIRED[0][1]).message_id != fixed


@pytest.mark.parametrize(
    ("n", "kind"),
    list(
        enumerate(
            ["Decimal", "list[int]", "list", "int | str", "int | str | None", "dict[str, list]"]
        )
    ),
)
def test_a_field_the_wire_cannot_carry_is_refused_when_the_type_is_declared(
    n: int, kind: str
) -> None:
    # Declared in this module, whose names (Decimal) its annotations are read with.
    namespace: dict[str, Any] = {
        "MessageBase": MessageBase,
        "Decimal": Decimal,
        "__name__": __name__,
    }
    source = (
        f"class Unwritable{n}(MessageBase, topic='records.unwritable{n}'):\n    amount: {kind}\n"
    )
    with pytest.raises(TypeError) as raised:
        exec(source, namespace)
    assert str(raised.value) == (
        f"{__name__}.Unwritable{n}.amount: {kind} is not a type the wire carries; declare it as "
        "str, int, float, bool, uuid.UUID, datetime, list[str], dict[str, Any] or a"
        " dict[str, ...] of str, int, float or bool, or one of those | None"
    )
    # Neither the name nor the topic stays taken: the corrected type is declared.
    exec(source.replace(f"amount: {kind}", "amount: str | None"), namespace)
    assert message_types()[f"Unwritable{n}"].topic_name == f"records.unwritable{n}"
