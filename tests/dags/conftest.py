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
