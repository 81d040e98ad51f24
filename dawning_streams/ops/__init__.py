"""Operating a worker: the ``faust`` subcommands, the web views and dashboard, and
dead-letter listing and replay."""
