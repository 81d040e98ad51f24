"""The worker's operational web endpoints, on the web port (``Web:Host``, 127.0.0.1 by default).

======================================  =====================================================
``GET /``                                the dashboard (HTML)
``GET /dead-letters/{topic}``            one dead-letter topic's messages, with replay buttons
``POST /api/dead-letters/replay``        replay dead letters (bearer token required)
``GET /metrics``                         Prometheus text
``GET /health``                          200 while the process is alive
``GET /ready``                           200 when ready, else 503 with the failing checks
``GET /api/overview``                    what the dashboard shows, as JSON
======================================  =====================================================

Every request that changes state needs ``Authorization: Bearer <Web:AdminToken>``;
without it (or with no token configured) the answer is 401 and nothing happens.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web

from dawning_streams.observability import health
from dawning_streams.observability.metrics import CONTENT_TYPE
from dawning_streams.ops import dashboard, dashboard_html

if TYPE_CHECKING:
    from dawning_streams.application import App

__all__ = ["DashboardWeb", "authorized", "install"]


class DashboardWeb(Web):
    """Faust's aiohttp web server without Faust's index page: ``/`` is the dashboard."""

    production_blueprints = ()


def authorized(app: App, request: Request) -> bool:
    """Whether ``request`` carries the admin bearer token (never, when none is set)."""
    token = app.dawning_settings.web.admin_token
    header = request.headers.get("Authorization", "")  # type: ignore[attr-defined]
    scheme, _, given = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.reveal().encode())


def _unauthorized(view: View, app: App) -> Response:
    reason = (
        "this needs Authorization: Bearer <Web:AdminToken>"
        if app.dawning_settings.web.admin_token is not None
        else "admin actions are disabled: set Web:AdminToken to enable them"
    )
    response = view.json({"error": reason}, status=401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="dawning-streams"'  # type: ignore[attr-defined]
    return response


def install(app: App) -> None:
    """Add the operational endpoints to ``app``'s web server."""

    @app.page("/metrics")
    class Metrics(View):
        """Every metric, in the Prometheus text format."""

        async def get(self, request: Request) -> Response:
            return self.bytes(
                app.telemetry.metrics.render(), content_type=CONTENT_TYPE.split(";")[0]
            )

    @app.page("/health")
    class Health(View):
        """The process is alive and serving requests."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "alive", "instance": app.dawning_settings.instance_name})

    @app.page("/ready")
    class Ready(View):
        """200 when broker, assignment and table recovery are all fine; 503 otherwise."""

        async def get(self, request: Request) -> Response:
            report = health.readiness(app)
            return self.json(report, status=200 if report["ready"] else 503)

    @app.page("/")
    class Dashboard(View):
        """The operator's overview page."""

        async def get(self, request: Request) -> Response:
            overview = await dashboard.overview(app)
            return self.html(dashboard_html.render_overview(overview))

    @app.page("/api/overview")
    class Overview(View):
        """The dashboard's data as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json(await dashboard.overview(app))

    @app.page("/dead-letters/{topic}")
    class DeadLetters(View):
        """The dead letters of one topic, newest first."""

        async def get(self, request: Request, topic: str) -> Response:
            if topic not in dashboard.dead_letter_topics(app):
                return self.json({"error": f"{topic!r} is not a dead-letter topic"}, status=404)
            letters = await dashboard.browse(app, topic)
            return self.html(dashboard_html.render_dead_letters(topic, letters))

    @app.page("/api/dead-letters/replay")
    class Replay(View):
        """Replay chosen dead letters; needs the admin bearer token."""

        async def post(self, request: Request) -> Response:
            if not authorized(app, request):
                return _unauthorized(self, app)
            try:
                body: Any = await request.json()  # type: ignore[attr-defined]
            except ValueError:
                return self.json({"error": "the body must be JSON"}, status=400)
            try:
                replayed = await dashboard.replay(app, body)
            except dashboard.BadReplay as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.json({"replayed": replayed})
