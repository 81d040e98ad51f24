"""One consumer group, one app: a worker does not join a group whose members run other modules.

Faust assigns a group's partitions, tables and standbys as one app. A member
whose topics differ (other ``Worker:Modules``, or a release with another
handler) makes the leader's assignment disagree with what a member computes
from it, and Faust's assertion then ends a worker that was running fine. So
before its first subscription a worker asks the group's coordinator what its
members subscribe to, and stops at once if any differs, saying which topics
and which setting to change.

The question is best effort: if Kafka does not answer it in time, the worker
joins as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka.security import client_options

__all__ = ["ForeignMember", "foreign_members", "other_apps_in_group", "refusal"]

logger = logging.getLogger(__name__)

#: How long the question may take before the worker joins without an answer.
ASK_TIMEOUT_S = 5.0
#: How many topic names a refusal lists on each side.
_SHOWN = 5


@dataclass(frozen=True, slots=True)
class ForeignMember:
    """A member of the group whose subscription is not this worker's."""

    client: str
    topics: frozenset[str]


def foreign(groups: Iterable[dict[str, Any]], topics: set[str]) -> list[ForeignMember]:
    """The members of described ``groups`` that subscribe to other topics than ``topics``."""
    found = []
    for group in groups:
        if group["error_code"] or group["protocol_type"] != "consumer":
            continue
        for member in group["members"]:
            subscribed = _subscription(member["member_metadata"])
            if subscribed is not None and subscribed != topics:
                client = f"a worker on {member['client_host'].lstrip('/')}"
                found.append(ForeignMember(client, frozenset(subscribed)))
    return found


async def foreign_members(settings: KafkaSettings, topics: set[str]) -> list[ForeignMember]:
    """The members of ``Kafka:ConsumerGroupId`` that subscribe to other topics than
    ``topics``; none when the group is empty or Kafka does not answer in time."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        async with asyncio.timeout(ASK_TIMEOUT_S):
            await admin.start()
            responses = await admin.describe_consumer_groups([settings.consumer_group_id])
    except Exception as exc:  # best effort: the join goes on as before
        logger.debug("could not describe group %s: %r", settings.consumer_group_id, exc)
        return []
    finally:
        with suppress(Exception):
            await admin.close()
    return foreign([g for r in responses for g in r.to_object()["groups"]], topics)


def _subscription(metadata: bytes | None) -> set[str] | None:
    """The topics a member of the consumer protocol subscribes to (None: not known yet)."""
    if not metadata:
        return None
    try:
        return set(ConsumerProtocolMemberMetadata.decode(metadata).subscription)
    except Exception:  # not a consumer's metadata: nothing to compare
        return None


async def other_apps_in_group(settings: KafkaSettings, topics: set[str]) -> str | None:
    """The line a worker subscribing to ``topics`` stops with, or None if it may join."""
    members = await foreign_members(settings, topics)
    return refusal(settings.consumer_group_id, topics, members) if members else None


def refusal(group: str, topics: set[str], members: list[ForeignMember]) -> str:
    """The one line a worker stops with: whose topics differ from its own, and how."""
    first = members[0]
    theirs, ours = _sorted(first.topics - topics), _sorted(topics - first.topics)
    return (
        f"Kafka:ConsumerGroupId {group!r} is in use by {len(members)} worker(s) running other "
        f"modules ({first.client}: {_listed(theirs)} only theirs, {_listed(ours)} only this "
        "worker's). A group's workers must all run the same Worker:Modules: give this one a "
        "group of its own (DAWNING_KAFKA__CONSUMERGROUPID), or stop the others first when "
        "changing the modules (one killed without leaving counts until "
        "Kafka:SessionTimeoutMs has passed)"
    )


def _sorted(names: Iterable[str]) -> list[str]:
    """Message and timer topics first: they name the modules better than changelogs."""
    return sorted(names, key=lambda name: (name.endswith("-changelog"), name))


def _listed(names: list[str]) -> str:
    if not names:
        return "no topics"
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
