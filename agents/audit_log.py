"""``dawning.audit-log``: persist audit entries to SQL in batches, each exactly once.

Entries are written up to ``Audit:BatchSize`` at a time, or whatever arrived
within ``Audit:BatchWithinMs``; the message id is the primary key, so a
redelivered entry is ignored. ``GET /audit?user_id=&action=&since=&until=&limit=``
reads them back, newest first. Once an hour entries older than
``Audit:RetentionDays`` are deleted: on one instance for PostgreSQL and MySQL
(a scheduled task), on every worker for SQLite, where each has its own file
(run several workers against PostgreSQL or MySQL).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from faust.web import Request, Response

from dawning_streams import App, AuditLogMessage, Handler
from dawning_streams.ops.web import BadRequest, Page, Query, error
from dawning_streams.services.audit_store import (
    AuditQuery,
    AuditStore,
    SqliteAuditStore,
    open_audit_store,
)

__all__ = ["install"]

logger = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


def install(app: App) -> Handler[AuditLogMessage]:
    """Declare the audit handler, its store and its view on ``app``."""
    settings = app.dawning_settings.audit
    store: AuditStore = open_audit_store(settings.store_url)
    app.add_dependency(store)
    if store.reachability is not None:
        app.watch(store.reachability)
    app.audit_store = store  # type: ignore[attr-defined]

    @app.handler(
        AuditLogMessage,
        name="store_audit_log",
        batch_size=settings.batch_size,
        batch_within_s=settings.batch_within_ms / 1000,
    )
    async def store_audit_log(messages: list[AuditLogMessage]) -> None:
        """Write a batch of entries; repeats of stored ids are skipped."""
        await store.write(messages)

    async def purge_old_audit_entries() -> None:
        """Delete entries older than ``Audit:RetentionDays``."""
        cutoff = datetime.now(UTC) - timedelta(days=settings.retention_days)
        removed = await store.delete_older_than(cutoff)
        logger.info("audit retention: removed %d entries from before %s", removed, cutoff)

    if isinstance(store, SqliteAuditStore):
        app.timer(RETENTION_EVERY_S)(purge_old_audit_entries)  # each worker's own file
    else:
        app.scheduled(every_s=RETENTION_EVERY_S, name="audit-retention")(purge_old_audit_entries)
    app.purge_old_audit_entries = purge_old_audit_entries  # type: ignore[attr-defined]

    @app.page("/audit")
    class AuditView(Page):
        """Audit entries, newest first, filtered by user, action and time."""

        parameters = None  # checked below, with the values

        async def get(self, request: Request) -> Response:
            try:
                query = Query(request, {"user_id", "action", "since", "until", "limit"})
                wanted = AuditQuery(
                    user_id=query.uuid("user_id"),
                    action=query.text("action"),
                    since=query.time("since"),
                    until=query.time("until"),
                    limit=query.integer("limit", default=100, low=1, high=1000),
                )
                if wanted.since and wanted.until and wanted.since > wanted.until:
                    raise BadRequest(
                        f"since ({wanted.since.isoformat()}) is after until "
                        f"({wanted.until.isoformat()})"
                    )
            except BadRequest as exc:
                return error(self, 400, str(exc))
            return self.json({"entries": await store.query(wanted)})

    return store_audit_log
