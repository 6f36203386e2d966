"""Write a generated file, or check that the committed copy is current."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path


def write_or_check(target: Path, wanted: str, *, check: bool, tool: str, command: str) -> int:
    """Write ``wanted`` to ``target`` when it differs; with ``check``, print the
    diff and name ``command`` instead. Returns the exit status (1: stale)."""
    current = target.read_text() if target.exists() else ""
    if wanted == current:
        return 0
    if not check:
        target.write_text(wanted)
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            f"{target.name} (committed)",
            f"{target.name} (generated)",
        )
    )
    print(f"{tool}: {target} is stale; run {command}", file=sys.stderr)
    return 1
