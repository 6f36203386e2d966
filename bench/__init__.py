"""Benchmarks of the PostgreSQL datastore, run by ``make bench`` (not by ``make test``).

``python -m bench.changestream`` starts its own PostgreSQL (the test fixture's
server: TLS only, client-certificate authentication), measures the change
stream against the issue's targets and writes ``docs/benchmarks.md``.
"""
