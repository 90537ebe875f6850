"""Checks of the development stack started by ``include/devstack/services.sh up``.

The server tests read their settings from the ``AIRFLOW_CONN_*`` variables that
``services.sh env`` writes to ``.services.env`` (``. .services.env`` before running
pytest), so pointing those variables at real servers runs the same checks there.
They write real data (a Redis key, Mongo documents, an S3 object, a pushed metric),
read it back and remove it.

The ``env`` file tests need no server: they generate the file in a temporary place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES_SH = REPO_ROOT / "include" / "devstack" / "services.sh"
BUCKET = "inteligencia-backups"
CONNECTIONS = {
    "minio_s3": "aws",
    "mongo_default": "mongo",
    "redis_default": "redis",
    "qdrant_default": "qdrant",
    "prometheus_default": "http",
    "grafana_default": "http",
    "langsmith_default": "http",
    "airflow_api": "http",
}

needs_servers = pytest.mark.skipif(
    "AIRFLOW_CONN_MINIO_S3" not in os.environ,
    reason="AIRFLOW_CONN_MINIO_S3 is not set: run `include/devstack/services.sh up` and "
    "`. .services.env` first (or point the AIRFLOW_CONN_* variables at real servers)",
)


def conn(conn_id: str) -> dict:
    """The JSON form of an Airflow connection, from its AIRFLOW_CONN_* variable."""
    return json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])


def http_base(conn_id: str) -> str:
    c = conn(conn_id)
    return f"{c.get('schema') or 'http'}://{c['host']}:{c['port']}"


def poll(fetch, accept, timeout: float = 30.0, interval: float = 1.0):
    """Call fetch() until accept(result) holds or the timeout passes; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if accept(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def prom_query(expr: str) -> list[dict]:
    resp = requests.get(f"{http_base('prometheus_default')}/api/v1/query", params={"query": expr}, timeout=10)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success"
    return body["data"]["result"]


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


@needs_servers
def test_redis_set_get_with_ttl():
    import redis

    c = conn("redis_default")
    client = redis.Redis(
        host=c["host"],
        port=c["port"],
        username=c.get("login") or None,
        password=c.get("password"),
        db=c.get("extra", {}).get("db", 0),
        socket_timeout=5,
    )
    key = f"ragvault:devstack-test:{uuid.uuid4().hex}"
    value = b"\x00ragvault\xffbytes"
    try:
        assert client.ping() is True
        assert client.set(key, value, ex=120) is True
        assert client.get(key) == value
        ttl = client.ttl(key)
        assert 0 < ttl <= 120
        assert client.type(key) == b"string"
    finally:
        client.delete(key)
    assert client.exists(key) == 0


@needs_servers
def test_mongo_insert_and_find():
    from pymongo import MongoClient

    c = conn("mongo_default")
    client = MongoClient(
        host=c["host"],
        port=c["port"],
        username=c.get("login") or None,
        password=c.get("password") or None,
        serverSelectionTimeoutMS=10_000,
    )
    coll = client["ragvault_devstack_test"][f"docs_{uuid.uuid4().hex[:12]}"]
    try:
        assert client.admin.command("ping")["ok"] == 1.0
        docs = [{"_id": n, "n": n, "name": f"doc-{n}", "tags": ["rag", str(n)]} for n in range(3)]
        result = coll.insert_many(docs)
        assert result.inserted_ids == [0, 1, 2]
        assert coll.count_documents({}) == 3
        found = coll.find_one({"name": "doc-2"})
        assert found == {"_id": 2, "n": 2, "name": "doc-2", "tags": ["rag", "2"]}
        assert [d["n"] for d in coll.find({"n": {"$gte": 1}}).sort("n", 1)] == [1, 2]
    finally:
        coll.drop()
        client.close()


@needs_servers
def test_postgres_holds_airflows_database_and_listens_on_loopback_only():
    """The metadata database server of a distributed Airflow: a password is needed, the `airflow` database
    exists, and the server listens on 127.0.0.1 (it never runs as root)."""
    from urllib.parse import urlsplit

    import psycopg2

    url = os.environ["RAGVAULT_POSTGRES_URL"]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(urlsplit(url)._replace(netloc=f"ragvault:wrong@{urlsplit(url).hostname}:"
                                                       f"{urlsplit(url).port}").geturl(), connect_timeout=5)
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database")
            assert "airflow" in {row[0] for row in cursor.fetchall()}
            cursor.execute("SHOW listen_addresses")
            assert cursor.fetchone()[0] == "127.0.0.1"
            cursor.execute("SELECT current_setting('data_directory')")
            data_dir = cursor.fetchone()[0]
    finally:
        connection.close()
    assert os.stat(data_dir).st_uid != 0


@needs_servers
def test_the_celery_broker_is_a_redis_of_its_own():
    import redis

    url = os.environ["RAGVAULT_CELERY_BROKER_URL"]
    with redis.Redis.from_url(url, socket_timeout=5) as broker:
        assert broker.ping()
        port = broker.connection_pool.connection_kwargs["port"]
    assert port != conn("redis_default")["port"]


@needs_servers
def test_s3_put_and_get_object():
    import boto3
    from botocore.config import Config

    c = conn("minio_s3")
    extra = c.get("extra", {})
    s3 = boto3.client(
        "s3",
        endpoint_url=extra.get("endpoint_url"),
        region_name=extra.get("region_name", "us-east-1"),
        aws_access_key_id=c["login"],
        aws_secret_access_key=c["password"],
        config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}),
    )
    assert BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    prefix = f"devstack-tests/{uuid.uuid4().hex}/"
    key = prefix + "payload.bin"
    payload = bytes(range(256)) * 16
    try:
        s3.put_object(Bucket=BUCKET, Key=key, Body=payload, ContentType="application/octet-stream")
        obj = s3.get_object(Bucket=BUCKET, Key=key)
        assert obj["ContentLength"] == 4096
        assert obj["Body"].read() == payload
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        assert [o["Key"] for o in listed["Contents"]] == [key]
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] == 0


