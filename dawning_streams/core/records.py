"""The typed messages, one ``faust.Record`` per message type of the seed.

Python attributes are snake_case; on the wire every field is written in
PascalCase, as System.Text.Json writes the .NET gateway's classes, and read back
from PascalCase or camelCase (see :mod:`dawning_streams.core.codec`).

Beyond the seed's fields every message carries, from :class:`MessageBase`:

``MessageId``      a UUID, new for each message; handlers use it for idempotence.
``Timestamp``      when the message was created, in UTC.
``MessageType``    the class name (``"AuditLogMessage"``); decoding checks it.
``CorrelationId``  ties messages of one request together; optional.
``SourceInstance`` the instance that published it (``Settings.instance_name``).
``TenantId``       the tenant, for a multi-tenant gateway; optional.

The module passes 400 lines so that the base class's wire rules (names,
order, checks) and the seven seed types they shape are read in one place.
"""

from __future__ import annotations

import operator
import re
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import faust

from dawning_streams.core.building import (
    guid_text,
    keyword_only_init,
    named_init,
    new_uuid4,
    stored_defaults,
    storing_init,
)
from dawning_streams.core.settings import TopicNames

__all__ = [
    "AlertNotificationMessage",
    "AuditLogMessage",
    "CacheInvalidationMessage",
    "ConfigChangedMessage",
    "EmailMessage",
    "MessageBase",
    "SystemEventMessage",
    "UserEventMessage",
    "message_types",
    "use_wire_decoder",
]


@dataclass(frozen=True, slots=True)
class WireField:
    """How one attribute is named and typed on the wire."""

    attr: str
    wire: str
    kind: Any
    optional: bool
    required: bool


def _as_is(f: WireField) -> frozenset[type]:
    """The classes a value of ``f`` passes the encoder's check with, unconverted."""
    origin = getattr(f.kind, "__origin__", f.kind)
    accepted = {origin, float, int} - {bool} if origin is float else {origin}
    if not f.required:
        accepted.add(type(None))
    return frozenset(accepted)


#: What a field may be declared as (or that or None): what both sides write and read.
WIRE_TYPES = (
    "str, int, float, bool, uuid.UUID, datetime, list[str], dict[str, Any] or a dict[str, ...]"
    " of str, int, float or bool"
)
#: The values a ``dict[str, ...]`` field may declare, checked on both sides.
MAPPED_SCALARS = (str, int, float, bool)


def _refuse_unwritable(cls: type[MessageBase], attr: str, kind: Any) -> None:
    """Refuse, when the type is declared, a field the wire cannot carry (a
    ``Decimal``, ``list[int]``, ``int | str``), rather than at its first encode."""
    origin, args = getattr(kind, "__origin__", kind), typing.get_args(kind)
    if kind in (str, int, float, bool, uuid.UUID, datetime) or (
        (origin is list and args == (str,))
        or (
            origin is dict
            and (args == () or (args[0] is str and args[1] in (Any, *MAPPED_SCALARS)))
        )
    ):
        return
    shown = getattr(kind, "__name__", None) if not args else None
    raise TypeError(
        f"{cls.__module__}.{cls.__qualname__}.{attr}: {shown or kind} is not a type the wire"
        f" carries; declare it as {WIRE_TYPES}, or one of those | None"
    )


def _rechecked(kind: Any) -> bool:
    """Checked on every encode, whatever its class: a number's value, the
    items of a list, the values of a ``dict[str, str]`` (say)."""
    origin = getattr(kind, "__origin__", kind)
    return origin in (float, list) or (
        origin is dict and typing.get_args(kind)[1:2] in ((held,) for held in MAPPED_SCALARS)
    )


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _refuse_names_alike(cls: type[MessageBase]) -> None:
    """Refuse two fields written alike: names are read in any case (as ASP.NET
    reads them), so ``user_id`` and ``userid`` (``UserId``, ``Userid``), or
    ``a_b`` and ``a__b`` (both ``AB``), could not be told apart on the wire."""
    seen: dict[str, str] = {}
    for attr in cls._options.fields:
        wire = _pascal(attr)
        other = seen.setdefault(wire.lower(), attr)
        if other != attr:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__}: fields {other!r} and {attr!r} are written"
                f" {_pascal(other)!r} and {wire!r}, which the wire, reading names in any case,"
                " cannot tell apart; rename one"
            )


_TYPES: dict[str, type[MessageBase]] = {}


