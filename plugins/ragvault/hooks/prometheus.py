"""Prometheus hook: the HTTP API (status, queries, own metrics, lifecycle, TSDB snapshots), snapshot dirs."""

from __future__ import annotations

import re
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import requests

from ragvault.hooks.base import ConnectionHook, connection_url

#: Prometheus names a snapshot ``<UTC time>-<random hex>``; anything else is refused before touching the disk
SNAPSHOT_NAME_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")


class PrometheusError(RuntimeError):
    """Prometheus answered with an error, or could not be reached."""


class PrometheusUnreachable(PrometheusError):
    """No answer from Prometheus at all (connection refused, timeout, TLS failure...)."""


class PrometheusAdminApiDisabled(PrometheusError):
    """The server was started without ``--web.enable-admin-api``: no TSDB snapshot can be made."""


class PrometheusHook(ConnectionHook):
    """Talks to one Prometheus server's HTTP API.

    The connection (type ``http``) holds ``schema`` (http/https), ``host`` and ``port`` (9090), or a full URL
    in ``host`` (with a path when Prometheus runs under ``--web.route-prefix``); ``login`` + ``password`` for
    basic auth, or a bearer token in its extra as ``token``; and optionally ``verify`` in the extra (false, or
    the path of a CA bundle) for TLS.

    Prometheus has an API to *make* a TSDB snapshot but none to read or delete one: the snapshot is a
    directory ``<--storage.tsdb.path>/snapshots/<name>/`` on the server's disk, which is why
    :meth:`snapshot_path` and :meth:`delete_snapshot` work on that data directory as mounted on the worker.

    :param prometheus_conn_id: the Airflow connection id.
    :param timeout: seconds allowed for each request (a snapshot of a large head takes a while).
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name, timeout: int = 600) -> None:
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    @cached_property
    def base_url(self) -> str:
        return connection_url(self.connection, port=9090)

    def get_conn(self) -> requests.Session:
        """A ``requests.Session`` carrying the connection's credentials."""
        return self.session

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        conn, extra = self.connection, self.connection.extra_dejson
        if extra.get("token"):
            session.headers["Authorization"] = f"Bearer {extra['token']}"
        elif conn.login:
            session.auth = (conn.login, conn.password or "")
        verify = extra.get("verify")
        if isinstance(verify, str) and verify.lower() in ("true", "false"):
            verify = verify.lower() == "true"
        if verify is not None:
            session.verify = verify  # a bool, or the path of a CA bundle
        return session

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise PrometheusUnreachable(
                f"cannot reach Prometheus at {self.base_url} ({method} {path}): {exc}") from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call an ``/api/v1`` endpoint and return the ``data`` of Prometheus's answer envelope."""
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"{method} {self.base_url}{path}: HTTP {response.status_code}: "
                                  f"{error or response.text[:500]}")
        return body.get("data")

    # -- status -----------------------------------------------------------------------------------------
    def buildinfo(self) -> dict[str, Any]:
        """``GET /api/v1/status/buildinfo``: version, revision, Go version."""
        return self.request("GET", "/api/v1/status/buildinfo")

    def version(self) -> str | None:
        return self.buildinfo().get("version")

    def loaded_config(self) -> str:
        """``GET /api/v1/status/config``: the configuration the server runs, as YAML.

        Prometheus renders it with every default filled in, relative paths made absolute and every secret
        replaced by ``<secret>``: it tells what is loaded, not what to restore.
        """
        return self.request("GET", "/api/v1/status/config")["yaml"]

    def flags(self) -> dict[str, str]:
        """``GET /api/v1/status/flags``: command-line flags (``storage.tsdb.path``, ``config.file``...)."""
        return self.request("GET", "/api/v1/status/flags")

    def tsdb_status(self) -> dict[str, Any]:
        """``GET /api/v1/status/tsdb``: the head's stats (``headStats``: series, chunks, min/max time) and
        its top-10 metric names by series count (``seriesCountByMetricName``)."""
        return self.request("GET", "/api/v1/status/tsdb")

    def runtime_info(self) -> dict[str, Any]:
        """``GET /api/v1/status/runtimeinfo``: start time, ``storageRetention`` (``15d or 10GiB``)..."""
        return self.request("GET", "/api/v1/status/runtimeinfo")

    def query(self, expr: str, **params: Any) -> list[dict[str, Any]]:
        """An instant PromQL query; the result vector (or matrix, scalar) as Prometheus returns it.

        ``time`` (Unix seconds) evaluates it at that moment; a range selector (``up[1h]``) then returns
        the raw samples of the hour before ``time`` (its left end included by Prometheus 2, not by 3).
        """
        return self.request("GET", "/api/v1/query", params={"query": expr, **params})["result"]

    def self_metrics(self, names: tuple[str, ...] | list[str] | set[str]) -> dict[str, float]:
        """Values of label-less metrics on Prometheus's own ``/metrics`` (``prometheus_tsdb_reloads_total``).

        Names absent from the page are absent from the answer.
        """
        response = self._send("GET", "/metrics")
        if response.status_code >= 400:
            raise PrometheusError(f"GET {self.base_url}/metrics: HTTP {response.status_code}: "
                                  f"{response.text[:500]}")
        wanted, found = set(names), {}
        for line in response.text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                try:
                    found[name] = float(value.split(" ")[0])
                except ValueError:
                    continue
        return found

    def reload(self) -> None:
        """``POST /-/reload``: make the server re-read its configuration and rule files.

        Needs ``--web.enable-lifecycle`` on the server.
        """
        response = self._send("POST", "/-/reload")
        if response.status_code == 403:
            raise PrometheusError(f"POST {self.base_url}/-/reload: the lifecycle API is disabled: start "
                                  "Prometheus with --web.enable-lifecycle, or send it SIGHUP")
        if response.status_code >= 400:
            raise PrometheusError(f"POST {self.base_url}/-/reload: HTTP {response.status_code}: "
                                  f"{response.text.strip()[:500]}")

    # -- TSDB snapshots -----------------------------------------------------------------------------------
    def snapshot(self, skip_head: bool = False) -> str:
        """``POST /api/v1/admin/tsdb/snapshot``: make a snapshot of the TSDB and return its name.

        With ``skip_head=False`` the in-memory head (the last ~2 hours, not yet compacted) is written into
        the snapshot as one more block, so the snapshot holds every sample the server has. The snapshot
        lands in ``<--storage.tsdb.path>/snapshots/<name>/`` on the server.

        :raises PrometheusAdminApiDisabled: the server runs without ``--web.enable-admin-api``.
        """
        path = "/api/v1/admin/tsdb/snapshot"
        response = self._send("POST", path, params={"skip_head": str(bool(skip_head)).lower()})
        text = response.text[:500]
        # Prometheus 2.x answers "admin APIs disabled" (HTTP 500/503); a proxy or an older build answers 404.
        if "admin APIs disabled" in text or response.status_code == 404:
            raise PrometheusAdminApiDisabled(
                f"POST {self.base_url}{path}: HTTP {response.status_code} ({text.strip() or 'not found'}): "
                "the admin API is disabled on this Prometheus; start it with --web.enable-admin-api "
                "to allow TSDB snapshots")
        if response.status_code >= 400:
            raise PrometheusError(f"POST {self.base_url}{path}: HTTP {response.status_code}: {text}")
        try:
            name = response.json()["data"]["name"]
        except (ValueError, KeyError, TypeError):
            raise PrometheusError(f"POST {self.base_url}{path}: unexpected answer {text!r}") from None
        if not isinstance(name, str) or not SNAPSHOT_NAME_RE.match(name):
            raise PrometheusError(f"POST {self.base_url}{path}: unexpected snapshot name {name!r}")
        return name

    @staticmethod
    def snapshot_path(data_dir: str | Path, name: str) -> Path:
        """Where snapshot ``name`` is, given the server's data directory as seen from here."""
        if not SNAPSHOT_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a Prometheus snapshot name")
        return Path(data_dir, "snapshots", name)

    @classmethod
    def delete_snapshot(cls, data_dir: str | Path, name: str) -> bool:
        """Remove snapshot ``name`` from the mounted data directory; ``False`` if it was not there.

        Prometheus has no API for this: snapshots stay on its disk until someone removes them.
        """
        path = cls.snapshot_path(data_dir, name)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True
