"""The sending side: a small aiohttp app that turns HTTP requests into tasks.

    python -m orders.web --port 8080
    curl -X POST localhost:8080/orders -d '{"customer_id": "...", "amount": 12.5}'

It imports the tasks and calls ``delay``: no worker runs in this process, and no
set-up call is needed; the producer starts on the first request.
"""

from __future__ import annotations

import argparse
import uuid

from aiohttp import web

from dawning_streams import MessageEncodeError

from .messages import OrderPlaced, PaymentRequested
from .tasks import charge, record_order


async def place_order(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        customer_id = uuid.UUID(str(body["customer_id"]))
        amount = float(body["amount"])
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad order: {exc!r}"}, status=400)
    order_id = uuid.uuid4()
    try:
        await record_order.delay(
            OrderPlaced(order_id=order_id, customer_id=customer_id, amount=amount)
        )
    except MessageEncodeError as exc:  # "nan", "1e999": no number JSON can carry
        return web.json_response({"error": f"bad order: {exc}"}, status=400)
    await charge.delay(PaymentRequested(order_id=order_id, customer_id=customer_id, amount=amount))
    return web.json_response({"order_id": str(order_id)}, status=202)


def main() -> None:
    parser = argparse.ArgumentParser(description="The orders web app.")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/orders", place_order)
    web.run_app(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