class MessageBase(faust.Record, abstract=True, include_metadata=False, serializer="dawning"):
    """Fields every message carries; subclasses add the seed's fields."""

    message_id: uuid.UUID | None = None
    timestamp: datetime | None = None
    message_type: str | None = None
    correlation_id: str | None = None
    source_instance: str | None = None
    tenant_id: str | None = None

    #: The ``Kafka:Topics`` attribute naming this type's topic (the seed's seven).
    topic_setting: ClassVar[str] = ""
    #: The topic of a type declared with ``class X(MessageBase, topic="...")``.
    topic_name: ClassVar[str | None] = None
    #: The .NET class's property order, where Python's (required fields first)
    #: differs: fields are written in this order, after the base class's.
    wire_order: ClassVar[tuple[str, ...]] = ()
    wire_fields: ClassVar[tuple[WireField, ...]] = ()
    _wire_names: ClassVar[tuple[str, ...]] = ()
    _wire_values: ClassVar[Callable[[Any], tuple[Any, ...]]]
    #: (wire name, attribute) of every field, when none is coerced lazily on access.
    _wire_plain: ClassVar[tuple[tuple[str, str], ...] | None] = None
    #: (field, the Python classes its value may have as it is), checked on encode:
    #: any other value must be one the decoder takes (see ``codec.encode``).
    wire_checks: ClassVar[tuple[tuple[WireField, frozenset[type]], ...]] = ()
    #: Fields checked on every encode, whatever their value's class: numbers
    #: (NaN and Infinity have no JSON form) and lists (their items).
    wire_rechecked: ClassVar[tuple[WireField, ...]] = ()
    #: Classes of a message's values, in field order, that passed the check.
    wire_shapes: ClassVar[set[tuple[type, ...]]]
    #: The defaults, for a type whose fields store values as given; else None.
    _stored: ClassVar[Mapping[str, Any] | None] = None

    def __init_subclass__(cls, topic: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kwargs.get("abstract"):
            return
        _refuse_names_alike(cls)
        hints = typing.get_type_hints(cls)
        defaults = cls._options.defaults
        wire_fields = []
        for attr in cls._options.fields:
            kind = hints[attr]
            args = typing.get_args(kind)
            optional = type(None) in args
            if optional and len(args) == 2:
                kind = next(a for a in args if a is not type(None))
            _refuse_unwritable(cls, attr, kind)
            wire_fields.append(WireField(attr, _pascal(attr), kind, optional, attr not in defaults))
        if cls.wire_order:
            rank = {attr: n for n, attr in enumerate(cls.wire_order)}
            wire_fields = [f for f in wire_fields if f.attr not in rank] + sorted(
                (f for f in wire_fields if f.attr in rank), key=lambda f: rank[f.attr]
            )
        # Registered once every field is known to be writable: a refused type
        # leaves its name free.
        _register(cls, topic)
        cls.wire_fields = tuple(wire_fields)
        cls._wire_names = tuple(f.wire for f in wire_fields)
        cls._wire_values = operator.attrgetter(*(f.attr for f in wire_fields))
        # Faust's field descriptors run Python code on every read; a field that
        # is not coerced on access (generic types are) reads the same from __dict__.
        lazy = any(getattr(cls, f.attr).lazy_coercion for f in wire_fields)
        cls._wire_plain = None if lazy else tuple((f.wire, f.attr) for f in wire_fields)
        cls.wire_checks = tuple((f, _as_is(f)) for f in wire_fields)
        cls.wire_rechecked = tuple(f for f in wire_fields if _rechecked(f.kind))
        cls.wire_shapes = set()
        cls._stored = stored_defaults(cls)
        init: Any = cls.__dict__.get("__init__")
        # Faust's generated __init__ (faust.utils.codegen names it so), not one
        # written in the class.
        if getattr(init, "__qualname__", None) == "__outer__.<locals>.__init__":
            named_init(init, cls)
            cls.__init__ = (  # type: ignore[method-assign]
                storing_init(cls, cls._stored, init)
                if cls._stored is not None
                else keyword_only_init(cls, init)
            )

    def __post_init__(self) -> None:
        # The base fields are never coerced on access: read as stored.
        state = self.__dict__
        filled: dict[str, Any] = {}
        if state["message_id"] is None:
            filled["message_id"] = new_uuid4()
        stamp = state["timestamp"]
        if stamp is None:
            filled["timestamp"] = datetime.now(UTC)
        elif stamp.tzinfo is None:
            filled["timestamp"] = stamp.replace(tzinfo=UTC)
        elif stamp.utcoffset():
            filled["timestamp"] = stamp.astimezone(UTC)
        if state["message_type"] is None:
            filled["message_type"] = type(self).__name__
        if self._stored is not None:
            # Its fields store values as given: the same, without the descriptors.
            state.update(filled)
        else:
            for name, value in filled.items():
                setattr(self, name, value)

    @classmethod
    def from_data(cls, data: Any, *, preferred_type: Any = None) -> MessageBase:
        """Faust's decoding entry point, held to the wire rules of ``codec.decode``."""
        if isinstance(data, cls):
            return data
        if _wire_decoder is None:  # pragma: no cover - the package imports the codec
            raise RuntimeError("dawning_streams.core.codec was not imported")
        return _wire_decoder(data, cls, raw=getattr(data, "raw", None))

    def to_representation(self) -> dict[str, Any]:
        """The wire mapping: PascalCase names, no Python module paths."""
        cls = type(self)
        plain = cls._wire_plain
        if plain is not None:
            values = self.__dict__
            return {wire: values[attr] for wire, attr in plain}
        return dict(zip(cls._wire_names, cls._wire_values(self), strict=True))

    def partition_key(self) -> str | None:
        """The natural key that decides the partition; see each type."""
        return None


_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _register(cls: type[MessageBase], topic: str | None) -> None:
    """Record a new message type; refuse a name or topic another type has."""
    name = cls.__name__
    where = f"{cls.__module__}.{cls.__qualname__}"
    known = _TYPES.get(name)
    if known is not None:
        raise TypeError(
            f"{where}: a message type named {name!r} is already registered "
            f"({known.__module__}.{known.__qualname__}); MessageType names are unique"
        )
    if topic is not None:
        if not _TOPIC_NAME.match(topic) or topic in {".", ".."}:
            raise ValueError(
                f"{where}: topic {topic!r} is not a Kafka topic name "
                "(1 to 249 of letters, digits, '.', '_' and '-')"
            )
        if topic in TopicNames().all():
            raise TypeError(
                f"{where}: topic {topic!r} is one of the Dawning message topics "
                "(Kafka:Topics); one type per topic"
            )
        for other in _TYPES.values():
            if other.topic_name == topic:
                raise TypeError(
                    f"{where}: topic {topic!r} already carries "
                    f"{other.__module__}.{other.__qualname__}; one type per topic"
                )
        cls.topic_name = topic
    elif not cls.topic_setting:
        raise TypeError(
            f"{where}: give the message type its topic: class {name}(MessageBase, topic=...)"
        )
    _TYPES[name] = cls


#: Builds a message from a parsed mapping by the wire rules: the codec's
#: ``decode_mapping``, which it installs here when imported (it builds on this
#: module, so this one cannot import it).
_wire_decoder: Callable[..., Any] | None = None


def use_wire_decoder(decoder: Callable[..., Any]) -> None:
    """Have Faust's decoding (``MessageBase.from_data``) go through ``decoder``."""
    global _wire_decoder
    _wire_decoder = decoder


def message_types() -> dict[str, type[MessageBase]]:
    """Every concrete message type by its ``MessageType`` name."""
    return dict(_TYPES)


class AuditLogMessage(MessageBase):
    """An audited action; keyed by ``UserId`` so one user's entries stay in order."""

    topic_setting = "audit_log"
    wire_order = (
        "user_id",
        "user_name",
        "action",
        "entity_type",
        "entity_id",
        "description",
        "old_value",
        "new_value",
        "ip_address",
        "user_agent",
    )

    user_id: uuid.UUID
    action: str
    entity_type: str
    user_name: str | None = None
    entity_id: str | None = None
    description: str | None = None
    old_value: str | None = None
    new_value: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None

    def partition_key(self) -> str:
        return guid_text(self.user_id)


class AlertNotificationMessage(MessageBase):
    """A fired alert rule; keyed by ``AlertRuleId`` so one rule's alerts stay in order."""

    topic_setting = "alert_notification"

    alert_rule_id: uuid.UUID
    rule_name: str
    metric_type: str
    severity: str
    current_value: float
    threshold: float
    description: str | None = None

    def partition_key(self) -> str:
        return guid_text(self.alert_rule_id)


class EmailMessage(MessageBase):
    """A mail to send; keyed by the ``To`` recipient."""

    topic_setting = "email_queue"
    wire_order = ("to", "cc", "bcc", "subject", "body", "is_html", "priority", "retry_count")

    to: str
    subject: str
    body: str
    cc: list[str] | None = None
    bcc: list[str] | None = None
    is_html: bool = False
    priority: int = 0
    retry_count: int = 0

    def partition_key(self) -> str:
        return self.to


class ConfigChangedMessage(MessageBase):
    """A changed configuration value; keyed by ``ConfigGroup:ConfigKey``."""

    topic_setting = "config_changed"

    config_group: str
    config_key: str
    old_value: str | None = None
    new_value: str | None = None
    changed_by: str | None = None

    def partition_key(self) -> str:
        return f"{self.config_group}:{self.config_key}"


class CacheInvalidationMessage(MessageBase):
    """Cache entries to drop; keyed by ``Region:CacheKey`` (or the pattern).

    The seed publishes either an exact ``CacheKey`` or a glob ``Pattern``, so
    both are optional here, but one of them must be set.
    """

    topic_setting = "cache_invalidation"

    cache_key: str | None = None
    pattern: str | None = None
    region: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cache_key and not self.pattern:
            raise ValueError("CacheKey or Pattern must be set")

    def partition_key(self) -> str:
        target = self.cache_key or self.pattern or ""
        return f"{self.region}:{target}" if self.region else target


class UserEventMessage(MessageBase):
    """Something a user did; keyed by ``UserId`` so one user's events stay in order."""

    topic_setting = "user_event"
    wire_order = ("user_id", "user_name", "event_type", "event_data")

    user_id: uuid.UUID
    event_type: str
    user_name: str | None = None
    event_data: dict[str, Any] | None = None

    def partition_key(self) -> str:
        return guid_text(self.user_id)


class SystemEventMessage(MessageBase):
    """An instance lifecycle event (started, stopped, config reloaded); keyed by instance."""

    topic_setting = "system_event"

    event_type: str
    description: str | None = None
    data: dict[str, Any] | None = None

    def partition_key(self) -> str | None:
        return self.source_instance
