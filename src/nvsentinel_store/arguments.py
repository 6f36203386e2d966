"""Argument types the ``nvsentinel-store`` subcommands share (for argparse's ``type=``)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of at least 1 (batch sizes, sample sizes)."""
    return _int_between(text, 1, None, "a positive integer")


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    return _int_between(text, 1, 65535, "a port (1-65535)")


def _int_between(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value
