"""Airflow REST API (v2) hook: pause and unpause DAGs, count their running task instances, note a run."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import requests

from ragvault.hooks.base import ConnectionHook, connection_url


class AirflowApiError(RuntimeError):
    """The Airflow API server refused a request or could not be reached."""


class AirflowApiHook(ConnectionHook):
    """Talks to an Airflow 3 API server.

    The connection (type ``http``) holds ``schema`` (http/https), ``host``, ``port``, and either ``login`` +
    ``password`` (exchanged for a JWT at ``/auth/token``) or a ready token in its extra as ``token``.

    :param airflow_api_conn_id: the Airflow connection id.
    :param timeout: seconds allowed for each request.
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "airflow_api"
    conn_type = "http"
    hook_name = "Airflow API"

    def __init__(self, airflow_api_conn_id: str = default_conn_name, timeout: int = 30) -> None:
        super().__init__()
        self.airflow_api_conn_id = airflow_api_conn_id
        self.timeout = timeout

    @cached_property
    def base_url(self) -> str:
        return connection_url(self.connection)

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        token = self.connection.extra_dejson.get("token")
        if not token:
            url = f"{self.base_url}/auth/token"
            try:
                response = session.post(url, json={"username": self.connection.login,
                                                   "password": self.connection.password}, timeout=self.timeout)
            except requests.RequestException as exc:
                raise AirflowApiError(f"POST {url}: {exc}") from exc
            if response.status_code >= 400:
                raise AirflowApiError(f"POST {url}: HTTP {response.status_code}: could not get a token "
                                      f"for user {self.connection.login!r}")
            token = response.json()["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise AirflowApiError(f"{method} {url}: {exc}") from exc
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {url}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def is_paused(self, dag_id: str) -> bool:
        return bool(self.request("GET", f"/api/v2/dags/{dag_id}")["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", params={"update_mask": "is_paused"},
                     json={"is_paused": paused})

    def active_task_instances(self, dag_id: str) -> int:
        """How many of the DAG's task instances are queued or running, over all its runs."""
        page = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances",
                            params=[("state", "running"), ("state", "queued"), ("limit", "1")])
        return int(page["total_entries"])

    def set_run_note(self, dag_id: str, run_id: str, note: str) -> None:
        """Set the note of a DAG run (shown in the grid view and on the run's page)."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": "note"},
                     json={"note": note})
