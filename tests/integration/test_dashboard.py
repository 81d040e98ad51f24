"""The dashboard in a real headless Chromium, against a worker on the real broker."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from dawning_streams import AuditLogMessage, Reject, Settings, create_app
from dawning_streams.core.settings import Secret

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


async def test_the_dashboard_shows_the_worker_and_replays_a_dead_letter(
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
            # Committed offsets reach the group a moment after handling.
            await page.goto(f"{base}/")
            header = await page.locator("header").inner_text()
            return "not ready" not in header and f"{topic}\tmessages\t3\t6\t0" in (
                await text_of(page, "Topics")
            )

        await eventually(
            settled, timeout_s=30, what="the dashboard showing 6 messages, all committed"
        )
        assert await page.title() == "dawning-streams dashboard"

        topics = await text_of(page, "Topics")
        assert f"{topic}\tmessages\t3\t6\t0" in topics
        assert f"{dlq}\tdead letters\t3\t1" in topics
        group = await text_of(page, f"Consumer group {settings.kafka.consumer_group_id}")
        assert "Stable" in group and "Lag per partition" in group
        assert "#1\tfaust-" in group  # the one member, numbered
        # topic, partition, committed, end, lag, member
        lag_rows = [
            line.split("\t") for line in group.splitlines() if line.startswith(f"{topic}\t")
        ]
        assert sum(int(row[3]) for row in lag_rows) == 6
        assert all(row[2] == row[3] and row[4] == "0" and row[5] == "#1" for row in lag_rows)
        throughput = await text_of(page, "Throughput")
        [audit_row] = [line for line in throughput.splitlines() if line.startswith("audit\t")]
        # handler, sparkline, handled/failed/retried/dead in 1 min, handled and dead in
        # 15 min, then its timers: pending, next due, held keys, stuck keys
        assert audit_row.split("\t")[-6:] == ["5", "1", "0", "", "0", "0"]
        tables = await text_of(page, "Tables")
        assert "visits\t" in tables and "visits-changelog" in tables
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

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        shutil.copy(shot, SCREENSHOTS / "dashboard.png")

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
