"""The Dawning tables, one module per table; installed as ``dawning_streams.tables``.

Each module has ``create(app)``, called by the agent that writes the table.
"""
