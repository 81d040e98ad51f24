"""The wire format, both ways, against JSON as the .NET gateway writes it."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from faust.exceptions import ValueDecodeError
from faust.models.fields import StringField

from dawning_streams import (
    AlertNotificationMessage,
    AuditLogMessage,
    CacheInvalidationMessage,
    ConfigChangedMessage,
    EmailMessage,
    MessageDecodeError,
    MessageEncodeError,
    SystemEventMessage,
    UserEventMessage,
    create_app,
    decode,
    encode,
)
from dawning_streams.core.records import MessageBase, message_types

USER = uuid.UUID("9f706e05-3812-4496-a6d4-6f1f5f5e0512")

# What System.Text.Json writes for the .NET AuditLogMessage: PascalCase,
# lower-case GUIDs, DateTime with seven fractional digits and a Z.
DOTNET_AUDIT = (
    b'{"MessageId":"3f2504e0-4f89-41d3-9a0c-0305e82c3301",'
    b'"Timestamp":"2025-01-15T08:30:00.1234567Z","MessageType":"AuditLogMessage",'
    b'"CorrelationId":"req-1","SourceInstance":"identity-api-1","TenantId":null,'
    b'"UserId":"9f706e05-3812-4496-a6d4-6f1f5f5e0512","UserName":"alice",'
    b'"Action":"Login","EntityType":"User","EntityId":null,"Description":"signed in",'
    b'"OldValue":null,"NewValue":null,"IpAddress":"10.0.0.7","UserAgent":"curl/8"}'
)

SAMPLES: list[MessageBase] = [
    AuditLogMessage(user_id=USER, action="Login", entity_type="User", ip_address="10.0.0.7"),
    AlertNotificationMessage(
        alert_rule_id=uuid.uuid4(),
        rule_name="cpu",
        metric_type="cpu",
        severity="critical",
        current_value=97.5,
        threshold=90,
    ),
    EmailMessage(
        to="alice@example.com",
        subject="Hi",
        body="<b>x</b>",
        cc=["bob@example.com"],
        bcc=["audit@example.com"],
        is_html=True,
        priority=2,
    ),
    ConfigChangedMessage(
        config_group="security",
        config_key="lockout",
        old_value="5",
        new_value="3",
        changed_by="admin",
    ),
    CacheInvalidationMessage(pattern=f"user:permissions:{USER}:*", reason="roles"),
    UserEventMessage(
        user_id=USER,
        event_type="user.created",
        event_data={"roles": ["admin"], "profile": {"age": 30, "vip": True}},
    ),
    SystemEventMessage(
        event_type="instance.started", source_instance="api-1", data={"version": "1.0"}
    ),
]


def test_every_seed_message_type_has_a_record() -> None:
    assert {type(m).__name__ for m in SAMPLES} <= set(message_types())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_survives_the_round_trip(message: MessageBase) -> None:
    assert decode(encode(message), type(message)) == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_a_decoded_message_is_what_its_init_makes_of_the_same_values(
    message: MessageBase,
) -> None:
    cls = type(message)
    decoded = decode(encode(message), cls)
    made = cls(**{f.attr: getattr(decoded, f.attr) for f in cls.wire_fields})
    assert type(decoded) is cls
    assert decoded.__dict__ == made.__dict__
    # Built without Faust's descriptors, which only store these types' values;
    # a list or a mapping field is coerced on access, through __init__.
    assert (cls._stored is not None) == (cls in BUILT_DIRECTLY)


BUILT_DIRECTLY = {
    AuditLogMessage,
    AlertNotificationMessage,
    ConfigChangedMessage,
    CacheInvalidationMessage,
}


class Limited(MessageBase, topic="codec.limited", validation=True):
    code: str = StringField(max_length=3)


def test_a_type_whose_fields_validate_is_decoded_through_its_init() -> None:
    assert decode(b'{"Code": "abc"}', Limited).code == "abc"
    with pytest.raises(MessageDecodeError, match="code must be at least 3 characters"):
        decode(b'{"Code": "abcd"}', Limited)  # Faust's wording for at most 3


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_the_wire_mapping_has_every_field_as_read_in_declaration_order(
    message: MessageBase,
) -> None:
    message = copy.copy(message)
    message.source_instance = "set-after-creation"
    expected = {f.wire: getattr(message, f.attr) for f in type(message).wire_fields}
    assert list(message.to_representation().items()) == list(expected.items())


def test_fields_are_written_in_pascal_case_without_module_paths() -> None:
    wire = orjson.loads(encode(SAMPLES[0]))
    assert list(wire)[:6] == [
        "MessageId",
        "Timestamp",
        "MessageType",
        "CorrelationId",
        "SourceInstance",
        "TenantId",
    ]
    assert {"UserId", "Action", "EntityType", "IpAddress", "UserAgent"} <= set(wire)
    assert wire["MessageType"] == "AuditLogMessage"
    assert wire["UserId"] == "9f706e05-3812-4496-a6d4-6f1f5f5e0512"
    assert b"__faust" not in encode(SAMPLES[0]) and b"dawning_streams" not in encode(SAMPLES[0])


def test_times_are_iso_8601_in_utc() -> None:
    message = AuditLogMessage(
        user_id=USER,
        action="a",
        entity_type="b",
        timestamp=datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=8))),
    )
    assert orjson.loads(encode(message))["Timestamp"] == "2025-01-01T19:04:05.600000Z"
    decoded = decode(
        b'{"UserId": "%s", "Action": "a", "EntityType": "b",'
        b' "Timestamp": "2025-01-02T03:04:05.6+08:00"}' % str(USER).encode(),
        AuditLogMessage,
    )
    assert decoded.timestamp == datetime(2025, 1, 1, 19, 4, 5, 600000, tzinfo=UTC)


def test_a_message_is_written_byte_for_byte_as_the_gateway_writes_it() -> None:
    # Written by hand from System.Text.Json's rules for the .NET AuditLogMessage
    # (JsonSerializerOptions.Default with PascalCase properties): properties in
    # declaration order, the base class's first; nulls written; Guid as its
    # lower-case "D" string; a UTC DateTime as ISO 8601 with the 7-digit tick
    # fraction trimmed of trailing zeros (1234560 ticks: .123456) and a "Z";
    # no whitespace.
    expected = (
        b'{"MessageId":"3f2504e0-4f89-41d3-9a0c-0305e82c3301",'
        b'"Timestamp":"2025-01-15T08:30:00.123456Z","MessageType":"AuditLogMessage",'
        b'"CorrelationId":"req-1","SourceInstance":"identity-api-1","TenantId":null,'
        b'"UserId":"9f706e05-3812-4496-a6d4-6f1f5f5e0512","UserName":"alice",'
        b'"Action":"Login","EntityType":"User","EntityId":null,"Description":"signed in",'
        b'"OldValue":null,"NewValue":null,"IpAddress":"10.0.0.7","UserAgent":"curl/8"}'
    )
    message = AuditLogMessage(
        message_id=uuid.UUID("3F2504E0-4F89-41D3-9A0C-0305E82C3301"),
        timestamp=datetime(2025, 1, 15, 8, 30, 0, 123456, tzinfo=UTC),
        correlation_id="req-1",
        source_instance="identity-api-1",
        user_id=USER,
        user_name="alice",
        action="Login",
        entity_type="User",
        description="signed in",
        ip_address="10.0.0.7",
        user_agent="curl/8",
    )
    assert encode(message) == expected


def test_the_gateways_json_is_read() -> None:
    message = decode(DOTNET_AUDIT, AuditLogMessage)
    assert message.message_id == uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert message.timestamp == datetime(2025, 1, 15, 8, 30, 0, 123456, tzinfo=UTC)
    assert (message.user_id, message.user_name, message.action) == (USER, "alice", "Login")
    assert (message.correlation_id, message.source_instance) == ("req-1", "identity-api-1")


@pytest.mark.parametrize(
    "written",
    [
        "9f706e05-3812-4496-a6d4-6f1f5f5e0512",
        "9F706E05-3812-4496-A6D4-6F1F5F5E0512",  # as Guid.ToString("D").ToUpper()
        "9f706e0538124496a6d46f1f5f5e0512",  # "N"
        "{9f706e05-3812-4496-a6d4-6f1f5f5e0512}",  # "B"
        "urn:uuid:9f706e05-3812-4496-a6d4-6f1f5f5e0512",
    ],
)
def test_guids_are_read_in_every_form_uuid_reads(written: str) -> None:
    raw = orjson.dumps({"UserId": written, "Action": "a", "EntityType": "b"})
    user_id = decode(raw, AuditLogMessage).user_id
    assert (type(user_id), user_id, hash(user_id)) == (uuid.UUID, USER, hash(USER))
    assert (str(user_id), user_id.is_safe) == (str(USER), uuid.SafeUUID.unknown)


@pytest.mark.parametrize(
    "written",
    [
        "9f706e05-3812-4496-a6d4-6f1f5f5e051",  # a digit short
        "9f706e05-3812-4496-a6d4-6f1f5f5e05123",  # a digit over
        "9g706e05-3812-4496-a6d4-6f1f5f5e0512",  # not hexadecimal
        "",
    ],
)
def test_a_malformed_guid_is_refused_by_field(written: str) -> None:
    raw = orjson.dumps({"UserId": written, "Action": "a", "EntityType": "b"})
    with pytest.raises(MessageDecodeError, match="field UserId: "):
        decode(raw, AuditLogMessage)
    with pytest.raises(ValueError):
        uuid.UUID(written)  # the standard library refuses it too


@pytest.mark.parametrize(
    "written",
    [
        "0x706e0538124496a6d46f1f5f5e0512",  # int(..., 16) reads a 0x prefix
        "+f706e0538124496a6d46f1f5f5e0512",  # a sign
        "9f706e0538124496_6d46f1f5f5e0512",  # an underscore between digits
        " f706e0538124496a6d46f1f5f5e0512",  # a space
        "9f706e05-3812-4496-a6d4-6f1f5f5e051\u0663",  # an Arabic-Indic digit
    ],
)
def test_what_uuid_reads_through_int_but_no_guid_writer_writes_is_refused(written: str) -> None:
    uuid.UUID(written)  # the standard library takes it
    raw = orjson.dumps({"UserId": written, "Action": "a", "EntityType": "b"})
    with pytest.raises(MessageDecodeError, match="field UserId: badly formed hexadecimal UUID"):
        decode(raw, AuditLogMessage)


def test_camel_case_is_read_too_and_unknown_fields_are_ignored() -> None:
    raw = orjson.dumps(
        {
            "messageId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "userId": str(USER),
            "eventType": "user.password_changed",
            "eventData": {"by": "self", "n": [1, 2]},
            "timestamp": "2025-01-15T08:30:00",
            "addedInAFutureVersion": 1,
        }
    )
    message = decode(raw, UserEventMessage)
    assert message.event_type == "user.password_changed"
    assert message.event_data == {"by": "self", "n": [1, 2]}
    assert message.timestamp == datetime(2025, 1, 15, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\xffnot json", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'{"Action": "a", "EntityType": "b"}', "missing required field UserId"),
        (
            b'{"UserId": 42, "Action": "a", "EntityType": "b"}',
            "field UserId: expected a GUID string, got a number",
        ),
        (b'{"UserId": "not-a-guid", "Action": "a", "EntityType": "b"}', "field UserId:"),
        (
            b'{"UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Action": ["a"],'
            b' "EntityType": "b"}',
            "field Action: expected a string, got an array",
        ),
        (
            b'{"UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Action": "a", "EntityType": "b",'
            b' "Timestamp": "yesterday"}',
            "field Timestamp:",
        ),
        (
            b'{"UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Action": "a", "EntityType": "b",'
            b' "Timestamp": "0001-01-01T00:00:00+01:00"}',
            "field Timestamp: '0001-01-01T00:00:00+01:00' is out of range in UTC",
        ),
        (b'{"MessageType": "PasswordResetMessage"}', "unknown MessageType 'PasswordResetMessage'"),
        (b'{"MessageType": ["AuditLogMessage"]}', "MessageType must be a string, got an array"),
        (
            b'{"MessageType": "EmailMessage", "To": "a@b", "Subject": "s", "Body": "b"}',
            "MessageType 'EmailMessage' does not belong here",
        ),
        (
            b'{"MessageType": "Dawning.Messages.EmailMessage", "To": "a@b", "Subject": "s"}',
            "MessageType 'Dawning.Messages.EmailMessage' does not belong here",
        ),
    ],
)
def test_bad_input_raises_one_error_that_keeps_the_raw_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageDecodeError) as caught:
        decode(raw, AuditLogMessage, topic="dawning.audit-log")
    assert caught.value.raw == raw
    assert reason in caught.value.reason
    assert "dawning.audit-log" in str(caught.value)


@pytest.mark.parametrize(
    "declared",
    [
        "AuditLogMessage",
        "Dawning.Messages.AuditLogMessage",
        "Dawning.Messages.AuditLogMessage, Dawning.Messages",
    ],
)
def test_a_namespace_or_assembly_qualified_message_type_is_accepted(declared: str) -> None:
    raw = (
        b'{"MessageType": "' + declared.encode() + b'", "Action": "a", "EntityType": "b",'
        b' "UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512"}'
    )
    assert decode(raw, AuditLogMessage).action == "a"


@pytest.mark.parametrize(
    "declared", ["Dawning.Messages.EmailMessage", "AuditLogMessageV2", "Other.AuditLog"]
)
def test_a_qualified_name_of_another_type_is_refused(declared: str) -> None:
    raw = b'{"MessageType": "' + declared.encode() + b'", "Action": "a", "EntityType": "b"}'
    with pytest.raises(MessageDecodeError, match="MessageType"):
        decode(raw, AuditLogMessage)


def test_wrong_types_in_numbers_and_lists_are_rejected() -> None:
    with pytest.raises(MessageDecodeError, match="field CurrentValue: expected a number"):
        decode(
            b'{"AlertRuleId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "RuleName": "r",'
            b' "MetricType": "m", "Severity": "s", "CurrentValue": "97", "Threshold": 1}',
            AlertNotificationMessage,
        )
    with pytest.raises(MessageDecodeError, match="field Cc: expected a list of strings"):
        decode(b'{"To": "a@b", "Subject": "s", "Body": "b", "Cc": "c@d"}', EmailMessage)
    with pytest.raises(MessageDecodeError, match=r"field Bcc: .* an array holding a number"):
        decode(b'{"To": "a@b", "Subject": "s", "Body": "b", "Bcc": ["c@d", 2]}', EmailMessage)
    with pytest.raises(MessageDecodeError, match="field Priority: expected an integer"):
        decode(b'{"To": "a@b", "Subject": "s", "Body": "b", "Priority": true}', EmailMessage)


def test_a_cache_invalidation_needs_a_key_or_a_pattern() -> None:
    with pytest.raises(MessageDecodeError, match="CacheKey or Pattern must be set"):
        decode(b'{"Region": "users"}', CacheInvalidationMessage)


def test_faust_agents_decode_through_the_same_codec() -> None:
    app = create_app()
    raw = encode(SAMPLES[0])
    assert app.serializers.loads_value(AuditLogMessage, raw) == SAMPLES[0]
    assert app.serializers.dumps_value(AuditLogMessage, SAMPLES[0]) == raw
    with pytest.raises(ValueDecodeError) as caught:
        app.serializers.loads_value(AuditLogMessage, b'{"Action": 1}')
    cause = caught.value.__cause__
    assert isinstance(cause, MessageDecodeError)
    assert cause.raw == b'{"Action": 1}'


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"user_id": "not-a-guid", "event_type": "x"},
            "UserEventMessage.user_id (UserId): badly formed hexadecimal UUID string "
            "('not-a-guid')",
        ),
        (
            {"user_id": uuid.uuid4(), "event_type": 42},
            "UserEventMessage.event_type (EventType): expected a string, got a number (42)",
        ),
        (
            {"user_id": uuid.uuid4(), "event_type": None},
            "UserEventMessage.event_type (EventType) is required, got None",
        ),
    ],
)
def test_a_message_its_receiver_would_refuse_is_refused_when_encoded(
    fields: dict[str, object], reason: str
) -> None:
    message = UserEventMessage(**fields)  # type: ignore[arg-type]
    with pytest.raises(MessageEncodeError) as raised:
        encode(message)
    assert str(raised.value) == reason


def _alert(current_value: float) -> AlertNotificationMessage:
    return AlertNotificationMessage(
        alert_rule_id=USER,
        rule_name="cpu",
        metric_type="cpu",
        severity="critical",
        current_value=current_value,
        threshold=90,
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # orjson writes NaN and Infinity as null, which the receiver would read
        # as a missing number (or, for an optional one, silently as none).
        (
            _alert(float("nan")),
            "AlertNotificationMessage.current_value (CurrentValue): NaN and Infinity have no"
            " JSON form (nan)",
        ),
        (
            _alert(float("-inf")),
            "AlertNotificationMessage.current_value (CurrentValue): NaN and Infinity have no"
            " JSON form (-inf)",
        ),
        (
            EmailMessage(to="a@b", subject="s", body="b", cc=["c@d", 1]),  # type: ignore[list-item]
            "EmailMessage.cc (Cc): expected a list of strings, got an array holding a number"
            " (['c@d', 1])",
        ),
    ],
)
def test_numbers_and_list_items_are_checked_on_every_encode(
    message: MessageBase, reason: str
) -> None:
    # Checked although a message of the same shape went through before.
    encode(_alert(97.5))
    encode(EmailMessage(to="a@b", subject="s", body="b", cc=["c@d"]))
    with pytest.raises(MessageEncodeError) as raised:
        encode(message)
    assert str(raised.value) == reason


class Tagged(MessageBase, topic="codec.tagged"):
    labels: dict[str, str] | None = None
    counts: dict[str, int] | None = None
    anything: dict[str, Any] | None = None


def test_the_values_of_a_typed_mapping_are_checked_both_ways() -> None:
    good = Tagged(labels={"tier": "gold"}, counts={"logins": 3}, anything={"a": [1, None]})
    assert decode(encode(good), Tagged).counts == {"logins": 3}
    with pytest.raises(MessageEncodeError) as refused:
        encode(Tagged(labels={"tier": "gold", "level": 3}))  # type: ignore[dict-item]
    assert str(refused.value) == (
        "Tagged.labels (Labels): at key 'level': expected a string, got a number"
        " ({'tier': 'gold', 'level': 3})"
    )
    raw = encode(good).replace(b'{"logins":3}', b'{"logins":"3"}')
    with pytest.raises(MessageDecodeError) as unread:
        decode(raw, Tagged)
    assert unread.value.reason == "field Counts: at key 'logins': expected an integer, got a string"


def test_values_the_receiver_takes_as_they_are_are_sent_as_given() -> None:
    user = uuid.uuid4()
    message = AlertNotificationMessage(
        alert_rule_id=str(user).upper(),  # type: ignore[arg-type]
        rule_name="cpu",
        severity="critical",
        metric_type="cpu",
        current_value=97,  # an int for a float
        threshold=90.5,
    )
    decoded = decode(encode(message), AlertNotificationMessage)
    assert decoded.alert_rule_id == user
    assert decoded.current_value == 97.0


@pytest.mark.parametrize("written", [b"", b'"MessageId": null, '])
def test_a_message_without_a_message_id_gets_the_same_one_at_every_read(written: bytes) -> None:
    raw = (
        b"{" + written + b'"UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Action": "a",'
        b' "EntityType": "b", "Timestamp": "2026-01-01T00:00:00Z"}'
    )
    first, again = decode(raw, AuditLogMessage), decode(raw, AuditLogMessage)
    assert first.message_id is not None and first.message_id == again.message_id
    other = decode(raw.replace(b'"a"', b'"b"'), AuditLogMessage)
    assert other.message_id != first.message_id


def _variants(message: MessageBase) -> list[tuple[str, dict[str, object]]]:
    """``message`` as senders may write it: as written here, as .NET writes it
    with nulls left out, and every way a field can be wrong or unusual."""
    written = orjson.loads(encode(message))
    qualified = f"Dawning.Messages.{written['MessageType']}"
    variants = [
        ("as written", written),
        ("nulls left out", {k: v for k, v in written.items() if v is not None}),
        ("camelCase", {k[:1].lower() + k[1:]: v for k, v in written.items()}),
        ("an unknown field", {**written, "AddedLater": 1}),
        ("no MessageType", {k: v for k, v in written.items() if k != "MessageType"}),
        ("a qualified MessageType", {**written, "MessageType": qualified}),
        ("another MessageType", {**written, "MessageType": "SystemEventMessage"}),
        ("no MessageId", {k: v for k, v in written.items() if k != "MessageId"}),
        ("no Timestamp", {k: v for k, v in written.items() if k != "Timestamp"}),
        ("a Timestamp with an offset", {**written, "Timestamp": "2026-01-01T08:00:00+08:00"}),
        ("a Timestamp without one", {**written, "Timestamp": "2026-01-01T08:00:00.1234567"}),
        ("a GUID in braces", {**written, "MessageId": "{" + written["MessageId"].upper() + "}"}),
    ]
    for name in written:
        variants += [
            (f"{name} null", {**written, name: None}),
            (f"{name} left out", {k: v for k, v in written.items() if k != name}),
            (f"{name} a number", {**written, name: 12}),
            (f"{name} an array", {**written, name: ["x"]}),
            (f"{name} not a GUID", {**written, name: "not-a-guid"}),
        ]
    return variants


def _outcome(decoding: object, data: dict[str, object], cls: type[MessageBase]) -> object:
    try:
        message = decoding(data, cls)  # type: ignore[operator]
    except MessageDecodeError as exc:
        return ("refused", exc.reason)
    state = list(message.__dict__.items())
    if "Timestamp" not in data or data["Timestamp"] is None:
        # The time of reading: compared by kind, not by the microsecond.
        state = [(k, type(v) if k == "timestamp" else v) for k, v in state]
    return (type(message), state)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_the_compiled_decoder_reads_and_refuses_exactly_as_the_checked_one(
    message: MessageBase,
) -> None:
    from dawning_streams.core import codec

    cls = type(message)
    for name, data in _variants(message):
        assert _outcome(codec.decode_mapping, data, cls) == _outcome(
            codec._decode_checked, data, cls
        ), name


@pytest.mark.parametrize("cls", sorted(BUILT_DIRECTLY, key=lambda c: c.__name__))
def test_the_common_case_is_read_by_the_compiled_decoder(cls: type[MessageBase]) -> None:
    from dawning_streams.core import codec

    [message] = [m for m in SAMPLES if type(m) is cls]
    decode(encode(message), cls)  # compiles it
    compiled = codec._decoders[cls]
    variants = dict(_variants(message))
    for taken in ("as written", "nulls left out", "no MessageType", "no Timestamp"):
        assert compiled(variants[taken]) is not None, taken
    for left in ("camelCase", "an unknown field", "no MessageId", "another MessageType"):
        assert compiled(variants[left]) is None, left


def test_fields_written_alike_are_refused_when_the_type_is_declared() -> None:
    with pytest.raises(TypeError, match="fields 'user_id' and 'userid' are written 'UserId'"):

        class Alike(MessageBase, topic="codec.alike"):
            user_id: str | None = None
            userid: str | None = None

    with pytest.raises(TypeError, match="fields 'a_b' and 'a__b' are written 'AB' and 'AB'"):

        class Twins(MessageBase, topic="codec.twins"):
            a_b: str | None = None
            a__b: str | None = None

    assert "Alike" not in message_types() and "Twins" not in message_types()


def test_a_types_own_post_init_runs_once_on_a_message_it_refuses() -> None:
    from dawning_streams.core import codec

    runs = []

    class Checked(MessageBase, topic="codec.checked"):
        amount: float

        def __post_init__(self) -> None:
            super().__post_init__()
            runs.append(self.amount)
            if self.amount < 0:
                raise ValueError("Amount must not be negative")

    raw = b'{"MessageId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Amount": -1}'
    with pytest.raises(MessageDecodeError, match="Amount must not be negative"):
        decode(raw, Checked)
    assert runs == [-1] and codec._decoders[Checked] is not codec._not_compiled


def _state_variants(message: MessageBase) -> list[tuple[str, MessageBase]]:
    """``message`` with each field holding every kind of value a caller may
    put there: its own, None, and each other kind, valid on the wire or not."""
    others: list[object] = [
        None,
        "text",
        str(USER).upper(),
        "2026-01-01T08:00:00+08:00",
        12,
        97.5,
        float("nan"),
        float("inf"),
        True,
        USER,
        datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 1, 1, 8),
        ["a"],
        {"a": 1},
    ]
    variants = [("as made", message)]
    for attr in type(message)._options.fields:
        for value in others:
            changed = copy.copy(message)
            changed.__dict__ = {**message.__dict__, attr: value}
            variants.append((f"{attr}={value!r}", changed))
    return variants


def _written(encoding: object, message: MessageBase) -> object:
    try:
        return encoding(message)  # type: ignore[operator]
    except MessageEncodeError as exc:
        return ("refused", str(exc))
    except TypeError as exc:  # what orjson cannot write at all
        return ("cannot write", str(exc))


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_the_compiled_encoder_writes_and_refuses_exactly_as_the_checked_one(
    message: MessageBase,
) -> None:
    from dawning_streams.core import codec

    for name, variant in _state_variants(message):
        assert _written(encode, variant) == _written(codec._encode_checked, variant), name


def test_the_common_case_is_written_by_the_compiled_encoder() -> None:
    from dawning_streams.core import codec

    compiled = {}
    for message in SAMPLES:
        encode(message)  # compiles it
        compiled[type(message).__name__] = codec._encoders[type(message)](message) is not None
    # Types with lists or mappings (Faust coerces them on access) are always checked.
    assert compiled == {
        "AuditLogMessage": True,
        "AlertNotificationMessage": True,
        "EmailMessage": False,
        "ConfigChangedMessage": True,
        "CacheInvalidationMessage": True,
        "UserEventMessage": False,
        "SystemEventMessage": False,
    }
    audit = copy.copy(SAMPLES[0])
    for attr, value in (("user_id", str(USER)), ("ip_address", None), ("action", None)):
        audit.__dict__ = {**SAMPLES[0].__dict__, attr: value}
        written = codec._encoders[AuditLogMessage](audit)
        # A GUID as a string, and a missing required field, are the checked path's.
        assert (written is None) == (attr != "ip_address"), attr


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            _alert(2**70),
            "AlertNotificationMessage.current_value (CurrentValue): Integer exceeds 64-bit range"
            " (1180591620717411303424)",
        ),
        (
            UserEventMessage(user_id=USER, event_type="x", event_data={1: "one"}),  # type: ignore[dict-item]
            "UserEventMessage.event_data (EventData): Dict key must be str ({1: 'one'})",
        ),
    ],
)
def test_a_value_json_cannot_hold_is_refused_naming_its_field(
    message: MessageBase, reason: str
) -> None:
    with pytest.raises(MessageEncodeError) as raised:
        encode(message)
    assert str(raised.value) == reason
