"""intelligence_backup and intelligence_restore on a distributed Airflow: the CeleryExecutor of
docker-compose.yaml, with two workers that share nothing but the network.

The deployment (see ``conftest.running_airflow``): a PostgreSQL metadata database of the module's own (made on
the local PostgreSQL server, dropped at the end), the Celery broker on a Redis of its own (``airflow_broker``
of the local stack) and Celery's results in PostgreSQL, task logs shipped to a MinIO bucket (remote logging:
the way a deployment whose workers are different machines keeps them readable), and two ``airflow celery
worker`` processes, ``ragvault-worker-a`` and ``ragvault-worker-b``. Each worker has a home, an AIRFLOW_HOME, a
temporary folder, a log folder and a working folder of its own, and names itself (``[core] hostname_callable``)
so that each task instance's ``hostname`` says which worker ran it.

The scenario: the nine components seeded, a backup run, every data store and file emptied, a restore run of
that backup; the state after the restore equals the state at the backup, and the tasks of each run ran on
both workers. The file components (langchain, gpt, infra) are put on a queue of their own
(``components.<name>.queue``) that only worker b serves, as on a deployment where only one machine holds those
files: their tasks run there and nowhere else. A task that relied on a file another task left on its own
machine's disk would fail here as soon as the two tasks ran on different workers.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from devstack.airflow_local import free_port
from devstack.localconfig import REPO, state_dir
from devstack.stack import seed_everything, wipe_everything
from devstack.state import mongo_state, qdrant_state, redis_state, same_redis_state, scraped
from ragvault.components import REGISTRY

from .conftest import AirflowDeployment, Worker, postgres_database, required, running_airflow

BACKUP_DAG, RESTORE_DAG = "intelligence_backup", "intelligence_restore"
WORKERS = ("ragvault-worker-a", "ragvault-worker-b")
# the file components go to a queue of their own, which only worker b serves (the machine with the files)
FILES_QUEUE, FILE_COMPONENTS, FILES_WORKER = "ragvault-files", ("langchain", "gpt", "infra"), "ragvault-worker-b"
#: the README's command for the worker on the machine with the files; the other worker serves the default queue
WORKER_COMMANDS = {"ragvault-worker-a": "airflow celery worker",
                   FILES_WORKER: "airflow celery worker --queues default,ragvault-files"}
CONCURRENCY = 2          # task slots of each worker
RUN_TIMEOUT = 600        # seconds for one run of either DAG
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def metadata_db() -> Iterator[str]:
    """A new database on the local PostgreSQL server: the deployment's metadata database (SQLAlchemy URL)."""
    with postgres_database("airflow_celery") as url:
        yield url


@pytest.fixture(scope="module")
def broker_url() -> str:
    """The Celery broker: the local stack's airflow_broker Redis, emptied of any earlier deployment's queue."""
    url = required("RAGVAULT_CELERY_BROKER_URL")
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture(scope="module")
def celery_bucket(new_bucket) -> str:
    return new_bucket("ragvault-celery")


@pytest.fixture(scope="module")
def log_bucket(new_bucket) -> str:
    return new_bucket("ragvault-celery-logs")


