"""MongoDB backup against a real MongoDB wire-protocol server (FerretDB locally, MongoDB through the env)."""

from __future__ import annotations

import gzip
import json

import bson
import pytest
from bson import json_util

from devstack import seed
from ragvault.components.mongodb import MongoComponent


@pytest.fixture(scope="module")
def mongo_client():
    from airflow.providers.mongo.hooks.mongo import MongoHook

    with MongoHook() as hook:
        yield hook.get_conn()


@pytest.fixture(scope="module")
def seeded_mongo(mongo_client):
    seed.wipe_mongo(mongo_client)
    return seed.seed_mongo(mongo_client)


def stored(repo, key) -> bytes:
    return repo.client.get_object(Bucket=repo.bucket, Key=key)["Body"].read()


def test_lists_databases_without_system_ones(settings, seeded_mongo, mongo_client):
    databases = MongoComponent(settings).list_items()
    assert {"rag_app", "rag_logs"} <= set(databases)
    assert not {"admin", "local", "config"} & set(databases)


def test_dump_and_export_hold_every_document_and_index(settings, context, repo, seeded_mongo, mongo_client):
    component = MongoComponent(settings)
    for db_name in ("rag_app", "rag_logs"):
        result = component.backup(context("mongodb"), db_name)
        keys = {a.key.split("/", 2)[2]: a for a in result.artifacts}
        database = mongo_client[db_name]
        names = sorted(database.list_collection_names())
        assert sorted(result.details["collections"]) == names
        for name in names:
            server_docs = list(database[name].find({}, sort=[("_id", 1)]))
            assert server_docs, f"{db_name}.{name} is seeded"

            # mongodump layout: gzip'd concatenated BSON, every document byte-equal to what the server returns
            dump = gzip.decompress(stored(repo, keys[f"dump/{db_name}/{name}.bson.gz"].key))
            assert bson.decode_all(dump) == server_docs
            raw_server = list(database[name].with_options(codec_options=bson.CodecOptions(
                document_class=bson.raw_bson.RawBSONDocument)).find({}, sort=[("_id", 1)]))
            assert dump == b"".join(doc.raw for doc in raw_server)

            # metadata: every index, in canonical Extended JSON as mongodump writes it
            metadata_key = keys[f"dump/{db_name}/{name}.metadata.json.gz"].key
            metadata = json_util.loads(gzip.decompress(stored(repo, metadata_key)))
            assert metadata["collectionName"] == name
            assert metadata["indexes"] == list(database[name].list_indexes())
            assert {"indexes", "uuid", "collectionName", "type", "options"} <= set(metadata)
            assert b'"$numberInt"' in gzip.decompress(stored(repo, keys[f"dump/{db_name}/{name}.metadata.json.gz"].key))

            # mongoexport format: one canonical Extended JSON document a line
            lines = b"".join(repo.iter_artifact(keys[f"export/{db_name}/{name}.json.zst"])).splitlines()
            exported = [json_util.loads(line) for line in lines]
            assert exported == server_docs
            assert result.details["collections"][name] == {
                "documents": len(server_docs), "indexes": len(list(database[name].list_indexes()))}
        assert result.counts["documents"] == sum(seeded_mongo[f"{db_name}.{n}"] for n in names)


def test_collection_filters(settings, seeded_mongo, mongo_client, context):
    component = MongoComponent(settings)
    component.config = {**component.config, "exclude_collections": ["rag_app.chunks"]}
    result = component.backup(context("mongodb"), "rag_app")
    assert "chunks" not in result.details["collections"]
    assert not any("/chunks." in a.key for a in result.artifacts)


# -- restore ----------------------------------------------------------------------------------------------


def test_restore_onto_a_blank_server(settings, backed_up, restore_context, target_settings, seeded_mongo,
                                     mongo_client, monkeypatch):
    from pymongo import MongoClient

    from devstack.state import spare_ferretdb

    manifest = backed_up(MongoComponent(settings))
    with spare_ferretdb() as uri:
        port = int(uri.rsplit(":", 1)[1].strip("/"))
        monkeypatch.setenv("AIRFLOW_CONN_MONGO_TARGET", json.dumps({"conn_type": "mongo", "host": "127.0.0.1",
                                                                    "port": port}))
        restorer = MongoComponent(target_settings("mongo", "mongo_target"))
        ctx = restore_context(manifest, "mongodb", restorer.settings)
        databases = restorer.restore_items(ctx.section)
        assert {"rag_app", "rag_logs"} <= set(databases)
        assert not any(restorer.inspect_target(ctx, db)["holds_data"] for db in databases)
        for db in databases:
            restorer.restore(ctx, db)
        target = MongoClient(uri)
        for db in ("rag_app", "rag_logs"):
            for name in mongo_client[db].list_collection_names():
                source_docs = list(mongo_client[db][name].find({}, sort=[("_id", 1)]))
                assert list(target[db][name].find({}, sort=[("_id", 1)])) == source_docs, f"{db}.{name}"
                strip = lambda indexes: sorted((i["name"], tuple(i["key"].items()), i.get("unique", False))  # noqa: E731
                                               for i in indexes)
                assert strip(target[db][name].list_indexes()) == strip(mongo_client[db][name].list_indexes())
            assert restorer.verify_restore(ctx, db) == []
            assert restorer.inspect_target(ctx, db)["holds_data"]

        # A restore over data replaces it (no duplicates), and the verification notices a change.
        restorer.restore(ctx, "rag_app")
        assert target.rag_app.documents.count_documents({}) == seeded_mongo["rag_app.documents"]
        target.rag_app.documents.delete_one({})
        problems = restorer.verify_restore(ctx, "rag_app")
        assert any("documents:" in p for p in problems), problems
        target.close()
