"""An Airflow of its own for the DAG tests: a fresh AIRFLOW_HOME with a migrated metadata database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT / "include")]),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


def run_airflow(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


def task_states(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, str]:
    """``{task_id or task_id[map_index]: state}`` for one DAG run, from the metadata database."""
    proc = run_airflow(env, "tasks", "states-for-dag-run", dag_id, run_id, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    states = {}
    for row in json.loads(proc.stdout):
        index = row.get("map_index")
        name = row["task_id"] if index in (None, -1, "-1") else f"{row['task_id']}[{index}]"
        states[name] = row["state"]
    return states


def last_run_id(env: dict[str, str], dag_id: str) -> str:
    proc = run_airflow(env, "dags", "list-runs", dag_id, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    return max(runs, key=lambda r: r.get("start_date") or "")["run_id"]
