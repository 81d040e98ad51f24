"""The Faust transport, with the producer settings Faust leaves out.

Faust builds aiokafka's producer without ``enable_idempotence`` unless it is in
a transaction; this transport passes it, with ``acks``, from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["Producer", "Transport"]


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent when the settings say so."""

    def _settings_extra(self) -> Mapping[str, Any]:
        settings = self.app.dawning_settings.kafka.producer  # type: ignore[attr-defined]
        return {
            **super()._settings_extra(),
            "acks": settings.acks,
            "enable_idempotence": settings.enable_idempotence,
        }


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Producer`."""

    Producer = Producer
