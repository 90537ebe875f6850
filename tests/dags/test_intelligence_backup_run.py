"""Whole runs of intelligence_backup with `airflow dags test`, against the real local services."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from datetime import datetime

import pytest

from devstack.localconfig import write_local_settings
from devstack.stack import seed_everything
from devstack.state import scraped
from ragvault.components import REGISTRY
from ragvault.config import DEFAULTS

pytestmark = pytest.mark.timeout(900)

DAG_ID = "intelligence_backup"
DEFAULT_CONNECTIONS = DEFAULTS["connections"]
FLAG_KEY = "ragvault:test:ingestion-paused"


@pytest.fixture
def seeded_stack(backup_date):
    """All nine components' servers seeded for this test's date; the seeders' counts."""
    return seed_everything(backup_date)


@pytest.fixture
def local_config(tmp_path, bucket):
    """``local_config(**overrides)``: the local stack's settings (as `make demo` uses) on the test bucket."""
    return lambda **overrides: write_local_settings(tmp_path / "ragvault.yaml", bucket=bucket, retries=0,
                                                    **overrides)


@pytest.fixture
def redis_client():
    from ragvault.hooks.redis import RedisHook

    client = RedisHook().get_conn()
    client.delete(FLAG_KEY)
    yield client
    client.delete(FLAG_KEY)


def output(proc) -> str:
    return proc.stdout[-6000:] + proc.stderr[-6000:]


def test_whole_run_writes_a_manifest_matching_the_bucket(airflow, local_config, s3_client, bucket, backup_date,
                                                         seeded_stack, redis_client):
    # The flag was already set by someone else before the backup: resume must put that value back.
    redis_client.set(FLAG_KEY, "held-by-operator")
    config = local_config(ingestion={"flag": {"redis_key": FLAG_KEY}})
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

    # All nine folders of the seed's layout, and the counts are the stack's.
    components = manifest["components"]
    assert list(REGISTRY) == ["qdrant", "mongodb", "redis", "langchain", "langsmith", "gpt", "infra", "prometheus",
                              "grafana"]
    assert set(components) == set(REGISTRY)
    folders = {key.split("/")[1] for key in listed if key.count("/") >= 2}
    assert folders == set(REGISTRY)
    assert {"prompts.yaml", "chains.json", "agents.yaml"} <= {k.split("/", 2)[2] for k in listed
                                                           if k.split("/")[1] == "langchain"}
    for path in ("langsmith/runs.json.zst", "langsmith/projects.json", "gpt/model_config.json",
                 "gpt/system_prompts.json", "infra/docker-compose.yaml", "infra/.env", "infra/etl_scripts.tar.gz",
                 "prometheus/prometheus.yml", "prometheus/rules.yml", "grafana/grafana.ini", "grafana/grafana.db.zst",
                 "qdrant/snapshots/docs_chunks.snapshot", "mongodb/dump/rag_app/documents.bson.gz", "redis/dump.rdb"):
        assert f"{backup_date}/{path}" in listed, path
    assert any("/prometheus/tsdb/" in k and k.endswith("/meta.json.zst") for k in listed)
    assert components["langsmith"]["counts"]["runs"] >= seeded_stack["langsmith"]["runs"] > 0
    assert components["grafana"]["counts"]["dashboards"] == seeded_stack["grafana"]["dashboards"]
    assert components["prometheus"]["counts"]["series"] > 0
    assert components["qdrant"]["counts"]["points"] == sum(seeded_stack["qdrant"].values())
    assert components["qdrant"]["counts"]["collections"] == len(seeded_stack["qdrant"])
    assert components["mongodb"]["counts"]["documents"] == sum(seeded_stack["mongodb"].values())
    # the seeded keys, plus the ingestion flag, which is in Redis db0 while the snapshot is taken
    assert components["redis"]["counts"]["keys"] == sum(seeded_stack["redis"].values()) + 1
    for name, component in components.items():
        assert component["captured_at"].endswith("Z"), name
        if name not in ("langchain", "gpt", "infra"):  # files have no server version
            assert component["source_version"], name

    # Ingestion was resumed to exactly its prior state.
    assert redis_client.get(FLAG_KEY) == b"held-by-operator"

    # The backup's figures reached Prometheus through the Pushgateway: per component the bytes its artifacts
    # take, its last success (this run), not failed, its mode; the bucket's complete backups.
    stored = {name: sum(a["size"] for a in manifest["artifacts"] if a["component"] == name) for name in REGISTRY}
    assert scraped(f'ragvault_backup_stored_bytes{{bucket="{bucket}"}}', lambda f: f == stored) == stored
    finished = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{backup_date}/manifest.json")["Body"].read())
    committed = datetime.fromisoformat(finished["created_at"].replace("Z", "+00:00")).timestamp()
    success = scraped(f'ragvault_backup_last_success_timestamp_seconds{{bucket="{bucket}"}}',
                      lambda f: set(f) == set(REGISTRY) and min(f.values()) >= committed - 1)
    assert max(success.values()) <= time.time()
    assert scraped(f'ragvault_backup_failed{{bucket="{bucket}"}}', lambda f: set(f) == set(REGISTRY)) == \
        dict.fromkeys(REGISTRY, 0.0)
    assert scraped(f'ragvault_backup_mode_info{{bucket="{bucket}",mode="capture"}}', lambda f: len(f) == 9) == \
        dict.fromkeys(REGISTRY, 1.0)
    assert scraped(f'ragvault_bucket_complete_backups{{bucket="{bucket}"}}', lambda f: f.get("", 0) >= 1)


