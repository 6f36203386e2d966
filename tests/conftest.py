"""Fixtures shared by the tiers live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.ca",
    "tests.fixtures.cluster",
    "tests.fixtures.postgres",
    "tests.fixtures.ferretdb",
    "tests.fixtures.chart",
]
