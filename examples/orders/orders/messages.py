"""The project's message types: each declares its topic; no settings to touch."""

from __future__ import annotations

import uuid

from dawning_streams import MessageBase


class OrderPlaced(MessageBase, topic="orders.placed"):
    """A customer placed an order; keyed by customer, so their orders stay in order."""

    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: float

    def partition_key(self) -> str:
        return str(self.customer_id)


class PaymentRequested(MessageBase, topic="orders.payments"):
    """Charge an order; keyed by customer, like the orders."""

    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: float

    def partition_key(self) -> str:
        return str(self.customer_id)
