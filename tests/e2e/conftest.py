"""A real Airflow for the end-to-end tests: its own AIRFLOW_HOME, scheduler and all.

:func:`running_airflow` builds a private Airflow deployment the way a real one runs: a fresh AIRFLOW_HOME, a
metadata database (the ``airflow`` fixture makes one of its own on the local PostgreSQL server with
:func:`postgres_database`: SQLite refuses a backfill while the scheduler writes, "Database is locked. Backfill
creation is not supported on SQLite under concurrent access"), the LocalExecutor, the repository's ``dags/``
and ``plugins/``, the simple auth manager with a known admin password, and four
processes started side by side, each in a session (process group) of its own and logging to a file of the
home: ``airflow api-server`` on a free loopback port, ``airflow scheduler``, ``airflow dag-processor`` and
``airflow triggerer``. The task runners the scheduler forks reach the API server's execution API, and the
``airflow_api`` connection points at that same server. Everything is stopped when the block ends, whatever
happened in it.

:class:`AirflowApi` is the REST API v2 client the tests drive it with (JWT from ``/auth/token``), with
:meth:`AirflowApi.wait_run`, whose failure message carries the failed task instances' log tails and the
tail of the scheduler's log.

The module-scoped ``airflow`` fixture starts one deployment for a test module; the module provides the
``ragvault_config`` fixture (the settings file the DAGs and the operators read, ``$RAGVAULT_CONFIG``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from devstack.airflow_local import airflow_env, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USERNAME = "ragvault-e2e-admin"
PASSWORD = "ragvault-e2e-password"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
MIGRATE_TIMEOUT = 300     # seconds for `airflow db migrate`
START_TIMEOUT = 180       # seconds for every server to report healthy, then as much for the DAGs to be parsed
POLL_INTERVAL = 2.0       # seconds between two looks at a run's state
FINISHED = ("success", "failed")
LOG_TAIL = 4000           # characters of each log shown in a failure message


def tail(text: str, limit: int = LOG_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def required(name: str) -> str:
    """The value of the environment variable ``name``, which ``make services`` writes to .services.env."""
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: `make services` starts PostgreSQL and the broker and writes it to "
                    ".services.env", pytrace=False)
    return value


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new database on the local PostgreSQL server (``$RAGVAULT_POSTGRES_URL``), named ``<prefix>_<random>``,
    until the block ends, when it is dropped: its SQLAlchemy URL, for a deployment's metadata database."""
    import psycopg2

    server = urlsplit(required("RAGVAULT_POSTGRES_URL"))
    name = f"{prefix}_{os.urandom(4).hex()}"
    admin = psycopg2.connect(urlunsplit(server))
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(server._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in a session of its own, with all its children: TERM, then KILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    # The leader may be gone while children (task runners, gunicorn workers) still run in its group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               diagnostics: Callable[[], str] = lambda: "", interval: float = 1.0) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{diagnostics()}", pytrace=False)
        time.sleep(interval)


def _log_lines(content: Iterable[Any]) -> list[str]:
    """The lines of a task log as the API returns it (structured records, or plain strings)."""
    lines = []
    for record in content:
        if not isinstance(record, dict):
            lines.append(str(record))
            continue
        head = " ".join(str(record[k]) for k in ("timestamp", "level") if record.get(k))
        lines.append(f"{head} {record.get('event', '')}".strip())
        for detail in record.get("error_detail") or []:
            if isinstance(detail, dict):
                lines.append(f"  {detail.get('exc_type')}: {detail.get('exc_value')}")
                lines += [f"    {frame.get('filename')}:{frame.get('lineno')} in {frame.get('name')}"
                          for frame in (detail.get("frames") or [])[-3:] if isinstance(frame, dict)]
    return lines


class AirflowApi:
    """A client of the Airflow REST API v2, logged in as the deployment's admin user.

    :param base_url: the API server's address.
    :param diagnostics: what to add to a failure message (the tails of the servers' logs).
    """

    def __init__(self, base_url: str, diagnostics: Callable[[], str] = lambda: ""):
        self.base_url = base_url
        self.diagnostics = diagnostics
        self.session = requests.Session()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any] | None:
        try:
            response = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def login(self) -> None:
        response = requests.post(f"{self.base_url}/auth/token", timeout=10,
                                 json={"username": USERNAME, "password": PASSWORD})
        assert response.status_code == 201, f"POST /auth/token: {response.status_code}: {response.text}"
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, expect: Iterable[int] = (200,), **kwargs: Any) -> requests.Response:
        """One request to ``/api/v2<path>``; fails the test on a status not in ``expect``."""
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code == 401:  # the token expired: log in again, once
            self.login()
            response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        expect = tuple(expect)
        assert response.status_code in expect, (
            f"{method} {path}: HTTP {response.status_code} (expected {expect}): {response.text[:3000]}")
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: dict[str, Any], expect: Iterable[int] = (200,)) -> Any:
        return self.request("POST", path, expect=expect, json=body).json()

    def patch(self, path: str, body: dict[str, Any], **params: Any) -> Any:
        return self.request("PATCH", path, params=params, json=body).json()

    # -- DAGs and runs ----------------------------------------------------------------------------------------
    def set_paused(self, dag_id: str, paused: bool) -> None:
        dag = self.patch(f"/dags/{dag_id}", {"is_paused": paused}, update_mask="is_paused")
        assert dag["is_paused"] is paused, dag

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        """The DAG's runs (up to 100), oldest logical date first."""
        return list(self.get(f"/dags/{dag_id}/dagRuns", limit=100, order_by="logical_date", **params)["dag_runs"])

    def trigger(self, dag_id: str, conf: dict[str, Any], logical_date: str | None,
                expect: Iterable[int] = (200,)) -> requests.Response:
        """POST a manual run; the raw response, so that a refusal can be asserted on."""
        return self.request("POST", f"/dags/{dag_id}/dagRuns", expect=expect,
                            json={"logical_date": logical_date, "conf": conf})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        page = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=500)
        return list(page["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id or task_id[map_index]: state}`` of one run."""
        return {ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
                for ti in self.task_instances(dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, ti: dict[str, Any], limit: int = LOG_TAIL) -> str:
        """The tail of a task instance's log of its latest try."""
        response = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}",
            expect=(200, 404), params={"map_index": ti["map_index"], "full_content": True},
            headers={"Accept": "application/json"})
        if response.status_code != 200:
            return f"(no log: HTTP {response.status_code})"
        return tail("\n".join(_log_lines(response.json().get("content") or [])), limit)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                         map_index=map_index)
        value = entry["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def failure_report(self, dag_id: str, run_id: str) -> str:
        """The run's task states, the failed task instances with their log tails, and the servers' log tails."""
        tis = self.task_instances(dag_id, run_id)
        states = {ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
                  for ti in tis}
        lines = [f"task states of {dag_id} / {run_id}: {json.dumps(states, indent=1)}"]
        for ti in tis:
            if ti["state"] in ("failed", "up_for_retry") and ti.get("try_number"):
                where = ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]"
                lines.append(f"--- log of {where} (try {ti['try_number']}) ---")
                lines.append(self.task_log(dag_id, run_id, ti))
        lines.append(self.diagnostics())
        return "\n".join(lines)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``condition`` until it returns something truthy, and return that; the servers' log tails on
        failure."""
        return wait_until(condition, timeout, what, diagnostics=self.diagnostics, interval=POLL_INTERVAL)

    def wait_finished(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Poll the run until it is ``success`` or ``failed``; return it. Fails the test after ``timeout``."""
        def finished():
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in FINISHED else None

        return wait_until(finished, timeout, f"run {run_id} of {dag_id} to finish",
                          diagnostics=lambda: self.failure_report(dag_id, run_id), interval=POLL_INTERVAL)

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait for the run to finish and assert it succeeded (the message says why not)."""
        run = self.wait_finished(dag_id, run_id, timeout)
        assert run["state"] == "success", f"run {run_id} of {dag_id} {run['state']}\n" + self.failure_report(
            dag_id, run_id)
        return run


@dataclass
class AirflowDeployment:
    """A running private Airflow: its environment, home, REST client and the servers' log files."""

    home: Path
    env: dict[str, str]
    api: AirflowApi
    logs: dict[str, Path] = field(default_factory=dict)

    def log_tails(self, names: Iterable[str] = COMPONENTS, limit: int = LOG_TAIL) -> str:
        parts = []
        for name in names:
            path = self.logs.get(name)
            text = path.read_text(errors="replace") if path and path.exists() else "(no log)"
            parts.append(f"--- {name} log ({path}) ---\n{tail(text, limit)}")
        return "\n".join(parts)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)


