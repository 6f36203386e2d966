"""Fixtures shared by the tiers live in tests/fixtures/, one module per concern."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.ca",
    "tests.fixtures.cluster",
    "tests.fixtures.postgres",
    "tests.fixtures.ferretdb",
    "tests.fixtures.chart",
]

TESTS = Path(__file__).resolve().parent
#: The tiers: hack/run-tests.sh runs ``pytest -m TIER tests/TIER`` for each.
TIERS = ("chart", "datastore", "cluster", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that its tier's run would leave out: one without its tier's marker.

    hack/run-tests.sh selects each tier by marker, so an unmarked module
    would be collected, deselected and never run, silently.
    """
    unmarked = [
        item.nodeid
        for item in items
        if (tier := _tier_of(item.path)) is not None and item.get_closest_marker(tier) is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests without the marker of their tier (add `pytestmark = pytest.mark.<tier>`): "
            + ", ".join(unmarked)
        )


def _tier_of(path: Path) -> str | None:
    try:
        first = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None
