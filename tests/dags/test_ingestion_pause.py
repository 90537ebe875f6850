"""Pausing the ingestion DAGs while intelligence_backup runs, against a real Airflow API server.

The module builds an Airflow of its own: a fresh AIRFLOW_HOME with a migrated metadata database, a dags
folder holding two small ingestion DAGs next to intelligence_backup, the DAGs serialised into the database,
and ``airflow api-server`` on a free loopback port with the simple auth manager and a known admin password.
The backup runs with ``airflow dags test`` and pauses and resumes the ingestion DAGs through that server
(JWT from ``/auth/token``, REST API v2), exactly as it would in a deployment. The test reads the same
server: a thread records the DAGs' paused state and the saved ingestion state while the backup runs, and
the task instances' dates tell which samples fall inside the paused window.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.airflow_local import airflow_env, free_port
from ragvault.components import REGISTRY
from ragvault.ingestion import STATE_VARIABLE

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
BACKUP_DAG = "intelligence_backup"
ACTIVE = "ingest_documents"      # unpaused before the backup: paused during it, unpaused after it
HELD = "ingest_embeddings"       # paused by its owner before the backup: must stay paused after it
USERNAME = "backup-admin"
PASSWORD = "ragvault-api-test-password"
START_TIMEOUT = 120              # seconds allowed for the API server to answer
RUN_TIMEOUT = 180                # seconds allowed for one `airflow dags test`

INGESTION_DAGS = f'''
"""Two small ingestion DAGs; their one task sleeps for ``params.seconds`` (0 unless a run's conf says)."""

import time

import pendulum
from airflow.sdk import DAG, task

for dag_id in ({ACTIVE!r}, {HELD!r}):
    with DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
             params={{"seconds": 0}}, tags=["ingestion"]):

        @task
        def load(params=None):
            time.sleep(float(params["seconds"]))

        load()
