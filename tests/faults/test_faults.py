"""Faults a backup meets on the nights nobody watches, provoked against real servers.

* The worker is SIGKILLed in the middle of an upload (a rerun of a date that holds a complete backup).
* MinIO is SIGKILLed in the middle of an upload, then started again.
* MinIO dies while the run is going, so that the teardown (resume_ingestion) finds it down.

After each: no manifest for the broken run, the previous backup of the date (if any) still reads back whole,
ingestion is resumed, the leftovers (incomplete multipart uploads) are found and removed by the next run,
and the next run proceeds within the lock's lease time.

A commit killed before each of its writes is in ``tests/plugins/ragvault/test_plan.py``
(``test_a_commit_killed_at_any_step_leaves_the_old_or_the_new_backup_whole``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime

import pytest

from devstack.localconfig import REPO, write_local_settings
from ragvault.lock import LOCK_KEY, BucketLock
from ragvault.plan import assemble_manifest, make_plan
from ragvault.repository import BackupRepository, ItemResult, MiB, utcnow_iso

pytestmark = pytest.mark.timeout(600)

DATE = "2031-05-05"
PART = 5 * MiB


def complete_backup(repo: BackupRepository, settings, date: str = DATE) -> dict:
    """A complete backup of ``date`` (two components), committed as commit_manifest does."""
    plan = make_plan(repo, settings, date, f"first-run-{date}")
    results = []
    for name, body in (("qdrant", b"vectors " * 1000), ("langsmith", b"runs " * 1000)):
        artifact = repo.put_artifact(date, name, "data.bin", body, staging=plan.staging)
        results.append(ItemResult(name, "all", utcnow_iso(), None, {"bytes": len(body)}, [artifact]))
    manifest = assemble_manifest(repo, plan, results, {"run_id": plan.date})
    repo.commit_manifest(manifest)
    return manifest


def reads_back_whole(repo: BackupRepository, manifest: dict) -> None:
    assert repo.read_manifest(manifest["backup_date"]) == manifest
    for artifact in manifest["artifacts"]:
        assert repo.verify_artifact(artifact) == [], artifact


def uploads(client, bucket: str, key: str | None = None) -> list[dict]:
    """Open multipart uploads: of the bucket, or of one key (after a restart MinIO lists them only by key)."""
    return client.list_multipart_uploads(Bucket=bucket, **({"Prefix": key} if key else {})).get("Uploads", [])


def wait_for_parts(client, bucket: str, timeout: float = 60) -> dict:
    """The first multipart upload of the bucket once it holds at least one part."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for upload in uploads(client, bucket):
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            if parts.get("Parts"):
                return upload
        time.sleep(0.2)
    raise AssertionError(f"no multipart upload with a part appeared in {bucket} within {timeout} s")


def next_run_cleans_up(repo: BackupRepository, key: str) -> None:
    """What plan_backup does first, holding the lock: abort the uploads dead runs left, finish their commits."""
    lock = BucketLock(repo.client, repo.bucket, "next-run", lease=60)
    lock.acquire(wait=0)
    aborted = repo.abort_stale_uploads(before=lock.acquired_at())
    assert aborted == [key], aborted
    repo.repair(DATE)
    assert uploads(repo.client, repo.bucket, key) == [] and uploads(repo.client, repo.bucket) == []
    assert list(repo.list_keys(".ragvault/uploads/")) == []  # the notes go with their uploads
    assert lock.release()


@pytest.fixture
def settings(tmp_path, private_bucket):
    from ragvault.config import load_settings

    path = tmp_path / "ragvault.yaml"
    path.write_text(json.dumps({"bucket": private_bucket, "retries": 0}))
    return load_settings(path)


WORKER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{plugins!r}]
    import boto3
    from ragvault.repository import BackupRepository
    client = boto3.client("s3", endpoint_url={endpoint!r}, aws_access_key_id={user!r},
                          aws_secret_access_key={password!r}, region_name="us-east-1")
    repo = BackupRepository(client, {bucket!r}, part_size={part})

    def slowly():
        for n in range(400):  # 400 MiB at about 20 MiB/s: killed long before the end
            yield bytes([n % 251]) * (1024 * 1024)
            time.sleep(0.05)

    repo.put_artifact({date!r}, "langsmith", "data.bin", slowly(), staging={staging!r})
    print("finished")
