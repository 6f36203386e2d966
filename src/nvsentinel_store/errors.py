"""The package's exceptions: each carries what a user needs to fix the problem."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(StoreError):
    """A setting is missing or wrong: names the variable, the value and what is expected."""
