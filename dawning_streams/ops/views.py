"""The worker's operational web endpoints, on the web port (``Web:Host``, 127.0.0.1 by default).

======================================  =====================================================
``GET /``                                the dashboard: one card per handler (HTML)
``GET /handlers/{name}``                 one handler: charts, topics, partitions, timers
``GET /topics``                          every topic and the group's lag per partition
``GET /cluster``                         brokers, leaders, in-sync replicas, the group
``GET /messages?id=|key=&since=&until=`` where is my message? (see ops/search.py)
``GET /dead-letters/{topic}``            one dead-letter topic's messages, with replay buttons
``POST /api/dead-letters/replay``        replay dead letters (bearer token required)
``GET /metrics``                         Prometheus text
``GET /health``                          200 while the process is alive
``GET /ready``                           200 when ready, else 503 with the failing checks
``GET /api/overview``                    what the dashboard shows, as JSON
``GET /api/handlers/{name}``, ``/api/topics``, ``/api/cluster``, ``/api/messages``: the same
======================================  =====================================================

Every request that changes state needs ``Authorization: Bearer <Web:AdminToken>``;
without it (or with no token configured) the answer is 401 and nothing happens.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web

from dawning_streams.core.errors import KafkaUnavailable, PublishError
from dawning_streams.observability import health
from dawning_streams.observability.metrics import CONTENT_TYPE
from dawning_streams.ops import dashboard, dashboard_html, search
from dawning_streams.ops.web import BadRequest, Page, Query, error, quiet_bad_requests

if TYPE_CHECKING:
    from dawning_streams.ops.host import OpsHost

__all__ = ["DashboardWeb", "authorized", "install"]


class DashboardWeb(Web):
    """Faust's aiohttp web server without Faust's index page: ``/`` is the dashboard.

    A request aiohttp cannot parse (a 100 kB URL, a bad request line) is
    answered 400 by aiohttp and logged in one WARNING line, not as an ERROR
    with a traceback: it is the client's mistake, not the worker's.
    """

    production_blueprints = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        quiet_bad_requests()


def authorized(app: OpsHost, request: Request) -> bool:
    """Whether ``request`` carries the admin bearer token (never, when none is set)."""
    token = app.dawning_settings.web.admin_token
    header = request.headers.get("Authorization", "")  # type: ignore[attr-defined]
    scheme, _, given = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.reveal().encode())


def _unauthorized(view: View, app: OpsHost) -> Response:
    reason = (
        "this needs Authorization: Bearer <Web:AdminToken>"
        if app.dawning_settings.web.admin_token is not None
        else "admin actions are disabled: set Web:AdminToken to enable them"
    )
    response = view.json({"error": reason}, status=401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="dawning-streams"'  # type: ignore[attr-defined]
    return response


def _no_handler(view: View, app: OpsHost, name: str) -> Response:
    known = ", ".join(sorted(app.handlers)) or "none"
    return error(view, 404, f"no handler {name!r}; this app has: {known}")


async def _search(app: OpsHost, request: Request) -> search.Search:
    """Run the search a request asks for; :class:`BadRequest` names what is wrong with it."""
    query = Query(request, {"id", "key", "since", "until"})
    message_id, key = query.uuid("id"), query.text("key")
    if message_id is None and key is None:
        raise BadRequest("give id=<MessageId> or key=<message key>")
    if message_id is not None and key is not None:
        raise BadRequest("give id=<MessageId> or key=<message key>, not both")
    snapshot = await app.sampler.sample()  # the committed offsets as they are now
    try:
        return await search.find(
            app,
            snapshot,
            message_id=message_id,
            key=key,
            since=query.time("since"),
            until=query.time("until"),
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class _Probe(Page):
    """An endpoint for scrapers and probes, which may add parameters of their
    own (Prometheus' ``params``): they are ignored, not refused."""

    parameters = None


def install(app: OpsHost) -> None:
    """Add the operational endpoints to ``app``'s web server."""

    @app.page("/metrics")
    class Metrics(_Probe):
        """Every metric, in the Prometheus text format."""

        async def get(self, request: Request) -> Response:
            return self.bytes(
                app.telemetry.metrics.render(), content_type=CONTENT_TYPE.split(";")[0]
            )

    @app.page("/health")
    class Health(_Probe):
        """The process is alive and serving requests."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "alive", "instance": app.dawning_settings.instance_name})

    @app.page("/ready")
    class Ready(_Probe):
        """200 when broker, assignment and table recovery are all fine; 503 otherwise."""

        async def get(self, request: Request) -> Response:
            report = health.readiness(app)
            return self.json(report, status=200 if report["ready"] else 503)

    @app.page("/")
    class Dashboard(Page):
        """The operator's overview page."""

        async def get(self, request: Request) -> Response:
            overview = await dashboard.overview(app)
            return self.html(dashboard_html.render_overview(overview))

    @app.page("/api/overview")
    class Overview(Page):
        """The dashboard's data as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json(await dashboard.overview(app))

    @app.page("/handlers/{name}")
    class HandlerPage(Page):
        """One handler, its charts and its topics."""

        async def get(self, request: Request, name: str) -> Response:
            data = await dashboard.handler_detail(app, name)
            if data is None:
                return _no_handler(self, app, name)
            return self.html(dashboard_html.render_handler(data))

    @app.page("/api/handlers/{name}")
    class HandlerData(Page):
        """One handler's data as JSON."""

        async def get(self, request: Request, name: str) -> Response:
            data = await dashboard.handler_detail(app, name)
            if data is None:
                return _no_handler(self, app, name)
            return self.json(data)

    @app.page("/topics")
    class Topics(Page):
        """Every topic and the group's lag per partition."""

        async def get(self, request: Request) -> Response:
            return self.html(dashboard_html.render_topics(await dashboard.topics(app)))

    @app.page("/api/topics")
    class TopicsData(Page):
        """Every topic, as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json(await dashboard.topics(app))

    @app.page("/cluster")
    class Cluster(Page):
        """Brokers, partition leaders and in-sync replicas, and the group's members."""

        async def get(self, request: Request) -> Response:
            return self.html(dashboard_html.render_cluster(await dashboard.cluster(app)))

    @app.page("/api/cluster")
    class ClusterData(Page):
        """The cluster, as JSON."""

        async def get(self, request: Request) -> Response:
            return self.json(await dashboard.cluster(app))

    @app.page("/messages")
    class Messages(Page):
        """Where is my message? By ``id`` (a MessageId) or ``key``, over ``since``-``until``."""

        parameters = None  # the search checks them (a bad one shows on the page)

        async def get(self, request: Request) -> Response:
            header = await dashboard.topics(app)
            if not request.query:  # type: ignore[attr-defined]
                return self.html(dashboard_html.render_search(header, None, None))
            try:
                found = await _search(app, request)
            except BadRequest as exc:
                page = dashboard_html.render_search(header, None, str(exc))
                return self.html(page, status=400)
            except KafkaUnavailable as exc:
                page = dashboard_html.render_search(header, None, str(exc))
                return self.html(page, status=503)
            return self.html(dashboard_html.render_search(header, found, None))

    @app.page("/api/messages")
    class MessagesData(Page):
        """The search, as JSON."""

        parameters = None  # the search checks them (a bad one shows on the page)

        async def get(self, request: Request) -> Response:
            try:
                found = await _search(app, request)
            except BadRequest as exc:
                return error(self, 400, str(exc))
            except KafkaUnavailable as exc:
                return error(self, 503, str(exc))
            return self.json(search.as_json(found))

    @app.page("/dead-letters/{topic}")
    class DeadLetters(Page):
        """The dead letters of one topic, newest first."""

        async def get(self, request: Request, topic: str) -> Response:
            if topic not in dashboard.dead_letter_topics(app):
                return self.problem(request, 404, f"{topic!r} is not a dead-letter topic")
            try:
                letters = await dashboard.browse(app, topic)
            except KafkaUnavailable as exc:
                return self.problem(request, 503, str(exc))
            return self.html(dashboard_html.render_dead_letters(topic, letters))

    @app.page("/api/dead-letters/replay")
    class Replay(Page):
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
            except (KafkaUnavailable, PublishError) as exc:
                return error(self, 503, f"the replay did not finish: {exc}")
            return self.json({"replayed": replayed})
