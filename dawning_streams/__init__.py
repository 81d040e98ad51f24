"""dawning-streams: Celery-style messaging for the Dawning Gateway on Kafka and Faust."""

from .application import App, create_app
from .bus import KafkaMessageBus, MessageBus, NullMessageBus, create_bus
from .codec import decode, encode
from .delivery import CurrentDelivery, current_delivery
from .errors import DawningError, MessageDecodeError, PublishError, SettingsError
from .handlers import Handler, HandlerError
from .records import (
    AlertNotificationMessage,
    AuditLogMessage,
    CacheInvalidationMessage,
    ConfigChangedMessage,
    EmailMessage,
    MessageBase,
    SystemEventMessage,
    UserEventMessage,
)
from .retry import Expired, Reject, Retry, RetryLater
from .settings import Settings

__all__ = [
    "AlertNotificationMessage",
    "App",
    "AuditLogMessage",
    "CacheInvalidationMessage",
    "ConfigChangedMessage",
    "CurrentDelivery",
    "DawningError",
    "EmailMessage",
    "Expired",
    "Handler",
    "HandlerError",
    "KafkaMessageBus",
    "MessageBase",
    "MessageBus",
    "MessageDecodeError",
    "NullMessageBus",
    "PublishError",
    "Reject",
    "Retry",
    "RetryLater",
    "Settings",
    "SettingsError",
    "SystemEventMessage",
    "UserEventMessage",
    "create_app",
    "create_bus",
    "current_delivery",
    "decode",
    "encode",
]
