"""NVSentinel's datastore client: MongoDB and PostgreSQL behind one collection API."""

__version__ = "0.1.0"
