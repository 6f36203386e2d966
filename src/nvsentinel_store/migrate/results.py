"""What a migration reports: rejects, conflicts, progress, counts and verification."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass(frozen=True)
class Reject:
    """A document that was not imported: where it came from, why, and its text as read."""

    collection: str
    where: str
    reason: str
    raw: str
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "where": self.where,
            "id": self.id,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class Conflict:
    """A document whose ``_id`` the target already holds with different content.

    The stored copy is kept (the import never overwrites); ``where`` is the
    source's ``file:line`` or ``_id``.
    """

    collection: str
    id: str
    where: str


@dataclass
class CollectionSummary:
    """Counts of one collection: documents read, imported, already present, rejected.

    ``already_present`` includes the ``conflicts``: documents stored under the
    same ``_id`` with different content.
    """

    collection: str
    read: int = 0
    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    #: Documents the target table holds after the run (also counted in a dry run).
    target_count: int | None = None
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """A progress report after each batch (``done`` once a collection is finished)."""

    collection: str
    source: str
    read: int
    imported: int
    already_present: int
    rejected: int
    elapsed: float
    done: bool = False

    @property
    def rate(self) -> float:
        """Documents read per second so far."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]
RejectCallback = Callable[[Reject], None]
ConflictCallback = Callable[[Conflict], None]


@dataclass(frozen=True)
class Mismatch:
    """A sampled document whose stored copy differs: its id and the differing paths."""

    id: str
    differences: tuple[str, ...]


@dataclass
class VerifyResult:
    """``--verify`` of one collection: counts on both sides and a sample compared.

    ``source_count`` is what the source holds now: the documents in the files,
    or MongoDB's count when verifying (more than ``read`` means documents were
    written to MongoDB after they were read). ``expected`` is the number of
    distinct ids that passed the checks; ``found`` how many of them the target
    holds; ``target_count`` everything the target holds (it may be more:
    events the services wrote since the switch). ``mismatches`` are sampled
    documents whose stored copy differs field by field.
    """

    collection: str
    source_count: int
    read: int
    rejected: int
    expected: int
    found: int
    target_count: int
    sampled: int
    missing_ids: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.found == self.expected and not self.mismatches and self.source_count == self.read
        )


@dataclass
class MigrationReport:
    """What a run did, per collection; ``verify`` is filled when verification ran."""

    dry_run: bool
    capture_changes: bool
    summaries: dict[str, CollectionSummary]
    verify: dict[str, VerifyResult] | None = None
    elapsed: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.summaries.values())

    @property
    def verified(self) -> bool | None:
        """``None`` when verification did not run."""
        if self.verify is None:
            return None
        return all(v.ok for v in self.verify.values())

    @property
    def read(self) -> int:
        return sum(s.read for s in self.summaries.values())

    @property
    def conflicts(self) -> list[Conflict]:
        """Documents already stored with different content, in every collection."""
        return [c for s in self.summaries.values() for c in s.conflicts]


def write_reject(stream: IO[str], reject: Reject) -> None:
    """One rejects-file line: JSON with collection, where, id, reason and ``raw``, the
    document's text exactly as read (a mongoexport line, or canonical extended JSON
    for a live source)."""
    stream.write(json.dumps(reject.as_dict(), ensure_ascii=False) + "\n")
