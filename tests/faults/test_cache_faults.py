"""Cache invalidation under kill -9: a pattern's delete cut short mid-SCAN still finishes."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as redis

from dawning_streams import CacheInvalidationMessage, Settings, create_app

from ..kafka_helpers import read_topic
from ..workers import spawn, workers
from .conftest import Row

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

KEYS = 100_000


async def matching(client: redis.Redis, region: str) -> int:
    return sum([1 async for _ in client.scan_iter(match=f"{region}:*", count=5_000)])


@pytest.mark.deadline(240)
@pytest.mark.timeout(300)
async def test_kill_9_in_the_middle_of_a_patterns_scan_leaves_no_key_behind(
    settings: Settings, redis_url: str, tmp_path: Path, report: list[Row]
) -> None:
    region = f"fault-{uuid.uuid4().hex[:8]}"
    keys = [f"{region}:{n}" for n in range(KEYS)]
    sample = random.Random(region).sample(keys, 200)
    client = redis.from_url(redis_url)
    try:
        for start in range(0, KEYS, 10_000):
            await client.mset(dict.fromkeys(keys[start : start + 10_000], b"cached"))
        message = CacheInvalidationMessage(pattern="*", region=region, reason="fault")
        async with workers(settings, 1, tmp_path) as group:
            sender = create_app(settings)
            async with sender.bus:
                assert await sender.bus.publish(message) is not None
            # The SCAN + UNLINK is under way once any sampled key is gone.
            async with asyncio.timeout(60):
                while await client.exists(*sample) == len(sample):
                    await asyncio.sleep(0.002)
            group[0].process.kill()
            group[0].process.wait()
            killed_at = time.monotonic()
            left_at_kill = await matching(client, region)
            # Otherwise the kill came after the delete, and shows nothing.
            assert 0 < left_at_kill < KEYS, left_at_kill

            group.append(spawn(settings, f"{settings.instance_name}-1", tmp_path))
            # The handler's de-duplication marks the message once it has finished.
            seen = f"{settings.kafka.consumer_group_id}-invalidate_cache-seen-changelog"
            (marked,) = await read_topic(settings.kafka.bootstrap_servers[0], seen, 1, 120)
            assert marked.key == str(message.message_id).encode()
            recovered_s = time.monotonic() - killed_at
            left = await matching(client, region)
    finally:
        await client.aclose()
    report.append(
        Row(
            "cache: kill -9 mid-SCAN",
            KEYS,
            KEYS - left,
            left,
            0,
            round(recovered_s, 1),
            {"keys_left_at_kill": left_at_kill},
        )
    )
    assert left == 0
