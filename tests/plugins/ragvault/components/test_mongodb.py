"""MongoDB backup against a real MongoDB wire-protocol server (FerretDB locally, MongoDB through the env)."""

from __future__ import annotations

import datetime
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
                "kind": "state", "documents": len(server_docs), "indexes": len(list(database[name].list_indexes()))}
        assert result.counts["documents"] == sum(seeded_mongo[f"{db_name}.{n}"] for n in names)


def test_collection_filters(settings, seeded_mongo, mongo_client, context):
    component = MongoComponent(settings)
    component.config = {**component.config, "exclude_collections": ["rag_app.chunks"]}
    result = component.backup(context("mongodb"), "rag_app")
    assert "chunks" not in result.details["collections"]
    assert not any("/chunks." in a.key for a in result.artifacts)


def test_read_preference_and_the_replication_position_are_recorded(settings, seeded_mongo, context):
    """``read_preference`` is the dump's (secondaryPreferred reads a replica set's secondary); each database's
    details say where the dump stands. The local server (FerretDB) is a standalone server: no replica set and
    no oplog, so the oplog positions are null there (against a replica set, through the environment's
    connection, they are the oplog's newest timestamps before and after the dump)."""
    from ragvault.components.base import ComponentError

    component = MongoComponent(settings)
    component.config = {**component.config, "read_preference": "secondaryPreferred"}
    result = component.backup(context("mongodb"), "rag_app")
    replication = result.details["replication"]
    assert replication["read_preference"] == "secondaryPreferred"
    if replication["topology"] == "standalone":
        assert replication == {"topology": "standalone", "read_preference": "secondaryPreferred",
                               "oplog_start": None, "oplog_end": None}
    else:
        assert replication["topology"].startswith("replica set ") and replication["hosts"]
        start, end = replication["oplog_start"], replication["oplog_end"]
        assert (start["t"], start["i"]) <= (end["t"], end["i"])
    assert result.counts["documents"] == sum(v for k, v in seeded_mongo.items() if k.startswith("rag_app."))
    # without the setting, the connection's own preference (primary) is recorded
    plain = MongoComponent(settings).backup(context("mongodb"), "rag_logs")
    assert plain.details["replication"]["read_preference"] == "primary"

    component.config = {**component.config, "read_preference": "fastest"}
    with pytest.raises(ComponentError, match="read_preference is 'fastest': expected primary, primaryPreferred"):
        component.backup(context("mongodb"), "rag_app")


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


# -- interval collections ---------------------------------------------------------------------------------
# A database with an ordinary collection (``settings``) and a log collection (``logs``, datetime field ``ts``)
# holding documents on three consecutive days, plus documents without a datetime ``ts``.

LOG_DB = "ragvault_interval_test"
DAYS = [datetime.datetime(2031, 3, d, tzinfo=datetime.UTC) for d in (1, 2, 3)]
PER_DAY = 12
UNDATED = [{"_id": "no-ts-1", "msg": "no timestamp"}, {"_id": "no-ts-2", "msg": "no timestamp", "level": "info"},
           {"_id": "no-ts-3", "ts": None}, {"_id": "str-ts", "ts": "2031-03-02T10:00:00Z"},
           {"_id": "int-ts", "ts": 1930000000}]
#: the interval patterns the tests configure: the first matching one gives the field
PATTERNS = {"nowhere.*": "never", f"{LOG_DB}.logs": "ts", "*.logs": "created_at"}


def log_documents(day_index: int) -> list[dict]:
    """The day's log documents: the first exactly at midnight (in), the last a millisecond before the next (in)."""
    day = DAYS[day_index]
    offsets = [datetime.timedelta(0), datetime.timedelta(days=1, milliseconds=-1)]
    offsets += [datetime.timedelta(hours=2 * i, minutes=7, seconds=i) for i in range(1, PER_DAY - 1)]
    return [{"_id": bson.ObjectId(), "ts": day + offset, "level": ("info", "warn", "error")[i % 3],
             "msg": f"day {day_index + 1} event {i}", "attrs": {"n": i, "tags": ["a", f"t{i}"]}}
            for i, offset in enumerate(offsets)]


