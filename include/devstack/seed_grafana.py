#!/usr/bin/env python3
"""Fill a Grafana (or the Grafana emulator) with a RAG stack's monitoring, through its HTTP API.

What it creates, every object with a fixed uid or name so that seeding again updates instead of duplicating:

* nested folders: ``RAG Platform`` > ``Retrieval`` > ``Quality`` and ``Infrastructure`` > ``Storage``;
* dashboards at every level, the root (General) included, one of them using a library panel;
* data sources: Prometheus with basic auth and a custom header, Loki with a bearer token (their secrets go to
  ``secureJsonData``: the API never returns them, only ``grafana.db`` holds them);
* a library panel (``Retrieval latency p95``) in the ``Retrieval`` folder;
* an alert rule group (``rag-slo``, evaluated every 60s) with three alert rules in ``Quality``;
* a webhook contact point (its password is a secure setting), a mute timing, a notification template and a
  notification policy tree routing the seeded alerts to the contact point.

Objects are created with ``X-Disable-Provenance``, like objects made in Grafana's UI, so they stay editable
there and a later seed may change them again.

Library use::

    from devstack.seed_grafana import seed_grafana
    counts = seed_grafana("http://127.0.0.1:13000", token)  # {"folders": 5, "dashboards": 6, ...}

Command line (the address and token come from ``AIRFLOW_CONN_GRAFANA_DEFAULT``, JSON or URI form; without it,
the local devstack's emulator and token)::

    python include/devstack/seed_grafana.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests

#: the devstack's Grafana emulator, used when AIRFLOW_CONN_GRAFANA_DEFAULT is not set
DEFAULT_URL = "http://127.0.0.1:13000"
DEFAULT_TOKEN = "ragvault-grafana-dev-token"

NO_PROVENANCE = {"X-Disable-Provenance": "true"}

FOLDERS = [  # uid, title, parent uid: parents first
    ("rv-platform", "RAG Platform", None),
    ("rv-retrieval", "Retrieval", "rv-platform"),
    ("rv-quality", "Quality", "rv-retrieval"),
    ("rv-infra", "Infrastructure", None),
    ("rv-storage", "Storage", "rv-infra"),
]

PROMETHEUS_UID = "rv-prometheus"
LOKI_UID = "rv-loki"
LIBRARY_PANEL_UID = "rv-lib-latency-p95"
CONTACT_POINT_UID = "rv-cp-oncall-webhook"
CONTACT_POINT_NAME = "rag-oncall"
MUTE_TIMING = "rag-maintenance-window"
TEMPLATE = "rag.title"
RULE_FOLDER, RULE_GROUP = "rv-quality", "rag-slo"


class SeedError(RuntimeError):
    """Grafana refused a seeding request; the message names the request and Grafana's answer."""


class _Api:
    def __init__(self, base_url: str, token: str | None, basic_auth: tuple[str, str] | None, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if basic_auth:
            self.session.auth = basic_auth
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, expected: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise SeedError(f"{method} {url}: no answer: {exc}") from exc
        if response.status_code not in expected:
            raise SeedError(f"{method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def exists(self, path: str) -> dict | None:
        """The GET answer, or ``None`` when the object does not exist (404)."""
        url = self.base_url + path
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise SeedError(f"GET {url}: no answer: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise SeedError(f"GET {url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def close(self) -> None:
        self.session.close()


# ------------------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------------------


def _panel(
    panel_id: int,
    title: str,
    expr: str,
    x: int = 0,
    y: int = 0,
    kind: str = "timeseries",
    unit: str = "short",
) -> dict:
    return {
        "id": panel_id,
        "type": kind,
        "title": title,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": PROMETHEUS_UID},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": "A", "expr": expr, "datasource": {"type": "prometheus", "uid": PROMETHEUS_UID}}
        ],
    }


def _dashboard(uid: str, title: str, tags: list[str], panels: list[dict], **extra: Any) -> dict:
    return {
        "uid": uid,
        "title": title,
        "tags": ["ragvault", *tags],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "env",
                    "type": "custom",
                    "query": "prod,staging",
                    "current": {"text": "prod", "value": "prod"},
                }
            ]
        },
        "panels": panels,
        **extra,
    }


