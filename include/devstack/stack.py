"""The whole local stack at once: seed all of it (the demo, the whole-DAG tests) or wipe its data stores."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from devstack import seed, seed_grafana, seed_langsmith, seed_prometheus


def clients() -> dict[str, Any]:
    """Clients of the three data stores, from the AIRFLOW_CONN_* connections."""
    conns = {name: seed.read_connection(f"{name}_default") for name in ("qdrant", "mongo", "redis")}
    return {
        "qdrant": seed.qdrant_client_from_conn(conns["qdrant"]),
        "mongo": seed.mongo_client_from_conn(conns["mongo"]),
        "redis": seed.redis_kwargs_from_conn(conns["redis"]),
    }


def wipe_data_stores() -> None:
    """Empty Qdrant, MongoDB and Redis: the seed's 'bring up clean instances'."""
    c = clients()
    seed.wipe_qdrant(c["qdrant"])
    seed.wipe_mongo(c["mongo"])
    seed.wipe_redis(c["redis"])


def seed_everything(backup_date: str) -> dict[str, dict[str, int]]:
    """Seed the nine components' servers (Grafana wiped first); LangSmith runs fall on the day before
    ``backup_date`` (the data interval of that date's backup). Returns the counts of each."""
    c = clients()
    seed.wipe_qdrant(c["qdrant"])
    seed.wipe_mongo(c["mongo"])
    seed.wipe_redis(c["redis"])
    counts = {
        "qdrant": seed.seed_qdrant(c["qdrant"]),
        "mongodb": seed.seed_mongo(c["mongo"]),
        "redis": seed.seed_redis(c["redis"]),
    }
    wipe_grafana()  # what an earlier run left (the demo's dashboard...) is not the seed's: the counts stay exact
    url, token, basic = seed_grafana.connection_from_env()
    counts["grafana"] = seed_grafana.seed_grafana(url, token, basic_auth=basic)
    day = dt.date.fromisoformat(backup_date) - dt.timedelta(days=1)
    client = seed_langsmith.client_from_connection(seed_langsmith.read_connection()[0])
    try:
        counts["langsmith"] = seed_langsmith.seed_langsmith(client, days=[day])
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    pushgateway = os.environ.get("RAGVAULT_PUSHGATEWAY_URL", seed_prometheus.DEFAULT_PUSHGATEWAY_URL)
    summary = seed_prometheus.push(pushgateway)
    prometheus = seed_prometheus_url()
    seed_prometheus.wait_until_scraped(prometheus, summary)
    counts["prometheus"] = {"series": summary["series"], "families": summary["families"]}
    return counts


def seed_prometheus_url() -> str:
    conn = seed.read_connection("prometheus_default") or {}
    return f"{conn.get('schema') or 'http'}://{conn.get('host', '127.0.0.1')}:{conn.get('port', 9090)}"


def wipe_grafana() -> None:
    """Delete everything the Grafana API holds (folders with their content, dashboards, datasources, library
    panels, alerting) : a blank Grafana."""
    import requests

    url, token, basic = seed_grafana.connection_from_env()
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    if basic:
        session.auth = basic
    session.headers["X-Disable-Provenance"] = "true"

    def get(path):
        response = session.get(url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    for rule in get("/api/v1/provisioning/alert-rules"):
        session.delete(f"{url}/api/v1/provisioning/alert-rules/{rule['uid']}", timeout=30)
    for hit in get("/api/search?type=dash-db&limit=5000"):
        session.delete(f"{url}/api/dashboards/uid/{hit['uid']}", timeout=30)
    for element in get("/api/library-elements?perPage=1000")["result"]["elements"]:
        session.delete(f"{url}/api/library-elements/{element['uid']}", timeout=30)
    for folder in get("/api/folders"):
        session.delete(f"{url}/api/folders/{folder['uid']}", timeout=30)
    for source in get("/api/datasources"):
        session.delete(f"{url}/api/datasources/uid/{source['uid']}", timeout=30)
    for point in get("/api/v1/provisioning/contact-points"):
        if point.get("uid"):
            session.delete(f"{url}/api/v1/provisioning/contact-points/{point['uid']}", timeout=30)
    for timing in get("/api/v1/provisioning/mute-timings"):
        session.delete(f"{url}/api/v1/provisioning/mute-timings/{timing['name']}", timeout=30)
    for template in get("/api/v1/provisioning/templates"):
        session.delete(f"{url}/api/v1/provisioning/templates/{template['name']}", timeout=30)
    session.delete(f"{url}/api/v1/provisioning/policies", timeout=30)


def wipe_langsmith() -> None:
    """Delete every project (and so its runs) of the LangSmith workspace."""
    client = seed_langsmith.client_from_connection(seed_langsmith.read_connection()[0])
    try:
        for project in list(client.list_projects()):
            client.delete_project(project_id=project.id)
    finally:
        close = getattr(client, "close", None)
        if close:
            close()


def wipe_everything() -> None:
    """The seed's 'bring up clean instances': empty data stores, a blank Grafana and LangSmith, and no stack
    files (Prometheus keeps its TSDB: restored blocks are added to it)."""
    import shutil

    from devstack.localconfig import state_dir

    wipe_data_stores()
    wipe_grafana()
    wipe_langsmith()
    shutil.rmtree(state_dir() / "demo-files", ignore_errors=True)