'''


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def tail(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-6000:] + proc.stderr[-6000:]


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             process: subprocess.Popen | None = None, interval: float = 0.5) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds or when ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with code {process.returncode} first")
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and its children: TERM, then KILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class AirflowApi:
    """A client of the Airflow REST API v2, logged in as the test's admin user."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def login(self) -> None:
        response = self.session.post(f"{self.base_url}/auth/token", timeout=10,
                                     json={"username": USERNAME, "password": PASSWORD})
        assert response.status_code == 201, response.text
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200,),
             **kwargs: Any) -> requests.Response:
        """One request to ``/api/v2<path>``, failing the test on any status not in ``expect``."""
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=10, **kwargs)
        assert response.status_code in expect, f"{method} {path}: {response.status_code}: {response.text}"
        return response

    def is_paused(self, dag_id: str) -> bool:
        return self.call("GET", f"/dags/{dag_id}").json()["is_paused"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": paused})

    def variable(self, key: str) -> str | None:
        response = self.call("GET", f"/variables/{key}", expect=(200, 404))
        return response.json()["value"] if response.status_code == 200 else None

    def count_task_instances(self, dag_id: str, *states: str) -> int:
        params = [("state", s) for s in states] + [("limit", "1")]
        page = self.call("GET", f"/dags/{dag_id}/dagRuns/~/taskInstances", params=params).json()
        return page["total_entries"]

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, **params}).json()["dag_runs"]

    def run_for(self, dag_id: str, date: str) -> dict[str, Any]:
        """The DAG's run whose logical date falls on ``date``."""
        runs = [r for r in self.dag_runs(dag_id) if r["logical_date"].startswith(date)]
        assert len(runs) == 1, runs
        return runs[0]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """``{task_id: task instance}`` of one run (``task_id[map_index]`` for a mapped task)."""
        page = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                         params={"limit": 100}).json()
        return {ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]": ti
                for ti in page["task_instances"]}

    def pause_requests(self, dag_id: str, since: datetime) -> list[bool]:
        """The ``is_paused`` values the API was asked to set on ``dag_id`` after ``since``, oldest first."""
        params = {"dag_id": dag_id, "event": "patch_dag", "after": since.isoformat(),
                  "order_by": "event_log_id", "limit": 100}
        logs = self.call("GET", "/eventLogs", params=params).json()
        return [json.loads(log["extra"])["is_paused"] for log in logs["event_logs"]]


@dataclass
class AirflowStack:
    """The private Airflow: its environment, its API server's client, and the CLI on both."""

    env: dict[str, str]
    api: AirflowApi

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    @contextmanager
    def background(self, *args: str, log: Path) -> Iterator[subprocess.Popen]:
        """An ``airflow`` command running while the block runs; stopped (with its children) when it ends."""
        with log.open("w") as out:
            process = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            yield process
        finally:
            stop_process_group(process)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[AirflowStack]:
    """A migrated Airflow with the ingestion DAGs serialised, and its API server up until the module ends."""
    home = tmp_path_factory.mktemp("airflow_api_home")
    dags = home / "dags"
    dags.mkdir()
    (dags / "ingestion.py").write_text(INGESTION_DAGS)
    (dags / "intelligence_backup.py").symlink_to(REPO_ROOT / "dags" / "intelligence_backup.py")
    port = free_port()
    env = airflow_env(home, port, username=USERNAME, password=PASSWORD, dags_folder=dags)
    stack = AirflowStack(env, AirflowApi(f"http://127.0.0.1:{port}"))
    proc = stack.run("db", "migrate")
    assert proc.returncode == 0, tail(proc)

    with stack.background("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          log=home / "api-server.log") as server:
        # while the server starts: it needs only the migrated database
        proc = stack.run("dags", "reserialize")
        assert proc.returncode == 0, tail(proc)
        try:
            wait_for(stack.api.healthy, START_TIMEOUT, f"the API server on port {port}", process=server)
        except BaseException:
            print((home / "api-server.log").read_text()[-6000:])
            raise
        stack.api.login()
        known = {d["dag_id"] for d in stack.api.call("GET", "/dags", params={"limit": 100}).json()["dags"]}
        assert {ACTIVE, HELD, BACKUP_DAG} <= known, known
        yield stack


@dataclass
class Sample:
    """What the API said between ``start`` and ``end`` (epoch seconds)."""

    start: float
    end: float
    paused: dict[str, bool]
    state: dict[str, Any] | None   # the saved ingestion state (Variable), if any


@dataclass
class PausedStateRecorder:
    """Samples the DAGs' paused state and the saved ingestion state from a thread while a block runs."""

    api: AirflowApi
    dag_ids: tuple[str, ...]
    interval: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sample(self) -> None:
        start = time.time()
        paused = {dag_id: self.api.is_paused(dag_id) for dag_id in self.dag_ids}
        state = self.api.variable(STATE_VARIABLE)
        self.samples.append(Sample(start, time.time(), paused, json.loads(state) if state else None))

    def __enter__(self) -> PausedStateRecorder:
        # a session of its own: a requests session is not meant to be shared between threads
        self.api = AirflowApi(self.api.base_url)
        self.api.login()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="paused-state-recorder", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # reported by __exit__: an assertion in a thread would go unseen
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the recorder thread did not stop"
        assert not self.errors, self.errors
        self.sample()  # one more, after the block

    def between(self, start: float, end: float) -> list[Sample]:
        """The samples taken entirely inside ``(start, end)``."""
        return [s for s in self.samples if start < s.start and s.end < end]


def only_redis() -> dict[str, dict[str, bool]]:
    """Every component off but Redis: one quick, real backup task between the pause and the resume."""
    return {name: {"enabled": name == "redis"} for name in REGISTRY}


@pytest.fixture
def ingestion_dags(stack) -> AirflowApi:
    """The two ingestion DAGs as their owners left them: ACTIVE unpaused, HELD paused; no saved state."""
    api = stack.api
    api.set_paused(ACTIVE, False)
    api.set_paused(HELD, True)
    assert api.variable(STATE_VARIABLE) is None
    return api


def test_backup_pauses_ingestion_while_it_runs_and_restores_each_prior_state(
        stack, ingestion_dags, make_config, backup_date):
    api = ingestion_dags
    since = datetime.now(UTC)
    config = make_config(ingestion={"pause_dag_ids": [ACTIVE, HELD], "drain_timeout_seconds": 60},
                         components=only_redis())
    with PausedStateRecorder(api, (ACTIVE, HELD)) as recorder:
        proc = stack.run("dags", "test", BACKUP_DAG, backup_date, env={"RAGVAULT_CONFIG": str(config)})
    assert proc.returncode == 0, tail(proc)

    run_id = api.run_for(BACKUP_DAG, backup_date)["dag_run_id"]
    tis = api.task_instances(BACKUP_DAG, run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "pause_ingestion": "success", "plan_backup": "success", "redis.list_nodes": "success",
        "redis.backup_node[0]": "success", "commit_manifest": "success", "apply_retention": "success",
        "resume_ingestion": "success"}

    # From the end of pause_ingestion to the start of resume_ingestion both DAGs were paused, and the state
    # saved for the resume was this run's, with each DAG's state from before the backup.
    paused_from = epoch(tis["pause_ingestion"]["end_date"])
    paused_until = epoch(tis["resume_ingestion"]["start_date"])
    assert paused_from <= epoch(tis["redis.list_nodes"]["start_date"])
    assert epoch(tis["commit_manifest"]["end_date"]) <= paused_until
    during = recorder.between(paused_from, paused_until)
    assert during, f"no sample inside the {paused_until - paused_from:.2f}s paused window"
    for sample in during:
        assert sample.paused == {ACTIVE: True, HELD: True}, sample
        assert sample.state is not None and sample.state["owner"] == run_id, sample
        assert sample.state["dags"] == {ACTIVE: False, HELD: True}, sample

    # Before the pause and after the resume, each DAG is as its owner left it, and nothing is saved.
    before = recorder.between(0, epoch(tis["pause_ingestion"]["start_date"]))
    after = recorder.between(epoch(tis["resume_ingestion"]["end_date"]), float("inf"))
    assert before and after, (len(before), len(after))
    for sample in before + after:
        assert sample.paused == {ACTIVE: False, HELD: True}, sample
        assert sample.state is None, sample

    # What the API server was asked: ACTIVE paused then unpaused; HELD paused and never unpaused.
    assert api.pause_requests(ACTIVE, since) == [True, False]
    assert api.pause_requests(HELD, since) == [True]
    assert api.is_paused(ACTIVE) is False
    assert api.is_paused(HELD) is True
    assert api.variable(STATE_VARIABLE) is None
    out = proc.stdout + proc.stderr
    assert f"ingestion: DAG {HELD} was already paused" in out
    assert f"ingestion: DAG {ACTIVE} unpaused" in out
    assert f"ingestion: DAG {HELD} was paused before the backup and stays paused" in out


@contextmanager
def busy_ingestion_run(stack: AirflowStack, dag_id: str, date: str, tmp_path: Path) -> Iterator[None]:
    """A real run of ``dag_id`` whose task is running (sleeping) while the block runs.

    ``airflow dags test`` runs it against the same database, so the API server sees a running task
    instance. At the end the process is stopped and its run marked failed, so nothing stays active.
    """
    api = stack.api
    with stack.background("dags", "test", dag_id, date, "--conf", json.dumps({"seconds": 600}),
                          log=tmp_path / f"{dag_id}.log") as process:
        try:
            wait_for(lambda: api.count_task_instances(dag_id, "running") == 1, RUN_TIMEOUT,
                     f"a running task instance of {dag_id}", process=process)
            yield
        finally:
            stop_process_group(process)
            for run in api.dag_runs(dag_id, state="running"):
                api.call("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
            assert api.count_task_instances(dag_id, "running", "queued") == 0


def test_busy_ingestion_fails_the_pause_after_the_drain_timeout_and_ingestion_is_put_back(
        stack, ingestion_dags, make_config, backup_date, tmp_path):
    api = ingestion_dags
    since = datetime.now(UTC)
    drain_timeout = 3
    config = make_config(ingestion={"pause_dag_ids": [ACTIVE, HELD], "drain_timeout_seconds": drain_timeout},
                         components=only_redis())
    with busy_ingestion_run(stack, ACTIVE, backup_date, tmp_path):
        with PausedStateRecorder(api, (ACTIVE, HELD)) as recorder:
            proc = stack.run("dags", "test", BACKUP_DAG, backup_date, env={"RAGVAULT_CONFIG": str(config)})
        # the ingestion task ran through the whole attempt to pause
        assert api.count_task_instances(ACTIVE, "running") == 1
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)

    run_id = api.run_for(BACKUP_DAG, backup_date)["dag_run_id"]
    states = {t: ti["state"] for t, ti in api.task_instances(BACKUP_DAG, run_id).items()}
    assert states["pause_ingestion"] == "failed", states
    assert states.get("redis.backup_node[0]") != "success" and states["commit_manifest"] != "success", states

    # pause_ingestion waited on the running task with both DAGs paused, then failed naming DAG and count.
    assert f"ingestion: waiting for {ACTIVE} (1 active)" in out, tail(proc)
    assert (f"ragvault.ingestion.IngestionError: ingestion did not drain within {drain_timeout}s: "
            f"still active {ACTIVE} (1 task instances)\n") in out, tail(proc)
    paused = [s for s in recorder.samples if s.paused == {ACTIVE: True, HELD: True}]
    assert paused and paused[-1].end - paused[0].start >= drain_timeout, [(s.start, s.paused) for s in paused]

    # Ingestion is back as its owners left it: ACTIVE unpaused, HELD still paused, no saved state left.
    restored = (api.is_paused(ACTIVE), api.is_paused(HELD), api.variable(STATE_VARIABLE))
    assert restored == (False, True, None), (states, tail(proc))
    assert api.pause_requests(ACTIVE, since) == [True, False]
    assert api.pause_requests(HELD, since) == [True]
    assert f"ingestion: DAG {ACTIVE} unpaused" in out
    assert f"ingestion: DAG {HELD} was paused before the backup and stays paused" in out