@pytest.fixture
def log_db(mongo_client):
    """``{"day1": [...], "day2": [...], "day3": [...]}``: the log database, dropped afterwards."""
    mongo_client.drop_database(LOG_DB)
    database = mongo_client[LOG_DB]
    database.settings.insert_many([{"_id": f"s{i}", "key": f"feature_{i}", "on": i % 2 == 0} for i in range(7)])
    days = {f"day{i + 1}": log_documents(i) for i in range(3)}
    for documents in days.values():
        database.logs.insert_many(documents)
    database.logs.insert_many(UNDATED)
    database.logs.create_index("ts")
    database.logs.create_index([("level", 1), ("ts", -1)], name="level_ts")
    yield days
    mongo_client.drop_database(LOG_DB)


def interval_component(settings, patterns=PATTERNS) -> MongoComponent:
    component = MongoComponent(settings)
    component.config = {**component.config, "interval_collections": dict(patterns)}
    return component


def day_run(day: datetime.datetime) -> dict:
    """A run whose data interval is the whole ``day``."""
    return {"run_id": f"test-{day.date()}", "data_interval_start": day.isoformat(),
            "data_interval_end": (day + datetime.timedelta(days=1)).isoformat()}


def back_up_day(repo, component, date: str, day: datetime.datetime, mode: str = "capture"):
    """Back up the log database for ``day`` on ``date`` in ``mode`` and commit; ``(result, manifest)``."""
    from ragvault.components.base import BackupContext

    run = day_run(day)
    result = component.backup(BackupContext(repo=repo, date=date, component="mongodb", run=run, mode=mode), LOG_DB)
    manifest = repo.build_manifest(date, [result], run)
    repo.commit_manifest(manifest)
    return result, manifest


def raw_find(collection, query, sort):
    return list(collection.with_options(codec_options=bson.CodecOptions(
        document_class=bson.raw_bson.RawBSONDocument)).find(query, sort=sort))


def test_interval_settings_parts_and_items(settings, mongo_client, log_db):
    from ragvault.components.base import INTERVAL, STATE

    plain = MongoComponent(settings)
    assert plain.backup_parts() == {STATE}
    assert plain.interval_items([LOG_DB]) == []

    component = interval_component(settings)
    assert component.backup_parts() == {STATE, INTERVAL}
    assert component.interval_field(f"{LOG_DB}.logs") == "ts"  # listed before "*.logs": the first match wins
    assert component.interval_field("other.logs") == "created_at"
    assert component.interval_field(f"{LOG_DB}.settings") is None

    # Only the databases holding a selected interval collection: one with ordinary collections only, and one
    # whose "logs" collection matches a pattern but is excluded, are not picked.
    mongo_client.drop_database(f"{LOG_DB}_plain")
    mongo_client.drop_database(f"{LOG_DB}_excluded")
    try:
        mongo_client[f"{LOG_DB}_plain"].notes.insert_one({"_id": 1, "text": "state only"})
        mongo_client[f"{LOG_DB}_excluded"].logs.insert_one({"_id": 1, "created_at": DAYS[0]})
        component.config["exclude_collections"] = [*component.config["exclude_collections"], f"{LOG_DB}_excluded.*"]
        items = [f"{LOG_DB}_excluded", LOG_DB, f"{LOG_DB}_plain"]
        assert component.interval_items(items) == [LOG_DB]
        assert component.interval_items([f"{LOG_DB}_plain"]) == []
    finally:
        mongo_client.drop_database(f"{LOG_DB}_plain")
        mongo_client.drop_database(f"{LOG_DB}_excluded")


