"""The MongoDB provider's client side: connection options, checks before sending, retries.

There is no MongoDB server on these machines; what needs one (reads and writes
through FerretDB, change streams on kind) is tested where it exists. These
tests use real certificates and a real (closed) loopback port.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from pathlib import Path

import pytest

from devsupport.ca import Pki
from nvsentinel_store.config import Settings, TlsFile
from nvsentinel_store.errors import ConfigError, QueryError, StoreUnavailableError
from nvsentinel_store.providers.mongodb import MongoStore, RetryPolicy, check_pipeline
from nvsentinel_store.store import Collection, Store

pytestmark = pytest.mark.datastore


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def mongo_settings(test_ca: Pki, port: int) -> Settings:
    client = test_ca.client("nvsentinel")
    settings = Settings.from_env(
        {
            "DATASTORE_PROVIDER": "mongodb",
            "DATASTORE_HOST": "localhost",
            "DATASTORE_PORT": str(port),
            "DATASTORE_DATABASE": "nvsentinel",
            "DATASTORE_SSLMODE": "verify-full",
            "MONGODB_CLIENT_CERT_MOUNT_PATH": str(client.path),
        }
    )
    return dataclasses.replace(settings, connect_timeout=1)


def test_store_loads_the_client_certificate_and_leaves_no_key_copy(
    test_ca: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with MongoStore.from_settings(mongo_settings(test_ca, closed_port())) as store:
        assert isinstance(store, Store)
        assert isinstance(store.collection("health_events"), Collection)
        options = store.client.options
        assert options.pool_options._ssl_context is not None  # TLS with our files loaded
    assert list(tmp_path.iterdir()) == []


def test_a_key_that_does_not_match_its_certificate_is_a_config_error_naming_both(
    test_ca: Pki,
) -> None:
    settings = mongo_settings(test_ca, closed_port())
    other_key = test_ca.client("nvsentinel_migrator").key
    mismatched = dataclasses.replace(settings, sslkey=TlsFile(other_key, "test"))
    with pytest.raises(ConfigError) as info:
        MongoStore.from_settings(mismatched)
    message = str(info.value)
    assert str(other_key) in message
    assert str(settings.sslcert) in message
    assert "key values mismatch" in message


def test_unsupported_filter_operator_is_refused_before_sending(test_ca: Pki) -> None:
    with MongoStore.from_settings(mongo_settings(test_ca, closed_port())) as store:
        events = store.collection("health_events")
        with pytest.raises(QueryError, match=r"\$where"):
            events.find({"$where": "true"})
        with pytest.raises(QueryError, match=r"\$regex"):
            events.find({"nodeName": {"$regex": "^gpu"}})
        with pytest.raises(QueryError, match="supported: \\$set, \\$unset"):
            events.update_one({"_id": "a"}, {"$inc": {"count": 1}})
        with pytest.raises(QueryError, match="immutable"):
            events.update_one({"_id": "a"}, {"$set": {"_id": "b"}})
        with pytest.raises(QueryError, match="1 or -1"):
            events.find({}, sort=[("createdAt", 0)])


def test_watch_pipeline_takes_only_match_stages() -> None:
    stages = check_pipeline([{"$match": {"operationType": {"$in": ["insert", "update"]}}}])
    assert stages == [{"$match": {"operationType": {"$in": ["insert", "update"]}}}]
    with pytest.raises(QueryError, match=r"only \$match"):
        check_pipeline([{"$project": {"fullDocument": 1}}])


def test_reads_give_up_with_store_unavailable_after_the_retry_deadline(test_ca: Pki) -> None:
    port = closed_port()
    settings = mongo_settings(test_ca, port)
    policy = RetryPolicy(initial_delay=0.05, max_delay=0.1, deadline=0.5)
    with (
        MongoStore.from_settings(settings, retry_policy=policy) as store,
        pytest.raises(StoreUnavailableError) as info,
    ):
        store.collection("health_events").find({"nodeName": "gpu-1"})
    assert "find in health_events" in str(info.value)
    assert "unreachable" in str(info.value)
