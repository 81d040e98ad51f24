"""The worker side: `DAWNING_WORKER__MODULES=orders.tasks python -m dawning_streams worker`.

Everything here is declared on the worker's app, ``dawning_streams.app.app``.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.web import Request, Response

from dawning_streams import Retry, current_delivery, message_keyed_table
from dawning_streams.app import app
from dawning_streams.ops.web import Page

from .messages import OrderPlaced, PaymentRequested

logger = logging.getLogger(__name__)


class Customer(faust.Record, include_metadata=False):
    """A customer's orders in the order placed, and the charges made for them."""

    orders: list[dict[str, Any]]
    charges: dict[str, dict[str, Any]]


#: Per customer id (the messages' key): their orders and charges.
customers = message_keyed_table(
    app,
    "order-customers",
    value_type=Customer,
    help="Each customer's orders, in the order they were placed.",
)


@app.handler(OrderPlaced, ordered=True)
async def record_order(order: OrderPlaced) -> None:
    """Note the order: ordered, so a customer's orders are noted as placed."""
    key = str(order.customer_id)
    state = customers.get(key) or Customer(orders=[], charges={})
    order_id = str(order.order_id)
    if all(o["order_id"] != order_id for o in state.orders):
        # The charge may have come first: the two are on different topics.
        entry = {"order_id": order_id, "amount": order.amount, "charged": order_id in state.charges}
        customers[key] = state.derive(orders=[*state.orders, entry])


@app.handler(PaymentRequested, retry=Retry(max_retries=3, backoff_s=1))
async def charge(payment: PaymentRequested) -> None:
    """Charge the order; the payment gateway fails every first attempt here,
    so each payment shows a retry."""
    attempt = current_delivery().attempt
    if attempt == 0:
        raise ConnectionError("the payment gateway timed out")
    key, order_id = str(payment.customer_id), str(payment.order_id)
    state = customers.get(key) or Customer(orders=[], charges={})
    charges = {**state.charges, order_id: {"amount": payment.amount, "attempts": attempt + 1}}
    orders = [{**o, "charged": True} if o["order_id"] == order_id else o for o in state.orders]
    customers[key] = state.derive(orders=orders, charges=charges)


@app.page("/orders/{customer_id}")
class CustomerOrders(Page):
    """A customer's orders and charges, from the table."""

    async def get(self, request: Request, customer_id: str) -> Response:
        state = customers.get(customer_id)
        if state is None:
            return self.json({"error": f"no orders for customer {customer_id}"}, status=404)
        return self.json({"customer_id": customer_id, **state.asdict()})


@app.scheduled(every_s=60)
async def count_customers() -> None:
    """Once a minute, on one worker of the group: how many customers this worker holds."""
    logger.info("orders: %d customers on this worker", len(customers))
