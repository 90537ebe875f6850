"""The Grafana dashboard shipped with the package: made of the metrics the DAGs push, provisioned by the compose
stack, and loaded by the local Grafana. (Every panel's query returning data after real runs is checked in
tests/dags/test_intelligence_restore_run.py, where the backup, the drill and retention have pushed.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "include" / "compose" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ragvault-backups.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_every_panel_queries_metrics_the_package_pushes_for_the_chosen_bucket():
    board = dashboard()
    pushed = set(re.findall(r'"(ragvault_[a-z_]+)"', (REPO / "plugins" / "ragvault" / "metrics.py").read_text()))
    exprs = queries(board)
    assert len(exprs) >= 15
    for expr in exprs:
        used = set(re.findall(r"\bragvault_[a-z_]+", expr))
        assert used and used <= pushed, (expr, used - pushed)
        assert 'bucket=~"$bucket"' in expr, expr
    # one data source, the one the compose stack provisions
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    assert {p["datasource"]["uid"] for p in board["panels"] if p["type"] != "row"} <= uids
    # what the issue asks to see: last success, sizes and durations over time, drill status, retention
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("last success", "stored bytes", "duration", "drill", "retention"):
        assert topic in titles, topic


def test_the_compose_stack_provisions_it():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./include/compose/grafana:/etc/grafana:ro" in mounts
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ragvault.yaml").read_text())["providers"][0]
    assert provider["type"] == "file"
    # the provider's path inside the container is this folder of the repository
    inside = Path(provider["options"]["path"]).relative_to("/etc/grafana")
    assert (GRAFANA / inside / DASHBOARD.name).is_file()


def test_it_loads_into_the_local_grafana():
    """Saved through Grafana's dashboard API (POST /api/dashboards/db, as the demo loads it), read back whole."""
    from ragvault.hooks.grafana import GrafanaHook

    hook = GrafanaHook()
    board = dashboard()
    hook.send("POST", "/api/dashboards/db", {"dashboard": board, "overwrite": True, "message": "ragvault test"})
    found = hook.request("GET", f"/api/dashboards/uid/{board['uid']}")["dashboard"]
    assert found["title"] == board["title"]
    assert queries(found) == queries(board)
    assert found["templating"] == board["templating"]
