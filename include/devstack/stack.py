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
    """Seed the nine components' servers; LangSmith runs fall on the day before ``backup_date`` (the data
    interval of that date's backup). Returns the counts of each."""
    c = clients()
    seed.wipe_qdrant(c["qdrant"])
    seed.wipe_mongo(c["mongo"])
    seed.wipe_redis(c["redis"])
    counts = {
        "qdrant": seed.seed_qdrant(c["qdrant"]),
        "mongodb": seed.seed_mongo(c["mongo"]),
        "redis": seed.seed_redis(c["redis"]),
    }
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