def _all_healthy(api: AirflowApi) -> bool:
    health = api.health()
    return bool(health) and all((health.get(name) or {}).get("status") == "healthy"
                                for name in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


@dataclass(frozen=True)
class Worker:
    """One more process of a deployment (a Celery worker): its ``airflow`` arguments, what its environment
    changes, its working folder, and a line of its log that says it is ready."""

    args: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    ready_line: str


@contextmanager
def running_airflow(home: Path, dag_ids: Iterable[str], extra_env: dict[str, str],
                    workers: dict[str, Worker] | None = None) -> Iterator[AirflowDeployment]:
    """A migrated Airflow with its four servers up, its ``workers`` ready (none for the LocalExecutor) and
    ``dag_ids`` parsed, until the block ends."""
    port = free_port()
    env = airflow_env(home, port, username=USERNAME, password=PASSWORD, extra=extra_env)
    deployment = AirflowDeployment(home, env, AirflowApi(f"http://127.0.0.1:{port}"))
    workers = workers or {}
    deployment.api.diagnostics = lambda: deployment.log_tails(("scheduler",))

    migrate = deployment.cli("db", "migrate", timeout=MIGRATE_TIMEOUT)
    assert migrate.returncode == 0, tail(migrate.stdout + migrate.stderr)

    commands = {
        "api-server": ("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        "scheduler": ("scheduler",),
        "dag-processor": ("dag-processor",),
        "triggerer": ("triggerer",),
    }
    with ExitStack() as stack:
        processes: dict[str, subprocess.Popen] = {}
        for name, args in commands.items():
            log = deployment.logs[name] = home / f"{name}.log"
            with log.open("w") as out:
                processes[name] = subprocess.Popen([AIRFLOW, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
            stack.callback(stop_process_group, processes[name])
        for name, worker in workers.items():
            log = deployment.logs[name] = home / f"{name}.log"
            worker.cwd.mkdir(parents=True, exist_ok=True)
            with log.open("w") as out:
                processes[name] = subprocess.Popen([AIRFLOW, *worker.args], env={**env, **worker.env},
                                                   cwd=worker.cwd, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
            stack.callback(stop_process_group, processes[name])

        def alive_and(condition: Callable[[], Any]) -> Callable[[], Any]:
            def check():
                dead = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
                if dead:
                    pytest.fail(f"airflow exited early: {dead}\n{deployment.log_tails()}", pytrace=False)
                return condition()
            return check

        wait_until(alive_and(lambda: _all_healthy(deployment.api)), START_TIMEOUT,
                   f"Airflow's servers (API on port {port}) to report healthy",
                   diagnostics=lambda: f"{deployment.api.health()}\n{deployment.log_tails()}")
        deployment.api.login()
        for name, worker in workers.items():
            def ready(n=name, w=worker) -> bool:
                return w.ready_line in deployment.logs[n].read_text(errors="replace")

            wait_until(alive_and(ready), START_TIMEOUT, f"{name} to be ready ({worker.ready_line!r} in its log)",
                       diagnostics=lambda: deployment.log_tails(workers))

        def parsed() -> bool:
            errors = deployment.api.get("/importErrors")["import_errors"]
            if errors:
                pytest.fail("DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}"
                                                                for e in errors), pytrace=False)
            return all(deployment.api.request("GET", f"/dags/{dag_id}", expect=(200, 404)).status_code == 200
                       for dag_id in dag_ids)

        wait_until(alive_and(parsed), START_TIMEOUT, f"the DAGs {', '.join(dag_ids)} to be parsed",
                   diagnostics=deployment.log_tails)
        yield deployment


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, ragvault_config: Path) -> Iterator[AirflowDeployment]:
    """The module's own running Airflow, on a PostgreSQL metadata database of its own, with intelligence_backup
    and intelligence_restore parsed from the repository's dags/ with ``ragvault_config`` (a fixture of the test
    module) as ``$RAGVAULT_CONFIG``."""
    home = tmp_path_factory.mktemp("airflow_e2e_home")
    with postgres_database("airflow_e2e") as metadata_db, \
            running_airflow(home, ("intelligence_backup", "intelligence_restore"),
                            {"RAGVAULT_CONFIG": str(ragvault_config),
                             "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db}) as deployment:
        yield deployment


# -- a real browser ------------------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("RAGVAULT_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser_page(airflow) -> Iterator[Any]:
    """A page of Debian's chromium (headless, driven by Playwright), signed in to the deployment's UI."""
    from playwright.sync_api import sync_playwright

    base_url = airflow.api.base_url
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} does not exist: `make services` installs Debian's chromium", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            page.goto(f"{base_url}/")
            page.get_by_label("Username").fill(USERNAME)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
            yield page
        finally:
            browser.close()
