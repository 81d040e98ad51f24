"""TLS and SASL towards the brokers, from ``Kafka:Security``, for every Kafka client.

Faust's producer, consumer and topic admin get it through ``broker_credentials``;
the clients dawning-streams opens itself (dead-letter reading, the dashboard's
cluster view) take :func:`client_options`.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from dawning_streams.core.settings import KafkaSecuritySettings, KafkaSettings

__all__ = ["client_options", "faust_credentials", "ssl_context"]


def ssl_context(security: KafkaSecuritySettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (CA bundle, client certificate), else None."""
    if not security.uses_tls:
        return None
    return create_ssl_context(
        cafile=security.ca_file,
        certfile=security.cert_file,
        keyfile=security.key_file,
        password=security.key_password.reveal() if security.key_password else None,
    )


def faust_credentials(security: KafkaSecuritySettings) -> CredentialsT | None:
    """``broker_credentials`` for the Faust app, or None for PLAINTEXT."""
    context = ssl_context(security)
    if security.protocol.startswith("SASL"):
        assert security.sasl_password is not None  # checked by the settings
        return SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password.reveal(),
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka consumer or admin client of these brokers."""
    security = kafka.security
    options: dict[str, Any] = {
        "bootstrap_servers": ",".join(kafka.bootstrap_servers),
        "security_protocol": security.protocol,
    }
    context = ssl_context(security)
    if context is not None:
        options["ssl_context"] = context
    if security.protocol.startswith("SASL"):
        assert security.sasl_password is not None
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": security.sasl_password.reveal(),
        }
    return options
