"""The private names of Faust, aiokafka and the OpenTelemetry SDK: checked at import,
and read in one module (the transport, Faust's consumer subclass, overrides some)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.faust_compat import FaustCompatError

from ..conftest import ROOT

PACKAGE = ROOT / "dawning_streams"
#: Private names any object has, and Python's own (``sys._current_frames``), not
#: Faust's or aiokafka's.
_NOT_THEIRS = {"_exit", "_replace", "_asdict", "_fields", "_current_frames"}


def test_the_installed_libraries_have_every_internal_the_framework_uses() -> None:
    assert faust_compat.problems() == []
    faust_compat.check()


def test_a_changed_signature_is_named_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def _new_offset(self: object, tp: object, force: bool) -> None: ...

    monkeypatch.setattr(faust_aiokafka.Consumer, "_new_offset", _new_offset)
    with pytest.raises(FaustCompatError) as raised:
        faust_compat.check()
    assert "faust.transport.drivers.aiokafka.Consumer._new_offset takes" in str(raised.value)
    assert "'force'" in str(raised.value) and "faust-streaming==0.15.3" in str(raised.value)


def test_a_removed_method_or_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for owner in faust_aiokafka.Consumer.__mro__:
        if "_getmany" in vars(owner):
            monkeypatch.delattr(owner, "_getmany")
    monkeypatch.setattr(
        faust_compat, "ATTRIBUTES", (*faust_compat.ATTRIBUTES, (Recovery, "_no_such_field"))
    )
    found = faust_compat.problems()
    assert "faust.transport.drivers.aiokafka.Consumer._getmany is gone" in found
    assert "faust.tables.recovery.Recovery no longer has _no_such_field" in found


def test_a_different_version_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(faust_compat.PINNED, "faust-streaming", "0.15.4")
    assert faust_compat.problems() == [
        "faust-streaming is 0.15.3, this framework is checked against 0.15.4"
    ]


def _private_reads(path: Path) -> list[str]:
    """``obj._name`` where obj is not self or cls, and ``from x import _name``."""
    text = path.read_text()
    found = [
        f"{path.name}: {m.group(0)}"
        for m in re.finditer(r"(?<![\w.])(\w+)\._([a-z]\w*)", text)
        if m.group(1) not in ("self", "cls", "other") and f"_{m.group(2)}" not in _NOT_THEIRS
    ]
    found += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"import _\w+", text)]
    return found


def test_only_the_compat_module_and_the_transport_touch_private_names() -> None:
    elsewhere = [
        read
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("faust_compat.py", "transport.py")
        for read in _private_reads(path)
    ]
    assert elsewhere == []
    # The check itself sees them (it is not vacuous).
    assert _private_reads(PACKAGE / "kafka" / "faust_compat.py")
