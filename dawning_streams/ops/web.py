"""Helpers for the worker's web views: strict query parsing and JSON errors,
and the check that the worker's port is free.

A malformed request gets ``400 {"error": "..."}`` naming the parameter and
what is wrong with it; nothing is guessed.
"""

from __future__ import annotations

import errno
import functools
import html
import logging
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp.http_exceptions import BadHttpMessage
from faust.web import Request, Response, View

from dawning_streams.core.errors import DawningError

__all__ = ["BadRequest", "Page", "Query", "error", "port_taken", "quiet_bad_requests"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadRequest(DawningError):
    """A request a view cannot answer; becomes a 400."""


def error(view: View, status: int, message: str) -> Response:
    """A JSON error response."""
    return view.json({"error": message}, status=status)


class Query:
    """The query string of ``request``, limited to the parameters a view knows."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        params: Any = request.query  # type: ignore[attr-defined]  # a MultiDict
        for name in params:
            if name not in allowed:
                takes = f"use {', '.join(sorted(allowed))}" if allowed else "this page takes none"
                raise BadRequest(f"unknown parameter {name!r}; {takes}")
            if len(params.getall(name)) > 1:
                raise BadRequest(f"parameter {name!r} is given more than once")
        self.params = params

    def text(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value else None

    def uuid(self, name: str) -> uuid.UUID | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            raise BadRequest(f"{name}={value!r} is not a GUID") from None

    def time(self, name: str) -> datetime | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{name}={value!r} is not an ISO-8601 time") from None
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
        if parsed < _EPOCH:
            # Kafka's timestamps, and the stores', count from the epoch.
            raise BadRequest(f"{name}={value!r} is before 1970-01-01T00:00:00Z")
        return parsed

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{name}={value!r} is not an integer") from None
        if not low <= number <= high:
            raise BadRequest(f"{name}={number} must be from {low} to {high}")
        return number


class Page(View):
    """A Faust view whose query string is checked before it runs: a parameter
    not in ``parameters`` gets a 400 naming it, and the view never sees it."""

    #: The query parameters the view reads; None when it checks them itself
    #: (with :class:`Query`, whose errors it turns into its own responses).
    parameters: ClassVar[frozenset[str] | None] = frozenset()

    async def dispatch(self, request: Any) -> Any:
        if self.parameters is not None:
            try:
                Query(request, set(self.parameters))
            except BadRequest as exc:
                return self.problem(request, 400, str(exc))
        return await super().dispatch(request)

    def problem(self, request: Any, status: int, message: str) -> Response:
        """An error as JSON, or as a page for a browser on one of the dashboard's pages."""
        if "text/html" in request.headers.get("Accept", ""):
            title = {400: "bad request", 404: "not found"}.get(status, "unavailable")
            return self.html(
                f"<!doctype html><title>{title}</title><p>{html.escape(message)}</p>"
                "<p><a href='/'>dashboard</a></p>",
                status=status,
            )
        return error(self, status, message)


class _BadRequestLine(logging.Filter):
    """aiohttp's ERROR and traceback for a request it could not parse, as one WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc.message}; answered 400"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@functools.cache  # once per process
def quiet_bad_requests() -> None:
    """Install :class:`_BadRequestLine` on aiohttp's server logger."""
    logging.getLogger("aiohttp.server").addFilter(_BadRequestLine())


def port_taken(host: str, port: int, *, named: str = "") -> str | None:
    """Why the worker could not serve on ``host:port``, or None if it can;
    ``named``: the option that chose the port, if not ``Web:Port``.

    Asked before the worker starts anything, so that a second worker on one
    machine (both on the default 6066) stops in one line naming the setting,
    not in aiohttp's traceback after its consumer has joined the group.
    """
    try:
        # As aiohttp binds: SO_REUSEADDR, so a port in TIME_WAIT is free.
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        chosen = f"{named} {port}" if named else f"Web:Port={port}"
        if exc.errno == errno.EADDRINUSE:
            return (
                f"{chosen}: {host}:{port} is already in use (another worker on this "
                "machine?); give each worker its own port (DAWNING_WEB__PORT)"
            )
        return f"Web:Host={host!r}, {chosen}: cannot listen there: {exc.strerror or exc}"
