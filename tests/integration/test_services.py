"""The local services the project starts are the real ones and answer."""

from __future__ import annotations

import mailbox
import uuid
from email.message import EmailMessage

import aiosmtplib
import redis.asyncio as redis
from aiokafka import AIOKafkaConsumer


async def test_kafka_answers_as_one_broker_on_loopback(kafka_bootstrap: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()
    finally:
        await consumer.stop()
    [broker] = metadata.brokers()
    assert f"{broker.host}:{broker.port}" == kafka_bootstrap


async def test_redis_stores_and_returns_a_value(redis_url: str) -> None:
    client = redis.from_url(redis_url)
    try:
        key = f"test:{uuid.uuid4()}"
        await client.set(key, "v", ex=10)
        assert await client.get(key) == b"v"
        assert (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()


async def test_mail_sent_to_the_smtp_sink_can_be_read_back(
    smtp_port: int,
    maildir: mailbox.Maildir,
) -> None:
    subject = f"sink check {uuid.uuid4()}"
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@dawning.local", "b@example.com", subject
    mail.set_content("hello")
    await aiosmtplib.send(mail, hostname="127.0.0.1", port=smtp_port)
    [delivered] = [m for m in maildir if m["Subject"] == subject]
    assert delivered["To"] == "b@example.com"
    assert delivered.get_payload().strip() == "hello"