@needs_servers
def test_prometheus_scrapes_itself_and_the_pushgateway():
    def target_health():
        resp = requests.get(f"{http_base('prometheus_default')}/api/v1/targets", timeout=10)
        return {t["labels"]["job"]: t["health"] for t in resp.json()["data"]["activeTargets"]}

    # Right after a start the targets are "unknown" until their first scrape (every 5 s).
    expected = {"prometheus": "up", "pushgateway": "up"}
    assert poll(target_health, lambda health: health == expected) == expected

    series = poll(lambda: prom_query("up"), lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r))
    assert sorted(s["metric"]["job"] for s in series) == ["prometheus", "pushgateway"]
    assert all(s["value"][1] == "1" for s in series)


@needs_servers
def test_prometheus_rules_are_loaded_and_evaluated():
    resp = requests.get(f"{http_base('prometheus_default')}/api/v1/rules", timeout=10)
    groups = resp.json()["data"]["groups"]
    rules = {r["name"]: r["type"] for g in groups for r in g["rules"]}
    assert rules == {"job:up:sum": "recording", "RagvaultTargetDown": "alerting"}
    recorded = poll(lambda: prom_query("job:up:sum"), lambda r: len(r) == 2)
    assert {s["metric"]["job"]: s["value"][1] for s in recorded} == {"prometheus": "1", "pushgateway": "1"}


