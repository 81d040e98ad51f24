"""The worker's app: ``faust -A dawning_streams.app worker`` (or ``python -m dawning_streams``).

This is the composition root. It reads the settings once, builds the app,
then imports the modules ``Worker:Modules`` lists (``DAWNING_WORKER__MODULES``,
default ``dawning_streams.agents``, the Dawning application). A module declares
its handlers, tables, pages and scheduled tasks on this app::

    from dawning_streams.app import app

    @app.handler(InvoicePaid, retry=Retry(max_retries=5))
    async def book_invoice(message: InvoicePaid) -> None: ...

and a module with an ``install(app)`` function has it called.

A bad setting, or a module that cannot be imported, stops the worker here
with exit code 2 and one line naming it (``Error: Kafka:Partitions='abc' ...``);
an error raised inside a module that exists comes with its traceback first,
since it is in the module's own code. Imported by any other program (a web
app importing a tasks module), it raises :class:`SettingsError` instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from dawning_streams.application import App, create_app
from dawning_streams.core.errors import SettingsError
from dawning_streams.core.settings import Settings

logger = logging.getLogger(__name__)


def _stop(error: SettingsError) -> NoReturn:
    """End the worker's command line in one line; anywhere else (a web app or a
    script importing a tasks module) raise, for the caller to handle."""
    if not _command_line():
        raise error
    print(f"Error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _command_line() -> bool:
    """Whether this process is ``faust -A ...`` or ``python -m dawning_streams``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    main = getattr(spec, "name", None) or ""
    return main.partition(".")[0] in {"dawning_streams", "faust"} or (
        Path(sys.argv[0]).name == "faust"
    )


try:
    settings = Settings.load()
except SettingsError as exc:
    _stop(exc)
app = create_app(settings)


def _missing(name: str, exc: Exception) -> bool:
    """Whether ``exc`` says the module ``name`` (or a package above it) does not exist."""
    missing = getattr(exc, "name", None)
    return (
        isinstance(exc, ModuleNotFoundError)
        and missing is not None
        and (name == missing or name.startswith(f"{missing}."))
    )


def _load(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        error = SettingsError(
            "Worker:Modules", name, f"cannot be imported: {type(exc).__name__}: {exc}"
        )
        if not _command_line():
            raise error from exc
        if not _missing(name, exc):
            traceback.print_exc()
        _stop(error)
    install = getattr(module, "install", None)
    if callable(install):
        install(app)
    _warn_of_other_apps(name, module)


#: What each module of Worker:Modules declared on an app of its own, said once read.
_elsewhere: list[str] = []


def _warn_of_other_apps(name: str, module: object) -> None:
    """Name handlers a module declared on an app of its own (``create_app()``):
    no worker runs them, while their ``delay()`` still sends."""
    for attr, value in vars(module).items():
        if isinstance(value, App) and value is not app and value.handlers:
            mistake = (
                f"{name}.{attr} is an app of its own (create_app()), which this worker does not"
                f" run: its handler(s) {', '.join(sorted(value.handlers))} never run here;"
                " declare them on `from dawning_streams.app import app`"
            )
            _elsewhere.append(mistake)
            logger.warning("%s", mistake)


for _name in settings.worker.modules:
    _load(_name)
if _elsewhere and not app.handlers and _command_line():
    # A worker that would run nothing at all: refuse to start, as for a bad module.
    _stop(SettingsError("Worker:Modules", ",".join(settings.worker.modules), _elsewhere[0]))
