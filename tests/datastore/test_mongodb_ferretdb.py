"""The MongoDB provider's reads and writes over the MongoDB wire protocol (FerretDB).

FerretDB stands in for MongoDB: real pymongo, TLS with verify-full and a client
certificate. It has no MONGODB-X509 authentication and no change streams, so
the client here is built from ``mongo_client_kwargs`` without the X509
mechanism, and watching is tested on kind.

The subchart's init-collections.js (rendered, under node) runs against it too:
collections and indexes. FerretDB 1.24 refuses TTL indexes (createIndexes:
"Index option "expireAfterSeconds" is not implemented yet") and has no
``collMod`` ("`collMod` command is not implemented yet"), so the TTL indexes
are created here without expireAfterSeconds; the TTL itself and its change are
tested in the chart tier (tests/chart/test_mongodb_collections.py, against
MongoDB's documented answers).
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import ServerSelectionTimeoutError

from devsupport.ca import Pki
from nvsentinel_store.config import Settings, mongo_client_kwargs
from nvsentinel_store.providers.mongodb import MongoCollection, MongoStore
from nvsentinel_store.store import Document
from tests.chart.subcharts import render_subchart
from tests.fixtures.ferretdb import FerretDBServer
from tests.fixtures.mongosh import (
    NVSENTINEL_INDEXES,
    TTL,
    ensure_collections,
    init_job_collections,
    lay_out_scripts,
    pymongo_handler,
)

pytestmark = pytest.mark.datastore


@pytest.fixture
def mongo_store(ferretdb_server: FerretDBServer, test_ca: Pki) -> Iterator[MongoStore]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings.from_env(
        {
            "DATASTORE_PROVIDER": "mongodb",
            "DATASTORE_HOST": "localhost",
            "DATASTORE_PORT": str(ferretdb_server.port),
            "DATASTORE_DATABASE": database,
            "DATASTORE_SSLMODE": "verify-full",
            "MONGODB_CLIENT_CERT_MOUNT_PATH": str(test_ca.client("nvsentinel").path),
        }
    )
    with tempfile.TemporaryDirectory() as pem_dir:
        kwargs = mongo_client_kwargs(settings, pem_directory=Path(pem_dir))
        # FerretDB has no X509 authentication; the TLS handshake still requires
        # and verifies the client certificate.
        kwargs.pop("authMechanism")
        kwargs.pop("authSource")
        client: MongoClient[Document] = MongoClient(**kwargs)
    store = MongoStore(client, database)
    try:
        yield store
    finally:
        client.drop_database(database)
        store.close()


@pytest.fixture
def events(mongo_store: MongoStore) -> MongoCollection:
    return mongo_store.collection("health_events")


def seed(events: MongoCollection) -> None:
    for i, (node, fatal) in enumerate([("gpu-1", True), ("gpu-2", False), ("gpu-3", True)]):
        events.insert_one(
            {
                "_id": f"e{i}",
                "healthevent": {"nodename": node, "isfatal": fatal, "checkname": "xid"},
                "healtheventstatus": {"nodequarantined": None},
                "seq": i,
            }
        )


def test_insert_generates_a_uuid_string_id_and_find_returns_the_document(
    events: MongoCollection,
) -> None:
    new_id = events.insert_one({"healthevent": {"nodename": "gpu-9"}})
    assert str(uuid.UUID(new_id)) == new_id
    assert events.find_one({"_id": new_id}) == {
        "_id": new_id,
        "healthevent": {"nodename": "gpu-9"},
    }


def test_find_filters_sorts_and_limits_on_dotted_paths(events: MongoCollection) -> None:
    seed(events)
    fatal = events.find({"healthevent.isfatal": True}, sort=[("seq", -1)])
    assert [d["_id"] for d in fatal] == ["e2", "e0"]
    first = events.find({"healthevent.nodename": {"$in": ["gpu-2", "gpu-3"]}}, [("seq", 1)], 1)
    assert [d["_id"] for d in first] == ["e1"]
    either = events.find({"$or": [{"seq": {"$gte": 2}}, {"healthevent.nodename": "gpu-1"}]})
    assert sorted(d["_id"] for d in either) == ["e0", "e2"]


def test_update_one_sets_and_unsets_dotted_fields(events: MongoCollection) -> None:
    seed(events)
    result = events.update_one(
        {"_id": "e0"},
        {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}, "$unset": {"seq": ""}},
    )
    assert (result.matched_count, result.modified_count) == (1, 1)
    doc = events.find_one({"_id": "e0"})
    assert doc is not None
    assert doc["healtheventstatus"] == {"nodequarantined": "Quarantined"}
    assert "seq" not in doc
    missing = events.update_one({"_id": "nope"}, {"$set": {"x": 1}})
    assert (missing.matched_count, missing.modified_count) == (0, 0)


def test_delete_one_removes_exactly_one_match(events: MongoCollection) -> None:
    seed(events)
    assert events.delete_one({"healthevent.isfatal": True}) == 1
    assert len(events.find({"healthevent.isfatal": True})) == 1
    assert events.delete_one({"_id": "nope"}) == 0


def test_named_stream_positions_are_stored_per_client_and_collection(
    mongo_store: MongoStore,
) -> None:
    mongo_store.save_resume_token("fault-quarantine", "health_events", {"_data": "82AA"})
    mongo_store.save_resume_token("fault-quarantine", "health_events", {"_data": "82BB"})
    mongo_store.save_resume_token("node-drainer", "health_events", {"_data": "82CC"})
    assert mongo_store.load_resume_token("fault-quarantine", "health_events") == {"_data": "82BB"}
    assert mongo_store.load_resume_token("node-drainer", "health_events") == {"_data": "82CC"}
    assert mongo_store.load_resume_token("fault-quarantine", "maintenance_events") is None


def tls_client(
    ferretdb_server: FerretDBServer, test_ca: Pki, sslmode: str, ca_file: Path
) -> MongoClient[Document]:
    settings = Settings.from_env(
        {
            "DATASTORE_PROVIDER": "mongodb",
            "DATASTORE_HOST": "localhost",
            "DATASTORE_PORT": str(ferretdb_server.port),
            "DATASTORE_DATABASE": "tls",
            "DATASTORE_SSLMODE": sslmode,
            "DATASTORE_SSLROOTCERT": str(ca_file),
            "MONGODB_CLIENT_CERT_MOUNT_PATH": str(test_ca.client("nvsentinel").path),
        }
    )
    settings = dataclasses.replace(settings, connect_timeout=2)
    with tempfile.TemporaryDirectory() as pem_dir:
        kwargs = mongo_client_kwargs(settings, pem_directory=Path(pem_dir))
        kwargs.pop("authMechanism")
        kwargs.pop("authSource")
        return MongoClient(**kwargs)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_mongo_server_signed_by_another_ca_is_refused(
    ferretdb_server: FerretDBServer, test_ca: Pki, sslmode: str
) -> None:
    with (
        tls_client(ferretdb_server, test_ca, sslmode, test_ca.wrong_ca_file) as client,
        pytest.raises(ServerSelectionTimeoutError, match="certificate verify failed"),
    ):
        client.admin.command("ping")


def test_mongo_require_does_not_verify_the_server(
    ferretdb_server: FerretDBServer, test_ca: Pki
) -> None:
    with tls_client(ferretdb_server, test_ca, "require", test_ca.wrong_ca_file) as client:
        assert client.admin.command("ping")["ok"] == 1.0


def test_init_collections_script_creates_nvsentinels_collections_and_indexes_once(
    ferretdb_server: FerretDBServer, test_ca: Pki, tmp_path: Path
) -> None:
    database = f"init_{uuid.uuid4().hex[:12]}"
    objects = render_subchart("mongodb", [f"auth.database={database}"], release="nvsentinel")
    spec = init_job_collections(objects)
    for collection in spec["collections"]:
        for index in collection["indexes"]:
            index.pop(TTL, None)  # FerretDB has no TTL indexes (module docstring)
    scripts = lay_out_scripts(objects, tmp_path, "nvsentinel")
    with tls_client(ferretdb_server, test_ca, "verify-full", ferretdb_server.ca_file) as client:
        try:
            first = ensure_collections(scripts, spec, pymongo_handler(client))
            assert first.returncode == 0, first.output
            db = client[database]
            assert set(db.list_collection_names()) == set(NVSENTINEL_INDEXES)
            for collection, expected in NVSENTINEL_INDEXES.items():
                indexes = {i["name"]: i for i in db[collection].list_indexes()}
                assert set(indexes) - {"_id_"} == set(expected), collection
                for name, (key, _) in expected.items():
                    assert [(f, int(d)) for f, d in indexes[name]["key"].items()] == key, name
            again = ensure_collections(scripts, spec, pymongo_handler(client))
            assert again.returncode == 0, again.output
            assert set(again.names()) == {"listCollections", "listIndexes"}, again.names()
        finally:
            client.drop_database(database)
