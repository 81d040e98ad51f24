"""Settings: the seed's defaults, its appsettings.json, the environment, bad values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dawning_streams.core.errors import SettingsError
from dawning_streams.core.settings import KafkaSettings, Secret, Settings, shown

SEED_APPSETTINGS = {
    "Logging": {"LogLevel": {"Default": "Information"}},
    "Kafka": {
        "Enabled": True,
        "BootstrapServers": "kafka-1:9092,kafka-2:9092",
        "ConsumerGroupId": "dawning-identity-group",
        "AutoOffsetReset": "Earliest",
        "EnableAutoCommit": False,
        "SessionTimeoutMs": 45000,
        "HeartbeatIntervalMs": 15000,
        "MaxPollIntervalMs": 300000,
        "Producer": {
            "Acks": "All",
            "EnableIdempotence": True,
            "MaxInFlight": 5,
            "LingerMs": 5,
            "BatchSize": 16384,
            "CompressionType": "snappy",
        },
        "Topics": {
            "AuditLog": "dawning.audit-log",
            "AlertNotification": "dawning.alert-notification",
            "EmailQueue": "dawning.email-queue",
            "UserEvent": "dawning.user-event",
            "SystemEvent": "dawning.system-event",
            "ConfigChanged": "dawning.config-changed",
            "CacheInvalidation": "dawning.cache-invalidation",
        },
    },
}


def load(env: dict[str, str] | None = None, file: Path | None = None) -> Settings:
    return Settings.load(env or {}, file=file)


def test_defaults_are_the_seeds(tmp_cwd: Path) -> None:
    kafka = load().kafka
    assert kafka.enabled is True
    assert kafka.bootstrap_servers == ("localhost:9092",)
    assert kafka.consumer_group_id == "dawning-identity-group"
    assert kafka.auto_offset_reset == "earliest"
    assert kafka.enable_auto_commit is False
    assert kafka.fetch_max_wait_ms == 100
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms, kafka.max_poll_interval_ms) == (
        45000,
        15000,
        300000,
    )
    # MaxInFlight is 1, not the gateway's 5: see ProducerSettings.max_in_flight.
    assert dataclasses.astuple(kafka.producer) == ("all", True, 1, 5, 16384, "snappy", 1048576)
    assert kafka.topics.all() == (
        "dawning.audit-log",
        "dawning.alert-notification",
        "dawning.email-queue",
        "dawning.user-event",
        "dawning.system-event",
        "dawning.config-changed",
        "dawning.cache-invalidation",
    )
    assert (kafka.partitions, kafka.replication_factor, kafka.partitioner) == (
        3,
        1,
        "consistent_random",
    )


def test_the_gateways_appsettings_json_is_read_unchanged(tmp_cwd: Path) -> None:
    (tmp_cwd / "appsettings.json").write_text(json.dumps(SEED_APPSETTINGS), encoding="utf-8-sig")
    settings = load()
    assert settings.kafka.bootstrap_servers == ("kafka-1:9092", "kafka-2:9092")
    assert settings.kafka.producer.acks == "all"
    assert settings.kafka.auto_offset_reset == "earliest"


def test_environment_overrides_the_file_and_is_case_insensitive(tmp_path: Path) -> None:
    file = tmp_path / "custom.json"
    file.write_text(json.dumps(SEED_APPSETTINGS))
    settings = load(
        {
            "DAWNING_SETTINGS_FILE": str(file),
            "dawning_kafka__bootstrapservers": "10.0.0.5:9094",
            "DAWNING_KAFKA__PRODUCER__LINGERMS": "20",
            "DAWNING_KAFKA__TOPICS__AUDITLOG": "custom.audit",
            "DAWNING_SMTP__TLSMODE": "StartTls",
            "DAWNING_WEB__PORT": "7000",
            "DAWNING_REDIS__URL": "redis://cache:6380/2",
        }
    )
    assert settings.kafka.bootstrap_servers == ("10.0.0.5:9094",)
    assert settings.kafka.producer.linger_ms == 20
    assert settings.kafka.topics.audit_log == "custom.audit"
    assert settings.kafka.topics.email_queue == "dawning.email-queue"
    assert settings.kafka.consumer_group_id == "dawning-identity-group"
    assert settings.smtp.tls_mode == "starttls"
    assert settings.web.port == 7000
    assert settings.redis.url == "redis://cache:6380/2"


def test_the_gateways_dotnet_variables_are_read_between_dawning_ones_and_the_file(
    tmp_path: Path,
) -> None:
    file = tmp_path / "appsettings.json"
    file.write_text(json.dumps(SEED_APPSETTINGS))
    settings = load(
        {
            "DAWNING_SETTINGS_FILE": str(file),
            "Kafka__BootstrapServers": "10.0.0.7:9092",
            "KAFKA__PRODUCER__LINGERMS": "12",
            "kafka__topics__auditlog": "gateway.audit",
            "Kafka__ConsumerGroupId": "from-dotnet",
            "DAWNING_KAFKA__CONSUMERGROUPID": "from-dawning",
            "Smtp__Port": "2525",
            # The gateway's own settings, in sections this project shares or not.
            "Redis__ConnectionString": "redis:6379,abortConnect=false",
            "Logging__LogLevel__Default": "Information",
            "ASPNETCORE_ENVIRONMENT": "Production",
        }
    )
    assert settings.kafka.bootstrap_servers == ("10.0.0.7:9092",)  # over the file
    assert settings.kafka.producer.linger_ms == 12
    assert settings.kafka.topics.audit_log == "gateway.audit"
    assert settings.kafka.consumer_group_id == "from-dawning"  # DAWNING_ over .NET
    assert settings.kafka.producer.acks == "all"  # from the file
    assert settings.smtp.port == 2525


def test_an_unknown_kafka_variable_is_refused_by_its_own_name(tmp_cwd: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        load({"Kafka__BootstrapServer": "10.0.0.7:9092"})
    assert refused.value.key == "Kafka__BootstrapServer"
    assert "is not a dawning-streams setting" in str(refused.value)
    with pytest.raises(SettingsError, match=r"\(from Kafka__Partitions\)"):
        load({"Kafka__Partitions": "0"})


def test_settings_are_immutable(tmp_cwd: Path) -> None:
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.partitions = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "key", "value", "reason"),
    [
        (
            {"DAWNING_KAFKA__PRODUCER__COMPRESSIONTYPE": "brotli"},
            "Kafka:Producer:CompressionType",
            "brotli",
            "must be one of",
        ),
        (
            {"DAWNING_KAFKA__PRODUCER__ACKS": "most"},
            "Kafka:Producer:Acks",
            "most",
            "must be one of",
        ),
        (
            {"DAWNING_KAFKA__PRODUCER__ACKS": "1"},
            "Kafka:Producer:Acks",
            1,
            "must be all while Kafka:Producer:EnableIdempotence is true",
        ),
        (
            {"DAWNING_KAFKA__SESSIONTIMEOUTMS": "-5"},
            "Kafka:SessionTimeoutMs",
            "-5",
            "must be at least 1",
        ),
        (
            {"DAWNING_KAFKA__FETCHMAXWAITMS": "60000"},
            "Kafka:FetchMaxWaitMs",
            "60000",
            "must be at least 1 and at most 30000",
        ),
        (
            {"DAWNING_KAFKA__HEARTBEATINTERVALMS": "60000"},
            "Kafka:HeartbeatIntervalMs",
            60000,
            "must be below Kafka:SessionTimeoutMs (45000)",
        ),
        (
            {"DAWNING_KAFKA__BOOTSTRAPSERVERS": "kafka-1;kafka-2"},
            "Kafka:BootstrapServers",
            "kafka-1;kafka-2",
            "is not host:port",
        ),
        (
            {"DAWNING_KAFKA__BOOTSTRAPSERVERS": "kafka:99999"},
            "Kafka:BootstrapServers",
            "kafka:99999",
            "port from 1 to 65535",
        ),
        ({"DAWNING_SMTP__PORT": "twenty-five"}, "Smtp:Port", "twenty-five", "must be an integer"),
        (
            {"DAWNING_KAFKA__REPLICATIONFACTOR": "3", "DAWNING_KAFKA__MININSYNCREPLICAS": "4"},
            "Kafka:MinInsyncReplicas",
            4,
            "must not exceed Kafka:ReplicationFactor (3)",
        ),
        (
            {"Kafka__MinInsyncReplicas": "2"},
            "Kafka:MinInsyncReplicas",
            2,
            "must not exceed Kafka:ReplicationFactor (1)",
        ),
        (
            {"DAWNING_KAFKA__MININSYNCREPLICAS": "0"},
            "Kafka:MinInsyncReplicas",
            "0",
            "must be at least 1",
        ),
        (
            {"DAWNING_KAFKA__ENABLEAUTOCOMMIT": "true"},
            "Kafka:EnableAutoCommit",
            True,
            "committed only after processing",
        ),
        ({"DAWNING_KAFKA__ENABLED": "maybe"}, "Kafka:Enabled", "maybe", "must be true or false"),
        (
            {"DAWNING_KAFKA__TOPICS__EMAILQUEUE": "dawning.audit-log"},
            "Kafka:Topics:AuditLog",
            "dawning.audit-log",
            "more than one message type",
        ),
        (
            {"DAWNING_KAFKA__BOOTSTRAP": "x:1"},
            "DAWNING_KAFKA__BOOTSTRAP",
            "x:1",
            "is not a dawning-streams setting",
        ),
        ({"DAWNING_REDIS__URL": "http://cache"}, "Redis:Url", "http://cache", "redis://"),
        (
            {"DAWNING_AUDIT__STOREURL": "mysql://audit:s3cret@db"},
            "Audit:StoreUrl",
            "mysql://audit:**********@db",
            "must name one database",
        ),
        (
            {"DAWNING_AUDIT__STOREURL": "mysql://audit:s3cret@db:port/audit"},
            "Audit:StoreUrl",
            "mysql://audit:**********@db:port/audit",
            "port that is not a number",
        ),
        (
            {"DAWNING_AUDIT__STOREURL": "mysql://db/audit"},
            "Audit:StoreUrl",
            "mysql://db/audit",
            "must name a user and a host",
        ),
        (
            {"DAWNING_AUDIT__STOREURL": "mysql://audit:s3cret@db/audit?ssl=1"},
            "Audit:StoreUrl",
            "mysql://audit:**********@db/audit?ssl=1",
            "takes no ?options",
        ),
        (
            {"DAWNING_AUDIT__STOREURL": "mssql://audit:s3cret@db/audit"},
            "Audit:StoreUrl",
            "mssql://audit:**********@db/audit",
            "postgresql:// or mysql:// URL",
        ),
    ],
)
def test_a_bad_value_fails_naming_the_key_and_value(
    tmp_cwd: Path,
    env: dict[str, str],
    key: str,
    value: object,
    reason: str,
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    error = caught.value
    assert (error.key, error.value) == (key, value)
    assert reason in error.reason
    assert key in str(error) and repr(value) in str(error)


@pytest.mark.parametrize(
    ("replication_factor", "min_insync"), [("1", 1), ("2", 1), ("3", 2), ("5", 4)]
)
def test_min_insync_replicas_defaults_to_one_less_than_the_replication_factor(
    tmp_cwd: Path, replication_factor: str, min_insync: int
) -> None:
    kafka = load({"Kafka__ReplicationFactor": replication_factor}).kafka
    assert kafka.min_insync_replicas == min_insync
    assert kafka.topic_config() == {"min.insync.replicas": str(min_insync)}


def test_min_insync_replicas_may_be_set_up_to_the_replication_factor(tmp_cwd: Path) -> None:
    kafka = load(
        {"DAWNING_KAFKA__REPLICATIONFACTOR": "3", "DAWNING_KAFKA__MININSYNCREPLICAS": "3"}
    ).kafka
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 3)
    assert kafka.topic_config() == {"min.insync.replicas": "3"}


def test_min_insync_replicas_is_checked_when_settings_are_built_directly() -> None:
    with pytest.raises(SettingsError) as caught:
        KafkaSettings(replication_factor=2, min_insync=3)
    assert caught.value.key == "Kafka:MinInsyncReplicas"
    assert KafkaSettings(replication_factor=3).min_insync_replicas == 2


def test_an_error_names_the_variable_it_came_from(tmp_cwd: Path) -> None:
    with pytest.raises(SettingsError, match=r"\(from DAWNING_KAFKA__PARTITIONS\)"):
        load({"DAWNING_KAFKA__PARTITIONS": "0"})


def test_an_error_in_the_file_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "appsettings.json"
    file.write_text(json.dumps({"Kafka": {"LingerMs": 1, "Producer": {"LingerMs": "soon"}}}))
    with pytest.raises(SettingsError) as caught:
        load(file=file)
    assert caught.value.key == "Kafka:Producer:LingerMs"
    assert caught.value.source == str(file)


def test_a_missing_or_broken_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load({"DAWNING_SETTINGS_FILE": str(tmp_path / "absent.json")})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SettingsError, match="unreadable"):
        load(file=broken)


def test_passwords_never_show_in_a_repr_or_an_error(tmp_cwd: Path) -> None:
    settings = load(
        {
            "DAWNING_SMTP__USER": "mailer",
            "DAWNING_SMTP__PASSWORD": "hunter2",
            "DAWNING_REDIS__URL": "redis://:s3cret@cache:6379/0",
            "DAWNING_AUDIT__STOREURL": "mysql://audit:t0psecret@db:3306/audit",
        }
    )
    assert isinstance(settings.smtp.password, Secret)
    assert settings.smtp.password.reveal() == "hunter2"
    assert settings.redis.url == "redis://:s3cret@cache:6379/0"
    assert settings.audit.store_url == "mysql://audit:t0psecret@db:3306/audit"
    visible = repr(settings) + str(settings) + f"{settings.smtp}" + str(shown(settings))
    assert "hunter2" not in visible and "s3cret" not in visible and "t0psecret" not in visible
    assert "mysql://audit:**********@db:3306/audit" in visible


def test_settings_survive_the_trip_through_the_environment(tmp_cwd: Path) -> None:
    original = load(
        {
            "DAWNING_KAFKA__BOOTSTRAPSERVERS": "a:1,b:2",
            "DAWNING_KAFKA__PRODUCER__ACKS": "all",
            "DAWNING_SMTP__PASSWORD": "hunter2",
            "DAWNING_KAFKA__ENABLED": "false",
        }
    )
    environ = original.to_environ()
    assert environ["DAWNING_KAFKA__BOOTSTRAPSERVERS"] == "a:1,b:2"
    assert load(environ) == original


@pytest.mark.parametrize(
    ("section", "value", "named", "problem"),
    [
        (
            "Worker",
            {"Modulez": "myproj.tasks"},
            "Worker:Modulez",
            "is not a dawning-streams setting",
        ),
        ("Timers", {"StuckAfter": 60}, "Timers:StuckAfter", "is not a dawning-streams setting"),
        ("Kafka", 5, "Kafka", "must be a JSON object"),
        ("Worker", ["myproj.tasks"], "Worker", "must be a JSON object"),
        ("Worker", {"Modules": []}, "Worker:Modules", "must name at least one module"),
    ],
)
def test_a_project_section_of_the_file_is_as_strict_as_kafka(
    tmp_cwd: Path, section: str, value: object, named: str, problem: str
) -> None:
    (tmp_cwd / "appsettings.json").write_text(json.dumps({**SEED_APPSETTINGS, section: value}))
    with pytest.raises(SettingsError) as refused:
        load()
    assert refused.value.key == named
    assert f"(from appsettings.json): {problem}" in str(refused.value)


def test_a_project_sections_variables_are_as_strict_as_kafkas() -> None:
    with pytest.raises(SettingsError) as refused:
        load({"Worker__Modulez": "myproj.tasks"})
    assert refused.value.key == "Worker__Modulez"
    assert "is not a dawning-streams setting" in str(refused.value)
    with pytest.raises(SettingsError) as refused:
        load({"DAWNING_WORKER__MODULES": " "})
    assert refused.value.key == "Worker:Modules"
    assert "must name at least one module" in str(refused.value)
    # A section the gateway's own clients may read stays lenient.
    assert load({"Redis__ConnectTimeout": "5000"}) == load({})


@pytest.mark.parametrize(
    ("kafka", "named"),
    [
        ({"Partitons": 6}, "Kafka:Partitons"),
        ({"Producer": {"Acks": "all", "LingrMs": 5}}, "Kafka:Producer:LingrMs"),
    ],
)
def test_a_misspelt_kafka_key_in_the_file_is_refused_by_its_path(
    tmp_cwd: Path, kafka: dict[str, object], named: str
) -> None:
    document = {**SEED_APPSETTINGS, "Kafka": {"Partitions": 6, **kafka}}
    (tmp_cwd / "appsettings.json").write_text(json.dumps(document))
    with pytest.raises(SettingsError) as refused:
        load()
    assert refused.value.key == named
    assert "(from appsettings.json): is not a dawning-streams setting" in str(refused.value)


def test_a_settings_file_with_dotnet_comments_and_trailing_commas_is_read(tmp_cwd: Path) -> None:
    # As Microsoft.Extensions.Configuration.Json reads it (comments skipped,
    # trailing commas allowed); the same characters inside strings are kept.
    (tmp_cwd / "appsettings.json").write_text(
        "\ufeff{\n"
        "  // the gateway's cluster\n"
        '  "Kafka": {\n'
        '    "BootstrapServers": "kafka-1:9092,kafka-2:9092", /* two of three */\n'
        '    "ConsumerGroupId": "a//b /* not a comment */ c,}",\n'
        '    "Producer": { "LingerMs": 7, },\n'
        "  },\n"
        "}\n"
    )
    kafka = load().kafka
    assert kafka.bootstrap_servers == ("kafka-1:9092", "kafka-2:9092")
    assert kafka.consumer_group_id == "a//b /* not a comment */ c,}"
    assert kafka.producer.linger_ms == 7


def test_a_broken_settings_file_is_named_as_it_was_found_with_its_line(tmp_cwd: Path) -> None:
    (tmp_cwd / "appsettings.json").write_text('{\n  /* a\n  comment */\n  "Kafka": {,}\n}\n')
    with pytest.raises(SettingsError) as caught:
        load()
    assert str(caught.value).startswith(
        "settings file='appsettings.json' (from the working directory): unreadable: "
    )
    assert "line 4 column 13" in str(caught.value)
    (tmp_cwd / "appsettings.json").write_text('{"Kafka": {} /* never closed')
    with pytest.raises(SettingsError, match="a /\\* comment opened at char 13 is never closed"):
        load()
