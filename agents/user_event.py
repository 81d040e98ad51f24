"""``dawning.user-event``: per-user state, in order per user, and follow-up effects.

The handler is ordered: a user's later events wait behind one in retry. It
keeps counts by event type and the last event in the ``user-state`` table,
served by ``GET /users/{id}`` from whichever worker owns that user. It
de-duplicates by ``MessageId`` (``dedupe=True``), so a redelivered event
counts once.

Follow-ups, published with ids derived from the event's, so a redelivered
event repeats none of them (the email agent skips ids it has sent):

* ``user.created``: a welcome email to ``EventData.Email``;
* ``user.password_changed``: a security-notice email, and invalidation of
  ``user:permissions:{id}:*``;
* ``user.role_assigned``: invalidation of ``user:permissions:{id}:*``.
"""

from __future__ import annotations

import logging
import uuid

from faust.web import Request, Response

from dawning_streams import (
    App,
    CacheInvalidationMessage,
    EmailMessage,
    Handler,
    MessageBase,
    UserEventMessage,
)
from dawning_streams.ops.web import Page, error
from dawning_streams.tables import user_state
from dawning_streams.tables.user_state import UserState

__all__ = ["install"]

logger = logging.getLogger(__name__)

_FOLLOW_UPS = uuid.UUID("5b0c6d1e-8f0e-4f37-9a55-2c1f3d1c9e01")

WELCOME = ("Welcome to Dawning", "Hello {name}, your Dawning account is ready.")
SECURITY_NOTICE = (
    "Your Dawning password was changed",
    "Hello {name}, the password of your account was just changed. "
    "If this was not you, contact your administrator.",
)


def install(app: App) -> Handler[UserEventMessage]:
    """Declare the user-event handler and ``GET /users/{id}``."""
    table = user_state.create(app)

    @app.handler(UserEventMessage, ordered=True, dedupe=True, name="track_user_event")
    async def track_user_event(message: UserEventMessage) -> None:
        """Count the event for its user, then publish its follow-ups."""
        key = str(message.user_id)
        state = table.get(key) or UserState(counts={})
        counts = dict(state.counts)
        counts[message.event_type] = counts.get(message.event_type, 0) + 1
        table[key] = UserState(
            user_name=message.user_name or state.user_name,
            counts=counts,
            last_event={
                "message_id": str(message.message_id),
                "event_type": message.event_type,
                "timestamp": message.timestamp.isoformat() if message.timestamp else None,
                "event_data": message.event_data,
            },
        )
        for follow_up in follow_ups(message):
            await app.bus.publish(follow_up)

    @app.page("/users/{user_id}")
    class UserView(Page):
        """One user's event counts and last event, from the worker that owns it."""

        @app.table_route(table=table, match_info="user_id")
        async def get(self, request: Request, user_id: str) -> Response:
            try:
                key = str(uuid.UUID(user_id))
            except ValueError:
                return error(self, 400, f"user id {user_id!r} is not a GUID")
            state = table.get(key)
            if state is None:
                return error(self, 404, f"no events for user {key}")
            return self.json({"user_id": key, **state.asdict()})

    return track_user_event


def follow_ups(event: UserEventMessage) -> list[MessageBase]:
    """The messages ``event`` causes; their ids are derived from the event's."""

    def derived_id(purpose: str) -> uuid.UUID:
        return uuid.uuid5(_FOLLOW_UPS, f"{event.message_id}:{purpose}")

    common = {
        "correlation_id": event.correlation_id or str(event.message_id),
        "tenant_id": event.tenant_id,
    }
    name = event.user_name or "there"
    data = {k.lower(): v for k, v in (event.event_data or {}).items()}
    email = data.get("email")
    invalidate = CacheInvalidationMessage(
        pattern=f"user:permissions:{event.user_id}:*",
        reason=event.event_type,
        message_id=derived_id("permissions"),
        **common,
    )

    def mail(purpose: str, template: tuple[str, str]) -> list[MessageBase]:
        if not isinstance(email, str) or "@" not in email:
            logger.warning(
                "%s for user %s has no EventData.Email; no %s email",
                event.event_type,
                event.user_id,
                purpose,
            )
            return []
        subject, body = template
        return [
            EmailMessage(
                to=email,
                subject=subject,
                body=body.format(name=name),
                message_id=derived_id(purpose),
                **common,
            )
        ]

    if event.event_type == "user.created":
        return mail("welcome", WELCOME)
    if event.event_type == "user.password_changed":
        return [*mail("security-notice", SECURITY_NOTICE), invalidate]
    if event.event_type == "user.role_assigned":
        return [invalidate]
    return []
