"""JSON as .NET's configuration reads ``appsettings.json``: with comments and trailing commas.

``Microsoft.Extensions.Configuration.Json`` reads its files with
``JsonCommentHandling.Skip`` and ``AllowTrailingCommas``, so a gateway's
``appsettings.json`` may hold ``// ...`` and ``/* ... */`` comments and a comma
before a closing ``}`` or ``]``. :func:`loads` takes those and leaves the rest
to :func:`json.loads`. Comments become spaces of the same length, so an error
in the file is reported at its own line and column.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(text: str) -> Any:
    """Parse ``text`` as .NET's configuration would; ``ValueError`` says where it is not JSON."""
    return json.loads(_without_trailing_commas(_without_comments(text)))


def _string_end(text: str, start: int) -> int:
    """The index just past the string literal opening at ``start`` (or the text's end)."""
    i = start + 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _without_comments(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"a /* comment opened at char {i} is never closed")
            # Blanked, newlines kept: errors after it keep their line numbers.
            out.append("".join(c if c == "\n" else " " for c in text[i : end + 2]))
            i = end + 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _without_trailing_commas(text: str) -> str:
    """Blank a comma that follows a value and closes its object or array:
    ``[1, 2,]``, not ``{,}`` or ``[1,,]``, which .NET refuses too."""
    out: list[str] = []
    last = ""  # the last character that is not white space
    i = 0
    while i < len(text):
        if text[i] == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            last, i = '"', end
            continue
        if text[i] == "," and last not in ("", "{", "[", ","):
            after = i + 1
            while after < len(text) and text[after] in _BLANK:
                after += 1
            if after < len(text) and text[after] in "}]":
                out.append(" ")
                i += 1
                continue
        if text[i] not in _BLANK:
            last = text[i]
        out.append(text[i])
        i += 1
    return "".join(out)


_BLANK = " \t\r\n"