@pytest.fixture(scope="module")
def config(tmp_path_factory, celery_bucket) -> Path:
    """The local stack's settings, on the module's bucket, every component on, the file components on their
    own queue."""
    from devstack.localconfig import local_settings

    settings = local_settings(bucket=celery_bucket, retries=0)
    for name in FILE_COMPONENTS:
        settings["components"][name]["queue"] = FILES_QUEUE
    path = tmp_path_factory.mktemp("celery") / "ragvault.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def worker(root: Path, name: str) -> Worker:
    """The worker's command of ``WORKER_COMMANDS``, with folders of its own under ``root``, a Celery node name
    of its own (both run on one machine here) and ``RAGVAULT_WORKER_NAME``, the hostname its task instances
    record."""
    for folder in ("airflow", "home", "tmp", "logs", "work"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    node = f"{name}@ragvault"
    return Worker(
        args=(*shlex.split(WORKER_COMMANDS[name])[1:], "--celery-hostname", node, "--concurrency", str(CONCURRENCY)),
        env={"AIRFLOW_HOME": str(root / "airflow"), "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
             "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(root / "logs"),
             "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
             "RAGVAULT_WORKER_NAME": name},
        cwd=root / "work",
        ready_line=f"{node} ready.",
    )


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> dict[str, Worker]:
    return {name: worker(tmp_path_factory.mktemp(name), name) for name in WORKERS}


@pytest.fixture(scope="module")
def celery_airflow(tmp_path_factory, metadata_db, broker_url, log_bucket, config,
                   workers) -> Iterator[AirflowDeployment]:
    home = tmp_path_factory.mktemp("celery_airflow_home")
    env = {
        "RAGVAULT_CONFIG": str(config),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CONCURRENCY),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.airflow_local.worker_hostname",
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{log_bucket}/logs",
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "minio_s3",
    }
    with running_airflow(home, (BACKUP_DAG, RESTORE_DAG), env, workers=workers) as deployment:
        deployment.api.diagnostics = lambda: deployment.log_tails(("scheduler", *WORKERS))
        yield deployment


class Stack:
    """The three data stores of the local stack, through the package's own hooks."""

    def __init__(self):
        from airflow.providers.mongo.hooks.mongo import MongoHook

        from ragvault.hooks.qdrant import QdrantHook
        from ragvault.hooks.redis import RedisHook

        self.qdrant, self.redis, self.mongo = QdrantHook(), RedisHook(), MongoHook().get_conn()

    def state(self) -> dict:
        return {"qdrant": qdrant_state(self.qdrant), "mongodb": mongo_state(self.mongo),
                "redis": redis_state(self.redis.get_conn)}


def assert_file_components_ran_on_their_worker(hosts: dict[str, set[str]]) -> None:
    """Every task of a file component ran on the worker that serves their queue, and only there."""
    ran = {name: {t for t in tasks if t.split(".")[0] in FILE_COMPONENTS} for name, tasks in hosts.items()}
    assert {t.split(".")[0] for t in ran[FILES_WORKER]} == set(FILE_COMPONENTS), ran
    assert not any(tasks for name, tasks in ran.items() if name != FILES_WORKER), ran


def hosts_of(deployment: AirflowDeployment, dag_id: str, run_id: str) -> dict[str, set[str]]:
    """``{worker hostname: task ids}`` of the task instances of a run that ran."""
    hosts: dict[str, set[str]] = {}
    for ti in deployment.api.task_instances(dag_id, run_id):
        if ti["state"] not in ("skipped", None):
            where = ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]"
            hosts.setdefault(ti["hostname"] or "(none)", set()).add(where)
    return hosts


@pytest.fixture(scope="module")
def backup(celery_airflow, celery_bucket) -> dict:
    """The nine components seeded and backed up by a run of intelligence_backup on the workers."""
    api = celery_airflow.api
    today = dt.datetime.now(dt.UTC).date()
    counts = seed_everything(today.isoformat())
    stack = Stack()
    at_backup = stack.state()
    api.set_paused(BACKUP_DAG, False)
    run = api.trigger(BACKUP_DAG, {}, logical_date=f"{today.isoformat()}T00:00:00+00:00").json()
    api.wait_run(BACKUP_DAG, run["dag_run_id"], RUN_TIMEOUT)
    api.set_paused(BACKUP_DAG, True)
    return {"date": today.isoformat(), "run": run, "counts": counts, "stack": stack, "state": at_backup}


