"""Text for people: an error's first line, and rows as aligned columns."""

from __future__ import annotations

from collections.abc import Sequence


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (the server's detail and hints follow it),
    or its type's name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def table_lines(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right_align: bool = False
) -> list[str]:
    """``header`` and ``rows`` as columns two spaces apart, without trailing spaces.

    Cells are left-aligned; with ``right_align`` every column after the first
    is right-aligned (columns of numbers).
    """
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(width) if right_align and i > 0 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