def dashboards() -> list[tuple[str | None, dict]]:
    """(folder uid or ``None`` for General, dashboard model) of every seeded dashboard."""
    return [
        (
            None,
            _dashboard(
                "rv-d-home",
                "RAG Stack Overview",
                ["overview"],
                [
                    _panel(
                        1, "Questions answered / min", 'sum(rate(rag_answers_total{env="$env"}[5m])) * 60'
                    ),
                    _panel(
                        2,
                        "Answer latency p95",
                        "histogram_quantile(0.95, sum by (le) (rate(rag_answer_seconds_bucket[5m])))",
                        x=12,
                        unit="s",
                    ),
                ],
            ),
        ),
        (
            "rv-platform",
            _dashboard(
                "rv-d-platform-slo",
                "Platform SLOs",
                ["slo"],
                [
                    _panel(
                        1,
                        "Availability (30d)",
                        'avg_over_time(up{job="rag-api"}[30d])',
                        kind="stat",
                        unit="percentunit",
                    ),
                    _panel(
                        2,
                        "Error budget burn",
                        "sum(rate(rag_errors_total[1h])) / sum(rate(rag_requests_total[1h]))",
                        x=12,
                    ),
                ],
            ),
        ),
        (
            "rv-retrieval",
            _dashboard(
                "rv-d-retrieval",
                "Retrieval",
                ["qdrant", "latency"],
                [
                    {
                        "id": 1,
                        "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
                        "libraryPanel": {"uid": LIBRARY_PANEL_UID, "name": "Retrieval latency p95"},
                    },
                    _panel(2, "Qdrant search QPS", "sum(rate(qdrant_search_requests_total[5m]))", x=12),
                ],
            ),
        ),
        (
            "rv-quality",
            _dashboard(
                "rv-d-answer-quality",
                "Answer Quality",
                ["quality", "llm"],
                [
                    _panel(
                        1, "Groundedness score", 'avg(rag_eval_groundedness{env="$env"})', unit="percentunit"
                    ),
                    _panel(
                        2,
                        "Thumbs down ratio",
                        'sum(rate(rag_feedback_total{score="down"}[1h])) / sum(rate(rag_feedback_total[1h]))',
                        x=12,
                        unit="percentunit",
                    ),
                ],
            ),
        ),
        (
            "rv-infra",
            _dashboard(
                "rv-d-infra-hosts",
                "Hosts",
                ["infra"],
                [
                    _panel(
                        1,
                        "CPU busy",
                        '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))',
                        unit="percentunit",
                    ),
                ],
            ),
        ),
        (
            "rv-storage",
            _dashboard(
                "rv-d-storage",
                "Storage: MongoDB, Redis, MinIO",
                ["storage"],
                [
                    _panel(1, "MongoDB ops/s", "sum(rate(mongodb_op_counters_total[5m]))"),
                    _panel(2, "Redis memory", "redis_memory_used_bytes", x=12, unit="bytes"),
                    _panel(
                        3,
                        "MinIO bucket size",
                        'minio_bucket_usage_total_bytes{bucket="inteligencia-backups"}',
                        y=8,
                        unit="bytes",
                    ),
                ],
            ),
        ),
    ]


def datasources() -> list[dict]:
    return [
        {
            "uid": PROMETHEUS_UID,
            "name": "Prometheus (ragvault)",
            "type": "prometheus",
            "access": "proxy",
            "url": "http://127.0.0.1:19090",
            "isDefault": True,
            "basicAuth": True,
            "basicAuthUser": "scraper",
            "jsonData": {"httpMethod": "POST", "timeInterval": "15s", "httpHeaderName1": "X-Scope-OrgID"},
            "secureJsonData": {
                "basicAuthPassword": "seeded-prometheus-password",
                "httpHeaderValue1": "rag-tenant",
            },
        },
        {
            "uid": LOKI_UID,
            "name": "Loki (ragvault)",
            "type": "loki",
            "access": "proxy",
            "url": "http://127.0.0.1:3100",
            "jsonData": {"maxLines": 1000, "httpHeaderName1": "Authorization"},
            "secureJsonData": {"httpHeaderValue1": "Bearer seeded-loki-token"},
        },
    ]


def library_panel_model() -> dict:
    return dict(
        _panel(
            1,
            "Retrieval latency p95",
            "histogram_quantile(0.95, sum by (le) (rate(qdrant_search_seconds_bucket[5m])))",
            unit="s",
        ),
        description="95th percentile of vector search latency",
    )


def _rule(uid: str, title: str, expr: str, threshold: float, severity: str, **extra: Any) -> dict:
    return {
        "uid": uid,
        "title": title,
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "queryType": "",
                "relativeTimeRange": {"from": 600, "to": 0},
                "datasourceUid": PROMETHEUS_UID,
                "model": {"refId": "A", "expr": expr, "intervalMs": 1000, "maxDataPoints": 43200},
            },
            {
                "refId": "B",
                "queryType": "",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last"},
            },
            {
                "refId": "C",
                "queryType": "",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"params": [threshold], "type": "gt"}}],
                },
            },
        ],
        "noDataState": "NoData",
        "execErrState": "Error",
        "for": "5m",
        "annotations": {"summary": f"{title}", "runbook_url": f"https://runbooks.example/rag/{uid}"},
        "labels": {"team": "rag", "severity": severity},
        "isPaused": False,
        **extra,
    }


