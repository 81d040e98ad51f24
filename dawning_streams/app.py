"""The worker's app: ``faust -A dawning_streams.app worker`` (or ``python -m dawning_streams``).

This is the composition root. It reads the settings once, builds the app,
then imports the modules ``Worker:Modules`` lists (``DAWNING_WORKER__MODULES``,
default ``dawning_streams.agents``, the Dawning application). A module declares
its handlers, tables, pages and scheduled tasks on this app::

    from dawning_streams.app import app

    @app.handler(InvoicePaid, retry=Retry(max_retries=5))
    async def book_invoice(message: InvoicePaid) -> None: ...

and a module with an ``install(app)`` function has it called. A module that
cannot be imported stops the worker here, naming it and the error.
"""

from __future__ import annotations

import importlib

from dawning_streams.application import create_app
from dawning_streams.core.errors import SettingsError
from dawning_streams.core.settings import Settings

settings = Settings.load()
app = create_app(settings)


def _load(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        raise SettingsError(
            "Worker:Modules", name, f"cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    install = getattr(module, "install", None)
    if callable(install):
        install(app)


for _name in settings.worker.modules:
    _load(_name)
