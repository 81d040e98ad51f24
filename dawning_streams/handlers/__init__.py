"""Handlers: ``@app.handler`` and its send API (``delay``, ``apply_async``), each
delivery's context, and the durable timers behind retries, countdowns and ``eta``."""
