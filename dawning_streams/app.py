"""The worker's app: ``faust -A dawning_streams.app worker`` (or ``python -m dawning_streams``).

This is the composition root. It reads the settings once, builds the app, and
installs the application's agents and tables explicitly; there is no
autodiscovery. The agents ship inside this package (see README, "Packaging").
"""

import dawning_streams.agents

from .application import create_app
from .settings import Settings

settings = Settings.load()
app = create_app(settings)
dawning_streams.agents.install(app)