def test_capture_backup_of_a_day(settings, repo, backup_date, mongo_client, log_db, caplog):
    component = interval_component(settings)
    with caplog.at_level("WARNING", logger="ragvault"):
        result, _ = back_up_day(repo, component, backup_date, DAYS[1])
    assert any("5 document(s) have no datetime 'ts'" in r.getMessage() for r in caplog.records), caplog.text
    keys = {a.key.split("/", 2)[2]: a for a in result.artifacts}
    database = mongo_client[LOG_DB]

    # the ordinary collection: whole, as before
    settings_docs = raw_find(database.settings, {}, [("_id", 1)])
    assert len(settings_docs) == 7
    assert gzip.decompress(stored(repo, keys[f"dump/{LOG_DB}/settings.bson.gz"].key)) == b"".join(
        d.raw for d in settings_docs)
    assert result.details["collections"]["settings"] == {"kind": "state", "documents": 7, "indexes": 1}

    # the log collection: exactly the second day's documents, in time order (the index on ts), byte-equal
    day_docs = raw_find(database.logs, {"_id": {"$in": [d["_id"] for d in log_db["day2"]]}}, [("ts", 1)])
    assert len(day_docs) == PER_DAY
    dump = gzip.decompress(stored(repo, keys[f"dump/{LOG_DB}/logs.bson.gz"].key))
    assert dump == b"".join(d.raw for d in day_docs)
    dumped = bson.decode_all(dump)
    assert {d["_id"] for d in dumped} == {d["_id"] for d in log_db["day2"]}
    assert dumped[0]["msg"] == "day 2 event 0" and dumped[-1]["msg"] == "day 2 event 1"  # midnight, 23:59:59.999
    lines = b"".join(repo.iter_artifact(keys[f"export/{LOG_DB}/logs.json.zst"])).splitlines()
    assert [json_util.loads(line) for line in lines] == dumped
    metadata = json_util.loads(gzip.decompress(stored(repo, keys[f"dump/{LOG_DB}/logs.metadata.json.gz"].key)))
    assert metadata["indexes"] == list(database.logs.list_indexes())

    assert result.details["collections"]["logs"] == {
        "kind": "interval", "field": "ts", "undated": len(UNDATED), "documents": PER_DAY, "indexes": 3,
        "window": {"start": "2031-03-02T00:00:00+00:00", "end": "2031-03-03T00:00:00+00:00",
                   "source": "data_interval"}}
    assert result.counts == {"databases": 1, "collections": 2, "interval_collections": 1,
                             "documents": 7 + PER_DAY, "indexes": 4}


def test_interval_mode_backs_up_only_the_interval_collections(settings, repo, backup_date, s3_client, bucket,
                                                              log_db, caplog):
    component = interval_component(settings)
    with caplog.at_level("INFO", logger="ragvault"):
        result, manifest = back_up_day(repo, component, backup_date, DAYS[2], mode="interval")
    assert any("1 ordinary collection(s) are not read" in r.getMessage() for r in caplog.records), caplog.text
    assert sorted(result.details["collections"]) == ["logs"]
    assert result.details["collections"]["logs"]["documents"] == PER_DAY
    assert result.counts["collections"] == 1 and result.counts["documents"] == PER_DAY
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{backup_date}/mongodb/")
    assert sorted(o["Key"].split("/", 2)[2] for o in listed["Contents"]) == [
        f"dump/{LOG_DB}/logs.bson.gz", f"dump/{LOG_DB}/logs.metadata.json.gz", f"export/{LOG_DB}/logs.json.zst"]
    dumped = bson.decode_all(gzip.decompress(stored(repo, f"{backup_date}/mongodb/dump/{LOG_DB}/logs.bson.gz")))
    assert {d["_id"] for d in dumped} == {d["_id"] for d in log_db["day3"]}
    assert sorted(manifest["components"]["mongodb"]["items"][LOG_DB]["details"]["collections"]) == ["logs"]


