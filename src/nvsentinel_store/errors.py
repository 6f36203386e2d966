"""The package's exceptions: each carries what a user needs to fix the problem."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(StoreError):
    """A setting is missing or wrong: names the variable, the value and what is expected."""


class MigrationError(StoreError):
    """A schema migration cannot be applied: names the file and the reason."""


class QueryError(StoreError):
    """A filter, sort, update or pipeline uses something this package does not support.

    Raised instead of ignoring the unknown part, so that a filter never matches
    more (or less) than the caller asked for.
    """


class HistoryLostError(StoreError):
    """A change stream cannot resume: the changes after its position were pruned.

    Modelled on MongoDB's ChangeStreamHistoryLost (code 286). The consumer must
    decide how to recover (e.g. rescan the collection, then watch from now); the
    stream never jumps over the gap on its own.
    """

    code = 286
    code_name = "ChangeStreamHistoryLost"


class StoreUnavailableError(StoreError):
    """The datastore could not be reached (after retrying, where the operation retries)."""


class ImportFailedError(StoreError):
    """A ``migrate`` run that had started could not go on: a source became unreadable.

    E.g. an export file that is truncated or was removed during the run, the
    parser process that died, or a MongoDB source that failed mid-read. Names
    the source and the reason. Not a :class:`ConfigError`: the command line was
    right, and every batch committed before the failure stays (a second run
    adds only the rest).
    """


class DuplicateKeyError(StoreError):
    """A document with the same ``_id`` (or unique key) already exists."""
