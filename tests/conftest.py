"""Shared fixtures. The tests talk to the real local servers that `make services` starts (or to the servers the
AIRFLOW_CONN_* variables point at): nothing here is mocked."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))

REQUIRED_CONNECTIONS = ("AIRFLOW_CONN_MINIO_S3", "AIRFLOW_CONN_MONGO_DEFAULT", "AIRFLOW_CONN_REDIS_DEFAULT",
                        "AIRFLOW_CONN_QDRANT_DEFAULT")


def pytest_sessionstart(session):
    missing = [name for name in REQUIRED_CONNECTIONS if name not in os.environ]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not set: run the tests with `make test` (it starts the local services and "
            "sources .services.env), or export AIRFLOW_CONN_* for your own servers"
        )


@pytest.fixture(scope="session")
def s3_client():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="minio_s3").get_conn()


@pytest.fixture(scope="session")
def new_bucket(s3_client):
    """``new_bucket(prefix, object_lock=False) -> name``: a bucket of its own (so the backups in it are exactly
    the ones a test makes), created with object lock if asked, emptied and removed at the end of the session
    (every version; locks in governance mode are bypassed, as an account granted s3:BypassGovernanceRetention
    can)."""
    made = []

    def make(prefix: str = "ragvault-test", object_lock: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        s3_client.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if object_lock else {}))
        made.append(name)
        return name

    yield make
    paginator = s3_client.get_paginator("list_object_versions")
    for name in made:
        for page in paginator.paginate(Bucket=name):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3_client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"],
                                        BypassGovernanceRetention=True)
        s3_client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def bucket(new_bucket):
    """The bucket of this test session."""
    return new_bucket("ragvault-test")


def write_config(path: Path, bucket: str, **overrides) -> Path:
    """A ragvault settings file for tests: the session's bucket, no retries, plus ``overrides``."""
    path.write_text(yaml.safe_dump({"bucket": bucket, "retries": 0, **overrides}))
    return path


@pytest.fixture
def make_config(tmp_path, bucket):
    """``make_config(**overrides) -> Path``: a settings file on this session's bucket."""
    return lambda **overrides: write_config(tmp_path / "ragvault.yaml", bucket, **overrides)


@pytest.fixture(scope="session")
def config_factory(tmp_path_factory, bucket):
    """``config_factory(**overrides) -> Path``, for fixtures wider than one test."""
    return lambda **overrides: write_config(tmp_path_factory.mktemp("config") / "ragvault.yaml",
                                            overrides.pop("bucket", bucket), **overrides)


@pytest.fixture(scope="session")
def settings(tmp_path_factory, bucket):
    from ragvault.config import load_settings

    return load_settings(write_config(tmp_path_factory.mktemp("config") / "ragvault.yaml", bucket))


@pytest.fixture(scope="session")
def repo(s3_client, bucket):
    from ragvault.repository import BackupRepository

    return BackupRepository(s3_client, bucket)


_dates = itertools.count(random.randrange(0, 20000))


def new_date() -> str:
    """A date no other test of this session uses (after the DAG's start_date: Airflow creates no task
    instances for runs dated before it)."""
    return (datetime.date(2030, 1, 1) + datetime.timedelta(days=next(_dates))).isoformat()


@pytest.fixture
def backup_date():
    """A date no other test of this session uses, so each test writes its own backup folder."""
    return new_date()


@pytest.fixture(scope="session")
def fresh_date():
    """``fresh_date() -> str``: a new unused date, for fixtures wider than one test."""
    return new_date


# -- a private Airflow for whole DAG runs (`airflow dags test`) ---------------------------------------------

class AirflowCli:
    """The `airflow` command on a private AIRFLOW_HOME, plus look-ups in its metadata database."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def json_output(self, *args: str) -> list | dict:
        """Run a command with ``--output json``; its JSON is the last stdout line (log lines come before)."""
        proc = self.run(*args, "--output", "json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def run_id_for(self, dag_id: str, date: str) -> str:
        """The id of the DAG's run whose logical date falls on ``date``."""
        runs = [r for r in self.json_output("dags", "list-runs", dag_id) if r["logical_date"].startswith(date)]
        assert len(runs) == 1, runs
        return runs[0]["run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """``{task_id or task_id[map_index]: state}`` for one DAG run."""
        states = {}
        for row in self.json_output("tasks", "states-for-dag-run", dag_id, run_id):
            index = str(row.get("map_index"))
            states[row["task_id"] if index in ("None", "-1", "") else f"{row['task_id']}[{index}]"] = row["state"]
        return states


@pytest.fixture(scope="session")
def airflow(tmp_path_factory) -> AirflowCli:
    home = tmp_path_factory.mktemp("airflow_home")
    cli = AirflowCli({
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT / "include")]),
    })
    proc = cli.run("db", "migrate", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cli
