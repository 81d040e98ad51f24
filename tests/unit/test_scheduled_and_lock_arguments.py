"""A scheduled task's period and a lock's name and TTL are checked where they
are given, with the value named: nothing is scheduled, and Redis is not asked."""

from __future__ import annotations

from typing import Any

import pytest

from dawning_streams import create_app
from dawning_streams.core.settings import RedisSettings
from dawning_streams.services.lock import DistributedLock
from dawning_streams.services.redis_pool import RedisPool


async def _task() -> None: ...


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"every_s": "60"}, TypeError, "every_s must be seconds, got '60'"),
        ({"every_s": 0.1}, ValueError, "every_s must be at least 1 s (tasks are checked once"),
        ({"every_s": 0}, ValueError, "every_s must be at least 1 s"),
        ({"every_s": 60, "lock_ttl_s": -1}, ValueError, "lock_ttl_s must be positive seconds"),
    ],
)
def test_a_bad_period_is_refused_when_the_task_is_declared(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    app = create_app(web_enabled=False)
    with pytest.raises(error, match=text.replace("(", r"\(")):
        app.scheduled(name="purge", **options)(_task)
    assert app.scheduler.tasks == {}
    app.scheduled(name="purge", every_s=1)(_task)
    assert list(app.scheduler.tasks) == ["purge"]


@pytest.mark.parametrize(
    ("name", "ttl_s", "text"),
    [
        ("", 10, "a lock's name must be a non-empty string, got ''"),
        ("purge", "x", "lock 'purge': ttl_s must be positive seconds, got 'x'"),
        ("purge", 0, "lock 'purge': ttl_s must be positive seconds, got 0"),
    ],
)
async def test_a_bad_lock_name_or_ttl_is_refused_before_redis_is_asked(
    name: str, ttl_s: Any, text: str
) -> None:
    # Nothing listens on this port: a request to Redis would fail otherwise.
    lock = DistributedLock(RedisPool(RedisSettings(url="redis://127.0.0.1:9/0")))
    with pytest.raises(ValueError) as refused:
        async with lock.try_acquire(name, ttl_s=ttl_s):
            pass
    assert str(refused.value) == text