def test_the_backup_runs_on_both_workers_and_captures_every_component(celery_airflow, backup, s3_client,
                                                                      celery_bucket):
    hosts = hosts_of(celery_airflow, BACKUP_DAG, backup["run"]["dag_run_id"])
    assert set(hosts) == set(WORKERS), hosts
    assert_file_components_ran_on_their_worker(hosts)
    from ragvault.repository import BackupRepository

    manifest = BackupRepository(s3_client, celery_bucket).read_manifest(backup["date"])
    assert set(manifest["components"]) == set(REGISTRY), sorted(manifest["components"])
    components, seeded = manifest["components"], backup["counts"]
    assert components["qdrant"]["counts"]["points"] == sum(seeded["qdrant"].values())
    assert components["mongodb"]["counts"]["documents"] == sum(seeded["mongodb"].values())
    assert components["grafana"]["counts"]["dashboards"] == seeded["grafana"]["dashboards"]
    assert components["langsmith"]["counts"]["runs"] >= seeded["langsmith"]["runs"] > 0


def test_a_task_log_written_on_a_worker_is_read_back_through_the_api(celery_airflow, backup):
    """Remote logging: the log of a finished task is in the bucket, not only on the worker that ran it."""
    api = celery_airflow.api
    run_id = backup["run"]["dag_run_id"]
    ti = next(t for t in api.task_instances(BACKUP_DAG, run_id) if t["task_id"] == "commit_manifest")
    log = api.task_log(BACKUP_DAG, run_id, ti, limit=200_000)
    assert "manifest" in log, log[-2000:]


def test_the_restore_runs_on_both_workers_and_brings_back_the_state_of_the_backup(celery_airflow, backup,
                                                                                  celery_bucket):
    api = celery_airflow.api
    date = backup["date"]
    files = state_dir() / "demo-files"
    wipe_everything()
    assert not files.exists()
    # Prometheus keeps its TSDB while it runs: the restore adds the backed-up blocks beside it, which the plan
    # calls an overwrite, so the date is confirmed
    conf = {"backup_date": "latest", "components": list(REGISTRY), "dry_run": False, "confirm": date}
    run = api.trigger(RESTORE_DAG, conf, logical_date=None).json()
    api.wait_run(RESTORE_DAG, run["dag_run_id"], RUN_TIMEOUT)
    assert api.xcom(RESTORE_DAG, run["dag_run_id"], "resolve_backup")["date"] == date

    hosts = hosts_of(celery_airflow, RESTORE_DAG, run["dag_run_id"])
    assert set(hosts) == set(WORKERS), hosts
    assert_file_components_ran_on_their_worker(hosts)

    after = backup["stack"].state()
    assert after["qdrant"] == backup["state"]["qdrant"]
    assert after["mongodb"] == backup["state"]["mongodb"]
    assert same_redis_state(backup["state"]["redis"], after["redis"], ttl_tolerance_ms=5000) == []
    demo = REPO / "include" / "demo"
    for source in demo.rglob("*"):
        if source.is_file():
            assert (files / source.relative_to(demo)).read_bytes() == source.read_bytes(), source
    # the post-restore verification found every component's items equal, and said so to the Pushgateway
    label = f'bucket="{celery_bucket}"'
    assert scraped(f"ragvault_restore_passed{{{label}}}", bool) == {"": 1.0}
    equal = scraped(f"ragvault_restore_items_equal{{{label}}}", lambda found: set(found) == set(REGISTRY))
    assert all(value >= 1 for value in equal.values()), equal


def local_logs(folder: Path, dag_id: str, run_id: str) -> set[str]:
    """The tasks of a run with a log file in a worker's own log folder (``task_id`` or ``task_id[map_index]``)."""
    tasks = set()
    for path in (folder / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("attempt=*.log"):
        parts = dict(part.split("=", 1) for part in path.relative_to(folder).parts[:-1] if "=" in part)
        index = parts.get("map_index")
        tasks.add(parts["task_id"] if index in (None, "-1") else f"{parts['task_id']}[{index}]")
    return tasks


def test_each_worker_wrote_only_the_logs_of_the_tasks_it_ran(celery_airflow, workers, backup):
    """The folders are really separate: each worker's log folder holds the logs of exactly the tasks that
    recorded its name."""
    run_id = backup["run"]["dag_run_id"]
    hosts = hosts_of(celery_airflow, BACKUP_DAG, run_id)
    for name, spec in workers.items():
        folder = Path(spec.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
        assert local_logs(folder, BACKUP_DAG, run_id) == hosts[name], name