@pytest.fixture
def webhook():
    """A webhook receiver on loopback: ``(url, received JSON bodies)``."""
    import http.server
    import threading

    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/ragvault", received
    server.shutdown()
    server.server_close()


def test_failing_component_fails_clearly_resumes_ingestion_and_writes_no_manifest(
        airflow, local_config, s3_client, bucket, backup_date, redis_client, webhook):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    connections = {**DEFAULT_CONNECTIONS, "qdrant": "qdrant_unreachable"}
    config = local_config(connections=connections, ingestion={"flag": {"redis_key": FLAG_KEY}},
                          notifications={"webhook_conn_id": "ragvault_webhook"})
    url, received = webhook
    proc = airflow.run("dags", "test", DAG_ID, backup_date, env={
        "RAGVAULT_CONFIG": str(config),
        "AIRFLOW_CONN_QDRANT_UNREACHABLE": json.dumps({"conn_type": "qdrant", "host": "127.0.0.1",
                                                       "port": dead_port}),
        "AIRFLOW_CONN_RAGVAULT_WEBHOOK": json.dumps({"conn_type": "http", "host": url}),
    })
    states = airflow.task_states(DAG_ID, airflow.run_id_for(DAG_ID, backup_date))
    assert states.get("qdrant.list_collections") == "failed", (states, output(proc))
    assert states["commit_manifest"] == "upstream_failed", states
    assert states["resume_ingestion"] == "success", states
    assert states["redis.backup_node[0]"] == "success", states
    # The message names the component, what it was doing and the cause.
    message = f"qdrant: could not list collections at http://127.0.0.1:{dead_port}: "
    assert message in proc.stdout + proc.stderr, output(proc)
    assert "Connection refused" in proc.stdout + proc.stderr
    # No manifest: the date is incomplete and will never be offered for restore.
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{backup_date}/manifest.json").get("KeyCount") == 0
    # Ingestion resumed: the flag the pause set is gone again.
    assert redis_client.get(FLAG_KEY) is None
    # The failure reached Prometheus: qdrant's failure metric is set.
    assert scraped(f'ragvault_backup_failed{{bucket="{bucket}",component="qdrant"}}',
                   lambda f: f.get("qdrant") == 1.0) == {"qdrant": 1.0}
    # The webhook was told which DAG, component and task failed, why, and where the log is.
    [message] = [m for m in received if m["task_id"] == "qdrant.list_collections"]
    assert message["dag_id"] == DAG_ID and message["component"] == "qdrant"
    assert "could not list collections" in message["error"] and "Connection refused" in message["error"]
    assert "/dags/intelligence_backup/runs/" in message["log_url"] and "qdrant.list_collections" in message["log_url"]
    assert message["text"].startswith("ragvault: intelligence_backup failed at qdrant")


def test_a_run_waits_for_the_lock_and_leaves_the_holder_alone(airflow, local_config, s3_client, bucket,
                                                              backup_date, redis_client):
    holder = {"owner": "scheduled__other-run", "acquired_at": "2099-01-01T00:00:00Z", "host": "worker-2"}
    s3_client.put_object(Bucket=bucket, Key="ragvault.lock", Body=json.dumps(holder).encode())
    try:
        config = local_config(lock={"wait_seconds": 2, "lease_seconds": 3600},
                              ingestion={"flag": {"redis_key": FLAG_KEY}})
        proc = airflow.run("dags", "test", DAG_ID, backup_date, env={"RAGVAULT_CONFIG": str(config)})
        states = airflow.task_states(DAG_ID, airflow.run_id_for(DAG_ID, backup_date))
        assert states["pause_ingestion"] == "failed", states
        assert "is held by run scheduled__other-run (host worker-2" in proc.stdout + proc.stderr
        # nothing was paused or written, and the other run's lock is untouched
        assert redis_client.get(FLAG_KEY) is None
        assert s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{backup_date}/").get("KeyCount") == 0
        lock = json.loads(s3_client.get_object(Bucket=bucket, Key="ragvault.lock")["Body"].read())
        assert lock == holder
    finally:
        s3_client.delete_object(Bucket=bucket, Key="ragvault.lock")


@pytest.fixture
def own_bucket(new_bucket):
    """A bucket of this test's own: the complete backups in it are exactly the ones the test makes."""
    return new_bucket("ragvault-backfill")


