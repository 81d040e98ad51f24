"""The dashboard in a real headless Chromium, against a worker on the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from playwright.async_api import Browser, Page, async_playwright

import dawning_streams.agents
from dawning_streams import (
    AuditLogMessage,
    Reject,
    Retry,
    Settings,
    UserEventMessage,
    create_app,
)
from dawning_streams.core.settings import Secret
from dawning_streams.ops.sampler import SAMPLE_INTERVAL_S

from ..conftest import ROOT
from ..handler_helpers import Calls, eventually, running
from ..kafka_helpers import read_topic

pytestmark = pytest.mark.kafka

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "dashboard-admin-token"
#: Where the screenshot is kept for people to look at after a run.
SCREENSHOTS = ROOT / ".local" / "test" / "screenshots"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, driven by Playwright."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install it with scripts/browser.sh", pytrace=False)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def text_of(page: Page, section: str) -> str:
    """The text of the dashboard section whose heading starts with ``section``."""
    heading = page.locator("section h2", has_text=section).first
    return await heading.locator("xpath=..").inner_text()


async def figures_of(page: Page, section: str) -> dict[str, str]:
    """The figures (label: value) of the dashboard section headed ``section``."""
    heading = page.locator("section h2", has_text=section).first
    spans = heading.locator("xpath=..").locator(".figures > span")
    figures = {}
    for text in await spans.all_inner_texts():
        label, _, value = text.strip().rpartition(" ")
        figures[label] = value
    return figures


async def test_the_dashboard_shows_each_handler_and_replays_a_dead_letter(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        settings, web=dataclasses.replace(settings.web, admin_token=Secret(TOKEN))
    )
    app = create_app(settings)
    visits = app.Table("visits", default=int, partitions=settings.kafka.partitions)
    calls = Calls()
    topic = settings.kafka.topics.audit_log
    dlq = f"{topic}.dlq"

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "poison":
            raise Reject("never valid")
        visits[str(message.user_id)] += 1

    base = f"http://127.0.0.1:{settings.web.port}"
    async with running(app):
        users = [uuid.uuid4() for _ in range(5)]
        for user in users:
            await app.bus.publish(AuditLogMessage(user_id=user, action="ok", entity_type="U"))
        poison_user = uuid.uuid4()
        await app.bus.publish(
            AuditLogMessage(user_id=poison_user, action="poison", entity_type="U")
        )
        await calls.wait_until(lambda items: len(items) == 6)
        await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)

        page = await browser.new_page(viewport={"width": 1400, "height": 1000})

        async def settled() -> bool:
            # The page shows the sampler's latest look at the cluster, a few
            # seconds old at most; committed offsets reach the group a moment
            # after handling.
            await page.goto(f"{base}/topics")
            header = await page.locator("header").inner_text()
            return "not ready" not in header and f"{topic}\tmessages\t3\t6\t0" in (
                await text_of(page, "Topics")
            )

        await eventually(
            settled, timeout_s=30, what="the dashboard showing 6 messages, all committed"
        )
        topics = await text_of(page, "Topics")
        assert f"{dlq}\tdead letters\t3\t1" in topics
        # topic, partition, committed, end, lag, member, leader
        lag_rows = [
            line.split("\t")
            for line in (await text_of(page, "Lag per partition")).splitlines()
            if line.startswith(f"{topic}\t")
        ]
        assert sum(int(row[3]) for row in lag_rows) == 6
        assert all(row[2] == row[3] and row[4] == "0" and row[5] == "#1" for row in lag_rows)

        # The overview: a card per handler, its topics folded under it.
        await page.goto(f"{base}/")
        assert await page.title() == "dawning-streams dashboard"
        card = await text_of(page, "audit")
        assert f"{topic}, one at a time" in card
        figures = await figures_of(page, "audit")
        assert figures["handled/min"] == "5" and figures["failed/min"] == "1", card
        assert figures["dead letters"] == "1" and figures["lag"] == "0", card
        assert figures["timers"] == "0" and figures["stuck"] == "0", card
        assert float(figures["p50 ms"]) > 0, card
        svg = page.locator("section.card svg.chart").first
        assert await svg.get_attribute("aria-label") == "audit: handled and failed, this worker"
        group = await text_of(page, f"Consumer group {settings.kafka.consumer_group_id}")
        assert "state Stable, 1 member(s), 1 broker(s), every partition fully replicated" in group
        tables = await text_of(page, "Tables")
        [visits_row] = [line for line in tables.splitlines() if line.startswith("visits\t")]
        assert visits_row.split("\t")[3] == "5"  # every partition is on this worker
        await page.get_by_text("every setting, secrets masked").click()
        settings_text = await text_of(page, "Settings")
        assert "Web:AdminToken\t**********" in settings_text and TOKEN not in settings_text
        # Nothing spills sideways, on a wide screen or a narrow one.
        for width in (1400, 900):
            await page.set_viewport_size({"width": width, "height": 1000})
            scroll_width = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= width, (width, scroll_width)
        await page.set_viewport_size({"width": 1400, "height": 1000})
        await _screenshot(page, tmp_path, "overview")

        # One handler: its topics, its partitions, its lag per partition over time.
        await page.get_by_role("link", name="audit", exact=True).click()
        await page.wait_for_url(f"{base}/handlers/audit")
        folded = await text_of(page, "Topics")
        for name, kind in (
            (topic, "messages"),
            (f"{topic}.audit.timers", "timers"),
            (dlq, "dead letters"),
            (f"{settings.kafka.consumer_group_id}-audit-timers-changelog", "timers"),
        ):
            assert f"{name}\t{kind}\t3" in folded, (name, folded)
        lag_chart = page.locator("svg.chart").nth(1)
        assert (
            await lag_chart.get_attribute("aria-label") == f"{topic}: the group's lag per partition"
        )
        legend = await page.locator("figure.chart .legend").nth(1).inner_text()
        assert [f"{topic}/{p}" in legend for p in range(3)] == [True] * 3
        await _screenshot(page, tmp_path, "handler")

        # The cluster: the broker, each partition's leader and in-sync replicas.
        await page.goto(f"{base}/cluster")
        brokers = await text_of(page, "Brokers")
        assert f"127.0.0.1:{settings.kafka.bootstrap_servers[0].rsplit(':', 1)[1]}" in brokers
        assert "controller" in brokers
        partitions = await text_of(page, "Partitions")
        assert "0 under-replicated" in partitions
        assert f"{topic}\t0\t1\t1\t1\tok" in partitions
        members = await text_of(page, "Consumer group")
        assert f"{topic}/0, {topic}/1, {topic}/2" in members
        await _screenshot(page, tmp_path, "cluster")

        await page.goto(f"{base}/")
        await page.get_by_role("link", name="browse and replay").click()
        await page.wait_for_url(f"{base}/dead-letters/{dlq}")
        rows = page.locator("tbody tr")
        assert await rows.count() == 1
        row = await rows.first.inner_text()
        assert str(poison_user) in row and "Reject: never valid" in row and "audit" in row
        assert '"Action":"poison"' in row  # the message itself

        # Without the token the replay is refused and nothing happens.
        await rows.first.get_by_role("button", name="replay").click()
        await page.wait_for_function("document.getElementById('result').textContent !== ''")
        assert (await page.locator("#result").inner_text()).startswith("401:")
        assert calls.items.count("poison") == 1

        await page.locator("#token").fill(TOKEN)
        await page.locator("#token").dispatch_event("change")
        await rows.first.get_by_role("button", name="replay").click()
        await page.wait_for_function(
            "document.getElementById('result').textContent.startsWith('replayed')"
        )
        assert await page.locator("#result").inner_text() == "replayed 1 message(s)"
        await calls.wait_until(lambda items: items.count("poison") == 2)
        await page.screenshot(path=str(SCREENSHOTS / "dead-letters.png"), full_page=True)
        await page.close()


async def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot kept under .local/test/screenshots/ for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / f"{name}.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copy(shot, SCREENSHOTS / f"{name}.png")


async def test_the_message_search_follows_a_message_from_its_retry_into_the_dead_letters(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    app = create_app(settings)
    calls = Calls()

    @app.handler(retry=Retry(max_retries=1, backoff_s=4.0))
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "fails":
            raise RuntimeError("the store said no")

    base = f"http://127.0.0.1:{settings.web.port}"
    async with running(app):
        failing = AuditLogMessage(user_id=uuid.uuid4(), action="fails", entity_type="U")
        fine = AuditLogMessage(user_id=uuid.uuid4(), action="ok", entity_type="U")
        await app.bus.publish(failing)
        await app.bus.publish(fine)
        await calls.wait_until(lambda items: sorted(items) == ["fails", "ok"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})

        async def state_of(message_id: object) -> str:
            await page.goto(f"{base}/messages?id={message_id}")
            return await page.locator(".found .state").first.inner_text()

        async def retrying() -> bool:
            return await state_of(failing.message_id) == "waiting"

        # Before its retry (due 4 s after the first failure): waiting, and why.
        await eventually(retrying, timeout_s=30, what="the search finding the retry")
        found = await page.locator(".found").first.inner_text()
        assert "waiting for retry 1, due" in found and "RuntimeError: the store said no" in found
        assert f"{settings.kafka.topics.audit_log}/" in found  # the record it came from
        await _screenshot(page, tmp_path, "message-search")

        async def dead() -> bool:
            return await state_of(failing.message_id) == "dead-lettered"

        await eventually(dead, timeout_s=60, what="the search finding the dead letter")
        found = await page.locator(".found").first.inner_text()
        assert "RuntimeError: the store said no (handler audit, after 2 attempt(s))" in found
        assert calls.items.count("fails") == 2

        # Handled once the group has committed past it (Faust commits every few seconds).
        async def fine_handled() -> bool:
            return await state_of(fine.message_id) == "handled"

        await eventually(fine_handled, timeout_s=30, what="the search finding the commit")
        assert await state_of(uuid.uuid4()) == "not seen"
        key = await page.goto(f"{base}/messages?key={failing.user_id}")
        assert key is not None and key.status == 200
        assert await page.locator(".found").count() == 1
        for query, problem in (
            ("id=not-a-guid", "id='not-a-guid' is not a GUID"),
            ("id=&key=", "give id=<MessageId> or key=<message key>"),
            (f"id={uuid.uuid4()}&key=k", "give id=<MessageId> or key=<message key>, not both"),
            ("key=k&since=2026-01-02&until=2026-01-01", "must be before until"),
            ("key=k&until=0001-01-01T00:30:00", "until='0001-01-01T00:30:00' is before 1970"),
            ("key=k&since=0001-01-01T00:00:00%2B05:00", "'0001-01-01T00:00:00+05:00' is before"),
            ("key=k&since=2026-01-01&until=2026-02-01", "may be at most 7 days apart"),
            ("key=k&nope=1", "unknown parameter 'nope'"),
        ):
            response = await page.goto(f"{base}/messages?{query}")
            assert response is not None and response.status == 400, query
            assert problem in await page.locator("p.bad").inner_text(), query
        await page.close()


async def test_the_overview_answers_from_the_sampler_without_asking_kafka(
    settings: Settings,
) -> None:
    """With the Dawning agents, as `make run` has them; the median of 10 requests is recorded."""
    app = create_app(settings)
    dawning_streams.agents.install(app)
    base = f"http://127.0.0.1:{settings.web.port}"
    async with running(app), aiohttp.ClientSession() as http:
        await app.sampler.current()
        samples_before = app.sampler.samples
        started = time.monotonic()
        timings = []
        for _ in range(10):
            begun = time.perf_counter()
            async with http.get(f"{base}/") as response:
                page = await response.text()
                assert response.status == 200
            timings.append(time.perf_counter() - begun)
        elapsed = time.monotonic() - started
        samples = app.sampler.samples - samples_before
    # One card per Dawning handler.
    assert page.count('<section class="card">') == len(app.handlers) == 7
    # The sampler's own rhythm, not one read of the cluster per request.
    assert samples <= elapsed / SAMPLE_INTERVAL_S + 1, (samples, elapsed)
    median_ms = statistics.median(timings) * 1000
    report = ROOT / ".local" / "test" / "dashboard-timing.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"overview_median_ms": round(median_ms, 1), "requests": 10}))
    print(f"GET / with the Dawning agents: median {median_ms:.1f} ms of 10 requests")


async def test_a_first_record_stuck_in_its_handler_is_lag_though_nothing_was_committed(
    settings: Settings,
) -> None:
    app = create_app(settings)
    started, release = asyncio.Event(), asyncio.Event()

    @app.handler
    async def stuck(message: UserEventMessage) -> None:
        started.set()
        await release.wait()

    base = f"http://127.0.0.1:{settings.web.port}"
    async with running(app), aiohttp.ClientSession() as http:
        receipt = await app.bus.publish(UserEventMessage(user_id=uuid.uuid4(), event_type="x"))
        assert receipt is not None
        await asyncio.wait_for(started.wait(), 60)
        [partition] = [
            p
            for p in (await app.sampler.sample()).partitions
            if p.topic == receipt.topic and p.partition == receipt.partition
        ]
        async with http.get(f"{base}/api/handlers/stuck") as response:
            assert response.status == 200
            body = await response.json()
        release.set()
    assert partition.committed is None and partition.lag == receipt.offset + 1
    assert body["row"]["lag"] == receipt.offset + 1, body


async def test_the_sampler_never_creates_a_topic_it_does_not_find(settings: Settings) -> None:
    # The test broker creates any topic a client names (auto.create.topics.enable),
    # as many clusters do; a topic deleted under a running worker stays deleted.
    app = create_app(settings)
    deleted = settings.kafka.topics.audit_log
    assert deleted in app.sampler.topics()
    bootstrap = settings.kafka.bootstrap_servers[0]
    async with running(app):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([deleted])
            await eventually(lambda: _missing(admin, deleted), what=f"{deleted} deleted")
            started = time.time()
            snapshot = await app.sampler.sample()
            assert snapshot.at >= started, "the sample failed"
            assert deleted not in {p.topic for p in snapshot.partitions}
            # A control: aiokafka's own describe_topics, asked after the sample,
            # does create the topic it names. Once it exists, a topic the sample
            # had made would exist too.
            control = f"{settings.kafka.topics.audit_log}.control"
            await admin.describe_topics([control])
            await eventually(lambda: _present(admin, control), what=f"{control} auto-created")
            assert await _missing(admin, deleted)
        finally:
            await admin.close()


async def _missing(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic not in await admin.list_topics()


async def _present(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic in await admin.list_topics()


async def test_a_page_given_a_parameter_it_does_not_take_answers_400_naming_it(
    settings: Settings,
) -> None:
    app = create_app(settings)
    dawning_streams.agents.install(app)
    base = f"http://127.0.0.1:{settings.web.port}"
    pages = ["/", "/api/overview", "/topics", "/cluster", "/alerts", "/config", "/instances"]
    pages += ["/cache/invalidations", f"/dead-letters/{settings.kafka.topics.audit_log}.dlq"]
    async with running(app), aiohttp.ClientSession() as http:
        for path in pages:
            async with http.get(f"{base}{path}") as plain:
                assert plain.status == 200, (path, await plain.text())
            async with http.get(f"{base}{path}", params={"limit": "abc"}) as response:
                assert response.status == 400, path
                assert await response.json() == {
                    "error": "unknown parameter 'limit'; this page takes none"
                }, path
            # A browser asks for HTML, and gets a page saying the same.
            browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
            async with http.get(f"{base}{path}?limit=abc", headers=browser) as response:
                assert response.status == 400, path
                assert response.content_type == "text/html", path
                assert "unknown parameter &#x27;limit&#x27;; this page takes none" in (
                    await response.text()
                ), path
        # Scrapers and probes may add parameters of their own: ignored there.
        for path in ("/metrics", "/health"):
            async with http.get(f"{base}{path}", params={"module": "dawning"}) as probed:
                assert probed.status == 200, (path, await probed.text())
        async with http.get(f"{base}/ready", params={"module": "dawning"}) as probed:
            assert "checks" in await probed.json()
        # A dead-letter page that does not exist: a page for a browser, JSON otherwise.
        async with http.get(f"{base}/dead-letters/nope", headers=browser) as response:
            assert response.status == 404 and response.content_type == "text/html"
            assert "&#x27;nope&#x27; is not a dead-letter topic" in await response.text()
        async with http.get(f"{base}/dead-letters/nope") as response:
            assert response.status == 404
            assert await response.json() == {"error": "'nope' is not a dead-letter topic"}
