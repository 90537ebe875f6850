"""A private Airflow on loopback for the tests: the environment its processes share.

One AIRFLOW_HOME with a SQLite metadata database, the repository's plugins, the simple auth manager with
one admin user (its password file written into the home), a JWT secret of its own, LocalExecutor, and an
``airflow_api`` connection pointing at its own API server, so that ragvault's ingestion pause talks to it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path, port: int, *, username: str, password: str, dags_folder: Path | None = None,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process of a private Airflow whose API server listens on ``port``
    (``extra`` last: connections, RAGVAULT_CONFIG...)."""
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({username: password}))
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # the log servers of the scheduler's workers and of the triggerer: free ports, not the shared defaults
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_AIRFLOW_API": json.dumps({"conn_type": "http", "schema": "http", "host": "127.0.0.1",
                                                "port": port, "login": username, "password": password}),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")]),
        **(extra or {}),
    }


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the test deployments: ``$RAGVAULT_WORKER_NAME`` where it is set (each
    Celery worker of one machine names itself, so that a task instance's ``hostname`` tells which worker ran
    it), else Airflow's default, the machine's FQDN."""
    return os.environ.get("RAGVAULT_WORKER_NAME") or socket.getfqdn()