""")


def test_worker_killed_mid_upload_leaves_the_previous_backup_whole(private_minio, private_bucket, settings):
    client = private_minio.client()
    repo = BackupRepository(client, private_bucket)
    old = complete_backup(repo, settings)
    staging = make_plan(repo, settings, DATE, "rerun-that-dies").staging
    assert staging, "a rerun of a date with a complete backup writes aside"
    script = WORKER.format(plugins=str(REPO / "plugins"), endpoint=private_minio.endpoint, user=private_minio.user,
                           password=private_minio.password, bucket=private_bucket, part=PART, date=DATE,
                           staging=staging)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        upload = wait_for_parts(client, private_bucket)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    assert upload["Key"] == f"{DATE}/.staging/{staging}/langsmith/data.bin"

    # nothing half-written is visible, the previous backup reads back whole, the parts are stored in limbo
    assert repo.head(upload["Key"]) is None
    reads_back_whole(repo, old)
    assert [u["Key"] for u in uploads(client, private_bucket, upload["Key"])] == [upload["Key"]]

    next_run_cleans_up(repo, upload["Key"])
    reads_back_whole(repo, old)
    assert sorted(o["Key"] for o in repo.list_keys(f"{DATE}/")) == sorted(
        [a["key"] for a in old["artifacts"]] + [f"{DATE}/manifest.json"])


def test_minio_killed_mid_upload_then_restarted(private_minio, private_bucket, settings):
    client = private_minio.client()
    repo = BackupRepository(client, private_bucket, part_size=PART)
    old = complete_backup(repo, settings)
    staging = make_plan(repo, settings, DATE, "rerun-during-outage").staging
    failure: list[BaseException] = []

    def slowly():
        for n in range(400):
            yield bytes([n % 251]) * MiB
            time.sleep(0.05)

    def upload():
        try:
            repo.put_artifact(DATE, "langsmith", "data.bin", slowly(), staging=staging)
        except BaseException as exc:  # the upload must fail, loudly
            failure.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    started = wait_for_parts(client, private_bucket)
    private_minio.kill()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the upload hangs with MinIO gone"
    assert failure, "the upload did not fail with MinIO gone"

    private_minio.start()  # same data dir: what was stored survives
    assert repo.head(started["Key"]) is None
    reads_back_whole(repo, old)
    # the writer's abort could not reach MinIO: its parts are stored in limbo (MinIO now lists the upload only by
    # its key), and the next run finds it through its note and aborts it
    assert [u["Key"] for u in uploads(client, private_bucket, started["Key"])] == [started["Key"]]
    next_run_cleans_up(repo, started["Key"])
    reads_back_whole(repo, old)


# -- the teardown with MinIO down, in a whole DAG run ----------------------------------------------------------

FLAG_KEY = "ragvault:faults:ingestion-paused"


def test_minio_down_during_the_run_still_resumes_ingestion_and_the_next_run_proceeds(
        airflow, tmp_path, private_minio, private_bucket, fresh_date):
    """MinIO dies right after pause_ingestion: the run fails, resume_ingestion puts the ingestion flag back
    although MinIO is down and says the lock could not be released; MinIO comes back; the next run takes the
    dead run's lock over once its lease has run out, and backs up."""
    from ragvault.hooks.redis import RedisHook

    redis_client = RedisHook().get_conn()
    redis_client.delete(FLAG_KEY)
    only_langchain = {name: {"enabled": name == "langchain"} for name in
                      ("qdrant", "mongodb", "redis", "langchain", "langsmith", "gpt", "infra", "prometheus",
                       "grafana")}
    config = write_local_settings(tmp_path / "ragvault.yaml", bucket=private_bucket, retries=0,
                                  lock={"wait_seconds": 120, "lease_seconds": 8},
                                  ingestion={"flag": {"redis_key": FLAG_KEY}})
    import yaml

    data = yaml.safe_load(config.read_text())
    for name, value in only_langchain.items():
        data["components"][name].update(value)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"RAGVAULT_CONFIG": str(config), "AIRFLOW_CONN_MINIO_S3": private_minio.connection()}

    killed = threading.Event()

    def kill_once_paused():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            if redis_client.get(FLAG_KEY) is not None:
                private_minio.kill()
                killed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_once_paused, daemon=True)
    watcher.start()
    date = fresh_date()
    try:
        proc = airflow.run("dags", "test", "intelligence_backup", date, env=env)
    finally:
        killed.set()
        watcher.join(timeout=10)
    out = proc.stdout + proc.stderr
    states = airflow.task_states("intelligence_backup", airflow.run_id_for("intelligence_backup", date))
    assert states["pause_ingestion"] == "success", states
    assert states["plan_backup"] == "failed", states
    assert states["resume_ingestion"] == "failed", states  # it says so: the lock could not be released
    assert "is not reachable" in out, out[-3000:]
    assert "could not be released" in out and "frees itself when its lease runs out" in out, out[-3000:]
    assert redis_client.get(FLAG_KEY) is None, "ingestion stayed paused"  # resumed with MinIO down

    private_minio.start()
    client = private_minio.client()
    holder = json.loads(client.get_object(Bucket=private_bucket, Key=LOCK_KEY)["Body"].read())
    assert holder["owner"] == airflow.run_id_for("intelligence_backup", date)
    assert client.list_objects_v2(Bucket=private_bucket, Prefix=f"{date}/").get("KeyCount") == 0

    started = datetime.now(UTC)
    later = fresh_date()
    proc = airflow.run("dags", "test", "intelligence_backup", later, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "taken over by" in proc.stdout + proc.stderr
    assert (datetime.now(UTC) - started).total_seconds() < 300
    manifest = json.loads(client.get_object(Bucket=private_bucket, Key=f"{later}/manifest.json")["Body"].read())
    assert manifest["components"]["langchain"]["mode"] == "capture"
    assert "Contents" not in client.list_objects_v2(Bucket=private_bucket, Prefix=LOCK_KEY)  # released
    assert redis_client.get(FLAG_KEY) is None
