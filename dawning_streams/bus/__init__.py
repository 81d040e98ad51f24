"""Publishing: ``app.bus`` from the worker, from any other event loop or from none,
with the durable spool behind it."""
