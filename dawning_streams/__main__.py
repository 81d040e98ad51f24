"""``python -m dawning_streams worker -l info``: the Faust CLI for the Dawning app.

Equivalent to ``faust -A dawning_streams.app ...``, without naming the app.
"""

from dawning_streams.app import app

app.main()
