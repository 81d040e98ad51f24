"""The audit store's URL: a MySQL one that cannot work fails at start-up, naming the setting."""

from __future__ import annotations

import pytest

from dawning_streams.services.audit_store import AuditStoreError, open_audit_store


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://audit:s3cret@db", "must be mysql://user:password@host:3306/db"),
        ("mysql://audit:s3cret@db:port/audit", "Port could not be cast to integer value"),
        ("mysql://audit:s3cret@db/audit?ssl=1", "takes no ?options"),
    ],
)
async def test_a_mysql_url_that_cannot_work_fails_at_start_naming_the_setting(
    url: str, reason: str
) -> None:
    store = open_audit_store(url)
    with pytest.raises(AuditStoreError) as caught:
        await store.start()
    await store.stop()
    message = str(caught.value)
    assert message.startswith(f"Audit:StoreUrl={url.replace('s3cret', '**********')!r}: ")
    assert reason in message and "s3cret" not in message


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(AuditStoreError, match="unsupported audit store URL scheme 'mssql'"):
        open_audit_store("mssql://audit:s3cret@db/audit")
