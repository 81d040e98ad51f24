"""dawning-streams: Celery-style messaging for the Dawning Gateway on Kafka and Faust."""

from dawning_streams.application import App, create_app, create_bus
from dawning_streams.bus.message_bus import (
    KafkaMessageBus,
    MessageBus,
    NullMessageBus,
)
from dawning_streams.core.codec import decode, encode
from dawning_streams.core.dedupe import Dedupe
from dawning_streams.core.errors import (
    DawningError,
    KafkaUnavailable,
    MessageDecodeError,
    MessageEncodeError,
    PublishError,
    SettingsError,
    UsageError,
)
from dawning_streams.core.records import (
    AlertNotificationMessage,
    AuditLogMessage,
    CacheInvalidationMessage,
    ConfigChangedMessage,
    EmailMessage,
    MessageBase,
    SystemEventMessage,
    UserEventMessage,
)
from dawning_streams.core.retry import Expired, HandlerTimeout, Reject, Retry, RetryLater
from dawning_streams.core.settings import Settings
from dawning_streams.handlers.delivery import CurrentDelivery, current_delivery
from dawning_streams.handlers.handler import Handler, HandlerError
from dawning_streams.kafka.tables import message_keyed_table
from dawning_streams.ops.web import Page

__all__ = [
    "AlertNotificationMessage",
    "App",
    "AuditLogMessage",
    "CacheInvalidationMessage",
    "ConfigChangedMessage",
    "CurrentDelivery",
    "DawningError",
    "Dedupe",
    "EmailMessage",
    "Expired",
    "Handler",
    "HandlerError",
    "HandlerTimeout",
    "KafkaMessageBus",
    "KafkaUnavailable",
    "MessageBase",
    "MessageBus",
    "MessageDecodeError",
    "MessageEncodeError",
    "NullMessageBus",
    "Page",
    "PublishError",
    "Reject",
    "Retry",
    "RetryLater",
    "Settings",
    "SettingsError",
    "SystemEventMessage",
    "UsageError",
    "UserEventMessage",
    "create_app",
    "create_bus",
    "current_delivery",
    "decode",
    "encode",
    "message_keyed_table",
]
