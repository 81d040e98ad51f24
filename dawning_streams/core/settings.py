"""One typed, frozen settings object, read once at start-up.

Sources, first match wins:

1. environment variables named ``DAWNING_`` + the key path joined with ``__``,
   in any case: ``DAWNING_KAFKA__BOOTSTRAPSERVERS``,
   ``DAWNING_KAFKA__PRODUCER__ACKS``, ``DAWNING_SMTP__PASSWORD``;
2. the same key paths without the prefix, as ASP.NET Core names them
   (``Kafka__BootstrapServers``, ``Kafka__Producer__Acks``, in any case), so
   the gateway's own deployment variables configure a worker unchanged;
3. the seed's ``appsettings.json`` shape (``{"Kafka": {...}, "Redis": {...}}``),
   from the file named by ``DAWNING_SETTINGS_FILE``, else ``./appsettings.json``
   when it exists, so the .NET gateway's file works unchanged;
4. the defaults below, which are the seed's.

An unknown ``DAWNING_*`` variable is an error. So is an unknown ``Kafka__*``,
``Worker__*`` or ``Timers__*`` variable, an unknown key in the file's ``Kafka``,
``Worker`` or ``Timers`` section (a misspelt ``Kafka:Partitons``), and such a
section that is not a JSON object: ``Kafka`` is the seed's, the other two are
this project's alone. Other .NET-style variables of a section this project
also has (``Redis__*``, ``Smtp__*``...) are read when they name one of its
settings and otherwise left alone: in the gateway's deployment those sections
configure its own clients.

Every bad value fails at start-up with a :class:`SettingsError` naming the key,
the value and where it came from. Nothing else in the project reads
``os.environ``.

This is the one reference of every key, default, parser and check: one frozen
dataclass per section of the seed's ``appsettings.json``, then the loader. It
runs past 400 lines because the settings are many.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from dawning_streams.core import dotnet_json
from dawning_streams.core.errors import SettingsError

__all__ = [
    "ENV_PREFIX",
    "AlertSettings",
    "AuditSettings",
    "HealthSettings",
    "KafkaSecuritySettings",
    "KafkaSettings",
    "ProducerSettings",
    "RedisSettings",
    "Secret",
    "Settings",
    "SmtpSettings",
    "SpoolSettings",
    "TelemetrySettings",
    "TimerSettings",
    "TopicNames",
    "WebSettings",
    "WorkerSettings",
    "mask_url",
    "shown",
]

ENV_PREFIX = "DAWNING_"
SETTINGS_FILE_VAR = f"{ENV_PREFIX}SETTINGS_FILE"
#: Sections whose every key, in the file or a .NET-style variable, must name a
#: setting: the seed's, and those only this project has.
STRICT_SECTIONS = ("Kafka", "Worker", "Timers")
_STRICT_DOTNET = tuple(f"{section.upper()}__" for section in STRICT_SECTIONS)

Acks = Literal["all", 1, 0]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
OffsetReset = Literal["earliest", "latest"]
Partitioner = Literal["murmur2", "consistent_random"]
TlsMode = Literal["none", "starttls", "tls"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Secret:
    """A string that never shows itself in a ``repr``, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _setting(
    key: str, parse: Callable[[Any], Any], default: Any = dataclasses.MISSING, **kwargs: Any
) -> Any:
    """A dataclass field that knows its appsettings key and how to parse a raw value."""
    if callable(default) and not isinstance(default, (str, int, bool)):
        return field(default_factory=default, metadata={"key": key, "parse": parse}, **kwargs)
    return field(default=default, metadata={"key": key, "parse": parse}, **kwargs)


def _section(key: str, cls: type) -> Any:
    return field(default_factory=cls, metadata={"key": key, "section": cls})


# Parsers: take a raw value (a JSON value or an environment string) and return
# the typed value, or raise ValueError with the reason.


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError("must be an integer")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < low or (high is not None and value > high):
            upper = f" and at most {high}" if high is not None else ""
            raise ValueError(f"must be at least {low}{upper}")
        return value

    return parse


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string")
    return raw.strip()


