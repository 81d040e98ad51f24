"""The Redis lock across processes: contention, fencing, expiry and renewal."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import textwrap
import uuid

import pytest
import redis.asyncio as redis

from dawning_streams.core.settings import RedisSettings
from dawning_streams.services.lock import _RELEASE, DistributedLock, LockUnavailable
from dawning_streams.services.redis_pool import RedisPool

CONTENDER = textwrap.dedent("""
    import asyncio, json, sys, time
    import redis.asyncio as redis
    from dawning_streams.services.lock import DistributedLock
    from dawning_streams.services.redis_pool import RedisPool
    from dawning_streams.core.settings import RedisSettings

    async def main(url, name, contenders, wanted):
        pool = RedisPool(RedisSettings(url=url))
        lock = DistributedLock(pool)
        # Start together: a process that is slow to import is not left out.
        await pool.client.incr(f"{name}:ready")
        while int(await pool.client.get(f"{name}:ready")) < contenders:
            await asyncio.sleep(0.01)
        held = []
        while len(held) < wanted:
            async with lock.try_acquire(name, ttl_s=5) as handle:
                if handle is not None:
                    start = time.time()
                    await asyncio.sleep(0.02)
                    held.append([start, time.time(), handle.fencing_token])
            await asyncio.sleep(0.005)
        await pool.client.aclose()
        print(json.dumps(held))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
""")


@pytest.fixture
async def lock(redis_url: str):  # type: ignore[no-untyped-def]
    pool = RedisPool(RedisSettings(url=redis_url))
    yield DistributedLock(pool)
    await pool.client.aclose()


async def test_four_processes_never_hold_the_lock_at_once(redis_url: str) -> None:
    name = f"contended-{uuid.uuid4()}"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CONTENDER, redis_url, name, "4", "10", stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    # Each process runs until it has held the lock 10 times; the limit is liveness only.
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 120)
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    outputs = [json.loads(out) for out, _ in results]
    assert [len(output) for output in outputs] == [10, 10, 10, 10]
    holds = sorted(h for output in outputs for h in output)
    for before, after in itertools.pairwise(holds):
        assert before[1] <= after[0], f"overlap: {before} and {after}"
    fences = [h[2] for h in holds]
    assert fences == sorted(fences) and len(set(fences)) == len(fences)


async def test_a_held_lock_is_refused_and_cannot_be_released_by_another(
    lock: DistributedLock,
    redis_url: str,
) -> None:
    name = f"held-{uuid.uuid4()}"
    async with lock.try_acquire(name, ttl_s=10) as first:
        assert first is not None
        async with lock.try_acquire(name, ttl_s=10) as second:
            assert second is None
        client = redis.from_url(redis_url)
        try:
            # Releasing with a wrong token deletes nothing.
            assert await client.eval(_RELEASE, 1, f"dawning:lock:{name}", "not-the-token") == 0
            assert await client.get(f"dawning:lock:{name}") == first.token.encode()
        finally:
            await client.aclose()
    async with lock.try_acquire(name, ttl_s=10) as third:
        assert third is not None and third.fencing_token > first.fencing_token


async def test_fencing_tokens_keep_growing_after_redis_lost_the_counter(
    lock: DistributedLock, redis_url: str
) -> None:
    name = f"forgotten-{uuid.uuid4()}"
    async with lock.try_acquire(name, ttl_s=10) as before:
        assert before is not None
    # What a Redis restarted without persistence has lost: the lock's counter.
    client = redis.from_url(redis_url)
    try:
        assert await client.delete(*[k async for k in client.scan_iter(f"*{name}*")]) == 1
    finally:
        await client.aclose()
    async with lock.try_acquire(name, ttl_s=10) as after:
        assert after is not None and after.fencing_token > before.fencing_token


async def test_the_lock_renews_itself_while_held_and_expires_when_its_holder_dies(
    lock: DistributedLock,
    redis_url: str,
) -> None:
    name = f"renewed-{uuid.uuid4()}"
    async with lock.try_acquire(name, ttl_s=1.5) as handle:
        assert handle is not None
        await asyncio.sleep(5.0)  # over three TTLs
        async with lock.try_acquire(name, ttl_s=1.5) as rival:
            assert rival is None
        assert handle.lost is False
    # A holder killed with SIGKILL never releases; the TTL frees the lock.
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(f"""
        import asyncio, os, signal
        from dawning_streams.services.lock import DistributedLock
        from dawning_streams.services.redis_pool import RedisPool
        from dawning_streams.core.settings import RedisSettings

        async def main():
            lock = DistributedLock(RedisPool(RedisSettings(url={redis_url!r})))
            async with lock.try_acquire({name!r}, ttl_s=3.0) as handle:
                assert handle is not None
                os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """),
    )
    assert await holder.wait() == -9
    client = redis.from_url(redis_url)
    try:
        assert await client.pttl(f"dawning:lock:{name}") > 0, "the dead holder's lock is set"
        async with lock.try_acquire(name, ttl_s=5) as taken_while_set:
            assert taken_while_set is None
        # Liveness limit only: the lock must become free once its TTL runs out.
        for _ in range(300):
            async with lock.try_acquire(name, ttl_s=5) as after_expiry:
                if after_expiry is not None:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the dead holder's lock never expired")
    finally:
        await client.aclose()


async def test_with_redis_unreachable_nothing_is_acquired() -> None:
    pool = RedisPool(RedisSettings(url="redis://127.0.0.1:1/0"))
    lock = DistributedLock(pool)
    try:
        with pytest.raises(LockUnavailable, match="cannot reach Redis"):
            async with lock.try_acquire("anything", ttl_s=1):
                pytest.fail("the body must not run")
    finally:
        await pool.client.aclose()