@needs_servers
def test_prometheus_admin_snapshot():
    resp = requests.post(f"{http_base('prometheus_default')}/api/v1/admin/tsdb/snapshot", timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success"
    name = body["data"]["name"]
    assert name
    data_dir = Path(os.environ.get("RAGVAULT_PROMETHEUS_DATA_DIR", "/nonexistent"))
    if data_dir.is_dir():  # local server: the snapshot is on this disk; remove it again
        snapshot = data_dir / "snapshots" / name
        assert snapshot.is_dir()
        shutil.rmtree(snapshot)


@needs_servers
def test_pushgateway_metric_reaches_prometheus():
    gateway = os.environ.get("RAGVAULT_PUSHGATEWAY_URL", "http://127.0.0.1:19091")
    instance = uuid.uuid4().hex
    group = f"{gateway}/metrics/job/ragvault_devstack_test/instance/{instance}"
    body = "# TYPE ragvault_devstack_test_value gauge\nragvault_devstack_test_value 42\n"
    resp = requests.put(group, data=body.encode(), timeout=10)
    assert resp.status_code == 200
    try:
        groups = requests.get(f"{gateway}/api/v1/metrics", timeout=10).json()["data"]
        assert any(g["labels"].get("instance") == instance for g in groups)
        # honor_labels keeps the pushed job/instance labels on the scraped series.
        expr = f'ragvault_devstack_test_value{{job="ragvault_devstack_test",instance="{instance}"}}'
        series = poll(lambda: prom_query(expr), lambda r: len(r) == 1, timeout=30)
        assert [s["value"][1] for s in series] == ["42"]
    finally:
        requests.delete(group, timeout=10)
    groups = requests.get(f"{gateway}/api/v1/metrics", timeout=10).json()["data"]
    assert not any(g["labels"].get("instance") == instance for g in groups)


@needs_servers
@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_qdrant_collection_round_trip():
    from qdrant_client import QdrantClient, models

    c = conn("qdrant_default")
    https = bool(c.get("extra", {}).get("https", False))
    client = QdrantClient(host=c["host"], port=c["port"], api_key=c.get("password"), https=https, timeout=10)
    name = f"devstack_test_{uuid.uuid4().hex[:12]}"
    try:
        client.create_collection(
            name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        client.upsert(
            name,
            points=[
                models.PointStruct(id=n, vector=[float(n), 1.0, 0.0, 0.5], payload={"doc": f"chunk-{n}"})
                for n in range(1, 6)
            ],
            wait=True,
        )
        assert client.count(name, exact=True).count == 5
        (point,) = client.retrieve(name, ids=[3], with_vectors=True)
        assert point.payload == {"doc": "chunk-3"}
        assert len(point.vector) == 4
    finally:
        client.delete_collection(name)
    assert name not in {col.name for col in client.get_collections().collections}


@needs_servers
def test_grafana_dashboard_round_trip():
    c = conn("grafana_default")
    base = http_base("grafana_default")
    headers = {"Authorization": f"Bearer {c['password']}"}
    assert requests.get(f"{base}/api/health", timeout=10).json()["database"] == "ok"
    uid = f"devstack-{uuid.uuid4().hex[:10]}"
    dashboard = {"uid": uid, "title": f"Devstack test {uid}", "panels": [], "schemaVersion": 39}
    resp = requests.post(
        f"{base}/api/dashboards/db",
        json={"dashboard": dashboard, "overwrite": False},
        headers=headers,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    try:
        assert resp.json()["uid"] == uid
        got = requests.get(f"{base}/api/dashboards/uid/{uid}", headers=headers, timeout=10).json()
        assert got["dashboard"]["title"] == dashboard["title"]
    finally:
        requests.delete(f"{base}/api/dashboards/uid/{uid}", headers=headers, timeout=10)
    assert requests.get(f"{base}/api/dashboards/uid/{uid}", headers=headers, timeout=10).status_code == 404
    assert requests.get(f"{base}/api/dashboards/uid/{uid}", timeout=10).status_code == 401


@needs_servers
def test_langsmith_project_round_trip():
    c = conn("langsmith_default")
    base = http_base("langsmith_default")
    headers = {"x-api-key": c["password"]}
    assert requests.get(f"{base}/info", timeout=10).status_code == 200
    name = f"devstack-test-{uuid.uuid4().hex[:10]}"
    resp = requests.post(f"{base}/sessions", json={"name": name}, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    session_id = resp.json()["id"]
    try:
        got = requests.get(f"{base}/sessions/{session_id}", headers=headers, timeout=10)
        assert got.json()["name"] == name
        assert requests.get(f"{base}/sessions/{session_id}", timeout=10).status_code == 401
    finally:
        requests.delete(f"{base}/sessions/{session_id}", headers=headers, timeout=10)
    assert requests.get(f"{base}/sessions/{session_id}", headers=headers, timeout=10).status_code == 404


@needs_servers
def test_airflow_accepts_every_connection():
    from airflow.models.connection import Connection

    for conn_id, conn_type in CONNECTIONS.items():
        value = os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]
        parsed = Connection.from_json(value, conn_id=conn_id)
        assert parsed.conn_type == conn_type, conn_id
        if conn_id != "minio_s3":  # S3 connections carry their endpoint in extra
            assert parsed.host and parsed.port, conn_id
    minio = Connection.from_json(os.environ["AIRFLOW_CONN_MINIO_S3"], conn_id="minio_s3")
    assert minio.extra_dejson["endpoint_url"].startswith("http")


# ---------------------------------------------------------------------------
# The env file and the command line (no server needed)
# ---------------------------------------------------------------------------


def run_script(*args: str, env_file: Path, devstack: Path, extra: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "RAGVAULT_"))}
    env.update(RAGVAULT_SERVICES_ENV_FILE=str(env_file), RAGVAULT_DEVSTACK_DIR=str(devstack), **(extra or {}))
    return subprocess.run(
        ["bash", str(SERVICES_SH), *args], env=env, capture_output=True, text=True, timeout=timeout, check=True
    )


def sourced_environment(shell: str, env_file: Path, preset: dict[str, str]) -> dict[str, str]:
    """The environment after `shell` sources env_file, starting from PATH plus preset."""
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    out = subprocess.run(
        [shell, "-c", f". \"{env_file}\" && exec python3 -c '{dump}'"],
        env={"PATH": os.environ["PATH"], **preset},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_env_file_is_private_and_lets_the_environment_win(tmp_path, shell):
    env_file = tmp_path / "services.env"
    devstack = tmp_path / "devstack"
    run_script("env", env_file=env_file, devstack=devstack)
    assert env_file.stat().st_mode & 0o777 == 0o600

    real = '{"conn_type":"aws","login":"u","password":"p","extra":{"endpoint_url":"https://s3.example"}}'
    env = sourced_environment(
        shell, env_file, {"AIRFLOW_CONN_MINIO_S3": real, "RAGVAULT_REDIS_DATA_DIR": "/srv/r"}
    )

    assert env["AIRFLOW_CONN_MINIO_S3"] == real
    assert env["RAGVAULT_REDIS_DATA_DIR"] == "/srv/r"
    assert env["PATH"].split(":")[0] == str(REPO_ROOT / ".venv" / "bin")
    assert env["AIRFLOW_HOME"] == str(devstack / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["RAGVAULT_DEVSTACK_DIR"] == str(devstack)
    assert env["RAGVAULT_PROMETHEUS_DATA_DIR"] == str(devstack / "prometheus" / "data")
    assert env["RAGVAULT_PROMETHEUS_CONFIG_DIR"] == str(devstack / "prometheus")
    for conn_id, conn_type in CONNECTIONS.items():
        if conn_id == "minio_s3":
            continue
        parsed = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
        assert parsed["conn_type"] == conn_type
        assert parsed["host"] == "127.0.0.1"
    assert json.loads(env["AIRFLOW_CONN_REDIS_DEFAULT"]) == {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": 16379,
        "password": "ragvault-redis-secret",
        "extra": {"db": 0},
    }


def test_env_file_defaults_without_overrides(tmp_path):
    env_file = tmp_path / "services.env"
    run_script("env", env_file=env_file, devstack=tmp_path / "devstack")
    env = sourced_environment("bash", env_file, {})
    assert json.loads(env["AIRFLOW_CONN_MINIO_S3"]) == {
        "conn_type": "aws",
        "login": "ragvault",
        "password": "ragvault-minio-secret",
        "extra": {"endpoint_url": "http://127.0.0.1:19000", "region_name": "us-east-1"},
    }
    assert json.loads(env["AIRFLOW_CONN_MONGO_DEFAULT"]) == {
        "conn_type": "mongo",
        "host": "127.0.0.1",
        "port": 27117,
    }
    assert env["RAGVAULT_REDIS_DATA_DIR"] == str(tmp_path / "devstack" / "redis" / "data")


def test_status_lists_every_service(tmp_path):
    out = run_script(
        "status", env_file=tmp_path / "services.env", devstack=tmp_path / "devstack"
    ).stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert names == ["minio", "redis", "mongo", "qdrant", "pushgateway", "prometheus", "grafana", "langsmith",
                     "redis_drill", "mongo_drill", "qdrant_drill",  # the restore drill's scratch servers
                     "postgres", "airflow_broker"]  # a distributed Airflow's metadata database and broker
    # Nothing was started from this empty state dir, so no line can claim a pid.
    assert all(line.split()[1] in {"down", "absent", "foreign", "external"} for line in out)
    assert all(line.endswith("pid -") for line in out)


def test_env_file_names_the_local_settings(tmp_path):
    """`airflow dags test intelligence_backup <date>` after `. .services.env` reads the local stack's settings:
    the file components point at the stack's own copy of the demo files, Prometheus at its data dir."""
    from ragvault.config import load_settings

    devstack = tmp_path / "devstack"
    run_script("env", env_file=tmp_path / "services.env", devstack=devstack)
    env = sourced_environment("bash", tmp_path / "services.env", {})
    assert env["RAGVAULT_CONFIG"] == str(devstack / "ragvault.yaml")
    settings = load_settings(env["RAGVAULT_CONFIG"])
    assert settings.component("prometheus")["data_dir"] == str(devstack / "prometheus" / "data")
    assert settings.component("prometheus")["config_dir"] == str(devstack / "prometheus")
    env_path = Path(settings.component("infra")["env_path"])
    assert env_path == devstack / "demo-files" / "infra" / ".env"
    assert env_path.read_bytes() == (REPO_ROOT / "include" / "demo" / "infra" / ".env").read_bytes()
    # a value already in the environment wins, as for every other variable of the file
    assert sourced_environment("bash", tmp_path / "services.env",
                               {"RAGVAULT_CONFIG": "/etc/ragvault.yaml"})["RAGVAULT_CONFIG"] == "/etc/ragvault.yaml"


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="redis-server is not installed")
def test_down_stops_a_service_started_on_another_port(tmp_path):
    """`down` stops what `up` started from the pid and port it recorded, without the RAGVAULT_PORT_* of `up`."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    devstack, env_file = tmp_path / "devstack", tmp_path / "services.env"
    (devstack / "airflow").mkdir(parents=True)
    (devstack / "airflow" / "airflow.db").touch()  # this test needs no Airflow metadata db
    only_redis = {f"RAGVAULT_EXTERNAL_{name}": "1"
                  for name in ("MINIO", "MONGO", "QDRANT", "PUSHGATEWAY", "PROMETHEUS", "GRAFANA", "LANGSMITH")}
    try:
        run_script("up", env_file=env_file, devstack=devstack, extra={**only_redis, "RAGVAULT_PORT_REDIS": str(port)},
                   timeout=120)
        pid = int((devstack / "redis" / "redis.pid").read_text())
        assert running(pid)
        status = run_script("status", env_file=env_file, devstack=devstack, extra=only_redis).stdout
        assert any(line.split()[:2] == ["redis", "up"] and f"port {port}" in line
                   for line in status.splitlines()), status
        # a new shell: the port override of `up` is gone
        run_script("down", env_file=env_file, devstack=devstack)
        deadline = time.monotonic() + 10
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(pid), f"redis-server {pid} still runs after down"
        assert not (devstack / "redis" / "redis.pid").exists()
    finally:
        pidfile = devstack / "redis" / "redis.pid"
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().strip()], check=False)


def test_a_throwaway_server_that_dies_at_start_is_named_with_its_log(tmp_path):
    """``devstack.state.wait_spare`` stops waiting as soon as the server exits, and says why (its log's tail);
    one that never answers is given up after its timeout; ``stop_spare`` removes what it left."""
    from devstack.state import stop_spare, wait_spare

    workdir = tmp_path / "spare"
    workdir.mkdir()
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(["sh", "-c", "echo 'port already in use' >&2; exit 3"], stdout=log,
                            stderr=subprocess.STDOUT)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="spare on 1 exited: port already in use"):
        wait_spare(lambda: False, proc, workdir / "server.log", "spare on 1", timeout=30)
    assert time.monotonic() - started < 10
    stop_spare(proc, log, workdir)
    assert not workdir.exists()

    workdir.mkdir()
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(["sleep", "30"], stdout=log)
    with pytest.raises(RuntimeError, match="spare on 2 did not answer within 1 s"):
        wait_spare(lambda: 1 / 0, proc, workdir / "server.log", "spare on 2", timeout=1,
                   errors=(ZeroDivisionError,))
    stop_spare(proc, log, workdir)
    assert proc.returncode is not None and not workdir.exists()