def test_past_days_get_their_interval_data_and_reruns_keep_their_state(airflow, tmp_path, s3_client, own_bucket,
                                                                      backup_date, fresh_date):
    """Back up D1 and D2, then rerun D1 and run D0 < D1 (as a backfill would): D1 keeps the state it captured,
    D0 holds only the LangSmith runs of its own data interval, and every captured_at is a real time."""
    import datetime as dt

    import yaml
    import zstandard

    from devstack import seed_langsmith
    from devstack.localconfig import local_settings
    from ragvault.config import load_settings
    from ragvault.crypto import load_cipher
    from ragvault.repository import BackupRepository, utcnow_iso

    d1, d2 = backup_date, fresh_date()
    d0 = (dt.date.fromisoformat(d1) - dt.timedelta(days=2)).isoformat()
    seeded = seed_everything(d1)
    client = seed_langsmith.client_from_connection(seed_langsmith.read_connection()[0])
    for day in (d0, d2):  # runs on the day before each date: its data interval
        seed_langsmith.seed_langsmith(client, days=[dt.date.fromisoformat(day) - dt.timedelta(days=1)])
    settings = local_settings(bucket=own_bucket, retries=0)
    for name in ("mongodb", "langchain", "gpt", "prometheus", "grafana"):
        settings["components"][name]["enabled"] = False
    config = tmp_path / "ragvault.yaml"
    config.write_text(yaml.safe_dump(settings))
    repo = BackupRepository(s3_client, own_bucket)
    started = utcnow_iso()

    def backup(date: str) -> dict:
        proc = airflow.run("dags", "test", DAG_ID, date, env={"RAGVAULT_CONFIG": str(config)})
        assert proc.returncode == 0, output(proc)
        manifest = repo.read_manifest(date)
        assert manifest is not None, output(proc)
        return manifest

    def keys(date: str) -> set[str]:
        return {o["Key"] for o in repo.list_keys(f"{date}/")}

    first = backup(d1)
    assert first["state"]["captured"] is True and first["state"]["captured_at"] >= started
    assert {c["mode"] for c in first["components"].values()} == {"capture"}
    backup(d2)

    # The rerun of D1: its state cannot be captured again, so what it captured is kept, byte for byte.
    rerun = backup(d1)
    modes = {name: c["mode"] for name, c in rerun["components"].items()}
    assert modes == {"qdrant": "kept", "redis": "kept", "infra": "kept", "langsmith": "interval"}
    assert rerun["state"]["captured"] is False and d2 in rerun["state"]["reason"]
    assert rerun["state"]["captured_at"] == first["state"]["captured_at"]
    for name in ("qdrant", "redis", "infra"):
        assert rerun["components"][name]["items"] == first["components"][name]["items"]
        assert rerun["components"][name]["captured_at"] == first["components"][name]["captured_at"]
    before = {a["key"]: a for a in first["artifacts"]}
    cipher = load_cipher(load_settings(config))
    for artifact in rerun["artifacts"]:
        assert repo.verify_artifact(artifact, cipher) == [], artifact["key"]
        if artifact["component"] != "langsmith":
            assert artifact["sha256"] == before[artifact["key"]]["sha256"]
    assert keys(d1) == {a["key"] for a in rerun["artifacts"]} | {f"{d1}/manifest.json"}  # no staging left
    assert rerun["components"]["langsmith"]["captured_at"] > first["components"]["langsmith"]["captured_at"]

    # D0, never backed up and older than D1 and D2: the LangSmith runs of its data interval, nothing else.
    past = backup(d0)
    assert past["state"] == {"captured": False, "captured_at": None, "policy": "skip",
                             "reason": past["state"]["reason"]}
    assert d2 in past["state"]["reason"] and d0 in past["state"]["reason"]
    assert {name: c["mode"] for name, c in past["components"].items()} == {
        "qdrant": "skipped", "redis": "skipped", "infra": "skipped", "langsmith": "interval"}
    assert {k.split("/")[1] for k in keys(d0)} == {"langsmith", "manifest.json"}
    start = dt.datetime.fromisoformat(past["run"]["data_interval_start"])
    end = dt.datetime.fromisoformat(past["run"]["data_interval_end"])
    assert end - start == dt.timedelta(days=1) and end.date().isoformat() == d0
    [runs] = [a for a in past["artifacts"] if a["key"] == f"{d0}/langsmith/runs.json.zst"]
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(
        s3_client.get_object(Bucket=own_bucket, Key=runs["key"])["Body"].read()).splitlines()
    starts = [dt.datetime.fromisoformat(json.loads(line)["start_time"]).replace(tzinfo=dt.UTC) for line in lines]
    assert starts and all(start <= moment < end for moment in starts)
    assert len(starts) == past["components"]["langsmith"]["counts"]["runs"] == seeded["langsmith"]["runs"]
    assert past["components"]["langsmith"]["captured_at"] > rerun["created_at"]  # when it ran, not the logical date
    # "latest" is still D2, whose state is the newest captured.
    assert repo.latest_state() == d2
