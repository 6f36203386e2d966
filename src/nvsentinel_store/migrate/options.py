"""How a migration runs: :class:`MigrateOptions` and its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_BATCH_SIZE: Final = 5000
DEFAULT_SAMPLE_SIZE: Final = 100


@dataclass(frozen=True)
class MigrateOptions:
    """How to import; the defaults suit an operator's one-off migration."""

    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    #: Let the import produce change events (see :mod:`nvsentinel_store.migrate`).
    capture_changes: bool = False
    verify: bool = False
    #: Documents per collection compared field by field by ``verify``.
    sample_size: int = DEFAULT_SAMPLE_SIZE
    #: Documents stored under their ``_id`` with different content (a
    #: :class:`~nvsentinel_store.migrate.results.Conflict`) are kept either way;
    #: with ``keep_existing`` that is intended and ``verify`` leaves them out of
    #: its sample (without it, a sampled one is a mismatch).
    keep_existing: bool = False
    #: Files at least this big are parsed by a separate process (0: every file;
    #: ``None``: none).
    subprocess_min_bytes: int | None = 4 * 1024 * 1024
