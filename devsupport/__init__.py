"""Tools a developer runs, shared by the tests, the benchmarks and hack/.

A CA that lays certificates out as cert-manager does (:mod:`devsupport.ca`,
also ``python -m devsupport.ca``), a real PostgreSQL on loopback configured as
the chart configures it (:mod:`devsupport.postgres`), NVSentinel's own
migrations (:mod:`devsupport.nvsentinel`) and realistic documents
(:mod:`devsupport.documents`, :mod:`devsupport.documents_sql`,
:mod:`devsupport.mongoexport`). Nothing here imports pytest or ``tests``: the
pytest fixtures over these live in ``tests/fixtures/``.
"""
