"""intelligence_backup and intelligence_restore (`airflow dags test`) with Redis Clusters: the backup maps one
task per master, the restore one per node of the backup, into a cluster of another shape. Real redis-server
nodes in cluster mode on loopback; every other component is off."""

from __future__ import annotations

import json

import pytest

from devstack.localconfig import local_settings
from devstack.seed import seed_redis_cluster
from devstack.state import cluster_state, same_redis_state, spare_redis_cluster
from ragvault.components import REGISTRY

pytestmark = pytest.mark.timeout(900)

BACKUP, RESTORE = "intelligence_backup", "intelligence_restore"
PASSWORD = "cluster-dag-secret"


def redis_connection(port: int) -> str:
    """``redis_default`` pointing at one node of a cluster: the package finds the others."""
    return json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port, "password": PASSWORD})


def errors(proc) -> str:
    lines = (proc.stdout + proc.stderr).splitlines()
    return "\n".join(line[:400] for line in lines if "rror" in line)[-6000:]


def test_backup_and_restore_runs_map_one_task_per_cluster_node(airflow, tmp_path, fresh_date, bucket, s3_client):
    import yaml

    settings = local_settings(bucket=bucket, retries=0)
    for name in REGISTRY:
        settings["components"][name]["enabled"] = name == "redis"
    config = tmp_path / "ragvault.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    date = fresh_date()
    with spare_redis_cluster(3, password=PASSWORD) as source, spare_redis_cluster(2, password=PASSWORD) as target:
        assert seed_redis_cluster("127.0.0.1", source[0], password=PASSWORD) > 100
        at_backup = cluster_state(source, PASSWORD)

        env = {"RAGVAULT_CONFIG": str(config), "AIRFLOW_CONN_REDIS_DEFAULT": redis_connection(source[1])}
        proc = airflow.run("dags", "test", BACKUP, date, env=env)
        assert proc.returncode == 0, errors(proc)
        states = airflow.task_states(BACKUP, airflow.run_id_for(BACKUP, date))
        assert {t: s for t, s in states.items() if t.startswith("redis.")} == {
            "redis.list_nodes": "success", "redis.backup_node[0]": "success", "redis.backup_node[1]": "success",
            "redis.backup_node[2]": "success"}, states
        manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{date}/manifest.json")["Body"].read())
        section = manifest["components"]["redis"]
        assert sorted(section["items"]) == sorted(f"127.0.0.1:{port}" for port in source)
        assert section["counts"]["slots"] == 16384 and section["counts"]["keys"] == len(at_backup[0])

        conf = {"backup_date": date, "components": ["redis"]}
        env = {"RAGVAULT_CONFIG": str(config), "AIRFLOW_CONN_REDIS_DEFAULT": redis_connection(target[0])}
        proc = airflow.run("dags", "test", RESTORE, "--conf", json.dumps(conf), env=env)
        assert proc.returncode == 0, errors(proc)
        run = max(airflow.json_output("dags", "list-runs", RESTORE), key=lambda r: r["run_after"])
        states = airflow.task_states(RESTORE, run["run_id"])
        assert {t: s for t, s in states.items() if t.startswith("redis.")} == {
            "redis.check": "success", "redis.list_nodes": "success", "redis.restore_node[0]": "success",
            "redis.restore_node[1]": "success", "redis.restore_node[2]": "success", "redis.verify": "success"}, states
        assert states["verify_restore"] == "success", states
        assert same_redis_state(at_backup, cluster_state(target, PASSWORD), ttl_tolerance_ms=1000) == []
