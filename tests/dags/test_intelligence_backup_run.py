"""Whole runs of intelligence_backup with `airflow dags test`, against the real local services."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from devstack import seed

pytestmark = pytest.mark.timeout(900)

DAG_ID = "intelligence_backup"
FLAG_KEY = "ragvault:test:ingestion-paused"


@pytest.fixture(scope="module")
def seeded_stack():
    """The three data stores wiped and seeded with the small realistic stack; the seeder's counts."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    from ragvault.hooks.qdrant import QdrantHook
    from ragvault.hooks.redis import RedisHook

    qdrant = QdrantHook().client
    redis_kwargs = RedisHook().connection_kwargs
    with MongoHook() as mongo:
        client = mongo.get_conn()
        seed.wipe_qdrant(qdrant)
        seed.wipe_mongo(client)
        seed.wipe_redis(redis_kwargs)
        return {
            "qdrant": seed.seed_qdrant(qdrant),
            "mongodb": seed.seed_mongo(client),
            "redis": seed.seed_redis(redis_kwargs),
        }


@pytest.fixture
def redis_client():
    from ragvault.hooks.redis import RedisHook

    client = RedisHook().get_conn()
    client.delete(FLAG_KEY)
    yield client
    client.delete(FLAG_KEY)


def output(proc) -> str:
    return proc.stdout[-6000:] + proc.stderr[-6000:]


def test_whole_run_writes_a_manifest_matching_the_bucket(airflow, make_config, s3_client, bucket, backup_date,
                                                         seeded_stack, redis_client):
    # The flag was already set by someone else before the backup: resume must put that value back.
    redis_client.set(FLAG_KEY, "held-by-operator")
    config = make_config(ingestion={"flag": {"redis_key": FLAG_KEY}})
    proc = airflow.run("dags", "test", DAG_ID, backup_date, env={"RAGVAULT_CONFIG": str(config)})
    assert proc.returncode == 0, output(proc)

    run_id = airflow.run_id_for(DAG_ID, backup_date)
    states = airflow.task_states(DAG_ID, run_id)
    assert set(states.values()) == {"success"}, states
    assert sum(1 for t in states if t.startswith("qdrant.backup_collection[")) == len(seeded_stack["qdrant"])

    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{backup_date}/manifest.json")["Body"].read())
    assert manifest["backup_date"] == backup_date
    assert manifest["run"]["dag_id"] == DAG_ID and manifest["run"]["run_id"] == run_id

    # Every artifact is in the bucket with the recorded size and sha256, and nothing else is.
    listed = {o["Key"]: o["Size"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{backup_date}/") for o in page.get("Contents", [])}
    assert set(listed) == {a["key"] for a in manifest["artifacts"]} | {f"{backup_date}/manifest.json"}
    for artifact in manifest["artifacts"]:
        body = s3_client.get_object(Bucket=bucket, Key=artifact["key"])["Body"].read()
        assert len(body) == artifact["size"] == listed[artifact["key"]], artifact["key"]
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"], artifact["key"]

    # The counts are the stack's.
    components = manifest["components"]
    assert set(components) == {"qdrant", "mongodb", "redis"}
    assert components["qdrant"]["counts"]["points"] == sum(seeded_stack["qdrant"].values())
    assert components["qdrant"]["counts"]["collections"] == len(seeded_stack["qdrant"])
    assert components["mongodb"]["counts"]["documents"] == sum(seeded_stack["mongodb"].values())
    # the seeded keys, plus the ingestion flag, which is in Redis db0 while the snapshot is taken
    assert components["redis"]["counts"]["keys"] == sum(seeded_stack["redis"].values()) + 1
    for name, component in components.items():
        assert component["source_version"], name
        assert component["captured_at"].endswith("Z"), name

    # Ingestion was resumed to exactly its prior state.
    assert redis_client.get(FLAG_KEY) == b"held-by-operator"


def test_failing_component_fails_clearly_resumes_ingestion_and_writes_no_manifest(
        airflow, make_config, s3_client, bucket, backup_date, seeded_stack, redis_client, monkeypatch):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config = make_config(connections={"qdrant": "qdrant_unreachable"}, ingestion={"flag": {"redis_key": FLAG_KEY}})
    proc = airflow.run("dags", "test", DAG_ID, backup_date, env={
        "RAGVAULT_CONFIG": str(config),
        "AIRFLOW_CONN_QDRANT_UNREACHABLE": json.dumps({"conn_type": "qdrant", "host": "127.0.0.1",
                                                       "port": dead_port}),
    })
    states = airflow.task_states(DAG_ID, airflow.run_id_for(DAG_ID, backup_date))
    assert states.get("qdrant.list_collections") == "failed", (states, output(proc))
    assert states["commit_manifest"] == "upstream_failed", states
    assert states["resume_ingestion"] == "success", states
    assert states["redis.backup"] == "success", states
    # The message names the component, what it was doing and the cause.
    message = f"qdrant: could not list collections at http://127.0.0.1:{dead_port}: "
    assert message in proc.stdout + proc.stderr, output(proc)
    assert "Connection refused" in proc.stdout + proc.stderr
    # No manifest: the date is incomplete and will never be offered for restore.
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{backup_date}/manifest.json").get("KeyCount") == 0
    # Ingestion resumed: the flag the pause set is gone again.
    assert redis_client.get(FLAG_KEY) is None
