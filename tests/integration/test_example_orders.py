"""``examples/orders``, run as its README says: the standard worker with its tasks,
its aiohttp app sending them, and the results read through the table's view."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from dawning_streams import Settings

from ..conftest import ROOT, free_port
from ..handler_helpers import eventually
from ..workers import workers

pytestmark = pytest.mark.kafka

EXAMPLE = ROOT / "examples" / "orders"


async def test_orders_posted_to_the_web_app_are_handled_in_order_and_charged_after_a_retry(
    settings: Settings, tmp_path: Path
) -> None:
    env = {"PYTHONPATH": f"{EXAMPLE}{os.pathsep}{ROOT}", "DAWNING_WORKER__MODULES": "orders.tasks"}
    async with workers(settings, 1, tmp_path, env=env) as [worker]:
        port = free_port()
        web = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orders.web",
            "--port",
            str(port),
            cwd=tmp_path,
            env={**os.environ, **settings.to_environ(), **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            customer = uuid.uuid4()
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/orders"

                async def web_up() -> bool:
                    try:
                        async with http.post(url, json={"customer_id": "x"}) as response:
                            return response.status == 400
                    except aiohttp.ClientConnectionError:
                        return False

                await eventually(web_up, timeout_s=60, what="the orders web app answering")
                for amount in ("nan", "1e999"):  # parsed by float(), but no JSON number
                    body = {"customer_id": str(customer), "amount": amount}
                    async with http.post(url, json=body) as response:
                        assert response.status == 400, await response.text()
                        assert "NaN and Infinity have no JSON form" in await response.text()
                placed = []
                for amount in (10.0, 20.0, 30.0):
                    body = {"customer_id": str(customer), "amount": amount}
                    async with http.post(url, json=body) as response:
                        assert response.status == 202, await response.text()
                        placed.append((await response.json())["order_id"])

            async def charged() -> dict | None:  # type: ignore[type-arg]
                status, body = await worker.get_json(f"/orders/{customer}")
                if status == 200 and len(body.get("charges", {})) == 3:
                    return body
                return None

            state = await eventually(charged, timeout_s=90, what="all three orders charged")
        finally:
            web.terminate()
            output, _ = await asyncio.wait_for(web.communicate(), 60)
    assert web.returncode == 0, output.decode()
    assert [o["order_id"] for o in state["orders"]] == placed  # in the order placed
    assert [o["amount"] for o in state["orders"]] == [10.0, 20.0, 30.0]
    assert [o["charged"] for o in state["orders"]] == [True, True, True]
    # Every charge succeeded on its second attempt, after the gateway's first failure.
    assert {o: c["attempts"] for o, c in state["charges"].items()} == dict.fromkeys(placed, 2)
