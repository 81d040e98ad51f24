"""A handler's function behind a check of the ``MessageId``s it has finished.

See :class:`~dawning_streams.core.dedupe.Dedupe` for the policy. The ids live
in a :class:`~dawning_streams.kafka.tables.MarkerTable`: each is written to the
changelog partition of its record's partition, so the worker that owns a
source partition has recovered its ids before it takes the partition's
records, after a restart or a rebalance alike, and a redelivery (which comes
on the same partition) meets them. Ids older than the window are purged,
with tombstones, so the table stays bounded by what was handled in it.

An id is written only once the function has returned, so a message that
failed, is retried or dead-lettered, or was handled when the worker died,
runs again. A record with no ``MessageId`` on the wire (a raw producer's)
goes by ``topic/partition/offset`` of its first reading, which a redelivery
and a retry share.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dawning_streams.core.dedupe import Dedupe
from dawning_streams.handlers.delivery import current_delivery
from dawning_streams.kafka.tables import MarkerTable

if TYPE_CHECKING:
    from dawning_streams.handlers.host import HandlerHost

__all__ = ["Deduplicated"]

logger = logging.getLogger(__name__)


class Deduplicated:
    """Calls ``function`` with a message unless its ``MessageId`` was finished before."""

    def __init__(
        self,
        app: HandlerHost,
        function: Callable[[Any], Awaitable[Any]],
        *,
        handler: str,
        policy: Dedupe,
        on_skip: Callable[[str], None],
    ) -> None:
        self.function = function
        self.on_skip = on_skip
        self.handler = handler
        self.policy = policy
        self.seen = MarkerTable.declare(
            app,
            policy.table_name(handler),
            ttl_s=policy.window_s,
            # Often enough that an id outlives its window by a quarter at most.
            purge_every_s=min(3600.0, max(1.0, policy.window_s / 4)),
            help=f"MessageId of each message {handler} finished, for {policy.window_s:g} s.",
        )
        #: Redeliveries skipped since start.
        self.skipped = 0

    async def __call__(self, message: Any) -> None:
        delivery = current_delivery()
        # The id on the wire: a record without one was given a fresh id when it
        # was decoded, a new one on each delivery, so it goes by where it was
        # first read instead, which a redelivery shares.
        seen_as = delivery.message_id or f"{delivery.topic}/{delivery.partition}/{delivery.offset}"
        if self.seen.marked(seen_as):
            self.skipped += 1
            self.on_skip(self.handler)
            logger.info("%s: %s was handled before; skipping it", self.handler, seen_as)
            return
        await self.function(message)
        if self.policy.wait:
            await self.seen.mark(seen_as, delivery.partition)
        else:
            self.seen.mark_soon(seen_as, delivery.partition)