def alert_rules() -> list[dict]:
    return [
        _rule(
            "rv-rule-latency",
            "Answer latency p95 above 4s",
            "histogram_quantile(0.95, sum by (le) (rate(rag_answer_seconds_bucket[5m])))",
            4,
            "page",
        ),
        _rule("rv-rule-qdrant-down", "Qdrant unreachable", 'up{job="qdrant"} == 0', 0, "page"),
        _rule(
            "rv-rule-groundedness",
            "Groundedness below 80%",
            "1 - avg(rag_eval_groundedness)",
            0.2,
            "ticket",
            isPaused=True,
        ),
    ]


def contact_point() -> dict:
    return {
        "uid": CONTACT_POINT_UID,
        "name": CONTACT_POINT_NAME,
        "type": "webhook",
        "disableResolveMessage": False,
        "settings": {
            "url": "http://127.0.0.1:9/rag-oncall",
            "httpMethod": "POST",
            "username": "grafana",
            "password": "seeded-webhook-password",
            "title": '{{ template "rag.title" . }}',
        },
    }


def mute_timing() -> dict:
    return {
        "name": MUTE_TIMING,
        "time_intervals": [
            {
                "weekdays": ["sunday"],
                "times": [{"start_time": "02:00", "end_time": "04:00"}],
                "location": "UTC",
            }
        ],
    }


def template() -> str:
    return (
        '{{ define "rag.title" }}[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} '
        "({{ .CommonLabels.team }}){{ end }}"
    )


def policy_tree() -> dict:
    return {
        "receiver": CONTACT_POINT_NAME,
        "group_by": ["grafana_folder", "alertname"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {
                "receiver": CONTACT_POINT_NAME,
                "object_matchers": [["severity", "=", "page"]],
                "group_wait": "10s",
                "continue": False,
            },
            {
                "receiver": CONTACT_POINT_NAME,
                "object_matchers": [["severity", "=", "ticket"]],
                "mute_time_intervals": [MUTE_TIMING],
                "repeat_interval": "24h",
                "routes": [{"receiver": CONTACT_POINT_NAME, "object_matchers": [["team", "=", "rag"]]}],
            },
        ],
    }


# ------------------------------------------------------------------------------------------------------------
# Seeding
# ------------------------------------------------------------------------------------------------------------


def _seed_folders(api: _Api) -> int:
    for uid, title, parent in FOLDERS:
        current = api.exists(f"/api/folders/{uid}")
        if current is None:
            body = {"uid": uid, "title": title, **({"parentUid": parent} if parent else {})}
            api.call("POST", "/api/folders", json=body)
            continue
        if current.get("title") != title:
            api.call("PUT", f"/api/folders/{uid}", json={"title": title, "overwrite": True})
        if (current.get("parentUid") or None) != parent:
            api.call("POST", f"/api/folders/{uid}/move", json={"parentUid": parent or ""})
    return len(FOLDERS)


def _seed_datasources(api: _Api) -> int:
    for source in datasources():
        current = api.exists(f"/api/datasources/uid/{source['uid']}")
        if current is None:
            api.call("POST", "/api/datasources", json=source)
        else:
            api.call(
                "PUT", f"/api/datasources/uid/{source['uid']}", json={**source, "version": current["version"]}
            )
    return len(datasources())


def _seed_library_panel(api: _Api) -> int:
    model = library_panel_model()
    body = {
        "uid": LIBRARY_PANEL_UID,
        "name": "Retrieval latency p95",
        "kind": 1,
        "folderUid": "rv-retrieval",
        "model": model,
    }
    current = api.exists(f"/api/library-elements/{LIBRARY_PANEL_UID}")
    if current is None:
        api.call("POST", "/api/library-elements", json=body)
    else:
        api.call(
            "PATCH",
            f"/api/library-elements/{LIBRARY_PANEL_UID}",
            json={**body, "version": current["result"]["version"]},
        )
    return 1


def _seed_dashboards(api: _Api) -> int:
    seeded = dashboards()
    for folder_uid, model in seeded:
        body = {
            "dashboard": model,
            "overwrite": True,
            "message": "seeded by ragvault",
            **({"folderUid": folder_uid} if folder_uid else {}),
        }
        api.call("POST", "/api/dashboards/db", json=body)
    return len(seeded)


