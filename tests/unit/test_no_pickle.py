"""No pickle codec anywhere: not registered, and not used by any topic or table."""

from __future__ import annotations

import pytest
from faust.serializers import codecs

import dawning_streams.agents
from dawning_streams import Settings, create_app


@pytest.mark.parametrize("name", ["pickle", "pickle_restricted", "pickle_fickling"])
def test_faust_has_no_pickle_codec_once_dawning_streams_is_imported(name: str) -> None:
    with pytest.raises(KeyError):
        codecs.get_codec(name)
    # Faust's composite lookup fails differently, but it fails.
    with pytest.raises((KeyError, TypeError)):
        codecs.dumps(f"{name}|binary", {"a": 1})


def test_every_topic_and_table_of_the_worker_uses_json_or_raw_bytes() -> None:
    app = create_app(Settings())  # declared, not started: no services needed
    dawning_streams.agents.install(app)
    serializers = {app.conf.key_serializer, app.conf.value_serializer}
    for topic in app.declared_topics:
        serializers |= {topic.key_serializer, topic.value_serializer}
    for table in app.tables.values():
        changelog = table.changelog_topic
        serializers |= {table.key_serializer, table.value_serializer}
        serializers |= {changelog.key_serializer, changelog.value_serializer}
    named = {s if isinstance(s, str) else type(s).__name__ for s in serializers if s is not None}
    assert named <= {"raw", "json", "dawning"}, named
