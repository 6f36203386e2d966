"""The files ``mongoexport`` writes, of the documents :mod:`devsupport.documents` builds.

:func:`export_line` writes a document as ``mongoexport`` does: compact extended
JSON, one document per line, in relaxed mode (mongoexport's default) or
canonical mode (``--jsonFormat=canonical``). Used by the migration tests and by
``bench/migrate.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS

Mode = Literal["relaxed", "canonical"]


def export_line(doc: dict[str, Any], mode: Mode = "relaxed") -> str:
    """``doc`` as one line of mongoexport output (compact extended JSON, no newline)."""
    options = RELAXED_JSON_OPTIONS if mode == "relaxed" else CANONICAL_JSON_OPTIONS
    return json_util.dumps(doc, json_options=options, separators=(",", ":"))


def write_export(path: Path, docs: list[dict[str, Any]], mode: Mode = "relaxed") -> Path:
    """A mongoexport file of ``docs``."""
    with path.open("w", encoding="utf-8") as out:
        for doc in docs:
            out.write(export_line(doc, mode) + "\n")
    return path