def _seed_alerting(api: _Api) -> dict[str, int]:
    listed = api.call("GET", "/api/v1/provisioning/contact-points", params={"name": CONTACT_POINT_NAME}) or []
    point = contact_point()
    if any(item.get("uid") == CONTACT_POINT_UID for item in listed):
        api.call(
            "PUT",
            f"/api/v1/provisioning/contact-points/{CONTACT_POINT_UID}",
            expected=(200, 202),
            json=point,
            headers=NO_PROVENANCE,
        )
    else:
        api.call(
            "POST",
            "/api/v1/provisioning/contact-points",
            expected=(200, 202),
            json=point,
            headers=NO_PROVENANCE,
        )

    timing = mute_timing()
    current = api.exists(f"/api/v1/provisioning/mute-timings/{quote(MUTE_TIMING, safe='')}")
    if current is None:
        api.call(
            "POST", "/api/v1/provisioning/mute-timings", expected=(201,), json=timing, headers=NO_PROVENANCE
        )
    else:
        api.call(
            "PUT",
            f"/api/v1/provisioning/mute-timings/{quote(MUTE_TIMING, safe='')}",
            expected=(200, 202),
            json={**timing, "version": current.get("version")},
            headers=NO_PROVENANCE,
        )

    api.call(
        "PUT",
        f"/api/v1/provisioning/templates/{quote(TEMPLATE, safe='')}",
        expected=(200, 202),
        json={"template": template()},
        headers=NO_PROVENANCE,
    )
    api.call(
        "PUT", "/api/v1/provisioning/policies", expected=(200, 202), json=policy_tree(), headers=NO_PROVENANCE
    )

    rules = alert_rules()
    api.call(
        "PUT",
        f"/api/v1/provisioning/folder/{RULE_FOLDER}/rule-groups/{RULE_GROUP}",
        json={"title": RULE_GROUP, "folderUid": RULE_FOLDER, "interval": 60, "rules": rules},
        headers=NO_PROVENANCE,
    )
    return {
        "alert_rules": len(rules),
        "rule_groups": 1,
        "contact_points": 1,
        "mute_timings": 1,
        "templates": 1,
        "policies": 1,
    }


def seed_grafana(
    base_url: str, token: str | None = None, *, basic_auth: tuple[str, str] | None = None, timeout: float = 30
) -> dict[str, int]:
    """Create or update the seeded objects in the Grafana at ``base_url``; return how many of each.

    :param token: a service account token (``Authorization: Bearer``).
    :param basic_auth: ``(login, password)`` of a Grafana user, instead of a token.
    """
    api = _Api(base_url, token, basic_auth, timeout)
    try:
        api.call("GET", "/api/health")
        counts = {
            "folders": _seed_folders(api),
            "datasources": _seed_datasources(api),
            "library_panels": _seed_library_panel(api),
        }
        counts["dashboards"] = _seed_dashboards(api)  # after the library panel: one dashboard links to it
        counts.update(_seed_alerting(api))
        return counts
    finally:
        api.close()


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def connection_from_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str | None, tuple[str, str] | None]:
    """(base URL, token, basic auth) from ``AIRFLOW_CONN_GRAFANA_DEFAULT`` (JSON or URI), else the devstack's.

    With a login, login/password are basic auth; without one, the password is a service account token.
    """
    env = os.environ if environ is None else environ
    raw = (env.get("AIRFLOW_CONN_GRAFANA_DEFAULT") or "").strip()
    if not raw:
        return DEFAULT_URL, DEFAULT_TOKEN, None
    if raw.startswith("{"):
        conn = json.loads(raw)
        extra = conn.get("extra") or {}
        extra = json.loads(extra) if isinstance(extra, str) and extra.strip() else extra or {}
    else:
        parts = urlsplit(raw)
        extra = dict(parse_qsl(parts.query))
        conn = {
            "host": unquote(parts.hostname or ""),
            "port": parts.port,
            "login": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "schema": unquote(parts.path.lstrip("/")) or None,
        }
    host = str(extra.get("url") or conn.get("host") or "")
    if "://" in host:
        base_url = host.rstrip("/")
    else:
        base_url = f"{conn.get('schema') or 'http'}://{host or '127.0.0.1'}:{conn.get('port') or 3000}"
    if conn.get("login"):
        return base_url, None, (conn["login"], conn.get("password") or "")
    return base_url, conn.get("password") or None, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Seed Grafana with nested folders, dashboards, data sources, a library panel and "
        "alerting (rules, contact point, policies, mute timing, template). The address and credentials "
        "come from AIRFLOW_CONN_GRAFANA_DEFAULT (JSON or URI), else the local devstack's emulator."
    )
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = parser.parse_args(argv)
    base_url, token, basic_auth = connection_from_env()
    try:
        counts = seed_grafana(base_url, token, basic_auth=basic_auth)
    except SeedError as exc:
        print(f"seed_grafana: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(counts, sort_keys=True))
    else:
        print(f"grafana: {base_url}")
        for name, count in counts.items():
            print(f"  {name:<16} {count:>4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