def test_restore_merges_days_into_one_collection(settings, repo, fresh_date, restore_context, target_settings,
                                                 mongo_client, log_db, monkeypatch):
    from pymongo import MongoClient

    from devstack.state import spare_ferretdb

    component = interval_component(settings)
    _, first = back_up_day(repo, component, fresh_date(), DAYS[0])  # capture: settings and day 1's logs
    _, second = back_up_day(repo, component, fresh_date(), DAYS[1], mode="interval")  # day 2's logs only
    source = mongo_client[LOG_DB]
    with spare_ferretdb() as uri:
        port = int(uri.rsplit(":", 1)[1].strip("/"))
        monkeypatch.setenv("AIRFLOW_CONN_MONGO_TARGET", json.dumps({"conn_type": "mongo", "host": "127.0.0.1",
                                                                    "port": port}))
        restorer = MongoComponent(target_settings("mongo", "mongo_target"))
        ctx1 = restore_context(first, "mongodb", restorer.settings)
        ctx2 = restore_context(second, "mongodb", restorer.settings)
        target = MongoClient(uri)
        logs = target[LOG_DB].logs

        def ids(documents):
            return sorted(str(d["_id"]) for d in documents)

        assert not restorer.inspect_target(ctx1, LOG_DB)["holds_data"]
        assert restorer.restore(ctx1, LOG_DB) == {"collections": 2, "documents": 7 + PER_DAY, "present": 0,
                                                  "indexes": 2}
        assert ids(logs.find()) == ids(log_db["day1"])
        assert list(target[LOG_DB].settings.find(sort=[("_id", 1)])) == list(source.settings.find(sort=[("_id", 1)]))

        # day 2 over day 1: the logs collection holds other days only, no reason for a confirmation
        inspected = restorer.inspect_target(ctx2, LOG_DB)
        assert not inspected["holds_data"], inspected
        assert restorer.restore(ctx2, LOG_DB) == {"collections": 1, "documents": PER_DAY, "present": 0, "indexes": 0}
        assert ids(logs.find()) == ids(log_db["day1"] + log_db["day2"])
        union = [d["_id"] for d in log_db["day1"] + log_db["day2"]]
        assert list(logs.find(sort=[("_id", 1)])) == list(source.logs.find({"_id": {"$in": union}}, sort=[("_id", 1)]))
        strip = lambda indexes: sorted((i["name"], tuple(i["key"].items())) for i in indexes)  # noqa: E731
        assert strip(logs.list_indexes()) == strip(source.logs.list_indexes())

        # restoring the same day again inserts nothing and asks first: the target holds that window's documents
        inspected = restorer.inspect_target(ctx2, LOG_DB)
        assert inspected["holds_data"] and f"holds {PER_DAY} documents of the backup's window" in inspected["what"]
        assert restorer.restore(ctx2, LOG_DB) == {"collections": 1, "documents": 0, "present": PER_DAY, "indexes": 0}
        assert logs.count_documents({}) == 2 * PER_DAY
        # day 1 again: the ordinary collection is replaced, the logs merged (nothing new)
        assert restorer.restore(ctx1, LOG_DB) == {"collections": 2, "documents": 7, "present": PER_DAY,
                                                  "indexes": 0}
        assert logs.count_documents({}) == 2 * PER_DAY and target[LOG_DB].settings.count_documents({}) == 7

        # the verification accepts the other day's documents, and notices a missing or a changed one
        assert restorer.verify_restore(ctx1, LOG_DB) == []
        assert restorer.verify_restore(ctx2, LOG_DB) == []
        gone, changed = log_db["day2"][3]["_id"], log_db["day2"][5]["_id"]
        logs.delete_one({"_id": gone})
        logs.update_one({"_id": changed}, {"$set": {"msg": "edited"}})
        problems = restorer.verify_restore(ctx2, LOG_DB)
        assert f"logs: 1 of the {PER_DAY} backed-up documents missing (first: {gone!r})" in problems, problems
        assert f"logs: document {changed!r} differs from the backup" in problems, problems
        assert restorer.verify_restore(ctx1, LOG_DB) == []
        target.close()
