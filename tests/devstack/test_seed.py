"""The demo-data seeder (``include/devstack/seed.py``) against the live servers.

The servers are the ones the ``AIRFLOW_CONN_QDRANT_DEFAULT``, ``AIRFLOW_CONN_MONGO_DEFAULT`` and
``AIRFLOW_CONN_REDIS_DEFAULT`` variables point at (``make services`` starts local ones). These tests WIPE them:
every Qdrant collection, every non-system MongoDB database and every Redis db. A test is skipped only when its
variable is unset or its server does not answer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from bson import Binary, Int64, ObjectId, Regex, Timestamp

from devstack import seed

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_SCRIPT = REPO_ROOT / "include" / "devstack" / "seed.py"

# Every count of the dataset at scale 1, as documented for the demo.
SCALE_1_MONGO = {
    "rag_app.documents": 150,
    "rag_app.chunks": 300,
    "rag_app.conversations": 40,
    "rag_logs.ingestion_runs": 36,
    "rag_logs.llm_calls": 200,
}
SCALE_1_QDRANT = {"docs_chunks": 200, "faq": 60, "colbert_pages": 20}


def _connection(conn_id: str) -> dict:
    conn = seed.read_connection(conn_id)
    if conn is None:
        pytest.skip(f"AIRFLOW_CONN_{conn_id.upper()} is not set: no {conn_id} server to seed")
    return conn


@pytest.fixture
def qdrant():
    from qdrant_client.http.exceptions import ResponseHandlingException

    conn = _connection("qdrant_default")
    client = seed.qdrant_client_from_conn(conn, timeout=10)
    try:
        client.get_collections()
    except ResponseHandlingException as exc:  # the request got no answer (an HTTP error answer fails the tests)
        client.close()
        pytest.skip(f"Qdrant at {conn.get('host')}:{conn.get('port')} does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture
def mongo():
    from pymongo.errors import ConnectionFailure

    conn = _connection("mongo_default")
    client = seed.mongo_client_from_conn(conn, timeout_ms=3000)
    try:
        client.admin.command("ping")
    except ConnectionFailure as exc:
        client.close()
        pytest.skip(f"MongoDB at {conn.get('host')}:{conn.get('port')} does not answer: {str(exc)[:160]}")
    yield client
    client.close()


@pytest.fixture
def redis_kwargs():
    import redis

    conn = _connection("redis_default")
    kwargs = seed.redis_kwargs_from_conn(conn)
    try:
        with redis.Redis(socket_connect_timeout=3, socket_timeout=5, **kwargs) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {conn.get('host')}:{conn.get('port')} does not answer: {exc}")
    return kwargs


def _redis(kwargs: dict, db: int):
    import redis

    return redis.Redis(db=db, socket_timeout=10, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# What each server reports
# --------------------------------------------------------------------------------------------------------------


def mongo_counts(client) -> dict[str, int]:
    """``database.collection`` -> count_documents for every non-system database."""
    return {
        f"{db}.{coll}": client[db][coll].count_documents({})
        for db in client.list_database_names()
        if db not in seed.MONGO_SYSTEM_DATABASES
        for coll in client[db].list_collection_names()
    }


def redis_dbsizes(kwargs: dict) -> dict[str, int]:
    """``dbN`` -> DBSIZE for every db that holds keys (from INFO keyspace, then DBSIZE on each)."""
    with _redis(kwargs, 0) as client:
        dbs = sorted(int(name[2:]) for name in client.info("keyspace"))
    sizes = {}
    for db in dbs:
        with _redis(kwargs, db) as client:
            sizes[f"db{db}"] = client.dbsize()
    return sizes


def qdrant_counts(client) -> dict[str, int]:
    return {c.name: client.count(c.name, exact=True).count for c in client.get_collections().collections}


def expected_redis_counts(scale: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in seed.redis_dataset(scale):
        counts[f"db{item.db}"] = counts.get(f"db{item.db}", 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------------------
# Command line, all three servers
# --------------------------------------------------------------------------------------------------------------


def test_cli_wipe_and_seed_reports_what_the_servers_hold(qdrant, mongo, redis_kwargs):
    # Leave something of every kind behind that --wipe must remove.
    mongo["seed_test_leftover"]["junk"].insert_one({"_id": 1})
    with _redis(redis_kwargs, 5) as client:
        client.set("seed-test:leftover", "x")
    from qdrant_client import models

    if not qdrant.collection_exists("seed_test_leftover"):
        qdrant.create_collection("seed_test_leftover", vectors_config=models.VectorParams(size=2, distance="Dot"))

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(SEED_SCRIPT), "--all", "--wipe", "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert "wiped collections" in result.stderr and "dropped databases" in result.stderr

    assert counts["mongo"] == SCALE_1_MONGO
    assert mongo_counts(mongo) == counts["mongo"]
    assert sorted(n for n in mongo.list_database_names() if n not in seed.MONGO_SYSTEM_DATABASES) == [
        "rag_app", "rag_logs"]

    assert counts["redis"] == expected_redis_counts(1)
    assert set(counts["redis"]) == {"db0", "db1", "db3"}
    assert redis_dbsizes(redis_kwargs) == counts["redis"]

    assert counts["qdrant"] == SCALE_1_QDRANT
    assert qdrant_counts(qdrant) == counts["qdrant"]
    aliases = {(a.alias_name, a.collection_name) for a in qdrant.get_aliases().aliases}
    assert aliases == {("docs_current", "docs_chunks"), ("faq_live", "faq")}


def test_cli_rejects_a_non_positive_scale():
    result = subprocess.run([sys.executable, str(SEED_SCRIPT), "--redis", "--scale", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--scale must be positive" in result.stderr


# --------------------------------------------------------------------------------------------------------------
# MongoDB
# --------------------------------------------------------------------------------------------------------------


def test_mongo_seed_is_idempotent_and_round_trips(mongo):
    seed.wipe_mongo(mongo)
    first = seed.seed_mongo(mongo)
    assert first == SCALE_1_MONGO == mongo_counts(mongo)
    second = seed.seed_mongo(mongo)
    assert second == first == mongo_counts(mongo)

    # Every document reads back exactly as generated (types included: Int64, Binary subtypes, Regex...).
    for namespace, documents in seed.mongo_dataset(1).items():
        db, coll = namespace.split(".")
        stored = {d["_id"]: d for d in mongo[db][coll].find()}
        assert len(stored) == len(documents)
        for document in documents:
            assert stored[document["_id"]] == document, f"{namespace} {document['_id']}"


def test_mongo_documents_carry_every_bson_type_ferretdb_stores(mongo):
    seed.seed_mongo(mongo)
    doc = mongo.rag_app.documents.find_one({"doc_id": "DOC-000001"})
    assert doc is not None
    assert isinstance(doc["_id"], ObjectId)
    assert isinstance(doc["size_bytes"], Int64) and isinstance(doc["version"], int)
    assert isinstance(doc["quality_score"], float) and isinstance(doc["is_public"], bool)
    assert isinstance(doc["created_at"], dt.datetime) and doc["created_at"].tzinfo is not None
    assert "deleted_at" in doc and (doc["deleted_at"] is None or isinstance(doc["deleted_at"], dt.datetime))
    assert isinstance(doc["content_sha256"], bytes) and len(doc["content_sha256"]) == 32
    assert isinstance(doc["content_md5"], Binary) and doc["content_md5"].subtype == 5
    assert isinstance(doc["file_uuid"], Binary) and doc["file_uuid"].subtype == 4
    assert isinstance(doc["file_uuid"].as_uuid(), uuid.UUID)
    assert isinstance(doc["vendor_blob"], Binary) and doc["vendor_blob"].subtype == 128
    assert isinstance(doc["ingest_ts"], Timestamp) and isinstance(doc["exclude_pattern"], Regex)
    assert isinstance(doc["metadata"]["pipeline"], dict) and isinstance(doc["authors"][0], dict)
    assert doc["empty_list"] == [] and doc["empty_doc"] == {}
    # A null inside a nested document, too.
    assert doc["metadata"]["pipeline"]["reviewed"] is None

    # The ObjectId of a document embeds its creation time.
    assert doc["_id"].generation_time == doc["created_at"].replace(microsecond=0)


def test_mongo_indexes_and_references(mongo):
    seed.seed_mongo(mongo)
    indexes = {ix["name"]: ix for ix in mongo.rag_app.documents.list_indexes()}
    assert dict(indexes["doc_id_unique"]["key"]) == {"doc_id": 1} and indexes["doc_id_unique"]["unique"] is True
    assert list(indexes["source_updated_at"]["key"].items()) == [("source", 1), ("updated_at", -1)]
    assert dict(indexes["created_at"]["key"]) == {"created_at": 1}
    assert not any("expireAfterSeconds" in ix for ix in indexes.values())
    runs_indexes = {ix["name"]: dict(ix["key"]) for ix in mongo.rag_logs.ingestion_runs.list_indexes()}
    assert runs_indexes["started_at"] == {"started_at": 1}

    # The unique index is enforced by the server.
    from pymongo.errors import DuplicateKeyError

    with pytest.raises(DuplicateKeyError):
        mongo.rag_app.documents.insert_one({"doc_id": "DOC-000001"})

    # Every chunk points at an existing document; ingestion runs span several days.
    doc_ids = set(mongo.rag_app.documents.distinct("doc_id"))
    assert set(mongo.rag_app.chunks.distinct("doc_id")) <= doc_ids
    started = [r["started_at"] for r in mongo.rag_logs.ingestion_runs.find({}, {"started_at": 1})]
    assert len({s.date() for s in started}) >= 5
    conversation = mongo.rag_app.conversations.find_one()
    assert conversation["messages"] and conversation["messages"][0]["role"] == "user"
    call = mongo.rag_logs.llm_calls.find_one()
    assert call["total_tokens"] == call["prompt_tokens"] + call["completion_tokens"]


def test_mongo_smaller_scale_prunes_documents(mongo):
    seed.wipe_mongo(mongo)
    larger = seed.seed_mongo(mongo, scale=1.5)
    assert larger["rag_app.chunks"] == 450 and mongo_counts(mongo) == larger
    assert seed.seed_mongo(mongo, scale=1) == SCALE_1_MONGO == mongo_counts(mongo)


# --------------------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------------------


def _read_value(client, item: seed.RedisKey):
    if item.kind in ("string", "counter"):
        return client.get(item.key)
    if item.kind == "list":
        return client.lrange(item.key, 0, -1)
    if item.kind == "set":
        return client.smembers(item.key)
    if item.kind == "hash":
        return client.hgetall(item.key)
    if item.kind == "zset":
        return client.zrange(item.key, 0, -1, withscores=True)
    if item.kind == "hll":
        return client.pfcount(item.key)
    if item.kind == "stream":
        return client.xrange(item.key)
    raise AssertionError(item.kind)


def _expected_value(item: seed.RedisKey):
    def b(value) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    if item.kind in ("string", "counter"):
        return b(item.value)
    if item.kind == "list":
        return [b(v) for v in item.value]
    if item.kind == "set":
        return {b(v) for v in item.value}
    if item.kind == "hash":
        return {b(k): b(v) for k, v in item.value.items()}
    if item.kind == "zset":
        return sorted(((b(m), s) for m, s in item.value.items()), key=lambda pair: (pair[1], pair[0]))
    if item.kind == "hll":
        return len(set(item.value))  # exact for such small cardinalities
    if item.kind == "stream":
        return [(b(i), {b(k): b(v) for k, v in fields.items()}) for i, fields in item.value["entries"]]
    raise AssertionError(item.kind)


def test_redis_seed_types_values_ttls_and_idempotence(redis_kwargs):
    seed.wipe_redis(redis_kwargs)
    first = seed.seed_redis(redis_kwargs)
    assert first == expected_redis_counts(1) == redis_dbsizes(redis_kwargs)
    second = seed.seed_redis(dict(redis_kwargs))
    assert second == first == redis_dbsizes(redis_kwargs)

    dataset = seed.redis_dataset(1)
    kinds = {item.kind for item in dataset}
    assert kinds == {"string", "counter", "hll", "list", "set", "hash", "zset", "stream"}
    for db in seed.REDIS_DBS:
        with _redis(redis_kwargs, db) as client:
            for item in (i for i in dataset if i.db == db):
                assert client.type(item.key).decode() == item.redis_type, item.key
                assert _read_value(client, item) == _expected_value(item), item.key
                ttl = client.ttl(item.key)
                if item.ttl is None:
                    assert ttl == -1, item.key
                else:
                    assert item.ttl >= 3600 and item.ttl - 120 <= ttl <= item.ttl, (item.key, ttl, item.ttl)

    with _redis(redis_kwargs, 0) as client:
        # Binary embedding cache entries hold packed float32 vectors.
        emb = next(i for i in dataset if i.key.startswith("cache:emb:"))
        assert len(struct.unpack("<32f", client.get(emb.key))) == 32
        assert client.object("encoding", "stats:requests:total") == b"int"
        assert client.ttl("config:feature_flags") == -1
        # The events stream has its consumer groups; two entries read by indexer-1 are still pending.
        groups = {g["name"].decode(): g for g in client.xinfo_groups("events:ingestion")}
        assert set(groups) == {"indexers", "auditors"}
        assert groups["indexers"]["pending"] == 2 and groups["auditors"]["pending"] == 0
        assert client.xpending("events:ingestion", "indexers")["consumers"][0]["name"] == b"indexer-1"
    with _redis(redis_kwargs, 1) as client:
        session_key = next(i.key for i in dataset if i.key.startswith("memory:session:"))
        message = json.loads(client.lindex(session_key, 0))
        assert message["role"] == "user"


def test_redis_accepts_url_and_prunes_a_larger_scale(redis_kwargs):
    seed.wipe_redis(redis_kwargs)
    password = redis_kwargs.get("password") or ""
    url = f"redis://:{password}@{redis_kwargs['host']}:{redis_kwargs['port']}/7"
    larger = seed.seed_redis(url, scale=2)
    assert larger == expected_redis_counts(2) == redis_dbsizes(redis_kwargs)
    assert larger["db0"] > expected_redis_counts(1)["db0"]
    with _redis(redis_kwargs, 7) as client:
        assert client.dbsize() == 0  # the url's db is not where the dataset goes
    assert seed.seed_redis(url, scale=1) == expected_redis_counts(1) == redis_dbsizes(redis_kwargs)
    assert seed.wipe_redis(redis_kwargs) == {f"db{db}": n for db, n in
                                             ((int(k[2:]), v) for k, v in expected_redis_counts(1).items())}
    assert redis_dbsizes(redis_kwargs) == {}


# --------------------------------------------------------------------------------------------------------------
# Qdrant
# --------------------------------------------------------------------------------------------------------------


def test_qdrant_seed_config_counts_and_idempotence(qdrant):
    from qdrant_client import models

    seed.wipe_qdrant(qdrant)
    first = seed.seed_qdrant(qdrant)
    assert first == SCALE_1_QDRANT == qdrant_counts(qdrant)
    second = seed.seed_qdrant(qdrant)
    assert second == first == qdrant_counts(qdrant)

    docs = qdrant.get_collection("docs_chunks")
    vectors = docs.config.params.vectors
    assert set(vectors) == {"text", "title"}
    assert (vectors["text"].size, vectors["text"].distance) == (32, models.Distance.COSINE)
    assert (vectors["title"].size, vectors["title"].distance) == (16, models.Distance.DOT)
    assert set(docs.config.params.sparse_vectors) == {"bm25"}
    assert docs.config.hnsw_config.m == 16 and docs.config.hnsw_config.ef_construct == 128
    assert docs.config.quantization_config.scalar.type == models.ScalarType.INT8
    schema = docs.payload_schema
    assert schema["source"].data_type == models.PayloadSchemaType.KEYWORD
    assert schema["page"].data_type == models.PayloadSchemaType.INTEGER

    faq = qdrant.get_collection("faq").config.params.vectors
    assert (faq.size, faq.distance) == (24, models.Distance.EUCLID)
    colbert = qdrant.get_collection("colbert_pages").config.params.vectors["colbert"]
    assert colbert.size == 8 and colbert.multivector_config.comparator == models.MultiVectorComparator.MAX_SIM

    # Points read back as generated (through the aliases); float32 storage keeps ~7 significant digits.
    specs = {spec.name: spec for spec in seed.qdrant_dataset(1)}
    expected = specs["docs_chunks"].points[0]
    point = qdrant.retrieve("docs_current", [expected.id], with_vectors=True)[0]
    assert point.payload == expected.payload
    assert uuid.UUID(str(point.id)) == uuid.UUID(expected.id)
    assert point.vector["title"] == pytest.approx(expected.vector["title"], abs=1e-6)
    assert point.vector["bm25"].indices == expected.vector["bm25"].indices
    assert point.vector["bm25"].values == pytest.approx(expected.vector["bm25"].values, abs=1e-6)
    faq_point = qdrant.retrieve("faq_live", [7], with_vectors=True)[0]
    assert faq_point.vector == pytest.approx(specs["faq"].points[6].vector, abs=1e-6)
    colbert_expected = specs["colbert_pages"].points[3]
    colbert_point = qdrant.retrieve("colbert_pages", [colbert_expected.id], with_vectors=True)[0]
    assert len(colbert_point.vector["colbert"]) == len(colbert_expected.vector["colbert"])
    assert all(len(row) == 8 for row in colbert_point.vector["colbert"])

    # Payload indexes serve filters.
    hits = qdrant.count("docs_chunks", count_filter=models.Filter(must=[
        models.FieldCondition(key="source", match=models.MatchValue(value="confluence"))]), exact=True).count
    assert hits == sum(1 for p in specs["docs_chunks"].points if p.payload["source"] == "confluence") > 0


def test_qdrant_wipe_removes_collections_and_aliases(qdrant):
    seed.seed_qdrant(qdrant, scale=0.1)
    assert qdrant_counts(qdrant) == {"docs_chunks": 20, "faq": 6, "colbert_pages": 2}
    removed = seed.wipe_qdrant(qdrant)
    assert {"docs_chunks", "faq", "colbert_pages"} <= set(removed)
    assert qdrant.get_collections().collections == [] and qdrant.get_aliases().aliases == []


# --------------------------------------------------------------------------------------------------------------
# Pure parts (no server)
# --------------------------------------------------------------------------------------------------------------


def test_dataset_is_deterministic_and_scales():
    assert seed.mongo_dataset(1) == seed.mongo_dataset(1)
    assert seed.redis_dataset(1) == seed.redis_dataset(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, again = seed.qdrant_dataset(1), seed.qdrant_dataset(1)
    assert [(s.name, s.points) for s in first] == [(s.name, s.points) for s in again]
    assert {k: len(v) for k, v in seed.mongo_dataset(2).items()} == {k: 2 * v for k, v in SCALE_1_MONGO.items()}
    ids = [p.id for p in first[0].points]
    assert len(set(ids)) == len(ids) == 200 and all(uuid.UUID(i).version == 5 for i in ids)
    vector = first[0].points[0].vector["text"]
    assert all(round(v, 6) == v for v in vector) and sum(v * v for v in vector) == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError):
        seed.redis_dataset(0)


def test_read_connection_json_and_uri_forms():
    env = {
        "AIRFLOW_CONN_REDIS_DEFAULT": json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": 16379,
                                                  "password": "pw", "extra": {"db": 0}}),
        "AIRFLOW_CONN_QDRANT_DEFAULT": "qdrant://:api%2Fkey@qdrant.local:6333?https=false",
        "AIRFLOW_CONN_MONGO_DEFAULT": json.dumps({"conn_type": "mongo", "host": "db", "port": 27017,
                                                  "extra": json.dumps({"srv": False})}),
    }
    redis_conn = seed.read_connection("redis_default", env)
    assert seed.redis_kwargs_from_conn(redis_conn) == {"host": "127.0.0.1", "port": 16379, "password": "pw"}
    qdrant_conn = seed.read_connection("qdrant_default", env)
    assert (qdrant_conn["host"], qdrant_conn["port"], qdrant_conn["password"]) == ("qdrant.local", 6333, "api/key")
    assert qdrant_conn["extra"] == {"https": "false"}
    assert seed.read_connection("mongo_default", env)["extra"] == {"srv": False}
    assert seed.read_connection("langsmith_default", env) is None