def _optional_text(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return _text(raw)


def _secret(raw: Any) -> Secret | None:
    text = _optional_text(raw)
    return Secret(text) if text is not None else None


C = TypeVar("C")


def _choice(options: Mapping[str, C]) -> Callable[[Any], C]:
    def parse(raw: Any) -> C:
        text = str(raw).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(sorted(options))}")
        return options[text]

    return parse


_HOST_PORT = re.compile(
    r"^(?:\[(?P<ipv6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d+)$"
)


def _bootstrap(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    servers = tuple(str(item).strip() for item in items if str(item).strip())
    if not servers:
        raise ValueError("must list at least one host:port")
    for server in servers:
        match = _HOST_PORT.match(server)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{server!r} is not host:port with a port from 1 to 65535")
    return servers


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _modules(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    modules = tuple(str(item).strip() for item in items if str(item).strip())
    if not modules:
        raise ValueError("must name at least one module")
    for module in modules:
        if not _MODULE.match(module):
            raise ValueError(f"{module!r} is not a dotted module name")
    return modules


def _redis_url(raw: Any) -> str:
    url = _text(raw)
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return url


def mask_url(url: str) -> str:
    """``url`` with its password, if any, shown as asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":**********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_ACKS: dict[str, Acks] = {"all": "all", "-1": "all", "leader": 1, "1": 1, "none": 0, "0": 0}
_COMPRESSION: dict[str, Compression] = {
    name: name
    for name in ("none", "gzip", "snappy", "lz4", "zstd")  # type: ignore[misc]
}
_OFFSET_RESET: dict[str, OffsetReset] = {"earliest": "earliest", "latest": "latest"}
_PARTITIONERS: dict[str, Partitioner] = {
    "murmur2": "murmur2",
    "consistent_random": "consistent_random",
}
_TLS_MODES: dict[str, TlsMode] = {"none": "none", "starttls": "starttls", "tls": "tls"}


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """``Kafka:Producer``: how messages are handed to the broker."""

    acks: Acks = _setting("Acks", _choice(_ACKS), "all")
    enable_idempotence: bool = _setting("EnableIdempotence", _bool, True)
    # The bus's librdkafka producer keeps up to this many requests in flight per
    # broker; Faust's aiokafka producer (tables) one, always within the bound.
    # One by default, not the gateway's 5: with more, a new producer whose first
    # batch to a partition fails (a leader not ready yet) while the next batch
    # succeeds has the first reported delivered, and it is not on the topic
    # (librdkafka's implicit acks; the broker takes any first sequence number from
    # a producer it does not know). ``bus.rdkafka`` warns when it is set higher.
    max_in_flight: int = _setting("MaxInFlight", _int(1), 1)
    linger_ms: int = _setting("LingerMs", _int(0), 5)
    batch_size: int = _setting("BatchSize", _int(1), 16384)
    compression_type: Compression = _setting("CompressionType", _choice(_COMPRESSION), "snappy")
    #: The largest record the producer sends (Java's ``max.request.size``), before
    #: compression. Keep it at most the broker's ``message.max.bytes``: a record the
    #: broker refuses after the producer numbered it breaks the idempotent
    #: producer's sequence for its partition, while one refused here costs nothing.
    max_request_bytes: int = _setting("MaxRequestBytes", _int(1024), 1048576)

    def __post_init__(self) -> None:
        if self.enable_idempotence and self.acks != "all":
            raise SettingsError(
                "Kafka:Producer:Acks",
                self.acks,
                "must be all while Kafka:Producer:EnableIdempotence is true",
            )
        if self.enable_idempotence and self.max_in_flight > 5:
            raise SettingsError(
                "Kafka:Producer:MaxInFlight",
                self.max_in_flight,
                "must be at most 5 while Kafka:Producer:EnableIdempotence is true",
            )


@dataclass(frozen=True, slots=True)
class TopicNames:
    """``Kafka:Topics``: the topic of each message type."""

    audit_log: str = _setting("AuditLog", _text, "dawning.audit-log")
    alert_notification: str = _setting("AlertNotification", _text, "dawning.alert-notification")
    email_queue: str = _setting("EmailQueue", _text, "dawning.email-queue")
    user_event: str = _setting("UserEvent", _text, "dawning.user-event")
    system_event: str = _setting("SystemEvent", _text, "dawning.system-event")
    config_changed: str = _setting("ConfigChanged", _text, "dawning.config-changed")
    cache_invalidation: str = _setting("CacheInvalidation", _text, "dawning.cache-invalidation")

    def __post_init__(self) -> None:
        names = dataclasses.astuple(self)
        for f, name in zip(dataclasses.fields(self), names, strict=True):
            if names.count(name) > 1:
                raise SettingsError(
                    f"Kafka:Topics:{f.metadata['key']}",
                    name,
                    "is used for more than one message type",
                )

    def all(self) -> tuple[str, ...]:
        """Every topic name, in declaration order."""
        return dataclasses.astuple(self)


_SECURITY_PROTOCOLS: dict[str, SecurityProtocol] = {
    "plaintext": "PLAINTEXT",
    "ssl": "SSL",
    "saslplaintext": "SASL_PLAINTEXT",
    "saslssl": "SASL_SSL",
}
_SASL_MECHANISMS: dict[str, SaslMechanism] = {
    "plain": "PLAIN",
    "scramsha256": "SCRAM-SHA-256",
    "scramsha512": "SCRAM-SHA-512",
}


def _spelling(options: Mapping[str, C]) -> Callable[[Any], C]:
    """A choice that ignores case, ``_`` and ``-``: ``SASL_SSL``, ``SaslSsl`` (Confluent .NET)."""
    choose = _choice(options)

    def parse(raw: Any) -> C:
        try:
            return choose(re.sub(r"[-_\s]", "", str(raw)))
        except ValueError:
            names = sorted(str(name) for name in options.values())
            raise ValueError(f"must be one of {', '.join(names)}") from None

    return parse


def _readable_file(raw: Any) -> str | None:
    path = _optional_text(raw)
    if path is not None and not os.access(path, os.R_OK):
        raise ValueError("no such file, or not readable")
    return path


@dataclass(frozen=True, slots=True)
class KafkaSecuritySettings:
    """``Kafka:Security``: TLS and SASL towards the brokers (producer, consumers, admin)."""

    protocol: SecurityProtocol = _setting("Protocol", _spelling(_SECURITY_PROTOCOLS), "PLAINTEXT")
    sasl_mechanism: SaslMechanism = _setting("SaslMechanism", _spelling(_SASL_MECHANISMS), "PLAIN")
    sasl_username: str | None = _setting("SaslUsername", _optional_text, None)
    sasl_password: Secret | None = _setting("SaslPassword", _secret, None)
    #: CA bundle (PEM) that signs the brokers' certificates; default: the system's.
    ca_file: str | None = _setting("CaFile", _readable_file, None)
    #: Client certificate and key (PEM), for brokers that authenticate clients by TLS.
    cert_file: str | None = _setting("CertFile", _readable_file, None)
    key_file: str | None = _setting("KeyFile", _readable_file, None)
    key_password: Secret | None = _setting("KeyPassword", _secret, None)

    def __post_init__(self) -> None:
        if self.protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise SettingsError(
                "Kafka:Security:SaslUsername",
                self.sasl_username,
                f"SASL (Kafka:Security:Protocol={self.protocol}) needs "
                "Kafka:Security:SaslUsername and Kafka:Security:SaslPassword",
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingsError(
                "Kafka:Security:CertFile",
                self.cert_file,
                "a client certificate needs Kafka:Security:KeyFile, and a key needs CertFile",
            )
        if not self.uses_tls and (self.ca_file or self.cert_file):
            raise SettingsError(
                "Kafka:Security:Protocol",
                self.protocol,
                "certificates are set, but the protocol is not SSL or SASL_SSL",
            )

    @property
    def uses_tls(self) -> bool:
        """Whether the brokers are reached over TLS."""
        return self.protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """``Kafka:Spool``: where ``publish`` keeps messages while the broker is unreachable."""

    #: The SQLite file; default ``$XDG_STATE_HOME/dawning-streams/spool/<InstanceName>.sqlite3``
    #: (``~/.local/state/...``), the same whatever the working directory.
    path: str | None = _setting("Path", _optional_text, None)
    max_bytes: int = _setting("MaxBytes", _int(1), 256 * 1024 * 1024)
    #: How long ``publish`` waits for the broker's ack before it spools the message.
    send_timeout_ms: int = _setting("SendTimeoutMs", _int(1), 10000)

    def file(self, instance_name: str, bootstrap_servers: Sequence[str]) -> Path:
        """The spool file of the instance called ``instance_name``, for the
        cluster at ``bootstrap_servers``: ``Path``, or one named after both, so
        that a process sending to another cluster never delivers its records."""
        if self.path is not None:
            return Path(self.path).expanduser()
        cluster = self.cluster_tag(bootstrap_servers)
        return self._folder() / f"{_file_name(instance_name)}-{cluster}.sqlite3"

    @staticmethod
    def cluster_tag(bootstrap_servers: Sequence[str]) -> str:
        """The short hash of the bootstrap servers that default spool file names end with."""
        return hashlib.sha1(",".join(sorted(bootstrap_servers)).encode()).hexdigest()[:8]

    def unnamed_file(self, instance_name: str) -> Path | None:
        """Where spools were kept before their names said the cluster (or None,
        with ``Path`` set): what is left there is for an unknown cluster."""
        if self.path is not None:
            return None
        return self._folder() / f"{_file_name(instance_name)}.sqlite3"

    @staticmethod
    def _folder() -> Path:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "dawning-streams" / "spool"


def _file_name(instance_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", instance_name)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """``Kafka``: the seed's section, plus partitions, replication and partitioner."""

    enabled: bool = _setting("Enabled", _bool, True)
    bootstrap_servers: tuple[str, ...] = _setting(
        "BootstrapServers", _bootstrap, ("localhost:9092",)
    )
    consumer_group_id: str = _setting("ConsumerGroupId", _text, "dawning-identity-group")
    auto_offset_reset: OffsetReset = _setting("AutoOffsetReset", _choice(_OFFSET_RESET), "earliest")
    enable_auto_commit: bool = _setting("EnableAutoCommit", _bool, False)
    session_timeout_ms: int = _setting("SessionTimeoutMs", _int(1), 45000)
    heartbeat_interval_ms: int = _setting("HeartbeatIntervalMs", _int(1), 15000)
    max_poll_interval_ms: int = _setting("MaxPollIntervalMs", _int(1), 300000)
    #: How long the broker may hold a fetch that finds no new records. A
    #: partition resumed (after a lane caught up, a seek or a recovery) is only
    #: fetched once the fetch in flight returns, so this bounds its extra
    #: latency: Faust's fixed 1,500 ms made the first records after a resume
    #: wait up to 1.5 s. The Java client's default is 500.
    fetch_max_wait_ms: int = _setting("FetchMaxWaitMs", _int(1, 30000), 100)
    partitions: int = _setting("Partitions", _int(1), 3)
    replication_factor: int = _setting("ReplicationFactor", _int(1), 1)
    #: ``min.insync.replicas`` of every topic the app declares: how many replicas
    #: must have a record before an ``acks=all`` send succeeds. Unset: the
    #: replication factor less one, at least 1 (see :attr:`min_insync_replicas`).
    min_insync: int | None = _setting("MinInsyncReplicas", _int(1), None)
    # librdkafka's default, as the .NET gateway's Confluent.Kafka producers use it.
    partitioner: Partitioner = _setting("Partitioner", _choice(_PARTITIONERS), "consistent_random")
    producer: ProducerSettings = _section("Producer", ProducerSettings)
    topics: TopicNames = _section("Topics", TopicNames)
    spool: SpoolSettings = _section("Spool", SpoolSettings)
    security: KafkaSecuritySettings = _section("Security", KafkaSecuritySettings)

    def __post_init__(self) -> None:
        if self.enable_auto_commit:
            raise SettingsError(
                "Kafka:EnableAutoCommit",
                True,
                "offsets are committed only after processing; must be false",
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise SettingsError(
                "Kafka:HeartbeatIntervalMs",
                self.heartbeat_interval_ms,
                f"must be below Kafka:SessionTimeoutMs ({self.session_timeout_ms})",
            )
        if self.session_timeout_ms > self.max_poll_interval_ms:
            raise SettingsError(
                "Kafka:SessionTimeoutMs",
                self.session_timeout_ms,
                f"must not exceed Kafka:MaxPollIntervalMs ({self.max_poll_interval_ms})",
            )
        if self.min_insync is not None and self.min_insync > self.replication_factor:
            raise SettingsError(
                "Kafka:MinInsyncReplicas",
                self.min_insync,
                f"must not exceed Kafka:ReplicationFactor ({self.replication_factor}): "
                "no send could ever be acknowledged",
            )

    @property
    def min_insync_replicas(self) -> int:
        """``Kafka:MinInsyncReplicas``, or the replication factor less one (at least 1)."""
        if self.min_insync is not None:
            return self.min_insync
        return max(1, self.replication_factor - 1)

    def topic_config(self) -> dict[str, str]:
        """The configuration every topic the app declares is created with."""
        return {"min.insync.replicas": str(self.min_insync_replicas)}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """``Redis``: where locks, the shared cache and sent-mail markers live."""

    url: str = _setting("Url", _redis_url, "redis://127.0.0.1:6379/0", repr=False)

    def __repr__(self) -> str:
        return f"RedisSettings(url={mask_url(self.url)!r})"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """``Smtp``: the mail server the email agent delivers through."""

    host: str = _setting("Host", _text, "127.0.0.1")
    port: int = _setting("Port", _int(1, 65535), 1025)
    tls_mode: TlsMode = _setting("TlsMode", _choice(_TLS_MODES), "none")
    user: str | None = _setting("User", _optional_text, None)
    password: Secret | None = _setting("Password", _secret, None)
    sender: str = _setting("Sender", _text, "noreply@dawning.local")
    #: CA bundle that signs the server's certificate; default: the system's.
    ca_file: str | None = _setting("CaFile", _optional_text, None)
    timeout_s: int = _setting("TimeoutS", _int(1, 600), 30)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """``Web``: the worker's HTTP port for table views."""

    host: str = _setting("Host", _text, "127.0.0.1")
    port: int = _setting("Port", _int(1, 65535), 6066)
    #: Bearer token for every state-changing request (dead-letter replay);
    #: without one they all answer 401.
    admin_token: Secret | None = _setting("AdminToken", _secret, None)


def _store_url(raw: Any) -> str:
    url = _text(raw)
    parts = urlsplit(url)
    if parts.scheme not in {"sqlite", "postgresql", "postgres", "mysql"}:
        raise ValueError("must be a sqlite:///path, postgresql:// or mysql:// URL")
    if parts.scheme == "mysql":
        # The driver takes no URL: check every part here, so none is silently dropped.
        if not parts.hostname or not parts.username:
            raise ValueError("must name a user and a host: mysql://user:password@host:3306/db")
        try:
            valid_port = parts.port != 0
        except ValueError:  # not a number, or above 65535
            valid_port = False
        if not valid_port:
            raise ValueError("has a port that is not a number from 1 to 65535")
        if not parts.path.strip("/") or "/" in parts.path.strip("/"):
            raise ValueError("must name one database: mysql://user:password@host:3306/db")
        if parts.query or parts.fragment:
            raise ValueError("takes no ?options or #fragment")
    return url


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``Audit``: where the audit agent stores entries, and how it batches them."""

    store_url: str = _setting("StoreUrl", _store_url, "sqlite:///dawning-audit.db", repr=False)
    batch_size: int = _setting("BatchSize", _int(1, 100_000), 500)
    batch_within_ms: int = _setting("BatchWithinMs", _int(1), 1000)
    #: Entries older than this are deleted by the hourly retention task.
    retention_days: int = _setting("RetentionDays", _int(1), 365)

    def __repr__(self) -> str:
        return (
            f"AuditSettings(store_url={mask_url(self.store_url)!r}, "
            f"batch_size={self.batch_size}, batch_within_ms={self.batch_within_ms}, "
            f"retention_days={self.retention_days})"
        )


def _addresses(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    addresses = tuple(str(item).strip() for item in items if str(item).strip())
    for address in addresses:
        if "@" not in address:
            raise ValueError(f"{address!r} is not an email address")
    return addresses


def _http_url(raw: Any) -> str | None:
    url = _optional_text(raw)
    if url is not None and urlsplit(url).scheme not in {"http", "https"}:
        raise ValueError("must be an http:// or https:// URL")
    return url


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """``Alerts``: who hears of an alert of each severity, and how often."""

    critical: tuple[str, ...] = _setting("Critical", _addresses, ())
    warning: tuple[str, ...] = _setting("Warning", _addresses, ())
    info: tuple[str, ...] = _setting("Info", _addresses, ())
    #: Repeats of one rule within this many seconds notify nobody.
    throttle_s: int = _setting("ThrottleS", _int(0), 300)
    webhook_url: str | None = _setting("WebhookUrl", _http_url, None, repr=False)

    def recipients(self, severity: str) -> tuple[str, ...]:
        """The addresses for ``severity``; an unknown severity counts as a warning."""
        return {"critical": self.critical, "info": self.info}.get(
            severity.strip().lower(), self.warning
        )


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """``Telemetry``: where metrics and traces go besides ``/metrics``."""

    #: OTLP/HTTP collector, e.g. ``http://otel-collector:4318``; unset: no export.
    otlp_endpoint: str | None = _setting("OtlpEndpoint", _http_url, None)
    #: Headers for the collector, ``name=value,name=value`` (often a token).
    otlp_headers: Secret | None = _setting("OtlpHeaders", _secret, None)
    export_interval_ms: int = _setting("ExportIntervalMs", _int(100), 15000)
    service_name: str = _setting("ServiceName", _text, "dawning-streams")


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``Health``: what ``/ready`` counts as stuck."""

    #: Table recovery that has read nothing for this long is reported stuck.
    recovery_stall_s: int = _setting("RecoveryStallS", _int(1), 120)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """``Worker``: what the worker runs, and how long it waits to start and to stop."""

    #: Modules the worker imports before it starts, in order: the handlers,
    #: tables, pages and scheduled tasks they declare on ``dawning_streams.app.app``
    #: are the worker's. A module with an ``install(app)`` function has it called.
    #: ``dawning_streams.agents`` is the Dawning application's seven agents.
    modules: tuple[str, ...] = _setting("Modules", _modules, ("dawning_streams.agents",))

    #: After SIGTERM or SIGINT the process ends within this, reachable services or
    #: not; within 5 s when Kafka is unreachable as the stop begins.
    stop_timeout_s: int = _setting("StopTimeoutS", _int(1, 3600), 30)
    #: A worker started while Kafka is unreachable waits for it this long, then
    #: exits with code 1; unset: it waits for as long as it takes.
    start_timeout_s: int | None = _setting("StartTimeoutS", _int(1), None)


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """``Timers``: countdowns, etas and retries (:mod:`dawning_streams.handlers.timers`)."""

    #: ``apply_async`` refuses a countdown or eta further ahead than this.
    max_delay_days: int = _setting("MaxDelayDays", _int(1, 3650), 30)
    #: A held key whose retry is overdue this long is reported stuck on ``/ready``.
    stuck_after_s: int = _setting("StuckAfterS", _int(1), 60)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything dawning-streams can be configured with."""

    kafka: KafkaSettings = _section("Kafka", KafkaSettings)
    redis: RedisSettings = _section("Redis", RedisSettings)
    smtp: SmtpSettings = _section("Smtp", SmtpSettings)
    web: WebSettings = _section("Web", WebSettings)
    audit: AuditSettings = _section("Audit", AuditSettings)
    alerts: AlertSettings = _section("Alerts", AlertSettings)
    telemetry: TelemetrySettings = _section("Telemetry", TelemetrySettings)
    health: HealthSettings = _section("Health", HealthSettings)
    timers: TimerSettings = _section("Timers", TimerSettings)
    worker: WorkerSettings = _section("Worker", WorkerSettings)
    #: Written as ``SourceInstance`` on every message this process publishes.
    instance_name: str = _setting("InstanceName", _text, lambda: socket.gethostname())

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, file: str | Path | None = None
    ) -> Settings:
        """Build settings from the environment, then ``appsettings.json``, then defaults."""
        environ = os.environ if environ is None else environ
        env = {k.upper(): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}
        sections = {f.metadata["key"].upper() for f in dataclasses.fields(cls)}
        dotnet = {
            name.upper(): (name, value)
            for name, value in environ.items()
            if name.partition("__")[1] and name.partition("__")[0].upper() in sections
        }
        path, document = _read_file(env.pop(SETTINGS_FILE_VAR, None) if file is None else file)
        sources = _Sources(env, dotnet, document, str(path) if path else "")
        settings = sources.build(cls, ())
        unknown = sorted(sources.unused_env) + sorted(
            dotnet[name][0] for name in sources.unused_dotnet if name.startswith(_STRICT_DOTNET)
        )
        if unknown:
            name = unknown[0]
            raise SettingsError(
                name,
                environ.get(name, env.get(name)),
                "is not a dawning-streams setting",
                source="environment",
            )
        # The file's strict sections are as strict as their variables: a misspelt
        # key would otherwise leave its setting at the default unnoticed.
        strict = {
            f.metadata["key"].lower(): f.metadata["section"]
            for f in dataclasses.fields(cls)
            if f.metadata["key"] in STRICT_SECTIONS
        }
        for section, node in document.items():
            kind = strict.get(section.lower())
            if kind is None:
                continue
            if not isinstance(node, Mapping):
                raise SettingsError(section, node, "must be a JSON object", source=str(path))
            for key_path, value in _unknown_keys(kind, node, (section,)):
                raise SettingsError(
                    ":".join(key_path),
                    value,
                    "is not a dawning-streams setting",
                    source=str(path),
                )
        return settings

    def to_environ(self) -> dict[str, str]:
        """These settings as ``DAWNING_*`` variables, for a child process to load."""
        return dict(_environ(self, ()))


def _environ(node: Any, path: tuple[str, ...]) -> Any:
    for f in dataclasses.fields(node):
        key_path = (*path, f.metadata["key"])
        value = getattr(node, f.name)
        if "section" in f.metadata:
            yield from _environ(value, key_path)
        elif value is not None:
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Secret):
                value = value.reveal()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            yield ENV_PREFIX + "__".join(key_path).upper(), str(value)


def _read_file(file: str | Path | None) -> tuple[Path | None, Mapping[str, Any]]:
    path = Path(file) if file else Path("appsettings.json")
    if not path.exists():
        if file:
            raise SettingsError(SETTINGS_FILE_VAR, str(file), "no such file")
        return None, {}
    # Named as it was chosen: by the variable, or found in the working directory.
    source = {} if file else {"source": "the working directory"}
    named = SETTINGS_FILE_VAR if file else "settings file"
    try:
        # As .NET reads it: comments and trailing commas allowed, a BOM skipped.
        document = dotnet_json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise SettingsError(named, str(path), f"unreadable: {exc}", **source) from exc
    if not isinstance(document, dict):
        raise SettingsError(named, str(path), "must hold a JSON object", **source)
    return path, document


def _unknown_keys(
    cls: type, node: Mapping[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The keys of ``node`` (and of its sections) that name no field of ``cls``."""
    fields = {f.metadata["key"].lower(): f for f in dataclasses.fields(cls)}
    for key, value in node.items():
        found = fields.get(key.lower())
        if found is None:
            yield (*path, key), value
        elif "section" in found.metadata and isinstance(value, Mapping):
            yield from _unknown_keys(found.metadata["section"], value, (*path, key))


class _Sources:
    """Looks keys up in the environment, then the file, the way .NET configuration does."""

    def __init__(
        self,
        env: Mapping[str, str],
        dotnet: Mapping[str, tuple[str, str]],
        document: Mapping[str, Any],
        file: str,
    ) -> None:
        self.env = env
        #: Upper-cased ``Section__Key`` -> (the variable's own name, its value).
        self.dotnet = dotnet
        self.document = document
        self.file = file
        self.unused_env = set(env)
        self.unused_dotnet = set(dotnet)

    def build(self, cls: type[C], path: tuple[str, ...]) -> C:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key_path = (*path, f.metadata["key"])
            if "section" in f.metadata:
                values[f.name] = self.build(f.metadata["section"], key_path)
                continue
            found = self._lookup(key_path)
            if found is None:
                continue
            raw, source = found
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown_raw = _shown_value(f.metadata["parse"], raw)
                raise SettingsError(
                    ":".join(key_path), shown_raw, str(exc), source=source
                ) from None
        try:
            return cls(**values)
        except SettingsError as exc:
            raise SettingsError(
                exc.key, exc.value, exc.reason, source=self._source_of(exc.key)
            ) from None

    def _lookup(self, key_path: tuple[str, ...]) -> tuple[Any, str] | None:
        dotnet = "__".join(key_path).upper()
        name = ENV_PREFIX + dotnet
        if name in self.env:
            self.unused_env.discard(name)
            self.unused_dotnet.discard(dotnet)
            return self.env[name], name
        if dotnet in self.dotnet:
            self.unused_dotnet.discard(dotnet)
            return self.dotnet[dotnet][1], self.dotnet[dotnet][0]
        node: Any = self.document
        for key in key_path:
            if not isinstance(node, Mapping):
                return None
            node = next((v for k, v in node.items() if k.lower() == key.lower()), None)
            if node is None:
                return None
        return node, self.file

    def _source_of(self, key: str) -> str:
        found = self._lookup(tuple(key.split(":")))
        return found[1] if found else "defaults"


_MASK = "**********"


def _shown_value(parse: Callable[[Any], Any], raw: Any) -> Any:
    """``raw`` as an error may show it: secrets hidden, URL passwords masked."""
    if parse is _secret:
        return _MASK
    if isinstance(raw, str) and "://" in raw:
        return mask_url(raw)
    return raw


def shown(node: Any, path: tuple[str, ...] = ()) -> dict[str, str]:
    """Every setting as ``{"Kafka:BootstrapServers": "..."}``, secrets masked.

    For logs and the dashboard: a ``Secret`` shows as asterisks (or "unset"),
    and a password inside a URL is masked.
    """
    values: dict[str, str] = {}
    for f in dataclasses.fields(node):
        key_path = (*path, f.metadata["key"])
        value = getattr(node, f.name)
        if "section" in f.metadata:
            values.update(shown(value, key_path))
            continue
        if isinstance(value, Secret):
            text = _MASK
        elif value is None:
            text = "unset"
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif not f.repr and urlsplit(str(value)).scheme in ("http", "https"):
            # A webhook URL is its own credential: show where it goes, not the path.
            text = urlunsplit(urlsplit(str(value))._replace(path="/" + _MASK, query=""))
        else:
            text = _shown_value(f.metadata["parse"], str(value))
        values[":".join(key_path)] = text
    return values
